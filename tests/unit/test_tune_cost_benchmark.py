"""benchmarks/tune_cost.py: every variant timed in every round, the ratio to temporal_only taken round by round."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_tune_cost_times_each_variant_per_round_and_tables_the_ratio(tmp_path, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import tune_cost

    out = tmp_path / "cost.md"
    variant = "mc_r4=motioncrafter;adapter.rank=4;tune.spatial_warmup=1;tune.spatial_freeze=true"
    tune_cost.main(["--variants", "temporal_only", variant, "--steps", "1", "--rounds", "2", "--out", str(out)])
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in out.read_text().splitlines()
            if line.startswith(("| temporal_only ", "| mc_r4 "))]
    assert [r[0] for r in rows] == ["temporal_only", "mc_r4"]
    assert rows[0][3] == "1.00x" and float(rows[1][3].rstrip("x")) > 0
    assert all(float(r[1]) >= float(r[2]) > 0 for r in rows)  # the median round is no faster than the fastest
    # the command in the header runs as printed: a variant's ';' is quoted for the shell
    assert f"'{variant}'" in out.read_text().splitlines()[0]

    with pytest.raises(SystemExit, match="the base is not tuned"):
        tune_cost.main(["--variants", "base", "--out", str(out)])
