"""`motioncrafter dataset export`: a finished run as a Parquet dataset (`motioncrafter.dataset`) on the command line."""

from __future__ import annotations

import argparse

from motioncrafter.dataset import export_dataset


EPILOG = """examples:
  # a dataset that points at the run's videos (small; the run folder must stay)
  motioncrafter dataset export runs/run-20250101-000000 datasets/shapes

  # self-contained: the MP4 bytes go into the Parquet files, 500 videos per shard
  motioncrafter dataset export s3://bucket/runs/run-20250101-000000 s3://bucket/datasets/shapes \\
      --embed-videos --rows-per-shard 500

  # then
  python -c "from datasets import load_dataset; print(load_dataset('parquet', data_files='datasets/shapes/data/*.parquet', split='train'))"
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `motioncrafter dataset export RUN_URI OUT_URI` on the CLI's subparsers."""
    p = subparsers.add_parser("dataset", help="export a finished run as a Parquet dataset (Hugging Face format)",
                              description="Export a finished run as a Parquet dataset.",
                              epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest="action", required=True)
    e = actions.add_parser("export", help="one row per generated video, with its prompts, adapter and metrics",
                           description="Join a finished run's results, summary and adapters into Parquet shards "
                                       "<OUT_URI>/data/train-*.parquet and write a dataset card <OUT_URI>/README.md.",
                           epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("run_uri", metavar="RUN_URI", help="the run folder: <output>/<run-id>, path or fsspec URI")
    e.add_argument("out_uri", metavar="OUT_URI", help="dataset folder to write: path or fsspec URI")
    e.add_argument("--embed-videos", action="store_true", help="put the MP4 bytes in a `video` column (default: URIs only)")
    e.add_argument("--rows-per-shard", type=int, default=1000, metavar="N", help="videos per Parquet file (default: 1000)")
    e.add_argument("--license", default="other", metavar="ID",
                   help="the dataset card's license (a Hub license id, e.g. cc-by-4.0; default: other, as the videos "
                        "follow the base model's terms)")
    e.set_defaults(func=cmd_dataset_export)
    return p


def cmd_dataset_export(args) -> int:
    counts = export_dataset(args.run_uri, args.out_uri, embed_videos=args.embed_videos, rows_per_shard=args.rows_per_shard,
                            license=args.license)
    n = lambda count, noun: f"{count} {noun}{'' if count == 1 else 's'}"  # noqa: E731
    print(f"run {counts['run_id']}: {n(counts['videos'], 'video')} of {n(counts['motions'], 'motion')} -> {counts['out_uri']} "
          f"({n(counts['shards'], 'shard')}, videos {'embedded' if counts['embedded'] else 'by URI'})")
    return 0
