"""`motioncrafter.library` on real run folders: list with filters, show, verify (good and
broken runs), export to peft / diffusers and load it into a stock UNet, merge runs.

The run folders are built as the pipeline builds them (save_adapter, `_COMMITTED`
markers, `report.adapter_index` + `write_table`), without Ray.
"""

from __future__ import annotations

import copy
import json
import time
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch

from motioncrafter import adapters as ad
from motioncrafter import library
from motioncrafter.base import fingerprint_folder
from motioncrafter.config import AdapterConfig
from motioncrafter.runformat import RunLayout, write_table
from motioncrafter.toyworld.model import debug_base
from motioncrafter.trainer import tune_clip
from pipelines.report import adapter_index

pytestmark = pytest.mark.filterwarnings(
    "ignore:Already found a `peft_config` attribute",
    "ignore:Converting a tensor with requires_grad=True to a scalar",
)

FIDELITY = {"m0": 0.8, "m1": 0.3}


def _save_base_folder(base, folder: Path) -> str:
    """The debug base's UNet as a diffusers folder; returns its fingerprint."""
    base.unet.save_pretrained(folder / "unet", safe_serialization=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "TextToVideoSDPipeline", "unet": ["diffusers", "UNet3DConditionModel"]}))
    return fingerprint_folder(folder)


def make_run(output: Path, run_id: str, tuned: dict[str, ad.Adapter]) -> RunLayout:
    """A run folder as the train + report stages leave it."""
    layout = RunLayout(str(output), run_id)
    motions = {}
    for i, (motion_id, adapter) in enumerate(tuned.items()):
        adapter = ad.Adapter(adapter.tensors, {**adapter.meta, "pipeline": {"motion_id": motion_id, "row": i, "run_id": run_id}})
        ad.save_adapter(adapter, layout.adapter(motion_id))
        marker = {"motion_id": motion_id, "clip_sha256": adapter.meta["reference"]["clip_sha256"], "run_id": run_id,
                  "gang": "gang-0", "attempt": 1, "train_seconds": 0.5, "committed_at": time.time()}
        Path(layout.committed(motion_id)).write_text(json.dumps(marker))
        motions[motion_id] = i
    write_table(layout, "adapters", adapter_index(layout, motions))
    summary = [{"motion_id": m, "row": r, "prompt": tuned[m].meta["reference"]["prompt"], "adapter_uri": layout.adapter(m),
                "grid_uri": layout.grid(m), "motion_fidelity": FIDELITY[m], "num_videos": 2} for m, r in motions.items()]
    write_table(layout, "summary", summary)
    return layout


@pytest.fixture(scope="module")
def world(tmp_path_factory, clip, mc):
    tmp = tmp_path_factory.mktemp("library")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = debug_base("unet3d")
    base.fingerprint = _save_base_folder(base, tmp / "base")
    tuned = {
        f"m{seed}": tune_clip(base, clip.frames, clip.caption, mc.tune_cfg(mode="temporal_only", steps=2, seed=seed),
                              AdapterConfig(rank=4, alpha=4.0)).adapter
        for seed in (0, 1)
    }
    layout = make_run(tmp / "out", "run-a", tuned)
    return {"tmp": tmp, "base": base, "base_dir": str(tmp / "base"), "tuned": tuned, "layout": layout, "run": layout.root}


# ------------------------------------------------------------------ list / show


def test_list_run_folder_with_metrics(world):
    frame = library.list_adapters(world["run"])
    assert list(frame["motion_id"]) == ["m0", "m1"]
    assert list(frame.columns[:4]) == ["run_id", "motion_id", "row", "adapter_uri"]
    assert list(frame["motion_fidelity"]) == [0.8, 0.3]  # joined from summary/summary.parquet
    assert set(frame["kind"]) == {"lora"} and set(frame["rank"]) == {4}
    assert set(frame["base_fingerprint"]) == {world["base"].fingerprint}
    assert (frame["bytes"] == [Path(u, "adapter.safetensors").stat().st_size for u in frame["adapter_uri"]]).all()


@pytest.mark.parametrize(
    "where, expected",
    [
        (["motion_fidelity>0.5"], ["m0"]),
        (["motion_fidelity>=0.3"], ["m0", "m1"]),
        (["motion_fidelity<0.5"], ["m1"]),
        (["motion_fidelity<=0.3", "kind=lora"], ["m1"]),
        (["motion_fidelity > 0.1", "motion_id != m0"], ["m1"]),
        (["kind=full"], []),
        (["rank=4", "motion_id='m0'"], ["m0"]),
    ],
)
def test_list_filters(world, where, expected):
    assert list(library.list_adapters(world["run"], where)["motion_id"]) == expected


