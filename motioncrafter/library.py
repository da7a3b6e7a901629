"""The adapter library: list, inspect, verify, export and merge trained motion adapters.

A library is either one run's folder (its `adapters.parquet` index, plus the
per-motion metrics of `summary/summary.parquet` when the run has been evaluated)
or a library index: one Parquet file written by `merge_libraries`, whose rows
point at adapters that stay where their runs wrote them.

    list_adapters(uri, where=["motion_fidelity>0.5", "kind=lora"])   # a DataFrame
    show_adapter(adapter_uri)                                         # metadata, sizes, marker
    verify(uri, base="path/to/base")                                 # [] when all is well
    export_adapter(adapter_uri, out_uri)                              # peft / diffusers files
    merge_libraries([run_a, run_b], "s3://bucket/library.parquet")

Every URI is a local path or any fsspec URI (see `motioncrafter.storage`).
Adapter weights are only ever read as safetensors: nothing here unpickles.
This module does not import Ray or the pipelines; it reads what they wrote.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pyarrow as pa

from motioncrafter import storage
from motioncrafter.adapters import AdapterError, load_adapter
from motioncrafter.config import ModelConfig
from motioncrafter.runformat import COMMITTED, META_NAME, WEIGHTS_NAME, AdapterFolder, RunLayout

KEY_COLUMNS = ["motion_id", "row", "adapter_uri"]

PEFT_WEIGHTS, PEFT_CONFIG = "adapter_model.safetensors", "adapter_config.json"
PEFT_PREFIX = "base_model.model."  # what peft's save_pretrained puts before a module's name
DIFFUSERS_LORA = "pytorch_lora_weights.safetensors"  # diffusers' LORA_WEIGHT_NAME_SAFE
MOTION_ADAPTER = "motion_adapter"
FULL_WEIGHTS = "temporal_state_dict.safetensors"
README = "README.md"


# ------------------------------------------------------------------------ reading


def _is_index_file(uri: str) -> bool:
    return str(uri).rstrip("/").endswith(".parquet")


def _run_name(uri: str) -> str:
    return str(uri).rstrip("/").rsplit("/", 1)[-1]


def load_index(uri: str) -> pd.DataFrame:
    """The adapters of a run folder (with its summary metrics) or of a library index file."""
    uri = str(uri)
    if _is_index_file(uri):
        if not storage.exists(uri):
            raise FileNotFoundError(f"{storage.redact(uri)}: no such library index")
        return storage.read_parquet(uri).to_pandas()
    layout = RunLayout.of(uri)
    index_uri = layout.adapters_index
    if not storage.exists(index_uri):
        raise FileNotFoundError(
            f"{storage.redact(uri)}: not a run folder with an adapter index (no adapters.parquet) nor a library .parquet file"
        )
    frame = storage.read_parquet(index_uri).to_pandas()
    summary_uri = layout.table("summary")
    if "motion_id" in frame and storage.exists(summary_uri):
        summary = storage.read_parquet(summary_uri).to_pandas()
        if "motion_id" in summary:
            extra = [c for c in summary.columns if c not in frame.columns]
            if extra:
                summary = summary.drop_duplicates("motion_id")[["motion_id", *extra]]
                frame = frame.merge(summary, on="motion_id", how="left")
    return frame


# ------------------------------------------------------------------------ filters

_FILTER = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*(>=|<=|!=|==|=|>|<)\s*(.*?)\s*$")
_OPS = {
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    "=": lambda a, b: a == b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
}


def _number(text: str) -> float | int | None:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return None


def filter_column(expression: str) -> str | None:
    """The column a filter expression such as "motion_fidelity>0.5" names (None when it is not one)."""
    match = _FILTER.match(expression)
    return match.group(1) if match else None


def _mask(frame: pd.DataFrame, expression: str) -> pd.Series:
    match = _FILTER.match(expression)
    if not match or not match.group(3):
        raise ValueError(
            f"filter {expression!r}: expected <column><op><value> with op one of >, >=, <, <=, =, != "
            "(e.g. motion_fidelity>0.5)"
        )
    column, op, text = match.groups()
    if column not in frame.columns:
        raise ValueError(f"filter {expression!r}: unknown column {column!r}; known columns: {', '.join(map(str, frame.columns))}")
    values = frame[column]
    quoted = len(text) >= 2 and text[0] == text[-1] and text[0] in "'\""
    raw = text[1:-1] if quoted else text
    present = values.notna()  # a missing value never passes a filter
    if pd.api.types.is_bool_dtype(values):
        if raw.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"filter {expression!r}: column {column!r} is boolean; compare it with true or false")
        return present & _OPS[op](values, raw.lower() in ("true", "1"))
    number = None if quoted else _number(raw)
    if pd.api.types.is_numeric_dtype(values):
        if number is None:
            raise ValueError(f"filter {expression!r}: column {column!r} is numeric, {text!r} is not a number")
        return present & _OPS[op](values, number)
    if number is not None:  # an object column of numbers (e.g. all-null in one run)
        numeric = pd.to_numeric(values, errors="coerce")
        if numeric.notna().sum() == present.sum():
            return numeric.notna() & _OPS[op](numeric, number)
    strings = values.where(present, "").astype(str)
    return present & _OPS[op](strings, raw)


def list_adapters(uri: str, where: list[str] | tuple[str, ...] = ()) -> pd.DataFrame:
    """The adapters of a run folder or a library index, one row each, filtered by `where`.

    A run folder gives its `adapters.parquet` rows (motion_id, row, adapter_uri, prompt,
    kind, rank, base_fingerprint, bytes, ...) left-joined on motion_id with the metric
    columns of `summary/summary.parquet` when the run has one. `where` holds filters such
    as "motion_fidelity>0.5" or "kind=lora" (ops >, >=, <, <=, =, !=), all of which must
    hold; a row whose value is missing fails every filter. An unknown column raises
    ValueError naming it and the known columns.
    """
    if isinstance(where, str):
        where = [where]
    frame = load_index(uri)
    mask = pd.Series(True, index=frame.index)
    for expression in where:
        mask &= _mask(frame, expression).fillna(False).astype(bool)
    return frame[mask].reset_index(drop=True)


# ------------------------------------------------------------------------ one adapter


def _adapter_folder(adapter_uri: str) -> str:
    uri = str(adapter_uri).rstrip("/")
    return uri.rsplit("/", 1)[0] if uri.endswith((f"/{WEIGHTS_NAME}", f"/{META_NAME}")) else uri


def _size(uri: str) -> int | None:
    fs, path = storage.filesystem(uri)
    try:
        return int(storage.retry(lambda: fs.size(path), uri, "stat"))
    except FileNotFoundError:
        return None


def show_adapter(adapter_uri: str) -> dict:
    """An adapter folder at a glance: the contents of its adapter.json, plus
    `uri`, `files` (name -> size in bytes, None when missing) and `committed`
    (the `_COMMITTED` marker written by the train stage, or None)."""
    folder = _adapter_folder(adapter_uri)
    files = AdapterFolder(folder)
    meta_uri = files.meta
    if not storage.exists(meta_uri):
        raise FileNotFoundError(f"{storage.redact(folder)}: no {META_NAME}; not a motion adapter folder")
    try:
        meta = json.loads(storage.read_bytes(meta_uri))
    except ValueError as err:
        raise AdapterError(f"{storage.redact(meta_uri)}: not valid JSON ({err})") from err
    marker = None
    if storage.exists(files.marker):
        try:
            marker = json.loads(storage.read_bytes(files.marker))
        except ValueError:
            marker = {"error": "the marker is not valid JSON"}
    sizes = {WEIGHTS_NAME: _size(files.weights), META_NAME: _size(files.meta), COMMITTED: _size(files.marker)}
    return {**meta, "uri": folder, "files": sizes, "committed": marker}


# ------------------------------------------------------------------------ verify


def _safetensors_metadata(data: bytes) -> dict:
    """The `__metadata__` of a safetensors file's header (the header alone, no tensors)."""
    if len(data) < 8:
        return {}
    size = int.from_bytes(data[:8], "little")
    try:
        header = json.loads(data[8 : 8 + size])
    except ValueError:
        return {}
    return (header.get("__metadata__") or {}) if isinstance(header, dict) else {}


