"""Motion adapters: the tuned temporal branch, saved, loaded and mixed on a resident model.

Two kinds:
- `lora` (default): peft LoRA layers on the temporal branch's Linear / Conv
  layers. Files are small (a library of thousands stays cheap) and several can
  be active at once with weights.
- `full`: the whole temporal branch's weights.

On disk a motion adapter is a folder:
    adapter.safetensors   the tensors; the metadata is embedded too
    adapter.json          the same metadata, readable without torch
Only safetensors is ever read: nothing a user hands in is unpickled.

A saved LoRA adapter also loads into a stock diffusers UNet with peft alone:

    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
    meta = json.load(open("adapter.json"))
    inject_adapter_in_model(LoraConfig(**meta["lora"]), pipe.unet, adapter_name="motion")
    set_peft_model_state_dict(pipe.unet, safetensors.torch.load_file("adapter.safetensors"), adapter_name="motion")
"""

from __future__ import annotations

import json
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from motioncrafter.runformat import META_NAME, WEIGHTS_NAME

FORMAT_VERSION = 1


class AdapterError(ValueError):
    """An adapter file is unreadable, malformed, or does not fit the base it is loaded into."""


@dataclass
class Adapter:
    tensors: dict[str, torch.Tensor]
    meta: dict = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.meta.get("kind", "lora")

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def save(self, folder: str | Path) -> Path:
        """Write adapter.safetensors and adapter.json into a local folder."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"format_version": FORMAT_VERSION, **self.meta}
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in self.tensors.items()}
        save_file(tensors, str(folder / WEIGHTS_NAME), metadata={"motioncrafter": json.dumps(meta, sort_keys=True)})
        (folder / META_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        return folder

    @classmethod
    def load(cls, path: str | Path) -> "Adapter":
        """Read an adapter folder (or its .safetensors file). Safetensors only."""
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        weights = path / WEIGHTS_NAME if path.is_dir() else path
        if not weights.exists():
            raise AdapterError(f"{path}: no {WEIGHTS_NAME} found")
        try:
            with safe_open(str(weights), "pt") as f:
                header = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, ValueError) as err:
            raise AdapterError(f"{weights}: not a readable safetensors file ({err})") from err
        if "motioncrafter" not in header:
            raise AdapterError(f"{weights}: no motioncrafter metadata; not a motion adapter")
        try:
            meta = json.loads(header["motioncrafter"])
        except ValueError as err:
            raise AdapterError(f"{weights}: motioncrafter metadata is not valid JSON ({err})") from err
        if not isinstance(meta, dict):
            raise AdapterError(f"{weights}: motioncrafter metadata is not a JSON object")
        if meta.get("format_version", 0) > FORMAT_VERSION:
            raise AdapterError(f"{weights}: format version {meta['format_version']} is newer than this library's {FORMAT_VERSION}")
        return cls(tensors, meta)


def save_adapter(adapter: Adapter, uri: str) -> None:
    """Write an adapter folder to a local path or any fsspec URI (s3://...)."""
    import tempfile

    from motioncrafter import storage

    with tempfile.TemporaryDirectory() as tmp:
        adapter.save(tmp)
        for name in (WEIGHTS_NAME, META_NAME):
            storage.write_bytes(storage.join(uri, name), (Path(tmp) / name).read_bytes())


def load_adapter(uri: str) -> Adapter:
    """Read an adapter folder from a local path or any fsspec URI."""
    import tempfile

    from motioncrafter import storage

    if Path(uri).exists():
        return Adapter.load(uri)
    source = uri if uri.endswith(".safetensors") else storage.join(uri, WEIGHTS_NAME)
    if not storage.exists(source):
        raise AdapterError(f"{uri}: no {WEIGHTS_NAME} found")
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / WEIGHTS_NAME
        local.write_bytes(storage.read_bytes(source))
        return Adapter.load(local)


# ------------------------------------------------------------ LoRA on a resident UNet


def tuner_layers(unet: nn.Module) -> list:
    """peft's LoRA-wrapped layers of `unet` (a walk over every module: find them once where it matters)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in unet.modules() if isinstance(m, BaseTunerLayer)]


def switch(layers: list, names: list[str]) -> None:
    """Make `names` the active LoRA adapters of `layers`, each layer the ones it holds.

    Only the layers whose active set changes are touched, and only their active set: a
    tuning step switches adapters on every UNet pass. Gradients are left as they are, for
    the callers to set (peft's `set_adapter` also walks every LoRA module of the layer to
    turn requires_grad on for what it activates: with the walk over a freshly found model,
    a sixth of a step's time on the tiny base).
    """
    for layer in layers:
        wanted = [n for n in names if n in getattr(layer, "lora_A", {})]
        if list(layer.active_adapters) != wanted:
            _activate(layer, wanted)


def _activate(layer, names: list[str]) -> None:
    """peft's `BaseTunerLayer.set_adapter(names)` less its requires_grad changes."""
    layer._active_adapter = names


def lora_names(unet: nn.Module, layers: list | None = None) -> set[str]:
    """Names of the LoRA adapters injected into `unet` (`layers`: its `tuner_layers`, when found already)."""
    return {name for layer in (tuner_layers(unet) if layers is None else layers) for name in getattr(layer, "lora_A", {})}


def inject_lora(unet: nn.Module, name: str, targets: list[str], rank: int, alpha: float, dropout: float = 0.0) -> dict:
    """Attach a fresh LoRA adapter `name` to the exact layers `targets`; returns its LoraConfig kwargs.

    `dropout`: peft's LoRA dropout on the adapter's input, active in train mode only.
    """
    from peft import LoraConfig, inject_adapter_in_model

    if not targets:
        raise AdapterError(f"adapter {name!r}: no target layers")
    config = {"r": rank, "lora_alpha": alpha, "target_modules": sorted(targets), "init_lora_weights": True, "lora_dropout": dropout}
    with warnings.catch_warnings():
        # several named adapters on one model is the point here (motion + spatial path, hot-swapping)
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
        inject_adapter_in_model(LoraConfig(**config), unet, adapter_name=name)
    return config


def set_active(unet: nn.Module, names: list[str], trainable: tuple[str, ...] = (), layers: list | None = None) -> None:
    """Make `names` the active LoRA adapters (an empty list = the plain base model).

    Gradients are then set explicitly: only the adapters in `trainable` receive them
    from the next forward. `layers`: the model's `tuner_layers`, when found already.
    """
    layers = tuner_layers(unet) if layers is None else layers
    switch(layers, names)
    for layer in layers:
        for adapter_name, module in getattr(layer, "lora_A", {}).items():
            module.requires_grad_(adapter_name in trainable)
            layer.lora_B[adapter_name].requires_grad_(adapter_name in trainable)


def lora_parameters(unet: nn.Module, name: str) -> list[nn.Parameter]:
    return [p for n, p in unet.named_parameters() if f".lora_A.{name}." in n or f".lora_B.{name}." in n]


@contextmanager
def base_only(unet: nn.Module, layers: list | None = None):
    """Run the frozen base: every adapter off, then the previous active set restored.
    `layers`: the model's `tuner_layers`, when found already."""
    layers = tuner_layers(unet) if layers is None else layers
    previous = [list(layer.active_adapters) for layer in layers]
    try:
        switch(layers, [])
        yield
    finally:
        for layer, names in zip(layers, previous):
            _activate(layer, names)


@contextmanager
def merged_into_weights(layers: list, name: str):
    """Within the block, adapter `name` of `layers` (switched off there: the caller's `switch`)
    runs as part of the base weights: each base layer holds a new weight, its own plus the
    adapter's change (peft's `get_delta_weight`), and gets its own back after.

    A frozen LoRA then costs no layer calls of its own, forward or backward. Out of place
    rather than peft's in-place `merge`: an earlier pass's graph keeps the weights it used,
    and the base's own come back bit for bit. The same outputs as the adapter switched on,
    up to float rounding, where the adapter has no dropout.
    """
    swapped = []
    with torch.no_grad():
        for layer in layers:
            if name in getattr(layer, "lora_A", {}):
                base_layer = layer.get_base_layer()
                weight = base_layer.weight
                delta = layer.get_delta_weight(name).to(weight.dtype)
                base_layer.weight = nn.Parameter(weight + delta, requires_grad=False)
                swapped.append((base_layer, weight))
    try:
        yield
    finally:
        for base_layer, weight in swapped:
            base_layer.weight = weight


def lora_state_dict(unet: nn.Module, name: str) -> dict[str, torch.Tensor]:
    from peft import get_peft_model_state_dict

    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(unet, adapter_name=name).items()}


def delete_lora(unet: nn.Module, name: str) -> None:
    """Remove adapter `name`; layers left with no adapter are unwrapped back to the base layer,
    so the UNet's modules and state-dict keys are exactly the base's again."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module_name, layer in list(unet.named_modules()):
        if not isinstance(layer, BaseTunerLayer) or name not in getattr(layer, "lora_A", {}):
            continue
        layer.delete_adapter(name)
        if not layer.lora_A:
            parent_name, _, child = module_name.rpartition(".")
            setattr(unet.get_submodule(parent_name) if parent_name else unet, child, layer.get_base_layer())


# ------------------------------------------------------ adapters on a resident base


def check_fits(adapter: Adapter, base, where: str = "adapter") -> None:
    """Refuse an adapter trained on another base, naming both fingerprints."""
    meta = adapter.meta
    if meta.get("family") and meta["family"] != base.family:
        raise AdapterError(f"{where}: trained for family {meta['family']!r}, but the base is {base.family!r}")
    if meta.get("base_fingerprint") and base.fingerprint and meta["base_fingerprint"] != base.fingerprint:
        raise AdapterError(
            f"{where}: trained on base {meta['base_fingerprint']}, but this base is {base.fingerprint}; "
            "load the base it was trained on (or pass check_base=False to force)"
        )


def attach(base, adapter: Adapter, name: str = "motion", scale: float = 1.0, check_base: bool = True) -> None:
    """Load `adapter` onto the resident base as `name`; loading onto a used name hot-swaps it.

    A LoRA adapter with the same rank and targets as the one it replaces only has
    its weights copied in (no re-injection, no base reload).
    """
    from peft import set_peft_model_state_dict

    if check_base:
        check_fits(adapter, base, name)
    unet = base.unet
    if adapter.kind == "full":
        _attach_full(unet, adapter, name, scale)
        # recorded as a LoRA's is by set_weights: a render schedule or guidance split scales what it finds here
        unet._mc_weights = {**active_weights(base), name: scale}
        return
    config = adapter.meta.get("lora")
    if not config:
        raise AdapterError(f"{name}: LoRA adapter without its 'lora' config in the metadata")
    # what the injected layers are made of; the rest of the config (lora_dropout, init) is how it was tuned,
    # and an adapter that differs only there hot-swaps too
    layers = {key: config[key] for key in ("r", "lora_alpha", "target_modules")}
    loaded = getattr(unet, "_mc_lora_configs", {})
    if loaded.get(name) != layers:
        if name in lora_names(unet):
            delete_lora(unet, name)
        modules = dict(unet.named_modules())
        missing = [t for t in config["target_modules"] if t not in modules]
        if missing:
            raise AdapterError(f"{name}: the base has no layers {missing[:3]}... that the adapter targets")
        inject_lora(unet, name, config["target_modules"], config["r"], config["lora_alpha"])
        loaded[name] = layers
        unet._mc_lora_configs = loaded
    result = set_peft_model_state_dict(unet, adapter.tensors, adapter_name=name)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise AdapterError(f"{name}: {len(unexpected)} tensors do not match the base, e.g. {unexpected[:2]}")
    set_weights(base, {name: scale})


def detach(base, name: str = "motion") -> None:
    """Unload adapter `name`; the base is exactly as before it was attached."""
    unet = base.unet
    full = getattr(unet, "_mc_full", {})
    if name in full:
        with torch.no_grad():
            params = dict(unet.named_parameters())
            for key, original in full.pop(name)["original"].items():
                params[key].copy_(original)
        getattr(unet, "_mc_weights", {}).pop(name, None)
        return
    if name not in lora_names(unet):
        raise AdapterError(f"no adapter named {name!r} is attached (attached: {sorted(lora_names(unet) | set(full))})")
    delete_lora(unet, name)
    getattr(unet, "_mc_lora_configs", {}).pop(name, None)
    getattr(unet, "_mc_weights", {}).pop(name, None)


def set_weights(base, weights: dict[str, float]) -> None:
    """Activate exactly the LoRA adapters in `weights`, each scaled by its weight (motion strength).

    Several at once combine: their low-rank updates add, each times its weight.
    """
    unet = base.unet
    layers = tuner_layers(unet)  # walked once: a render-time adapter schedule sets weights on every denoising step
    attached, full = lora_names(unet, layers), set(getattr(unet, "_mc_full", {}))
    unknown = set(weights) - attached - full
    if unknown:
        raise AdapterError(f"unknown adapters {sorted(unknown)}; attached: {sorted(attached)}")
    for name, weight in weights.items():
        if name in full:
            _scale_full(unet, name, weight)
    lora = [n for n in weights if n in attached]
    set_active(unet, lora, layers=layers)
    for layer in layers:
        for name in lora:
            layer.set_scale(name, weights[name])
    unet._mc_weights = dict(weights)


def active_weights(base) -> dict[str, float]:
    """The adapters `set_weights` (or `attach`) made active last, with their weights."""
    return dict(getattr(base.unet, "_mc_weights", {}))


def _attach_full(unet: nn.Module, adapter: Adapter, name: str, scale: float) -> None:
    params = dict(unet.named_parameters())
    missing = [k for k in adapter.tensors if k not in params]
    if missing:
        raise AdapterError(f"{name}: the base has no parameters {missing[:3]}")
    full = getattr(unet, "_mc_full", {})
    if name in full:
        detach_original = full[name]["original"]
    else:
        if full:
            raise AdapterError(f"{name}: a full adapter ({next(iter(full))!r}) is already attached; detach it first")
        detach_original = {k: params[k].detach().clone() for k in adapter.tensors}
    full[name] = {"original": detach_original, "tuned": adapter.tensors}
    unet._mc_full = full
    _scale_full(unet, name, scale)


def _scale_full(unet: nn.Module, name: str, scale: float) -> None:
    """Weights = original + scale * (tuned - original): scale 0 is the base, 1 the adapter."""
    entry = unet._mc_full[name]
    params = dict(unet.named_parameters())
    with torch.no_grad():
        for key, tuned in entry["tuned"].items():
            original = entry["original"][key]
            params[key].copy_(original + scale * (tuned.to(original) - original))