def test_list_filter_errors(world):
    with pytest.raises(ValueError, match=r"unknown column 'fidelity'.*known columns: .*motion_fidelity"):
        library.list_adapters(world["run"], ["fidelity>0.5"])
    with pytest.raises(ValueError, match="is numeric"):
        library.list_adapters(world["run"], ["motion_fidelity>high"])
    with pytest.raises(ValueError, match="expected <column><op><value>"):
        library.list_adapters(world["run"], ["motion_fidelity"])
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        library.list_adapters(str(world["tmp"] / "nowhere"))


def test_list_run_without_summary(world, tmp_path):
    layout = make_run(tmp_path, "bare", {"m0": world["tuned"]["m0"]})
    Path(layout.table("summary")).unlink()
    frame = library.list_adapters(layout.root)
    assert list(frame["motion_id"]) == ["m0"] and "motion_fidelity" not in frame


def test_show(world):
    uri = world["layout"].adapter("m0")
    info = library.show_adapter(uri)
    assert info["kind"] == "lora" and info["mode"] == "temporal_only" and info["rank"] == 4
    assert info["lora"]["r"] == 4 and info["targets"] == info["lora"]["target_modules"]
    assert info["base_fingerprint"] == world["base"].fingerprint
    assert info["files"]["adapter.safetensors"] == Path(uri, "adapter.safetensors").stat().st_size
    assert info["files"]["adapter.json"] > 0 and info["files"]["_COMMITTED"] > 0
    assert info["committed"]["motion_id"] == "m0" and info["committed"]["run_id"] == "run-a"
    assert library.show_adapter(uri + "/adapter.safetensors")["uri"] == uri

    Path(uri, "_COMMITTED").rename(Path(uri, "_COMMITTED.bak"))
    try:
        info = library.show_adapter(uri)
        assert info["committed"] is None and info["files"]["_COMMITTED"] is None
    finally:
        Path(uri, "_COMMITTED.bak").rename(Path(uri, "_COMMITTED"))
    with pytest.raises(FileNotFoundError, match="no adapter.json"):
        library.show_adapter(str(world["tmp"] / "nothing"))


# ------------------------------------------------------------------ verify


def test_verify_good_run(world):
    assert library.verify(world["run"]) == []
    assert library.verify(world["run"], base=world["base_dir"]) == []


def test_verify_finds_problems(world, tmp_path):
    layout = make_run(tmp_path, "broken", world["tuned"])
    weights = Path(layout.adapter("m0"), "adapter.safetensors")
    weights.write_bytes(weights.read_bytes()[:-100])  # truncated
    Path(layout.committed("m1")).unlink()  # never committed
    problems = library.verify(layout.root)
    assert len(problems) == 3, problems
    m0 = [p for p in problems if p.startswith("m0 ")]
    assert any("does not parse as safetensors" in p for p in m0)
    assert any("is %d bytes, the index says" % weights.stat().st_size in p for p in m0)
    assert [p for p in problems if p.startswith("m1 ")] == [
        f"m1 ({layout.adapter('m1')}): the _COMMITTED marker is missing (the adapter was never committed)"
    ]


def test_verify_missing_files_and_wrong_base(world, tmp_path):
    layout = make_run(tmp_path, "missing", world["tuned"])
    Path(layout.adapter("m1"), "adapter.safetensors").unlink()
    Path(layout.adapter("m1"), "adapter.json").unlink()
    problems = library.verify(layout.root)
    assert len(problems) == 2 and all(p.startswith("m1 ") for p in problems)
    assert any("adapter.safetensors is missing" in p for p in problems)
    assert any("adapter.json is missing" in p for p in problems)

    # another base: every adapter is reported, naming both fingerprints
    other = tmp_path / "other-base"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        other_fp = _save_base_folder(debug_base("unet3d", seed=1), other)
    assert other_fp != world["base"].fingerprint
    problems = library.verify(world["run"], base=str(other))
    assert len(problems) == 2
    assert all(f"trained on base {world['base'].fingerprint}, but the given base is {other_fp}" in p for p in problems)
    with pytest.raises(FileNotFoundError):
        library.verify(world["run"], base=str(tmp_path / "no-base"))