def base_fingerprint(base: str, cache_dir: str = ModelConfig.cache_dir) -> str:
    """`motioncrafter.base.fingerprint_folder` of the diffusers folder at `base` (a remote one is
    copied once into the same cache `open_base` uses)."""
    from motioncrafter.base import fingerprint_folder

    folder = storage.local_copy(base, Path(cache_dir).expanduser() / "models")
    if not folder.is_dir():
        raise FileNotFoundError(f"{storage.redact(base)}: no such base model folder")
    if not any(folder.rglob("*.safetensors")):
        raise ValueError(f"{storage.redact(base)}: no .safetensors weights; not a diffusers model folder")
    return fingerprint_folder(folder)


def _present(value) -> bool:
    return value is not None and not (isinstance(value, float) and pd.isna(value))


def _verify_row(row: dict, expected_base: str | None) -> list[str]:
    from safetensors.torch import load as load_safetensors

    folder = str(row.get("adapter_uri") or "")
    name = row.get("library_id") if _present(row.get("library_id")) else row.get("motion_id")
    where = f"{name} ({storage.redact(folder)})"
    if not folder:
        return [f"{name}: the index row has no adapter_uri"]
    problems: list[str] = []
    index_fp = row.get("base_fingerprint") if _present(row.get("base_fingerprint")) else None

    files = AdapterFolder(folder)
    weights_uri = files.weights
    if not storage.exists(weights_uri):
        problems.append(f"{where}: {WEIGHTS_NAME} is missing")
    else:
        data = storage.read_bytes(weights_uri)
        if _present(row.get("bytes")) and len(data) != int(row["bytes"]):
            problems.append(f"{where}: {WEIGHTS_NAME} is {len(data)} bytes, the index says {int(row['bytes'])}")
        try:
            tensors = load_safetensors(data)
        except Exception as err:  # safetensors raises its own SafetensorError, or others on garbage
            problems.append(f"{where}: {WEIGHTS_NAME} does not parse as safetensors ({type(err).__name__}: {err})")
        else:
            if not tensors:
                problems.append(f"{where}: {WEIGHTS_NAME} holds no tensors")
            embedded = _safetensors_metadata(data).get("motioncrafter")
            try:
                embedded_fp = json.loads(embedded).get("base_fingerprint") if embedded else None
            except (ValueError, AttributeError):
                problems.append(f"{where}: {WEIGHTS_NAME} carries unreadable motioncrafter metadata")
                embedded_fp = None
            if embedded_fp and index_fp and embedded_fp != index_fp:
                problems.append(f"{where}: {WEIGHTS_NAME} was trained on base {embedded_fp}, the index says {index_fp}")

    meta_uri = files.meta
    meta_fp = None
    if not storage.exists(meta_uri):
        problems.append(f"{where}: {META_NAME} is missing")
    else:
        try:
            meta = json.loads(storage.read_bytes(meta_uri))
            meta_fp = meta.get("base_fingerprint")
        except (ValueError, AttributeError) as err:
            problems.append(f"{where}: {META_NAME} is not a JSON object ({err})")
        else:
            if meta_fp != index_fp:
                problems.append(f"{where}: {META_NAME} says base {meta_fp}, the index says {index_fp}")

    marker_uri = files.marker
    if not storage.exists(marker_uri):
        problems.append(f"{where}: the {COMMITTED} marker is missing (the adapter was never committed)")
    else:
        try:
            marker = json.loads(storage.read_bytes(marker_uri))
            if not isinstance(marker, dict):
                raise ValueError("not an object")
        except ValueError as err:
            problems.append(f"{where}: the {COMMITTED} marker is not a JSON object ({err})")
        else:
            clip = row.get("clip_sha256")
            if _present(clip) and marker.get("clip_sha256") not in (None, clip):
                problems.append(f"{where}: the {COMMITTED} marker is for clip {marker.get('clip_sha256')}, the index says {clip}")

    if expected_base is not None:
        trained_on = meta_fp or index_fp
        if trained_on != expected_base:
            problems.append(f"{where}: trained on base {trained_on}, but the given base is {expected_base}")
    return problems


