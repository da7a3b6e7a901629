"""The ablation in its reduced form: orderings that the full table shows, checked on a small fixed set.

`python benchmarks/ablation.py` is the full form (8 clips x 4 prompts x 2 seeds,
200 steps, benchmarks/results/ablation.md). Here: the shipped base, one held-out
motion (zigzag, which the base never saw), two prompts that change the colour and
the shape, two seeds, a short budget; the same code path as the full run. Only
orderings that hold in the full table too are asserted (see its note).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def table():
    # importable by name: each mode runs in a spawned process, which imports the script's module again
    sys.path.insert(0, str(BENCHMARKS))
    ablation = importlib.import_module("ablation")
    args = ablation.parse_args(["--clips", "1", "--prompts", "2", "--seeds", "2", "--steps", "60", "--render-steps", "10",
                                "--modes", "base", "motioncrafter", "temporal_only", "full_finetune", "--threads", "2"])
    _, summary = ablation.run(args)
    print(summary.to_string())
    return summary.set_index("mode")


def test_disentanglement_leaks_less_appearance_than_temporal_only(table) -> None:
    assert table.loc["motioncrafter", "leakage"] <= table.loc["temporal_only", "leakage"]


def test_full_finetuning_copies_the_motion_and_the_look(table) -> None:
    """The whole UNet tuned on one clip reproduces its motion, and its appearance with it."""
    assert table.loc["full_finetune", "motion fidelity (all)"] > table.loc["base", "motion fidelity (all)"]
    assert table.loc["full_finetune", "leakage"] > table.loc["motioncrafter", "leakage"]
