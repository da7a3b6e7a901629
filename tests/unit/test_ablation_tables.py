"""benchmarks/ablation.py's tables: summaries of stored rows, and tables built from several sittings."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
ablation = importlib.import_module("ablation")


def rows(variant: str, fidelity: float, seconds: float) -> list[dict]:
    return [{"variant": variant, "mode": "temporal_only", "split": "test", "protocol": "vague", "clip": clip, "held_out": True,
             "steps": 100, "motion_fidelity": fidelity + clip / 10, "flow_fidelity": 0.5, "appearance_acc": 0.5, "leakage": 0.25,
             "diversity": 0.1, "tune_seconds": seconds, "adapter_bytes": 2048} for clip in (0, 1)]


def test_combined_table_takes_named_variants_renamed_from_each_file(tmp_path: Path) -> None:
    old, new = tmp_path / "old.parquet", tmp_path / "new.parquet"
    pd.DataFrame(rows("motioncrafter", 0.4, 10.0) + rows("base", 0.2, 0.0) + rows("skipped", 0.9, 1.0)).to_parquet(old)
    pd.DataFrame(rows("motioncrafter", 0.6, 20.0)).to_parquet(new)
    df, table = ablation.combine([f"{old}:base,motioncrafter=motioncrafter_previous", str(new)])
    got = table.set_index("variant")
    assert set(got.index) == {"base", "motioncrafter_previous", "motioncrafter"}
    assert got.loc["motioncrafter_previous", "motion fidelity (all)"] == pytest.approx(0.45)
    assert got.loc["motioncrafter", "motion fidelity (all)"] == pytest.approx(0.65)
    assert got.loc["motioncrafter", "s / clip"] == 20.0 and got.loc["motioncrafter", "adapter KB"] == 2.0
    assert dict(df.groupby("variant")["source"].first()) == {"base": "old.parquet", "motioncrafter_previous": "old.parquet",
                                                             "motioncrafter": "new.parquet"}
    with pytest.raises(SystemExit, match="no rows of"):
        ablation.combine([f"{old}:nonesuch"])


def test_combined_table_keeps_the_protocols_asked_and_says_so(tmp_path: Path) -> None:
    both = tmp_path / "both.parquet"
    pd.DataFrame(rows("motioncrafter", 0.4, 10.0) + [{**r, "protocol": "full"} for r in rows("motioncrafter", 0.8, 10.0)]).to_parquet(both)
    df, table = ablation.combine([str(both)], ("full",))
    assert set(df["protocol"]) == {"full"} and table["motion fidelity (all)"].tolist() == [pytest.approx(0.85)]
    assert len(ablation.combine([str(both)])[0]) == 4  # every protocol unless asked
    one_each = ablation.combine([f"{both}@vague", f"{both}@full:motioncrafter=from_full"])[0]  # a protocol per source
    assert sorted(zip(one_each["protocol"], one_each["variant"])) == [("full", "from_full")] * 2 + [("vague", "motioncrafter")] * 2
    with pytest.raises(SystemExit, match="'blurry' is not a protocol"):
        ablation.combine([f"{both}@blurry"])
    args = ablation.parse_args(["--from-parquet", str(both), "--protocols", "full"])
    assert ablation.table_options(args) == ["--protocols full"]
    assert ablation.table_options(ablation.parse_args(["--from-parquet", str(both)])) == []


def test_two_tuning_draws_pool_into_one_row_and_each_run_counts_once_for_time(tmp_path: Path) -> None:
    first, second = tmp_path / "seed1.parquet", tmp_path / "seed2.parquet"
    pd.DataFrame([{**r, "tune_seed": 1} for r in rows("motioncrafter", 0.4, 10.0) * 3]).to_parquet(first)  # 3 prompts each
    pd.DataFrame([{**r, "tune_seed": 2} for r in rows("motioncrafter", 0.6, 30.0) * 3]).to_parquet(second)
    _, table = ablation.combine([str(first), str(second)])
    got = table.set_index("variant").loc["motioncrafter"]
    assert got["motion fidelity (all)"] == pytest.approx(0.55)  # both draws' rows
    assert got["s / clip"] == pytest.approx(20.0)  # 2 clips x 2 draws, one tuning run each


def test_tune_seed_option_defaults_to_the_splits_own() -> None:
    assert ablation.parse_args([]).tune_seed is None
    assert ablation.parse_args(["--tune-seed", "2"]).tune_seed == 2
    assert ablation.tune_seed(ablation.parse_args([])) == ablation.SPLITS["test"]["tune_seed"]
    assert ablation.tune_seed(ablation.parse_args(["--split", "dev", "--tune-seed", "2"])) == 2


def paired_rows(variant: str, fidelity_by_unit: dict[tuple[int, int], float], leakage: float = 0.25, diversity: float = 0.1) -> list[dict]:
    """Two prompts per (clip, tune seed) unit, the unit's fidelity on each; clip 9 is a held-in motion.
    Diversity is on one row of the two only, as a run's rows carry it (one per prompt, not per seed)."""
    return [{**rows(variant, 0.0, 1.0)[0], "clip": clip, "tune_seed": seed, "seed": 0, "held_out": clip != 9, "prompt": prompt,
             "motion_fidelity": fidelity, "leakage": leakage, "diversity": diversity if prompt == "p0" else float("nan")}
            for (clip, seed), fidelity in fidelity_by_unit.items() for prompt in ("p0", "p1")]