def verify(uri: str, base: str | None = None) -> list[str]:
    """Check every adapter indexed by a run folder or library index; returns the problems found
    (an empty list: all is well).

    Per adapter: adapter.safetensors, adapter.json and the `_COMMITTED` marker exist; the
    weights parse as safetensors (read with safetensors, never unpickled) and have the size
    the index recorded; the base fingerprint in the metadata is the index's; and, when `base`
    (a diffusers folder, local or any URI) is given, it is that base's fingerprint.
    """
    frame = load_index(uri)
    expected = base_fingerprint(base) if base is not None else None
    problems: list[str] = []
    if "adapter_uri" not in frame.columns:
        return [f"{storage.redact(str(uri))}: the index has no adapter_uri column"]
    for row in frame.to_dict("records"):
        problems += _verify_row(row, expected)
    return problems


# ------------------------------------------------------------------------ export

_LORA_SUFFIXES = (".lora_A.weight", ".lora_B.weight")

_PIPELINES = {  # what a stock diffusers user loads the base with, per family
    "unet3d": ("TextToVideoSDPipeline", 'pipe = TextToVideoSDPipeline.from_pretrained("path/to/base", torch_dtype=torch.float16)'),
    "animatediff": (
        "AnimateDiffPipeline, MotionAdapter",
        'pipe = AnimateDiffPipeline.from_pretrained(\n    "path/to/base", motion_adapter=MotionAdapter.from_pretrained("path/to/base/motion_adapter"),\n'
        "    torch_dtype=torch.float16,\n)",
    ),
}


