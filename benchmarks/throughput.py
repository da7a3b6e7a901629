"""Training throughput of the pipeline: long-lived gangs vs one Ray Train run per clip.

    python benchmarks/throughput.py [--clips 16] [--steps 5 20] [--large 48] [--large-steps 50] [--gangs 2]
                                    [--base-model DIR] [--out benchmarks/results/throughput.md]

Both schedulers tune the same MovingShapes clips with the same step budget on the
same Ray, side by side in one run; clips are ingested once beforehand, so only
the train stage is timed. Reported:
- clips/hour of `gangs` and of `per_clip` on `--clips` clips at each `--steps` budget
  (goal: gangs >= 3x); per_clip pays a worker-group start and a base load per clip,
  so the ratio falls as tuning a clip takes longer;
- orchestration efficiency of gangs on `--large` clips:
  time inside tune_clip / (wall time x workers) (goal >= 0.9);
- where the rest of the wall time goes: start-up until each gang's first lease
  (worker group start + base load), the gaps between one clip's tuning and the next
  (lease, frame load, adapter commit), and the tail (gangs idle while the last clips finish).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import ray

from motioncrafter.config import load_config
from motioncrafter.runformat import RunLayout
from motioncrafter.toyworld import BASE_DIR
from motioncrafter.toyworld.world import HELD_OUT_MOTIONS, sample_specs, write_clips
from pipelines.ingest import ingest
from pipelines.manifest import load_manifest
from pipelines.records import AdapterOutcome
from pipelines.train import train


def timed_train(clips, output: str, run_id: str, cfg) -> dict:
    layout = RunLayout(output, run_id)
    started = time.time()
    result = train(clips, layout, cfg)
    wall = time.time() - started
    workers = cfg.pipeline.num_gangs * cfg.pipeline.workers_per_gang
    outcomes = [o for o in result.adapters.values() if o.trained]
    # per driver thread (a gang, or per_clip's sequence of runs): first lease - start = start-up,
    # last completion -> end = tail, the rest between clips = gaps (per_clip: mostly each clip's own start-up)
    by_gang: dict[str, list[AdapterOutcome]] = {}
    for o in outcomes:
        by_gang.setdefault(o.gang.split("-clip")[0], []).append(o)
    startup = sum(min(o.leased_at or started for o in os_) - started for os_ in by_gang.values())
    tail = sum(started + wall - max(o.completed_at or started + wall for o in os_) for os_ in by_gang.values())
    busy = workers * wall
    tune = result.tune_seconds * cfg.pipeline.workers_per_gang  # every rank of a gang tunes each clip
    idle_gangs = max(0, cfg.pipeline.num_gangs - len(by_gang)) * wall * cfg.pipeline.workers_per_gang
    return {
        "scheduler": cfg.pipeline.scheduler, "clips": len(clips), "trained": len(outcomes), "failed": len(result.failures),
        "wall_s": wall, "clips_per_hour": 3600 * len(outcomes) / wall, "tune_s": result.tune_seconds,
        "efficiency": tune / busy,
        "startup_share": startup * cfg.pipeline.workers_per_gang / busy,
        "gaps_share": (busy - tune - startup * cfg.pipeline.workers_per_gang - tail * cfg.pipeline.workers_per_gang - idle_gangs) / busy,
        "tail_share": (tail * cfg.pipeline.workers_per_gang + idle_gangs) / busy,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=int, default=16)
    p.add_argument("--steps", type=int, nargs="+", default=[5, 20],
                   help="tune.steps budgets at which gangs and per_clip are compared (the same for both)")
    p.add_argument("--large", type=int, default=48, help="clips for the efficiency measurement (0 skips it)")
    p.add_argument("--large-steps", type=int, default=50, help="tune.steps of the efficiency measurement")
    p.add_argument("--gangs", type=int, default=2, help="gangs, and per_clip runs side by side")
    p.add_argument("--num-cpus", type=int, default=4, help="logical CPUs of the embedded Ray")
    p.add_argument("--base-model", default=str(BASE_DIR))
    p.add_argument("--out", default="benchmarks/results/throughput.md")
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="mc-throughput-"))
    manifest = load_manifest(str(write_clips(sample_specs(max(args.clips, args.large), 0, HELD_OUT_MOTIONS), work / "clips")))
    common = [f"pipeline.num_gangs={args.gangs}", "pipeline.start_timeout_s=600", f"model.base_model={args.base_model}"]
    runs = [(steps, args.clips, scheduler) for steps in args.steps for scheduler in ("gangs", "per_clip")]
    runs += [(args.large_steps, args.large, "gangs")] if args.large else []
    rows = []
    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, namespace="mc-throughput")
    try:
        clips = ingest(manifest.rows, RunLayout(str(work / "out"), "ingest"), load_config(None, common)).clips
        for steps, count, scheduler in runs:
            cfg = load_config(None, [*common, f"tune.steps={steps}", f"pipeline.scheduler={scheduler}"])
            rows.append({"steps": steps, **timed_train(clips[:count], str(work / "out"), f"{scheduler}-{count}-{steps}", cfg)})
            print(row_text(rows[-1]), flush=True)
    finally:
        ray.shutdown()

    speedups = [f"{steps} steps: **{gangs['clips_per_hour'] / per_clip['clips_per_hour']:.1f}x**"
                for steps, gangs, per_clip in zip(args.steps, rows[0::2], rows[1::2])]
    lines = [
        "# Training throughput: gangs vs per_clip",
        "",
        f"`python benchmarks/throughput.py --clips {args.clips} --steps {' '.join(map(str, args.steps))} --large {args.large} "
        f"--large-steps {args.large_steps} --gangs {args.gangs}`; base `{Path(args.base_model).name}`, {args.gangs} gangs x 1 worker "
        f"(per_clip: {args.gangs} runs side by side), Ray with {args.num_cpus} logical CPUs on this 2-core machine; "
        f"measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
        "| tune.steps | scheduler | clips | trained | wall s | clips/hour | tune s | efficiency | start-up | gaps | tail |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *[row_text(r) for r in rows],
        "",
        f"gangs vs per_clip on {args.clips} clips, clips/hour (goal >= 3x): " + "; ".join(speedups) + ".",
        *([f"Orchestration efficiency of gangs on {args.large} clips at {args.large_steps} steps: "
           f"**{rows[-1]['efficiency']:.2f}** (goal >= 0.9)."] if args.large else []),
        "",
        "efficiency = time inside tune_clip / (wall x workers); the other columns split the rest of wall x workers:",
        "start-up = until a gang's first lease (Ray Train worker group start + loading the base),",
        "gaps = between one clip's tuning and the next (lease, frame load, adapter commit, driver polling;",
        "for per_clip this is each clip's own worker-group start and base load),",
        "tail = gangs idle at the end while the last clips finish.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)


def row_text(r: dict) -> str:
    return (f"| {r['steps']} | {r['scheduler']} | {r['clips']} | {r['trained']} | {r['wall_s']:.0f} | {r['clips_per_hour']:.0f} | "
            f"{r['tune_s']:.0f} | {r['efficiency']:.2f} | {r['startup_share']:.2f} | {r['gaps_share']:.2f} | {r['tail_share']:.2f} |")


if __name__ == "__main__":
    main()