def interval(cell: str) -> tuple[float, ...]:
    """'+0.020 [+0.010, +0.030]' -> (0.02, 0.01, 0.03)"""
    return tuple(float(x) for x in cell.translate(str.maketrans("", "", "[],")).split())


def test_paired_differences_are_taken_run_by_run_and_their_interval_sees_the_noise() -> None:
    units = [(clip, seed) for clip in range(6) for seed in (1, 2)]
    reference = {u: 0.3 + 0.05 * u[0] for u in units}  # clips differ far more than the variants do
    steady = {u: v + 0.02 for u, v in reference.items()}  # 0.02 better on every run: a real difference
    noisy = {u: v + (0.2 if u[0] % 2 else -0.2) for u, v in reference.items()}  # mean 0, run to run +-0.2
    df = pd.DataFrame(paired_rows("ref", reference) + paired_rows("steady", steady, leakage=0.15, diversity=0.13) + paired_rows("noisy", noisy)
                      + paired_rows("ref", {(9, 1): 0.0}) + paired_rows("steady", {(9, 1): 1.0}, leakage=0.15, diversity=0.13))  # held-in: not in fidelity
    got = ablation.paired_differences(df, "ref").set_index("variant")
    mean, low, high = interval(got.loc["steady", "motion fidelity (held-out)"])
    assert mean == pytest.approx(0.02) and low == pytest.approx(0.02) and high == pytest.approx(0.02)
    assert got.loc["steady", "leakage"] == "-0.100 [-0.100, -0.100]"
    assert got.loc["steady", "diversity"] == "+0.030 [+0.030, +0.030]"  # the rows without it do not count as 0
    mean, low, high = interval(got.loc["noisy", "motion fidelity (held-out)"])
    assert mean == pytest.approx(0.0) and low < -0.05 and high > 0.05  # the interval straddles 0
    assert got.loc["steady", "units (clip x draw)"] == 13  # 12 held-out runs + the held-in one (leakage counts it)
    assert "ref" not in got.index
    base = [{**r, "mode": "base", "variant": "base", "tune_seed": 1} for r in paired_rows("base", {(c, 1): 0.3 for c in range(6)})]
    with_base = ablation.paired_differences(pd.concat([df, pd.DataFrame(base)]), "ref").set_index("variant")
    assert with_base.loc["base", "units (clip x draw)"] == 12  # the untuned base pairs with both draws of each clip
    with pytest.raises(SystemExit, match="no rows of that variant"):
        ablation.paired_differences(df, "nonesuch")


def test_against_must_name_a_variant_that_runs() -> None:
    assert ablation.parse_args(["--variant", "temporal_only", "--variant", "mc=motioncrafter", "--against", "mc"]).against == "mc"
    with pytest.raises(SystemExit):
        ablation.parse_args(["--variant", "temporal_only", "--against", "motioncrafter"])


