"""Read and validate a manifest: one reference clip per row.

A manifest is Parquet, JSONL or CSV (by suffix), local or any fsspec URI. The
schema is in manifests/README.md. Validation is per row: a bad row becomes a
`Failure` with a reason naming the row, good rows go on. Only a manifest that
cannot be parsed at all stops the run (`ManifestError`, naming the line).

The manifest is parsed on the driver, not with Ray Data: validation needs the
whole file at once (duplicate ids, line numbers for errors), and a manifest of
thousands of rows is a few MB. The stages then distribute the valid rows.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import posixpath
import re
from dataclasses import asdict, dataclass, field
from pathlib import PurePosixPath

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from motioncrafter import storage
from motioncrafter.config import Config, ConfigError, from_dict
from motioncrafter.runformat import Failure

ID_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,128}")
REQUIRED = ("motion_id", "video_uri", "prompt")
OPTIONAL = ("subject", "eval_prompts", "start_sec", "end_sec", "seed", "overrides", "attributes")
# What a clip shows, for the leakage metric when its caption leaves it out ("a shape moves in a circle").
ATTRIBUTES = ("colour", "shape", "background")
# Config sections a row may override: they only change how that row's clip is tuned and rendered.
OVERRIDABLE = ("tune", "adapter", "render")
# Columns that other tools add: MovingShapes' ground truth, read only for its `ATTRIBUTES`.
CARRIED = ("toyworld",)


class ManifestError(ValueError):
    """The manifest as a whole cannot be read; the message names the file and line."""


@dataclass
class ManifestRow:
    row: int  # 0-based position in the manifest
    motion_id: str
    video_uri: str  # resolved: relative URIs are joined to the manifest's folder
    prompt: str
    subject: str | None = None
    eval_prompts: list[str] = field(default_factory=list)
    start_sec: float | None = None
    end_sec: float | None = None
    seed: int | None = None
    overrides: dict[str, object] = field(default_factory=dict)  # "section.key" -> value
    attributes: dict[str, str] = field(default_factory=dict)  # the clip's own colour / shape / background, if known

    def to_dict(self) -> dict:
        return asdict(self)

    def config(self, cfg: Config) -> Config:
        """The run's config with this row's overrides (and seed) applied."""
        return apply_overrides(cfg, self.overrides | ({"tune.seed": self.seed} if self.seed is not None else {}))


@dataclass
class Manifest:
    uri: str
    sha256: str
    rows: list[ManifestRow]
    failures: list[Failure]
    total: int  # rows in the file = len(rows) + len(failures)
    ignored_columns: list[str]


# ------------------------------------------------------------------ parsing


@dataclass
class _Record:
    row: int
    where: str  # "line 7" or "row 6": how a person finds it in the file
    values: dict


def _parse_jsonl(text: str) -> list[_Record]:
    records: list[_Record] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue  # blank lines (a trailing newline, spacing) are not rows
        try:
            values = json.loads(line)
        except json.JSONDecodeError as err:
            raise ManifestError(f"line {lineno}: not valid JSON ({err.msg} at column {err.colno})") from err
        if not isinstance(values, dict):
            raise ManifestError(f"line {lineno}: expected a JSON object per line, got {type(values).__name__}")
        records.append(_Record(len(records), f"line {lineno}", values))
    return records


def _parse_csv(text: str) -> list[_Record]:
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    records: list[_Record] = []
    try:
        for values in reader:
            if None in values:
                raise ManifestError(f"line {reader.line_num}: more fields than the header has columns")
            # an empty CSV cell means "not given"
            records.append(_Record(len(records), f"line {reader.line_num}", {k: v for k, v in values.items() if v != ""}))
    except csv.Error as err:
        raise ManifestError(f"line {reader.line_num}: {err}") from err
    return records


def _parse_parquet(data: bytes) -> list[_Record]:
    try:
        rows = pq.read_table(pa.BufferReader(data)).to_pylist()
    except (pa.ArrowException, OSError) as err:
        raise ManifestError(f"not a readable Parquet file ({err})") from err
    return [_Record(i, f"row {i}", values) for i, values in enumerate(rows)]


def _parse(uri: str, data: bytes) -> tuple[list[_Record], bool]:
    """Records and whether their values came from text (CSV: every value is a string)."""
    suffix = PurePosixPath(uri.split("?")[0]).suffix.lower()
    if suffix == ".parquet":
        return _parse_parquet(data), False
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ManifestError(f"not UTF-8 text (byte {err.start})") from err
    if suffix in (".jsonl", ".ndjson", ".json"):
        return _parse_jsonl(text), False
    if suffix == ".csv":
        return _parse_csv(text), True
    raise ManifestError(f"unknown manifest format {suffix!r}; use .parquet, .jsonl or .csv")


# --------------------------------------------------------------- validation


class _RowError(ValueError):
    pass


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _number(value, name: str, from_text: bool, kind: type) -> float | int:
    if from_text and isinstance(value, str):
        try:
            value = kind(value)
        except ValueError:
            raise _RowError(f"{name} must be {'an integer' if kind is int else 'a number'}, got {value!r}") from None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        ok = ok and float(value).is_integer()
    if not ok or (isinstance(value, float) and not math.isfinite(value)):
        raise _RowError(f"{name} must be {'an integer' if kind is int else 'a number'}, got {value!r}")
    return kind(value)


def _text(value, name: str) -> str:
    if not isinstance(value, str):
        raise _RowError(f"{name} must be a string, got {type(value).__name__} {value!r}")
    return value


def _json_field(value, name: str, from_text: bool, kind: type):
    """Lists and tables arrive as JSON text in CSV cells."""
    if from_text and isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise _RowError(f"{name} must be a JSON {kind.__name__} in a CSV cell, got {value!r}") from None
    if not isinstance(value, kind):
        raise _RowError(f"{name} must be a {kind.__name__}, got {type(value).__name__}")
    return value


def resolve_uri(uri: str, manifest_uri: str) -> str:
    """A relative `video_uri` is relative to the manifest's own folder; the scheme must be readable."""
    if "://" in uri:
        scheme = uri.split("://", 1)[0].lower()
        known = set(fsspec.available_protocols())
        if scheme not in known:
            raise _RowError(f"video_uri {uri!r}: unknown URI scheme {scheme!r}")
        return uri
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:(?![\\/])", uri):
        raise _RowError(f"video_uri {uri!r}: unreadable URI (a scheme needs '://')")
    if uri.startswith("/"):
        return uri
    if "://" in manifest_uri:
        scheme, rest = manifest_uri.split("://", 1)
        return f"{scheme}://{posixpath.normpath(posixpath.join(posixpath.dirname(rest), uri))}"
    return posixpath.normpath(posixpath.join(posixpath.dirname(manifest_uri) or ".", uri))


