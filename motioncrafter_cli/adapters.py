"""`motioncrafter adapters ls|show|verify|export|merge`: the adapter library (`motioncrafter.library`) on the command line."""

from __future__ import annotations

import argparse
import json

import pandas as pd

from motioncrafter import storage
from motioncrafter.library import export_adapter, filter_column, list_adapters, load_index, merge_libraries, show_adapter, verify


DEFAULT_COLUMNS = ["motion_id", "kind", "mode", "bytes", "base_fingerprint"]

ADAPTERS_EPILOG = """examples:
  # the adapters of a run, with their metrics; only the faithful LoRAs
  motioncrafter adapters ls runs/run-20250101-000000 --where "motion_fidelity>0.5" --where kind=lora
  motioncrafter adapters ls s3://bucket/library.parquet --columns library_id,prompt,motion_fidelity --format csv

  # one adapter's metadata, file sizes and commit marker
  motioncrafter adapters show runs/run-20250101-000000/adapters/m0

  # check every adapter's files (exit status 1 on any problem), against a base
  motioncrafter adapters verify runs/run-20250101-000000 --base models/moving-shapes

  # peft / diffusers files a stock pipeline loads
  motioncrafter adapters export runs/run-20250101-000000/adapters/m0 exported/m0

  # one library index over several runs (nothing is copied)
  motioncrafter adapters merge s3://bucket/library.parquet runs/run-a runs/run-b
"""

_LS_EPILOG = """examples:
  motioncrafter adapters ls runs/run-20250101-000000
  motioncrafter adapters ls runs/run-20250101-000000 --where "motion_fidelity>0.5" --where kind=lora
  motioncrafter adapters ls library.parquet --columns library_id,motion_id,motion_fidelity --format json

filters: <column><op><value>, op one of >, >=, <, <=, =, != (all must hold; a missing value fails).
default columns: motion_id, kind, mode, bytes, base_fingerprint (library_id first for a library
index), then every column a filter names.
"""

_SHOW_EPILOG = """examples:
  motioncrafter adapters show runs/run-20250101-000000/adapters/m0
  motioncrafter adapters show s3://bucket/runs/run-20250101-000000/adapters/m0/adapter.safetensors
"""

_VERIFY_EPILOG = """examples:
  motioncrafter adapters verify runs/run-20250101-000000
  motioncrafter adapters verify s3://bucket/library.parquet --base s3://bucket/models/moving-shapes

exit status: 0 when every adapter checks out, 1 when any problem is found (one line each).
"""

_EXPORT_EPILOG = """examples:
  motioncrafter adapters export runs/run-20250101-000000/adapters/m0 exported/m0
  motioncrafter adapters export s3://bucket/runs/run-20250101-000000/adapters/m0 s3://bucket/exported/m0

a LoRA gives pytorch_lora_weights.safetensors (diffusers: AnimateDiffPipeline.load_lora_weights; diffusers
cannot load a LoRA into ModelScope's UNet3DConditionModel) and adapter_model.safetensors + adapter_config.json
(peft: PeftModel.from_pretrained(unet, folder)); a full adapter temporal_state_dict.safetensors
(unet.load_state_dict), and for AnimateDiff a motion_adapter/ folder (MotionAdapter.from_pretrained; needs --base).
Each with a README.md on how to load it.
"""