def test_verify_index_disagrees_with_metadata(world, tmp_path):
    layout = make_run(tmp_path, "relabelled", world["tuned"])
    frame = pd.read_parquet(layout.adapters_index)
    frame.loc[frame["motion_id"] == "m0", "base_fingerprint"] = "0123456789abcdef"
    frame.to_parquet(layout.adapters_index, index=False)
    problems = library.verify(layout.root)
    assert problems and all(p.startswith("m0 ") and "the index says 0123456789abcdef" in p for p in problems)


# ------------------------------------------------------------------ export


def test_export_lora_writes_peft_and_diffusers_layouts(world, tmp_path):
    """The layouts, read by the stock readers (loading and outputs: test_export_stock.py)."""
    import safetensors
    from peft import LoraConfig

    uri = world["layout"].adapter("m1")
    out = tmp_path / "export"
    written = library.export_adapter(uri, str(out))
    assert sorted(Path(w).name for w in written) == ["README.md", "adapter_config.json", "adapter_model.safetensors",
                                                     "pytorch_lora_weights.safetensors"]
    cfg = LoraConfig.from_pretrained(str(out))
    assert (cfg.r, cfg.lora_alpha, cfg.lora_dropout, cfg.bias) == (4, 4.0, 0.0, "none")
    tensors = ad.load_adapter(uri).tensors
    with safetensors.safe_open(str(out / "adapter_model.safetensors"), "pt") as f:
        assert set(f.keys()) == {"base_model.model." + k for k in tensors}
        assert json.loads(f.metadata()["motioncrafter"])["base_fingerprint"] == world["base"].fingerprint
    with safetensors.safe_open(str(out / "pytorch_lora_weights.safetensors"), "pt") as f:
        assert set(f.keys()) == {"unet." + k for k in tensors}
        assert json.loads(f.metadata()["lora_adapter_metadata"])["unet.lora_alpha"] == 4.0
    readme = (out / "README.md").read_text()
    assert "TextToVideoSDPipeline.from_pretrained(" in readme and "PeftModel.from_pretrained(pipe.unet" in readme


def test_export_full_loads_with_load_state_dict(world, tmp_path, mc):
    import safetensors.torch

    from motioncrafter.branches import branch_parameters

    base = copy.deepcopy(world["base"])
    stock = copy.deepcopy(base.unet)
    temporal = branch_parameters(base.unet, "temporal")
    g = torch.Generator().manual_seed(0)
    tensors = {k: p.detach() + 0.05 * torch.randn(p.shape, generator=g) for k, p in list(temporal.items())[:6]}
    meta = {**world["tuned"]["m0"].meta, "kind": "full", "lora": None, "rank": None, "targets": sorted(tensors)}
    ad.save_adapter(ad.Adapter(tensors, meta), str(tmp_path / "full"))
    out = tmp_path / "export-full"
    written = library.export_adapter(str(tmp_path / "full"), str(out))
    assert sorted(Path(w).name for w in written) == ["README.md", "temporal_state_dict.safetensors"]
    assert "unet.load_state_dict(sd, strict=False)" in (out / "README.md").read_text()

    result = stock.load_state_dict(safetensors.torch.load_file(str(out / "temporal_state_dict.safetensors")), strict=False)
    assert not result.unexpected_keys
    inputs = mc.unet_inputs(base)
    with torch.no_grad():
        ad.attach(base, ad.load_adapter(str(tmp_path / "full")))
        ours = base.predict(*inputs)
        theirs = stock(inputs[0], inputs[1], encoder_hidden_states=inputs[2]).sample
    assert torch.allclose(theirs, ours, atol=1e-5)


# ------------------------------------------------------------------ merge


def test_merge_two_runs(world, tmp_path):
    other = make_run(tmp_path / "out-b", "run-b", world["tuned"])
    out = tmp_path / "lib" / "library.parquet"
    merged = library.merge_libraries([world["run"], other.root], str(out))
    assert len(merged) == 4
    assert list(merged["library_id"]) == ["run-a/m0", "run-a/m1", "run-b/m0", "run-b/m1"]
    assert list(merged["source_run"]) == [world["run"]] * 2 + [other.root] * 2
    expected_uris = [world["layout"].adapter("m0"), world["layout"].adapter("m1"), other.adapter("m0"), other.adapter("m1")]
    assert list(merged["adapter_uri"]) == expected_uris  # the original files, not copies
    assert list(merged["motion_fidelity"]) == [0.8, 0.3, 0.8, 0.3]
    assert list(out.parent.rglob("*.safetensors")) == []
    assert [p.name for p in out.parent.iterdir()] == ["library.parquet"]

    # the library index is itself a library
    back = library.list_adapters(str(out), ["motion_fidelity>0.5"])
    assert list(back["library_id"]) == ["run-a/m0", "run-b/m0"]
    assert list(back["adapter_uri"]) == [expected_uris[0], expected_uris[2]]
    assert library.verify(str(out), base=world["base_dir"]) == []