def check_id(value: str, name: str = "motion_id") -> str:
    """Ids become folder names in the output tree: a fixed alphabet, no '.'/'..', no hidden files."""
    if not ID_PATTERN.fullmatch(value) or value.startswith("."):
        raise _RowError(f"{name} {value!r} must match [A-Za-z0-9_.-]{{1,128}} and not start with '.'")
    return value


def apply_overrides(cfg: Config, overrides: dict[str, object]) -> Config:
    """`cfg` with "section.key" -> value overrides applied, re-validated."""
    if not overrides:
        return cfg
    data = cfg.to_dict()
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        data[section][name] = value
    return from_dict(Config, data)


def _validate(rec: _Record, manifest_uri: str, from_text: bool, cfg: Config) -> ManifestRow:
    v = rec.values
    missing = [c for c in REQUIRED if _missing(v.get(c))]
    if missing:
        raise _RowError(f"missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    motion_id = check_id(_text(v["motion_id"], "motion_id"))
    prompt = _text(v["prompt"], "prompt").strip()
    if not prompt:
        raise _RowError("prompt is empty")
    video_uri = _text(v["video_uri"], "video_uri").strip()
    if not video_uri:
        raise _RowError("video_uri is empty")
    row = ManifestRow(rec.row, motion_id, resolve_uri(video_uri, manifest_uri), prompt)
    if not _missing(v.get("subject")):
        row.subject = _text(v["subject"], "subject").strip()
        if row.subject.lower() not in prompt.lower():
            raise _RowError(f"subject {row.subject!r} does not occur in the prompt {prompt!r}")
    if not _missing(v.get("eval_prompts")):
        prompts = _json_field(v["eval_prompts"], "eval_prompts", from_text, list)
        row.eval_prompts = [_text(p, f"eval_prompts[{i}]").strip() for i, p in enumerate(prompts)]
        if not all(row.eval_prompts):
            raise _RowError("eval_prompts has an empty prompt")
    for name in ("start_sec", "end_sec"):
        if not _missing(v.get(name)):
            setattr(row, name, _number(v[name], name, from_text, float))
    if row.start_sec is not None and row.start_sec < 0:
        raise _RowError(f"bad window: start_sec {row.start_sec} is negative")
    if row.start_sec is not None and row.end_sec is not None and row.end_sec <= row.start_sec:
        raise _RowError(f"bad window: end_sec {row.end_sec} is not after start_sec {row.start_sec}")
    if row.end_sec is not None and row.end_sec <= 0:
        raise _RowError(f"bad window: end_sec {row.end_sec} is not positive")
    if not _missing(v.get("seed")):
        row.seed = int(_number(v["seed"], "seed", from_text, int))
    if not _missing(v.get("overrides")):
        overrides = _json_field(v["overrides"], "overrides", from_text, dict)
        for key in overrides:
            if key.partition(".")[0] not in OVERRIDABLE or "." not in key:
                raise _RowError(f"overrides: {key!r} is not section.key with section one of {', '.join(OVERRIDABLE)}")
        row.overrides = dict(overrides)
        try:
            row.config(cfg)
        except ConfigError as err:
            raise _RowError(f"overrides: {err}") from None
    row.attributes = _attributes(v, from_text)
    return row


def _attributes(v: dict, from_text: bool) -> dict[str, str]:
    """The `attributes` column, else the `ATTRIBUTES` of a MovingShapes `toyworld` column."""
    name = "attributes" if not _missing(v.get("attributes")) else "toyworld"
    if _missing(v.get(name)):
        return {}
    given = _json_field(v[name], name, from_text, dict)
    if name == "attributes" and sorted(given) != sorted(ATTRIBUTES):
        raise _RowError(f"attributes must give exactly {', '.join(ATTRIBUTES)}, got {', '.join(map(repr, given)) or 'none'}")
    if any(_missing(given.get(k)) for k in ATTRIBUTES):
        return {}  # a toyworld column without them (another tool's): no ground truth
    return {k: _text(given[k], f"{name}.{k}").strip().lower() for k in ATTRIBUTES}


def load_manifest(uri: str, cfg: Config = Config()) -> Manifest:
    """Parse and validate the manifest at `uri`; raises `ManifestError` only if it cannot be read at all."""
    try:
        data = storage.read_bytes(uri)
    except FileNotFoundError as err:
        raise ManifestError(f"{uri}: no such manifest") from err
    except OSError as err:
        raise ManifestError(f"{uri}: cannot read the manifest ({err})") from err
    try:
        records, from_text = _parse(uri, data)
    except ManifestError as err:
        raise ManifestError(f"{uri}: {err}") from None

    rows: list[ManifestRow] = []
    failures: list[Failure] = []
    for rec in records:
        try:
            rows.append(_validate(rec, uri, from_text, cfg))
        except _RowError as err:
            raw_id = rec.values.get("motion_id")
            failures.append(Failure("" if _missing(raw_id) else str(raw_id), rec.row, "manifest", f"{rec.where}: {err}"))

    # Duplicate ids: every row that shares an id fails, naming where the others are.
    where = {rec.row: rec.where for rec in records}
    by_id: dict[str, list[ManifestRow]] = {}
    for row in rows:
        by_id.setdefault(row.motion_id, []).append(row)
    for motion_id, same in by_id.items():
        if len(same) > 1:
            for row in same:
                others = ", ".join(where[o.row] for o in same if o is not row)
                failures.append(Failure(motion_id, row.row, "manifest", f"{where[row.row]}: duplicate motion_id {motion_id!r} (also on {others})"))
    duplicated = {r.row for r in rows if len(by_id[r.motion_id]) > 1}
    rows = [r for r in rows if r.row not in duplicated]

    known = set(REQUIRED) | set(OPTIONAL) | set(CARRIED)
    ignored = sorted({k for rec in records for k in rec.values} - known)
    return Manifest(uri, hashlib.sha256(data).hexdigest(), rows, sorted(failures, key=lambda f: f.row), len(records), ignored)
