"""The `motioncrafter` command.

Single clip, no Ray:
  motioncrafter tune --video clip.mp4 --prompt "a red circle moves in a zigzag on a black background" --out adapters/zigzag
  motioncrafter generate --adapter adapters/zigzag --prompt "a blue square moves in a zigzag on a white background" --out videos/
Whole manifests, on Ray (embedded locally, or a cluster), or one stage of it alone:
  motioncrafter run --manifest manifests/demo.jsonl --output runs/ --run-id demo
  motioncrafter ingest|train|render|evaluate ... --run-id demo;  motioncrafter report --output runs/ --run-id demo
Adapter libraries and data sets:
  motioncrafter adapters ls runs/demo --where "motion_fidelity>0.5";  motioncrafter adapters export runs/demo/adapters/ID out/
  motioncrafter dataset export runs/demo datasets/demo [--embed-videos]
Configuration:
  motioncrafter config show [--config FILE] [--set section.key=value ...]

Every command takes --config FILE (TOML or YAML) and --set section.key=value overrides.

This package sits above both `motioncrafter` (the library) and `pipelines` (the Ray jobs): neither
imports the command line, and `motioncrafter` never imports `pipelines`.
"""

from __future__ import annotations

import argparse
import re
import sys


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML or YAML file with [section] tables (see `motioncrafter config show`)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config field, e.g. --set tune.steps=100 (repeatable)")
    p.add_argument("--base-model", help="diffusers folder or fsspec URI of the base (default: shipped MovingShapes base)")


def _load(args, extra: tuple[str, ...] | list[str] = ()):
    from motioncrafter.config import load_config

    overrides = list(extra) + list(args.overrides)
    if getattr(args, "base_model", None):
        overrides.append(f"model.base_model={args.base_model}")
    return load_config(args.config, overrides)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:60]


def cmd_tune(args) -> int:
    from motioncrafter.adapters import save_adapter
    from motioncrafter.base import open_base
    from motioncrafter.trainer import tune_clip
    from motioncrafter.video import read_video

    cfg = _load(args, [f"tune.mode={args.mode}"] if args.mode else [])
    base = open_base(cfg.model)
    v = cfg.video
    frames = read_video(args.video, v.num_frames, v.height, v.width, v.sampling, v.stride, args.start_sec, args.end_sec)
    result = tune_clip(base, frames, args.prompt, cfg.tune, cfg.adapter, cfg.enhance, subject=args.subject)
    save_adapter(result.adapter, args.out)
    last = result.history[-1]
    print(f"{cfg.tune.mode} adapter ({result.adapter.nbytes() / 1e6:.2f} MB, {result.seconds:.1f} s) -> {args.out}; "
          f"final losses " + ", ".join(f"{k} {v:.4f}" for k, v in last.items() if k != "step"))
    return 0


def cmd_generate(args) -> int:
    from motioncrafter.adapters import attach, load_adapter
    from motioncrafter.base import open_base
    from motioncrafter.render import render_grid
    from motioncrafter.storage import join
    from motioncrafter.video import frame_grid, write_gif, write_mp4, write_png

    cfg = _load(args)
    base = open_base(cfg.model)
    for i, uri in enumerate(args.adapter or []):
        attach(base, load_adapter(uri), name=f"motion{i}", scale=args.scale)
    seeds = args.seeds or cfg.render.seeds
    pairs, videos = render_grid(base, args.prompt, seeds, cfg.render)
    for (prompt, seed), video in zip(pairs, videos):
        stem = join(args.out, f"{_slug(prompt)}_s{seed}")
        write_mp4(video, stem + ".mp4", fps=cfg.video.fps)
        write_gif(video, stem + ".gif", fps=cfg.video.fps)
    write_png(frame_grid(list(videos)), join(args.out, "grid.png"))
    print(f"{len(videos)} videos ({len(args.prompt)} prompts x {len(seeds)} seeds) -> {args.out}")
    return 0


def cmd_config(args) -> int:
    if args.action == "reference":
        from motioncrafter.config_reference import render_reference

        print(render_reference(), end="")
        return 0
    import yaml

    cfg = _load(args)
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
    return 0


# The pipeline's commands live in pipelines.run (they import Ray); `motioncrafter <stage> --help` shows their flags.
PIPELINE_COMMANDS = {
    "run": "the whole pipeline over a manifest, on Ray",
    "ingest": "pipeline stage alone: decode + VAE-encode the manifest's clips into the cache",
    "train": "pipeline stage alone: tune an adapter for every ingested clip without one",
    "render": "pipeline stage alone: render every committed adapter's prompt grid",
    "evaluate": "pipeline stage alone: score the rendered videos -> results/, summary/, report.html",
    "report": "pipeline stage alone: write report.html again from the run's tables",
}


def cmd_pipeline(command: str, argv: list[str]) -> int:
    from pipelines.run import main as run_main

    return run_main(argv, stage=None if command == "run" else command)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="motioncrafter", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("tune", help="learn one clip's motion -> a motion adapter",
                       epilog="example: motioncrafter tune --video clip.mp4 --prompt 'a dog jumps' --out adapters/jump")
    p.add_argument("--video", required=True, help="reference clip: path or fsspec URI")
    p.add_argument("--prompt", required=True, help="caption of the reference clip")
    p.add_argument("--out", required=True, help="adapter folder to write (path or fsspec URI)")
    p.add_argument("--subject", help="the subject phrase of the prompt (default: found by a heuristic)")
    p.add_argument("--mode", choices=["motioncrafter", "temporal_only", "motiondirector", "full_finetune"])
    p.add_argument("--start-sec", type=float)
    p.add_argument("--end-sec", type=float)
    _config_args(p)
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("generate", help="render prompts with motion adapters",
                       epilog="example: motioncrafter generate --adapter adapters/jump --prompt 'a robot jumps' --out videos/")
    p.add_argument("--adapter", action="append", help="adapter folder or URI (repeat to combine; none: the base)")
    p.add_argument("--prompt", action="append", required=True, help="prompt to render (repeatable)")
    p.add_argument("--out", required=True, help="output folder (path or fsspec URI)")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds per prompt (default: render.seeds)")
    p.add_argument("--scale", type=float, default=1.0, help="motion strength of each adapter")
    _config_args(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("config", help="print the effective configuration, or the reference of every field",
                       epilog="examples:\n  motioncrafter config show --config run.toml --set tune.steps=100\n"
                              "  motioncrafter config reference > docs/config.md", formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["show", "reference"])
    _config_args(p)
    p.set_defaults(func=cmd_config)

    from motioncrafter_cli import adapters, dataset

    adapters.add_parser(sub)
    dataset.add_parser(sub)
    for command, text in PIPELINE_COMMANDS.items():
        sub.add_parser(command, help=f"{text} (see `motioncrafter {command} --help`)", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] and argv[0] in PIPELINE_COMMANDS:
        return cmd_pipeline(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    from motioncrafter.config import ConfigError

    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        print(f"motioncrafter {args.command}: error: {err}", file=sys.stderr)
        return 2