_MERGE_EPILOG = """examples:
  motioncrafter adapters merge library.parquet runs/run-a runs/run-b
  motioncrafter adapters merge s3://bucket/library.parquet s3://bucket/library-old.parquet s3://bucket/runs/run-c
  motioncrafter adapters merge mixed.parquet runs/run-a runs/run-on-other-base --allow-mixed-bases
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `motioncrafter adapters ls|show|verify|export|merge` on the CLI's subparsers."""
    raw = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser("adapters", help="list, inspect, verify, export and merge trained motion adapters",
                              description="The adapter library: a run folder or a library index (.parquet).",
                              epilog=ADAPTERS_EPILOG, formatter_class=raw)
    actions = p.add_subparsers(dest="action", required=True)

    ls = actions.add_parser("ls", help="the adapters of a run or library, filtered, as a table",
                            description="List the adapters of a run folder (with its summary metrics) or a library index.",
                            epilog=_LS_EPILOG, formatter_class=raw)
    ls.add_argument("uri", metavar="URI", help="run folder (<output>/<run-id>) or library .parquet: path or fsspec URI")
    ls.add_argument("--where", action="append", default=[], metavar="EXPR",
                    help="filter such as motion_fidelity>0.5 or kind=lora (repeatable; all must hold)")
    ls.add_argument("--columns", metavar="A,B,C", help="comma-separated columns to print (default: see below)")
    ls.add_argument("--format", choices=["table", "csv", "json"], default="table", help="output format (default: table)")
    ls.set_defaults(func=cmd_adapters_ls)

    show = actions.add_parser("show", help="one adapter's metadata, file sizes and commit marker, as JSON",
                              description="Print an adapter folder's adapter.json, file sizes and _COMMITTED marker as JSON.",
                              epilog=_SHOW_EPILOG, formatter_class=raw)
    show.add_argument("adapter_uri", metavar="ADAPTER_URI", help="adapter folder (or its adapter.safetensors): path or fsspec URI")
    show.set_defaults(func=cmd_adapters_show)

    ver = actions.add_parser("verify", help="check every adapter's files; exit status 1 on any problem",
                             description="Check that every indexed adapter's weights, metadata and marker exist, parse "
                                         "and agree with the index (and with a base, given --base).",
                             epilog=_VERIFY_EPILOG, formatter_class=raw)
    ver.add_argument("uri", metavar="URI", help="run folder or library .parquet: path or fsspec URI")
    ver.add_argument("--base", metavar="BASE_URI", help="diffusers base folder the adapters must have been trained on")
    ver.set_defaults(func=cmd_adapters_verify)

    exp = actions.add_parser("export", help="write an adapter as peft / diffusers files",
                             description="Write the adapter in a format stock peft / diffusers load, with a README.md.",
                             epilog=_EXPORT_EPILOG, formatter_class=raw)
    exp.add_argument("adapter_uri", metavar="ADAPTER_URI", help="adapter folder: path or fsspec URI")
    exp.add_argument("out_uri", metavar="OUT_URI", help="folder to write: path or fsspec URI")
    exp.add_argument("--base", metavar="BASE_URI",
                     help="diffusers base folder; a full AnimateDiff adapter is written over its motion_adapter/")
    exp.set_defaults(func=cmd_adapters_export)

    mer = actions.add_parser("merge", help="one library index (.parquet) over several runs",
                             description="Write one library index over several runs (or library indexes); "
                                         "its rows point at the runs' adapters, nothing is copied.",
                             epilog=_MERGE_EPILOG, formatter_class=raw)
    mer.add_argument("out_uri", metavar="OUT.parquet", help="library index to write: path or fsspec URI ending in .parquet")
    mer.add_argument("run_uris", metavar="RUN_URI", nargs="+", help="run folders or library .parquet files")
    mer.add_argument("--allow-mixed-bases", action="store_true", help="merge adapters trained on different bases")
    mer.set_defaults(func=cmd_adapters_merge)
    return p


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _ls_columns(frame: pd.DataFrame, columns: str | None, where: list[str]) -> list[str]:
    if columns:
        wanted = [c.strip() for c in columns.split(",") if c.strip()]
        unknown = [c for c in wanted if c not in frame.columns]
        if unknown:
            raise ValueError(f"unknown column(s) {', '.join(map(repr, unknown))}; known columns: {', '.join(map(str, frame.columns))}")
        return wanted
    chosen = (["library_id"] if "library_id" in frame.columns else []) + [c for c in DEFAULT_COLUMNS if c in frame.columns]
    for expression in where:
        column = filter_column(expression)
        if column is not None and column in frame.columns and column not in chosen:
            chosen.append(column)
    return chosen


def cmd_adapters_ls(args) -> int:
    frame = list_adapters(args.uri, args.where)
    frame = frame[_ls_columns(frame, args.columns, args.where)]
    if args.format == "csv":
        print(frame.to_csv(index=False), end="")
    elif args.format == "json":
        print(frame.to_json(orient="records", indent=2))
    elif len(frame):
        print(frame.to_string(index=False))
    else:
        print("no adapters" + (" match " + " and ".join(args.where) if args.where else ""))
    return 0


def cmd_adapters_show(args) -> int:
    print(json.dumps(show_adapter(args.adapter_uri), indent=2, default=str))
    return 0


def cmd_adapters_verify(args) -> int:
    count = len(load_index(args.uri))
    problems = verify(args.uri, base=args.base)
    for problem in problems:
        print(problem)
    print(f"{_plural(count, 'adapter')} verified, {_plural(len(problems), 'problem')}")
    return 1 if problems else 0


def cmd_adapters_export(args) -> int:
    for uri in export_adapter(args.adapter_uri, args.out_uri, base=args.base):
        print(storage.redact(uri))
    return 0


def cmd_adapters_merge(args) -> int:
    merged = merge_libraries(args.run_uris, args.out_uri, allow_mixed_bases=args.allow_mixed_bases)
    print(f"{_plural(len(merged), 'adapter')} from {_plural(len(args.run_uris), 'source')} -> {storage.redact(args.out_uri)}")
    return 0
