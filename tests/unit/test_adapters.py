"""`motioncrafter.adapters` on adapters made by `tune_clip`: files, loading errors, attach / detach,
hot-swap, scaling, combining, full-branch adapters, and loading with stock diffusers + peft alone."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from motioncrafter import adapters as ad
from motioncrafter.adapters import Adapter, AdapterError, attach, detach, load_adapter, save_adapter, set_weights
from motioncrafter.branches import branch_parameters, lora_targets

pytestmark = pytest.mark.filterwarnings(
    "ignore:Already found a `peft_config` attribute",
    "ignore:Converting a tensor with requires_grad=True to a scalar",
)


def _layer_ids(unet) -> dict[str, int]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return {n: id(m) for n, m in unet.named_modules() if isinstance(m, BaseTunerLayer)}


def _module_types(unet) -> list[tuple[str, type]]:
    return [(n, type(m)) for n, m in unet.named_modules()]


# ------------------------------------------------------------------ files


def test_save_load_round_trip(tmp_path, tuned, bases, family):
    adapter = tuned(family).adapter
    folder = adapter.save(tmp_path / "a")
    assert sorted(p.name for p in folder.iterdir()) == ["adapter.json", "adapter.safetensors"]

    loaded = Adapter.load(folder)
    assert list(loaded.tensors) and set(loaded.tensors) == set(adapter.tensors)
    for k, v in adapter.tensors.items():
        assert loaded.tensors[k].dtype == v.dtype and torch.equal(loaded.tensors[k], v), k

    meta_json = json.loads((folder / "adapter.json").read_text())
    with safe_open(str(folder / "adapter.safetensors"), "pt") as f:
        meta_header = json.loads(f.metadata()["motioncrafter"])
    assert meta_json == meta_header == loaded.meta
    assert meta_json["format_version"] == ad.FORMAT_VERSION
    assert loaded.meta == json.loads(json.dumps(adapter.meta))  # tune_clip writes the version it makes (AdapterMeta)
    # what the library promises is in the metadata
    assert meta_json["family"] == family and meta_json["base_fingerprint"] == f"debug-{family}-0"
    assert meta_json["kind"] == "lora" and meta_json["rank"] == 8
    assert meta_json["lora"]["target_modules"] == meta_json["targets"] == sorted(lora_targets(bases[family].unet, "temporal"))
    assert len(meta_json["reference"]["clip_sha256"]) == 16 and meta_json["tune_config"]["mode"] == "temporal_only"

    # the .safetensors file alone loads too, and so does the fsspec-aware helper
    assert set(Adapter.load(folder / "adapter.safetensors").tensors) == set(adapter.tensors)
    save_adapter(adapter, str(tmp_path / "b"))
    again = load_adapter(str(tmp_path / "b"))
    assert again.meta == loaded.meta and all(torch.equal(again.tensors[k], v) for k, v in loaded.tensors.items())


def _good_file(tmp_path, tuned) -> bytes:
    folder = tuned("unet3d").adapter.save(tmp_path / "good")
    return (folder / "adapter.safetensors").read_bytes()


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda good, tmp: b"", id="empty"),
        pytest.param(lambda good, tmp: good[: len(good) // 2], id="truncated"),
        pytest.param(lambda good, tmp: bytes(range(256)) * 40, id="random-bytes"),
        pytest.param(lambda good, tmp: b"just some text, not tensors\n" * 10, id="text"),
        pytest.param(lambda good, tmp: b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all", id="bad-header"),
    ],
)
def test_load_corrupt_file_names_it(tmp_path, tuned, make):
    path = tmp_path / "bad" / "adapter.safetensors"
    path.parent.mkdir()
    path.write_bytes(make(_good_file(tmp_path, tuned), tmp_path))
    with pytest.raises(AdapterError) as err:
        Adapter.load(path.parent)
    assert str(path) in str(err.value)


def test_load_pickle_is_refused_and_never_unpickled(tmp_path):
    marker = tmp_path / "unpickled"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps({"w": Evil()}))
    torch_file = tmp_path / "torch" / "adapter.safetensors"
    torch_file.parent.mkdir()
    torch.save({"w": torch.zeros(2)}, torch_file)
    for p in (path, torch_file):
        with pytest.raises(AdapterError) as err:
            Adapter.load(p)
        assert str(p) in str(err.value)
    assert not marker.exists()


def test_load_safetensors_without_our_metadata(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2, 2)}, str(path))
    with pytest.raises(AdapterError, match="no motioncrafter metadata") as err:
        Adapter.load(path)
    assert str(path) in str(err.value)
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2, 2)}, str(other), metadata={"format": "pt"})
    with pytest.raises(AdapterError, match="no motioncrafter metadata"):
        Adapter.load(other)


@pytest.mark.parametrize("header", ["{not json", "[1, 2]", '"a string"'])
def test_load_malformed_metadata_names_file(tmp_path, header):
    path = tmp_path / "m.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={"motioncrafter": header})
    with pytest.raises(AdapterError) as err:
        Adapter.load(path)
    assert str(path) in str(err.value)


def test_load_newer_format_and_missing_file(tmp_path):
    path = tmp_path / "new.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={"motioncrafter": json.dumps({"format_version": 99})})
    with pytest.raises(AdapterError, match="format version 99 is newer"):
        Adapter.load(path)
    with pytest.raises(AdapterError, match="no adapter.safetensors found"):
        Adapter.load(tmp_path / "nothing-here")
    with pytest.raises(AdapterError, match="no adapter.safetensors found"):
        load_adapter(str(tmp_path / "nothing-here"))


# ------------------------------------------------------------------ fitting the base


def test_other_base_fingerprint_is_refused(fresh_base, tuned, family, mc):
    adapter = tuned(family).adapter
    other = fresh_base(family, seed=1)
    assert other.fingerprint == f"debug-{family}-1"
    before = mc.snapshot(other.unet)
    with pytest.raises(AdapterError) as err:
        attach(other, adapter)
    assert f"debug-{family}-0" in str(err.value) and f"debug-{family}-1" in str(err.value)
    mc.assert_same_state(other.unet, before)  # nothing was injected
    assert not ad.lora_names(other.unet)

    inputs = mc.unet_inputs(other)
    out0 = mc.unet_out(other, inputs)
    attach(other, adapter, check_base=False)  # forced: same architecture, so it loads
    assert ad.lora_names(other.unet) == {"motion"}
    assert not torch.equal(mc.unet_out(other, inputs), out0)


def test_other_family_is_refused(fresh_base, tuned):
    adapter = tuned("unet3d").adapter
    other = fresh_base("animatediff")
    with pytest.raises(AdapterError, match="family 'unet3d', but the base is 'animatediff'"):
        attach(other, adapter)
    with pytest.raises(AdapterError, match="the base has no layers"):
        attach(other, adapter, check_base=False)


# ------------------------------------------------------------------ attach / detach / hot-swap


def test_attach_detach_restores_base(fresh_base, tuned, family, mc):
    base = fresh_base(family)
    unet = base.unet
    inputs = mc.unet_inputs(base)
    before, types_before, out0 = mc.snapshot(unet), _module_types(unet), mc.unet_out(base, inputs)

    targets = lora_targets(unet, "temporal")
    attach(base, tuned(family).adapter)
    assert ad.lora_names(unet) == {"motion"}
    assert sorted(_layer_ids(unet)) == sorted(targets)
    out1 = mc.unet_out(base, inputs)
    assert not torch.allclose(out1, out0, atol=1e-5)

    detach(base)
    assert not ad.lora_names(unet) and not _layer_ids(unet)
    mc.assert_same_state(unet, before)
    assert _module_types(unet) == types_before  # layers unwrapped, not just weights reset
    assert torch.equal(mc.unet_out(base, inputs), out0)
    with pytest.raises(AdapterError, match="no adapter named 'motion'"):
        detach(base)


def test_hot_swap_copies_weights_only(fresh_base, tuned, family, mc):
    a, b = tuned(family, seed=0).adapter, tuned(family, seed=1).adapter
    assert any(not torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)

    base = fresh_base(family)
    inputs = mc.unet_inputs(base)
    attach(base, a)
    ids = _layer_ids(base.unet)
    out_a = mc.unet_out(base, inputs)
    attach(base, b)  # same name: hot-swap
    assert _layer_ids(base.unet) == ids  # the very same peft layers, not re-injected
    out_swapped = mc.unet_out(base, inputs)

    alone = fresh_base(family)
    attach(alone, b)
    out_b = mc.unet_out(alone, inputs)
    assert not torch.allclose(out_a, out_b, atol=1e-5)
    assert torch.allclose(out_swapped, out_b, rtol=0, atol=1e-6), (out_swapped - out_b).abs().max()

    # and swapping back gives A again
    attach(base, a)
    assert torch.allclose(mc.unet_out(base, inputs), out_a, rtol=0, atol=1e-6)

    # tuned with another LoRA dropout, or from before the config recorded it: the same layers, a hot-swap too
    for lora in ({**b.meta["lora"], "lora_dropout": 0.1}, {k: v for k, v in b.meta["lora"].items() if k != "lora_dropout"}):
        attach(base, Adapter(b.tensors, {**b.meta, "lora": lora}))
        assert _layer_ids(base.unet) == ids
        assert torch.allclose(mc.unet_out(base, inputs), out_b, rtol=0, atol=1e-6)


def test_hot_swap_with_other_rank_reinjects(fresh_base, tuned, family, mc):
    a, small = tuned(family, seed=0).adapter, tuned(family, seed=0, rank=4).adapter
    base = fresh_base(family)
    inputs = mc.unet_inputs(base)
    attach(base, a)
    attach(base, small)  # other rank: the layers are rebuilt
    assert ad.lora_names(base.unet) == {"motion"}
    layer = next(iter(ad.tuner_layers(base.unet)))
    assert layer.r["motion"] == 4
    alone = fresh_base(family)
    attach(alone, small)
    assert torch.allclose(mc.unet_out(base, inputs), mc.unet_out(alone, inputs), rtol=0, atol=1e-6)
    before_detach = fresh_base(family)
    detach(base)
    mc.assert_same_state(base.unet, mc.snapshot(before_detach.unet))


# ------------------------------------------------------------------ scale and combine


def test_scale(fresh_base, tuned, family, mc):
    base = fresh_base(family)
    inputs = mc.unet_inputs(base)
    out0 = mc.unet_out(base, inputs)
    attach(base, tuned(family).adapter, name="m")
    out1 = mc.unet_out(base, inputs)
    set_weights(base, {"m": 0.0})
    assert torch.equal(mc.unet_out(base, inputs), out0)
    set_weights(base, {"m": 0.5})
    out_half = mc.unet_out(base, inputs)
    d1, dh = (out1 - out0).norm(), (out_half - out0).norm()
    assert d1 > 0 and 0.3 * d1 < dh < 0.7 * d1, (float(dh), float(d1))
    assert (out_half - out1).norm() < d1
    set_weights(base, {"m": 1.0})
    assert torch.allclose(mc.unet_out(base, inputs), out1, rtol=0, atol=1e-6)
    # attach with a scale is the same as attach then set_weights
    other = fresh_base(family)
    attach(other, tuned(family).adapter, name="m", scale=0.5)
    assert torch.allclose(mc.unet_out(other, inputs), out_half, rtol=0, atol=1e-6)
    with pytest.raises(AdapterError, match=r"unknown adapters \['x'\]"):
        set_weights(base, {"x": 1.0})
    set_weights(base, {})  # none active: the plain base
    assert torch.equal(mc.unet_out(base, inputs), out0)


def test_combine_two_adapters(fresh_base, tuned, family, mc):
    a, b = tuned(family, seed=0).adapter, tuned(family, seed=1).adapter
    base = fresh_base(family)
    inputs = mc.unet_inputs(base)
    out0 = mc.unet_out(base, inputs)
    attach(base, a, name="a")
    attach(base, b, name="b")
    assert ad.lora_names(base.unet) == {"a", "b"}

    set_weights(base, {"a": 1.0})
    out_a = mc.unet_out(base, inputs)
    set_weights(base, {"b": 1.0})
    out_b = mc.unet_out(base, inputs)
    set_weights(base, {"a": 1.0, "b": 1.0})
    out_ab = mc.unet_out(base, inputs)
    assert not torch.allclose(out_ab, out_a, atol=1e-5) and not torch.allclose(out_ab, out_b, atol=1e-5)
    # small low-rank updates add: to first order the combined change is the sum of the changes
    summed = (out_a - out0) + (out_b - out0)
    assert mc.rel_diff(out_ab - out0, summed) < 0.1

    set_weights(base, {"a": 1.0, "b": 0.0})
    assert torch.allclose(mc.unet_out(base, inputs), out_a, rtol=0, atol=1e-6)
    set_weights(base, {"a": 0.5, "b": 0.0})
    half_a = mc.unet_out(base, inputs)
    assert not torch.allclose(half_a, out_a, atol=1e-5)

    # on one LoRA layer the combination is exact: the updates add, each times its weight
    layer = next(m for m in ad.tuner_layers(base.unet) if isinstance(m.get_base_layer(), torch.nn.Linear))
    x = torch.randn(3, layer.get_base_layer().in_features, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        set_weights(base, {})
        y0 = layer(x)
        set_weights(base, {"a": 1.0})
        ya = layer(x)
        set_weights(base, {"b": 1.0})
        yb = layer(x)
        set_weights(base, {"a": 1.0, "b": 1.0})
        yab = layer(x)
        set_weights(base, {"a": 2.0, "b": -1.0})
        y2 = layer(x)
    assert torch.allclose(yab - y0, (ya - y0) + (yb - y0), atol=1e-6)
    assert torch.allclose(y2 - y0, 2 * (ya - y0) - (yb - y0), atol=1e-6)
    assert not torch.allclose(ya, y0)

    detach(base, "a")
    assert ad.lora_names(base.unet) == {"b"}
    detach(base, "b")
    assert torch.equal(mc.unet_out(base, inputs), out0)


# ------------------------------------------------------------------ full-branch adapters


@pytest.mark.parametrize("mode", ["temporal_only", "full_finetune"])
def test_full_adapter_attach_scale_detach(fresh_base, tuned, family, mode, mc):
    result = tuned(family, mode=mode, kind="full")
    adapter = result.adapter
    assert adapter.kind == "full" and adapter.meta["rank"] is None
    base = fresh_base(family)
    unet = base.unet
    expected = set(branch_parameters(unet, "temporal")) if mode == "temporal_only" else {n for n, _ in unet.named_parameters()}
    assert set(adapter.tensors) == expected
    assert adapter.nbytes() > tuned(family).adapter.nbytes()  # LoRA files are the small ones

    inputs = mc.unet_inputs(base)
    before, out0 = mc.snapshot(unet), mc.unet_out(base, inputs)
    attach(base, adapter, name="f")
    out1 = mc.unet_out(base, inputs)
    assert not torch.allclose(out1, out0, atol=1e-5)
    assert not ad.tuner_layers(unet)  # no LoRA layers for a full adapter
    set_weights(base, {"f": 0.0})
    assert torch.equal(mc.unet_out(base, inputs), out0)
    set_weights(base, {"f": 0.5})
    dh, d1 = (mc.unet_out(base, inputs) - out0).norm(), (out1 - out0).norm()
    assert 0.2 * d1 < dh < 0.8 * d1, (float(dh), float(d1))
    set_weights(base, {"f": 1.0})
    assert torch.allclose(mc.unet_out(base, inputs), out1, rtol=0, atol=1e-6)
    detach(base, "f")
    mc.assert_same_state(unet, before)
    assert torch.equal(mc.unet_out(base, inputs), out0)


def test_full_adapter_hot_swap_keeps_original(fresh_base, tuned, family, mc):
    f0 = tuned(family, mode="temporal_only", kind="full", seed=0).adapter
    f1 = tuned(family, mode="temporal_only", kind="full", seed=1).adapter
    base = fresh_base(family)
    inputs = mc.unet_inputs(base)
    before = mc.snapshot(base.unet)
    attach(base, f0, name="f")
    attach(base, f1, name="f")  # swap: the weights are f1's ...
    alone = fresh_base(family)
    attach(alone, f1, name="f")
    assert torch.equal(mc.unet_out(base, inputs), mc.unet_out(alone, inputs))
    with pytest.raises(AdapterError, match="already attached; detach it first"):
        attach(base, f0, name="g")
    detach(base, "f")  # ... and detach restores the base, not f0
    mc.assert_same_state(base.unet, before)


def test_full_adapter_file_round_trip(tmp_path, tuned, family):
    adapter = tuned(family, mode="temporal_only", kind="full").adapter
    loaded = Adapter.load(adapter.save(tmp_path / "full"))
    assert loaded.kind == "full" and set(loaded.tensors) == set(adapter.tensors)
    assert all(torch.equal(loaded.tensors[k], v) for k, v in adapter.tensors.items())


# ------------------------------------------------------------------ stock diffusers + peft


def test_stock_peft_loading_matches_attach(tmp_path, fresh_base, tuned, family, mc):
    """The adapters.py docstring recipe, on a UNet loaded by stock diffusers from its own folder."""
    from diffusers import UNet3DConditionModel, UNetMotionModel
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict

    folder = tuned(family).adapter.save(tmp_path / "adapter")
    base = fresh_base(family)
    base.unet.save_pretrained(tmp_path / "unet")
    cls = UNet3DConditionModel if family == "unet3d" else UNetMotionModel
    stock = cls.from_pretrained(tmp_path / "unet").eval()
    inputs = mc.unet_inputs(base)
    with torch.no_grad():
        plain = base.predict(*inputs, unet=stock)
    assert torch.equal(plain, mc.unet_out(base, inputs))

    meta = json.load(open(folder / "adapter.json"))
    inject_adapter_in_model(LoraConfig(**meta["lora"]), stock, adapter_name="motion")
    result = set_peft_model_state_dict(stock, load_file(folder / "adapter.safetensors"), adapter_name="motion")
    assert not getattr(result, "unexpected_keys", [])
    assert not [k for k in getattr(result, "missing_keys", []) if "lora_" in k]

    attach(base, Adapter.load(folder))
    with torch.no_grad():
        stock_out = base.predict(*inputs, unet=stock)
    ours = mc.unet_out(base, inputs)
    assert not torch.allclose(stock_out, plain, atol=1e-5)  # the adapter did load
    assert torch.allclose(stock_out, ours, rtol=0, atol=1e-6), (stock_out - ours).abs().max()


# ------------------------------------------------------------------ switching adapters per pass


def test_switch_sets_each_layer_and_touches_only_the_changed_ones(fresh_base, family, mc, monkeypatch):
    base = fresh_base(family)
    unet = base.unet
    inputs = mc.unet_inputs(base)
    out0 = mc.unet_out(base, inputs)
    ad.inject_lora(unet, "m", lora_targets(unet, "temporal"), 2, 2)
    ad.inject_lora(unet, "s", lora_targets(unet, "spatial"), 2, 2)
    with torch.no_grad():  # LoRA starts as a no-op (B = 0): give both a visible effect
        for n, p in unet.named_parameters():
            if ".lora_B." in n:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(n)))
    layers = ad.tuner_layers(unet)
    holds = {id(layer): set(layer.lora_A) for layer in layers}
    assert {frozenset(h) for h in holds.values()} == {frozenset({"m"}), frozenset({"s"})}  # disjoint layer sets

    calls = []
    original = ad._activate
    monkeypatch.setattr(ad, "_activate", lambda layer, names: (calls.append(id(layer)), original(layer, names)))
    grads = {n: p.requires_grad for n, p in unet.named_parameters()}
    ad.switch(layers, ["m", "s"])
    assert all(layer.active_adapters == sorted(holds[id(layer)]) for layer in layers)
    out_both = mc.unet_out(base, inputs)
    calls.clear()
    ad.switch(layers, ["s"])
    assert sorted(calls) == sorted(id(layer) for layer in layers if "m" in holds[id(layer)])  # only the motion layers
    assert all(layer.active_adapters == (["s"] if "s" in holds[id(layer)] else []) for layer in layers)
    out_s = mc.unet_out(base, inputs)
    calls.clear()
    ad.switch(layers, ["s"])
    assert calls == []  # nothing changed, nothing touched
    ad.switch(layers, [])
    assert torch.equal(mc.unet_out(base, inputs), out0)
    assert {n: p.requires_grad for n, p in unet.named_parameters()} == grads  # gradients are the callers' to set
    assert not torch.allclose(out_s, out0, atol=1e-5) and not torch.allclose(out_both, out_s, atol=1e-5)