def test_a_table_of_stored_rows_draws_its_frontier_where_asked_and_not_over_the_records(tmp_path: Path) -> None:
    stored = tmp_path / "rows.parquet"
    pd.DataFrame(rows("motioncrafter", 0.4, 10.0) + [{**r, "steps": 200} for r in rows("motioncrafter", 0.5, 20.0)]).to_parquet(stored)
    out = tmp_path / "results" / "side.md"
    out.parent.mkdir()
    ablation.main(["--from-parquet", str(stored), "--out", str(out), "--frontier", "none"])
    assert out.exists() and not list(out.parent.glob("*.png"))
    ablation.main(["--from-parquet", str(stored), "--out", str(out), "--frontier", str(tmp_path / "side.png")])
    assert (tmp_path / "side.png").stat().st_size > 0 and not (out.parent / "frontier.png").exists()
    assert "--frontier " + str(tmp_path / "side.png") in out.read_text()  # the command that remakes it says where
    ablation.main(["--from-parquet", str(stored), "--out", str(out)])
    assert (out.parent / "frontier.png").exists()  # the default: beside --out


def test_also_render_takes_render_settings_only() -> None:
    args = ablation.parse_args(["--also-render", "mg:render.guidance_split=text_first;render.motion_guidance=2"])
    assert args.also_render == [("mg", ["render.guidance_split=text_first", "render.motion_guidance=2"])]
    for bad in ("render.motion_guidance=1", "mg:tune.lr=1e-3", "mg:"):
        with pytest.raises(SystemExit):
            ablation.parse_args(["--also-render", bad])


def test_own_look_renders_the_clips_full_caption_alone_and_changed_looks_never_repeat_it() -> None:
    ref = ablation.SPLITS["dev"]["clips"][0]
    own = ablation.reference_caption(ref, "full")[0]
    assert ablation.eval_prompts(ref, 3, "own") == [own]
    changed = ablation.eval_prompts(ref, 5)
    assert len(set(changed)) == 5 and own not in changed
    assert ablation.parse_args(["--look", "own"]).look == "own" and ablation.parse_args([]).look == "changed"


def test_split_full_parts_a_full_adapter_by_branch_and_leaves_lora_adapters_alone(monkeypatch) -> None:
    import torch

    from motioncrafter.adapters import Adapter
    from motioncrafter.base import load_base
    from motioncrafter.branches import branch_parameters
    from motioncrafter.toyworld import BASE_DIR

    base = load_base(BASE_DIR)
    monkeypatch.setattr(ablation, "_BASE", base)
    whole = Adapter({n: torch.zeros(1) for n, _ in base.unet.named_parameters()}, {"kind": "full"})
    parts = dict(ablation.split_full(whole))
    temporal = set(branch_parameters(base.unet, "temporal"))
    assert set(parts) == {"temporal", "rest"} and temporal
    assert set(parts["temporal"].tensors) == temporal
    assert set(parts["rest"].tensors) == set(whole.tensors) - temporal
    assert parts["rest"].kind == "full" and parts["temporal"].meta is whole.meta
    # a full adapter of the temporal branch alone has nothing to split; a LoRA adapter is not split
    assert ablation.split_full(parts["temporal"]) == [] and ablation.split_full(None) == []
    assert ablation.split_full(Adapter({"a.lora_A.weight": torch.zeros(1)}, {"kind": "lora"})) == []
    assert ablation.parse_args(["--split-full"]).split_full and not ablation.parse_args([]).split_full


def test_a_run_stored_in_two_files_counts_once_and_a_conflicting_copy_is_refused(tmp_path: Path) -> None:
    first, second, other = tmp_path / "first.parquet", tmp_path / "second.parquet", tmp_path / "other.parquet"
    pd.DataFrame(rows("motioncrafter", 0.4, 10.0)).to_parquet(first)  # clips 0 and 1
    pd.DataFrame([r for r in rows("motioncrafter", 0.4, 10.0) if r["clip"] == 1]).to_parquet(second)  # clip 1 again
    _, table = ablation.combine([str(first), str(second)])
    assert table.set_index("variant").loc["motioncrafter", "motion fidelity (all)"] == pytest.approx(0.45)  # not 0.4667
    pd.DataFrame([{**r, "motion_fidelity": 0.9} for r in rows("motioncrafter", 0.4, 10.0) if r["clip"] == 1]).to_parquet(other)
    with pytest.raises(SystemExit, match="scored differently.*other.parquet"):
        ablation.combine([str(first), str(other)])