def test_merge_refuses_mixed_bases_and_duplicates(world, tmp_path):
    relabelled = {m: ad.Adapter(a.tensors, {**a.meta, "base_fingerprint": "feedfacefeedface"}) for m, a in world["tuned"].items()}
    other = make_run(tmp_path / "out-c", "run-c", relabelled)
    out = tmp_path / "lib.parquet"
    with pytest.raises(ValueError, match="different bases.*feedfacefeedface.*allow_mixed_bases=True"):
        library.merge_libraries([world["run"], other.root], str(out))
    assert not out.exists()
    merged = library.merge_libraries([world["run"], other.root], str(out), allow_mixed_bases=True)
    assert len(merged) == 4 and merged["base_fingerprint"].nunique() == 2
    with pytest.raises(ValueError, match="more than once"):
        library.merge_libraries([world["run"], world["run"]], str(tmp_path / "dup.parquet"))
    with pytest.raises(ValueError, match=r"\.parquet"):
        library.merge_libraries([world["run"]], str(tmp_path / "folder"))


# ------------------------------------------------------------------ CLI: motioncrafter adapters ...


def _cli(argv: list[str]) -> int:
    from motioncrafter_cli import main

    return main(argv)


def test_cli_ls_with_where(world, capsys):
    assert _cli(["adapters", "ls", world["run"], "--where", "motion_fidelity>0.5"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["motion_id", "kind", "mode", "bytes", "base_fingerprint", "motion_fidelity"]
    assert [line.split()[0] for line in lines[1:]] == ["m0"]

    assert _cli(["adapters", "ls", world["run"], "--where", "kind=lora", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["motion_id"] for r in rows] == ["m0", "m1"]

    assert _cli(["adapters", "ls", world["run"], "--columns", "motion_id,rank", "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines() == ["motion_id,rank", "m0,4", "m1,4"]

    assert _cli(["adapters", "ls", world["run"], "--where", "fidelity>0.5"]) == 2
    assert "unknown column 'fidelity'" in capsys.readouterr().err


def test_cli_show_prints_json(world, capsys):
    assert _cli(["adapters", "show", world["layout"].adapter("m0")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "lora" and info["uri"] == world["layout"].adapter("m0")
    assert info["committed"]["motion_id"] == "m0"


def test_cli_verify_exit_status(world, tmp_path, capsys):
    assert _cli(["adapters", "verify", world["run"], "--base", world["base_dir"]]) == 0
    assert capsys.readouterr().out.splitlines() == ["2 adapters verified, 0 problems"]

    layout = make_run(tmp_path, "broken", world["tuned"])
    Path(layout.committed("m1")).unlink()
    assert _cli(["adapters", "verify", layout.root]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "2 adapters verified, 1 problem"
    assert lines[0].startswith("m1 ") and "_COMMITTED marker is missing" in lines[0]


def test_cli_export(world, tmp_path, capsys):
    out = tmp_path / "exported"
    assert _cli(["adapters", "export", world["layout"].adapter("m0"), str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert sorted(Path(p).name for p in printed) == ["README.md", "adapter_config.json", "adapter_model.safetensors",
                                                     "pytorch_lora_weights.safetensors"]
    assert (out / "adapter_model.safetensors").stat().st_size > 0


def test_cli_merge(world, tmp_path, capsys):
    other = make_run(tmp_path / "out-b", "run-b", world["tuned"])
    out = tmp_path / "library.parquet"
    assert _cli(["adapters", "merge", str(out), world["run"], other.root]) == 0
    assert capsys.readouterr().out.startswith("4 adapters from 2 sources -> ")
    assert list(pd.read_parquet(out)["library_id"]) == ["run-a/m0", "run-a/m1", "run-b/m0", "run-b/m1"]