def peft_config(meta: dict) -> dict:
    """The peft `LoraConfig` kwargs (as adapter_config.json holds them) of a LoRA adapter's metadata."""
    lora = meta.get("lora")
    if not lora or not lora.get("target_modules"):
        raise AdapterError("LoRA adapter without its 'lora' config (r, lora_alpha, target_modules) in the metadata")
    return {
        "peft_type": "LORA",
        "r": int(lora["r"]),
        "lora_alpha": lora["lora_alpha"],
        "target_modules": sorted(lora["target_modules"]),
        "lora_dropout": lora.get("lora_dropout", 0.0),  # what it was tuned with; peft applies it in train mode only
        "bias": "none",
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": False,
        "fan_in_fan_out": False,
    }


def _readme_lora(meta: dict, cfg: dict) -> str:
    family = meta.get("family") or "unet3d"
    imports, load = _PIPELINES.get(family, _PIPELINES["unet3d"])
    prompt = json.dumps((meta.get("reference") or {}).get("prompt") or "a prompt")
    if family == "animatediff":
        diffusers_route = f"""With diffusers alone (`{DIFFUSERS_LORA}`, its LoraConfig in the file's metadata):

```python
import torch
from diffusers import {imports}

{load}
pipe.load_lora_weights("path/to/this/folder", adapter_name="motion")
pipe.set_adapters(["motion"], [1.0])  # the weight is the motion strength
video = pipe({prompt}, num_frames=16).frames
```

Or with peft (`{PEFT_WEIGHTS}` + `{PEFT_CONFIG}`, peft's own layout):
"""
    else:
        diffusers_route = f"""`pipe.load_lora_weights(...)` cannot load it: diffusers' `UNet3DConditionModel` has no LoRA
loader (it raises). `{DIFFUSERS_LORA}` is the same LoRA in diffusers' format, for tools that
read that format. Load it with peft (`{PEFT_WEIGHTS}` + `{PEFT_CONFIG}`, peft's own layout):
"""
    return f"""# Motion adapter (LoRA)

Exported by MotionCrafter. A LoRA (rank {cfg["r"]}, alpha {cfg["lora_alpha"]}) on {len(cfg["target_modules"])}
layers of the UNet's temporal branch, for a `{family}` base with MotionCrafter fingerprint
`{meta.get("base_fingerprint")}` (`motioncrafter.base.fingerprint_folder` of the base folder).
Reference prompt: {prompt}

{diffusers_route}
```python
import torch
from diffusers import {imports}
from peft import PeftModel

{load}
pipe.unet = PeftModel.from_pretrained(pipe.unet, "path/to/this/folder")
video = pipe({prompt}, num_frames=16).frames
```
"""


