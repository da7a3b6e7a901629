"""The ablation in its reduced form: the same code path as `benchmarks/ablation.py`, on a small set.

`python benchmarks/ablation.py` is the full form (test clips, both caption protocols,
three budgets; benchmarks/results/ablation.md). Here: one dev clip with a held-out
motion (circle, which the base never saw), captioned without its appearance
("a shape moves in a circle"), two evaluation prompts x two seeds, a short budget. Asserted: only what
the full table shows with a wide margin. An inert adapter (learning rate ~0: LoRA B
stays at zero, the adapter is all zeros) is run through the same assertions and
must fail them, so they cannot pass by accident (measured with the current default:
motion fidelity 0.85 vs 0.14 for the base and the inert adapter). Appearance is not
asserted: the default loses some, here (0.50 vs the base's 0.67) as on the test clips
(ablation.md).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
MARGIN = 0.05  # fidelity above the base's that counts as "carries the motion"


@pytest.fixture(scope="module")
def table():
    # importable by name: each job runs in a spawned process, which imports the script's module again
    sys.path.insert(0, str(BENCHMARKS))
    ablation = importlib.import_module("ablation")
    args = ablation.parse_args([
        "--split", "dev", "--clip", "1", "--protocols", "vague", "--prompts", "2", "--steps", "100",
        "--render-steps", "10", "--procs", "2", "--threads", "1",
        "--variant", "base", "--variant", "motioncrafter", "--variant", "inert=motioncrafter;tune.lr=1e-12",
        "--also-render", "mg:render.guidance_split=text_first",
    ])
    _, summary = ablation.run(args)
    print(summary.to_string())
    return summary.set_index("variant")


def carries_the_motion(table, variant: str) -> bool:
    return table.loc[variant, "motion fidelity (all)"] > table.loc["base", "motion fidelity (all)"] + MARGIN


def test_motioncrafter_carries_the_motion_and_an_inert_adapter_does_not(table) -> None:
    assert carries_the_motion(table, "motioncrafter")
    assert not carries_the_motion(table, "inert")


def test_also_render_renders_the_same_tuning_run_again_with_its_settings(table) -> None:
    # a guidance split with no adapter attached is plain guidance: the base's rows come out the same
    scores = ["motion fidelity (all)", "appearance acc", "leakage", "diversity"]
    assert table.loc["base+mg", scores].tolist() == table.loc["base", scores].tolist()
    # on the tuned adapter it is another render of the same run (same tuning seconds), not the same video
    assert table.loc["motioncrafter+mg", "s / clip"] == table.loc["motioncrafter", "s / clip"]
    assert table.loc["motioncrafter+mg", scores].tolist() != table.loc["motioncrafter", scores].tolist()