def _readme_full(meta: dict, keys: int, motion_adapter: bool) -> str:
    family = meta.get("family") or "unet3d"
    imports, load = _PIPELINES.get(family, _PIPELINES["unet3d"])
    stock = f"""
`{MOTION_ADAPTER}/` is the base's MotionAdapter with these weights in it, for a stock pipeline:

```python
import torch
from diffusers import AnimateDiffPipeline, MotionAdapter

adapter = MotionAdapter.from_pretrained("path/to/this/folder/{MOTION_ADAPTER}")
pipe = AnimateDiffPipeline.from_pretrained("path/to/base", motion_adapter=adapter, torch_dtype=torch.float16)
```
""" if motion_adapter else ""
    return f"""# Motion adapter (full temporal weights)

Exported by MotionCrafter. The tuned weights of the UNet's temporal branch ({keys} tensors,
keys are the UNet's own parameter names), for a `{family}` base with MotionCrafter
fingerprint `{meta.get("base_fingerprint")}`.
{stock}
`{FULL_WEIGHTS}` loads over a stock diffusers UNet (every other weight stays the base's):

```python
import safetensors.torch
import torch
from diffusers import {imports}

{load}
sd = safetensors.torch.load_file("{FULL_WEIGHTS}")
result = pipe.unet.load_state_dict(sd, strict=False)
assert not result.unexpected_keys, result.unexpected_keys
```
"""


def _diffusers_lora(tensors: dict, cfg: dict) -> bytes:
    """The LoRA as diffusers writes one (`save_lora_weights`): keys under `unet.`, the LoraConfig in
    the header, which `load_lora_weights` reads (without it, alpha != rank would load at r/alpha strength)."""
    import tempfile

    from diffusers.loaders import StableDiffusionLoraLoaderMixin

    metadata = {k: v for k, v in cfg.items() if k != "peft_type"}
    with tempfile.TemporaryDirectory() as tmp:
        StableDiffusionLoraLoaderMixin.save_lora_weights(tmp, unet_lora_layers=tensors, unet_lora_adapter_metadata=metadata)
        return (Path(tmp) / DIFFUSERS_LORA).read_bytes()


def _motion_adapter(tensors: dict, base: str, where: str) -> dict[str, bytes]:
    """The files of a `MotionAdapter` folder: the base's motion adapter with the tuned weights in it
    (UNetMotionModel's `down_blocks.i.motion_modules.j...` are MotionAdapter's names too)."""
    import tempfile

    from diffusers import MotionAdapter

    from motioncrafter.config import ModelConfig

    folder = storage.local_copy(base, Path(ModelConfig.cache_dir).expanduser() / "models")
    if not (folder / MOTION_ADAPTER / "config.json").exists():
        raise AdapterError(f"{storage.redact(base)}: no {MOTION_ADAPTER}/ folder; a full AnimateDiff adapter exports "
                           "over the base's MotionAdapter")
    adapter = MotionAdapter.from_pretrained(folder / MOTION_ADAPTER)
    result = adapter.load_state_dict(tensors, strict=False)
    if result.unexpected_keys:
        raise AdapterError(f"{where}: {len(result.unexpected_keys)} tensors are not MotionAdapter weights, "
                           f"e.g. {result.unexpected_keys[:2]}")
    with tempfile.TemporaryDirectory() as tmp:
        adapter.save_pretrained(tmp, safe_serialization=True)
        return {p.name: p.read_bytes() for p in sorted(Path(tmp).iterdir()) if p.is_file()}


def export_adapter(adapter_uri: str, out_uri: str, base: str | None = None) -> list[str]:
    """Write the adapter at `adapter_uri` into the folder `out_uri` in the layouts stock tools load;
    returns the URIs written.

    LoRA: `pytorch_lora_weights.safetensors`, diffusers' format with its LoraConfig in the header
    (`AnimateDiffPipeline.load_lora_weights(folder)`; diffusers has no LoRA loader for
    `UNet3DConditionModel`), and `adapter_model.safetensors` + `adapter_config.json` in peft's layout
    (`PeftModel.from_pretrained(unet, folder)`).
    Full: `temporal_state_dict.safetensors` (`unet.load_state_dict(sd, strict=False)`) and, for
    AnimateDiff, `motion_adapter/`: the base's `MotionAdapter` (from `base`, a diffusers folder)
    with the tuned weights, for `MotionAdapter.from_pretrained`.
    Each loads with the same outputs as `adapters.attach` (tested); a README.md shows how.
    """
    from safetensors.torch import save as save_safetensors

    adapter = load_adapter(_adapter_folder(adapter_uri))
    meta = dict(adapter.meta)
    header = {"format": "pt", "motioncrafter": json.dumps(meta, sort_keys=True)}
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in adapter.tensors.items()}
    where = storage.redact(adapter_uri)
    written: list[str] = []

    def put(name: str, data: bytes) -> None:
        target = storage.join(out_uri, name)
        storage.write_bytes(target, data)
        written.append(target)

    if adapter.kind == "lora":
        cfg = peft_config(meta)
        odd = [k for k in tensors if not k.endswith(_LORA_SUFFIXES)]
        if odd:
            raise AdapterError(f"{where}: tensors not in peft's LoRA naming, e.g. {odd[:2]}")
        put(DIFFUSERS_LORA, _diffusers_lora(tensors, cfg))
        # peft's save_pretrained layout: names as seen from the PeftModel that wraps the UNet
        put(PEFT_WEIGHTS, save_safetensors({PEFT_PREFIX + k: v for k, v in tensors.items()}, metadata=header))
        put(PEFT_CONFIG, (json.dumps(cfg, indent=2, sort_keys=True) + "\n").encode())
        put(README, _readme_lora(meta, cfg).encode())
    elif adapter.kind == "full":
        animatediff = meta.get("family") == "animatediff"
        if animatediff and base is None:
            raise AdapterError(f"{where}: a full AnimateDiff adapter exports as a MotionAdapter folder over the base's "
                               "own: pass the base (--base)")
        put(FULL_WEIGHTS, save_safetensors(tensors, metadata=header))
        if animatediff and base is not None:  # (checked above; this says so to the type checker)
            for name, data in _motion_adapter(tensors, base, where).items():
                put(f"{MOTION_ADAPTER}/{name}", data)
        put(README, _readme_full(meta, len(tensors), animatediff).encode())
    else:
        raise AdapterError(f"{where}: unknown adapter kind {adapter.kind!r}")
    return written


# ------------------------------------------------------------------------ merge


def merge_libraries(run_uris: list[str], out_uri: str, allow_mixed_bases: bool = False) -> pd.DataFrame:
    """One library index over several runs, written as Parquet at `out_uri`; returns it.

    The rows are the runs' adapter indexes (with their summary metrics), plus `source_run`
    (the run's URI) and `library_id` ("<run folder name>/<motion_id>"). `adapter_uri` still
    points at each run's files: nothing is copied. Adapters trained on different bases
    (base fingerprints) raise ValueError unless `allow_mixed_bases`. A library index file
    may be given in place of a run: its rows keep their source_run and library_id.
    """
    if isinstance(run_uris, str):
        run_uris = [run_uris]
    if not _is_index_file(out_uri):
        raise ValueError(f"{storage.redact(out_uri)}: a library index is one .parquet file; name it ....parquet")
    frames = []
    for run in run_uris:
        run = str(run).rstrip("/")
        frame = load_index(run)
        if _is_index_file(run) and {"source_run", "library_id"} <= set(frame.columns):
            frames.append(frame)
            continue
        frame = frame.copy()
        frame["source_run"] = run
        frame["library_id"] = [f"{_run_name(run)}/{m}" for m in frame["motion_id"]] if len(frame) else pd.Series(dtype=str)
        frames.append(frame)
    non_empty = [f for f in frames if len(f)]
    merged = pd.concat(non_empty or frames[:1] or [pd.DataFrame(columns=KEY_COLUMNS)], ignore_index=True)
    if "source_run" not in merged:
        merged["source_run"] = pd.Series(dtype=str)
        merged["library_id"] = pd.Series(dtype=str)

    duplicated = merged["library_id"][merged["library_id"].duplicated()].unique().tolist()
    if duplicated:
        raise ValueError(
            f"library ids {duplicated[:5]} appear more than once: the same run given twice, "
            "or two runs whose folders have the same name"
        )
    if "base_fingerprint" in merged and not allow_mixed_bases:
        fps = merged["base_fingerprint"].dropna()
        if fps.nunique() > 1:
            by_base = {fp: sorted(set(merged.loc[fps.index[fps == fp], "source_run"])) for fp in sorted(fps.unique())}
            detail = "; ".join(f"{fp}: {', '.join(storage.redact(r) for r in runs)}" for fp, runs in by_base.items())
            raise ValueError(f"the runs' adapters were trained on different bases ({detail}); pass allow_mixed_bases=True to merge anyway")

    front = [c for c in ("library_id", *KEY_COLUMNS, "source_run") if c in merged]
    merged = merged[front + [c for c in merged.columns if c not in front]]
    storage.write_parquet(pa.Table.from_pandas(merged, preserve_index=False), out_uri)
    return merged
