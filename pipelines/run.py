"""The driver: `motioncrafter run --manifest URI --output URI [--config FILE] [--run-id ID]
[--base-model URI] [--set section.key=value ...]`.

    manifest -> ingest (Ray Data) -> train (Ray Train gangs) -> render -> evaluate -> report

Output at <output>/<run_id>/ as `motioncrafter.runformat` lays it out. Every manifest row ends
exactly once in summary/ or failures/. Running again with the same run id
resumes: committed adapters are kept and cached clips are not decoded again.
Exit code 0 when the run completed (failed rows included), 1 with a one-line
reason when it could not proceed, 128 + the signal (130, 143) when SIGINT or SIGTERM
stopped it (`pipelines.interrupt`: run.json says "interrupted"; the same run id resumes).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field, replace
from importlib import metadata

import ray

from motioncrafter import storage
from motioncrafter.config import Config, ConfigError, PipelineConfig, load_config
from motioncrafter.runformat import Failure, RunLayout, read_table, write_table
from motioncrafter.toyworld import BASE_DIR
from pipelines import report
from pipelines.evaluate import EvaluateResult, evaluate
from pipelines.ingest import IngestResult, ingest
from pipelines.interrupt import Interrupted, Interrupts, leave
from pipelines.manifest import Manifest, ManifestError, load_manifest
from pipelines.render import render_motions, stored_renders, write_renders
from pipelines.records import AdapterOutcome
from pipelines.train import TrainResult, committed_only, train

log = logging.getLogger("motioncrafter.run")
PACKAGES = ("motioncrafter", "torch", "diffusers", "transformers", "peft", "ray", "deepspeed", "pyarrow", "fsspec", "s3fs")


def absolute_uri(uri: str) -> str:
    """Local paths become absolute: Ray workers do not share the driver's working directory."""
    return uri if "://" in uri else os.path.abspath(os.path.expanduser(uri))


def _versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def _connect(pc: PipelineConfig) -> bool:
    """Join the Ray the caller already started, a cluster at `ray_address`, or start one embedded
    here. Returns whether we started (and so must stop) it."""
    if ray.is_initialized():
        return False
    address = pc.ray_address or os.environ.get("RAY_ADDRESS")  # set for drivers of `ray job submit`
    if address:
        ray.init(address=address, namespace="motioncrafter")
    else:  # "local": a Ray of our own, even where a `ray start` head's address file lingers in /tmp/ray
        ray.init(address="local", num_cpus=pc.ray_num_cpus or None, dashboard_host=pc.dashboard_host,
                 namespace="motioncrafter")
    return True


def _check_base(uri: str) -> None:
    """A missing base would fail every clip in every worker; say so once, before anything starts."""
    if not storage.exists(storage.join(uri, "model_index.json")):
        raise FileNotFoundError(f"base model {storage.redact(uri)}: not a diffusers folder (no model_index.json); "
                                "give one with --base-model")


def _account(total: int, rows: dict[int, str], summary: list[dict], failures: list[Failure]) -> list[Failure]:
    """The invariant: each manifest row in exactly one of summary and failures. A row with no
    outcome (it would take a bug) still gets a failure row, never silently disappears."""
    seen = {r["row"] for r in summary} | {f.row for f in failures}
    lost = [Failure(rows.get(i, ""), i, "pipeline", "no outcome recorded for this row (internal error)")
            for i in range(total) if i not in seen]
    for f in lost:
        log.error("row %d (%s): %s", f.row, f.motion_id, f.reason)
    return lost


STAGES = ("ingest", "train", "render", "evaluate", "report")

# What each command does with each stage: "run" it, "read" what an earlier run of the run id left on
# storage, or (render) "stream" its videos straight into evaluate / "write" them and stop. A stage a
# plan does not name is neither run nor read.
PLANS: dict[str | None, dict[str, str]] = {
    None: {"ingest": "run", "train": "run", "render": "stream", "evaluate": "run"},
    "ingest": {"ingest": "run"},
    "train": {"ingest": "read", "train": "run"},
    "render": {"ingest": "read", "train": "read", "render": "write"},
    "evaluate": {"ingest": "read", "train": "read", "render": "read", "evaluate": "run"},
}


@dataclass
class _State:
    """What the stages of one command hand each other."""

    layout: RunLayout
    cfg: Config
    manifest: Manifest
    earlier: dict  # run.json of the previous run of this run id ({} for a new run)
    interrupts: Interrupts
    started_ray: bool = False
    ing: IngestResult | None = None
    tr: TrainResult = field(default_factory=lambda: TrainResult({}, [], 0, 0.0, 0.0))
    rendered: ray.data.Dataset | None = None
    rendering: int = 0  # motions in `rendered`
    rendered_videos: int = 0
    ev: EvaluateResult = field(default_factory=EvaluateResult)
    kept: list[dict] = field(default_factory=list)  # summary rows taken from the earlier run (not rendered again)
    kept_results: list[dict] = field(default_factory=list)

    def connect(self) -> None:
        """Ray, once a stage has work for it (a re-run with nothing left to do never starts it)."""
        self.started_ray = _connect(self.cfg.pipeline) or self.started_ray
        self.interrupts.arm()  # ray.init installs its own SIGTERM handler


def _ingest(st: _State, mode: str) -> None:
    st.ing = ingest(st.manifest.rows, st.layout, st.cfg, decode=mode == "run", connect=st.connect)


def _train(st: _State, mode: str) -> None:
    assert st.ing is not None
    st.tr = train(st.ing.clips, st.layout, st.cfg, st.connect) if mode == "run" else committed_only(st.ing.clips, st.layout)


def _render(st: _State, mode: str) -> None:
    assert st.ing is not None
    adapters = st.tr.adapters
    if mode == "stream":
        adapters = _keep_earlier_scores(st)
    if not adapters:
        return
    st.rendering = len(adapters)
    st.connect()
    if mode == "read":
        st.rendered = stored_renders(st.ing.clips, adapters, st.layout, st.cfg)
        return
    st.rendered = render_motions(st.ing.clips, adapters, st.layout, st.cfg)
    if mode == "write":
        st.rendered_videos, failures = write_renders(st.rendered, len(adapters))
        st.ev = EvaluateResult(failures=failures)


def _evaluate(st: _State, mode: str) -> None:
    if st.rendered is not None:
        st.ev = evaluate(st.rendered, st.rendering, st.cfg)


STEPS = {"ingest": _ingest, "train": _train, "render": _render, "evaluate": _evaluate}


def _keep_earlier_scores(st: _State) -> dict[str, AdapterOutcome]:
    """A whole run over what an earlier completed run of this run id already scored (same manifest,
    same config but for how it is spread over Ray): the motions whose adapters were kept take that
    run's summary and result rows instead of being rendered again. Returns the adapters to render."""
    earlier, cfg = st.earlier, st.cfg.to_dict()
    same = (earlier.get("status") == "completed" and earlier.get("command") in ("run", "evaluate")  # they write the scores
            and earlier.get("manifest", {}).get("sha256") == st.manifest.sha256
            and {k: v for k, v in earlier.get("config", {}).items() if k != "pipeline"} == {k: v for k, v in cfg.items() if k != "pipeline"})
    kept = {m for m, a in st.tr.adapters.items() if not a.trained} if same else set()
    if not kept:
        return st.tr.adapters
    by_motion = {r["motion_id"]: r for r in read_table(st.layout, "summary") if r["motion_id"] in kept}
    st.kept = list(by_motion.values())
    st.kept_results = [r for r in read_table(st.layout, "results") if r["motion_id"] in by_motion]
    return {m: a for m, a in st.tr.adapters.items() if m not in by_motion}


def run_pipeline(manifest_uri: str, output_uri: str, config: Config | None = None, run_id: str | None = None,
                 base_model: str | None = None, stage: str | None = None) -> dict:
    """Run the whole pipeline, or one `stage` of it alone; returns what run.json records. Raises only
    when the run cannot proceed (unreadable manifest, bad run id, unreachable output or cluster).

    Each command is a plan (`PLANS`): a stage run alone works on what the earlier stages of this run
    id left on storage and never redoes them: `train` takes the ingested clips (a clip not in the
    cache fails, it is not decoded), `render` the committed adapters (nothing is trained), `evaluate`
    the rendered videos (decoded from their MP4s), `report` the tables. The whole run renders and
    scores in one streaming pass instead, and keeps the scores of motions an earlier completed run
    of the same manifest and config already has.
    """
    cfg = config or Config()
    if base_model:
        cfg = replace(cfg, model=replace(cfg.model, base_model=base_model))
    if cfg.model.base_model:
        cfg = replace(cfg, model=replace(cfg.model, base_model=absolute_uri(cfg.model.base_model)))
    layout = RunLayout(absolute_uri(output_uri), run_id or time.strftime("run-%Y%m%d-%H%M%S", time.gmtime()))
    if stage == "report":
        return rewrite_report(layout)
    if stage not in PLANS:
        raise ValueError(f"unknown stage {stage!r}; one of {', '.join(STAGES)}")
    plan = PLANS[stage]
    started = time.time()
    manifest = load_manifest(absolute_uri(manifest_uri), cfg)
    _check_base(cfg.model.base_model or str(BASE_DIR))
    earlier = json.loads(storage.read_bytes(layout.run_json)) if storage.exists(layout.run_json) else {}
    info = {
        "run_id": layout.run_id, "status": "running", "command": stage or "run", "resumed": bool(earlier), "started_at": started,
        "manifest": {"uri": storage.redact(manifest.uri), "sha256": manifest.sha256, "rows": manifest.total,
                     "ignored_columns": manifest.ignored_columns},
        "output": storage.redact(layout.root), "config": cfg.to_dict(), "versions": _versions(),
    }
    storage.write_bytes(layout.run_json, _json(info))
    log.info("%s %s: %d manifest rows (%d invalid) -> %s", stage or "run", layout.run_id, manifest.total,
             len(manifest.failures), storage.redact(layout.root))

    planned = time.time() - started
    with Interrupts() as interrupts:
        st = _State(layout, cfg, manifest, earlier, interrupts)
        doing = "plan"
        try:
            for doing, mode in plan.items():
                _stage(f"{doing} ({mode})", lambda: STEPS[doing](st, mode))
            doing = "tables"
            return _finish(st, plan, info, started, planned)
        except Interrupted as err:
            # run.json first: `ray job stop` kills the driver 3 s after its SIGTERM
            log.warning("%s %s: %s during %s; the same --run-id resumes it", stage or "run", layout.run_id, err, doing)
            storage.write_bytes(layout.run_json, _json(info | {"status": "interrupted", "signal": err.signal, "interrupted_in": doing,
                                                                "interrupted_at": time.time(), "seconds": round(time.time() - started, 3)}))
            raise
        finally:
            # An interrupted run leaves Ray up: its gang threads are inside Ray Train's fit(), and Ray's
            # core worker ends the whole process (status 1, "The core worker has already been shutdown")
            # when a thread touches it after ray.shutdown(). The CLI leaves at once instead (`main`).
            if st.started_ray and ray.is_initialized() and not interrupts.fired:
                ray.shutdown()


def _finish(st: _State, plan: dict[str, str], info: dict, started: float, planned: float) -> dict:
    """The tables, report.html and the final run.json of a command whose stages have run."""
    layout, cfg, manifest = st.layout, st.cfg, st.manifest
    ing, tr, ev = st.ing, st.tr, st.ev
    assert ing is not None

    tables_started = time.time()
    prompts = {r.motion_id: r.prompt for r in manifest.rows}
    summary = [_summary_row(m, prompts[m["motion_id"]], tr.adapters[m["motion_id"]], layout) for m in [*st.kept, *ev.motions]]
    results = st.kept_results + ev.results
    failures = manifest.failures + ing.failures + (tr.failures if "train" in plan else []) + ev.failures
    scored = "evaluate" in plan
    if scored:  # every row has an outcome now
        failures += _account(manifest.total, {r.row: r.motion_id for r in manifest.rows}, summary, failures)
    failures.sort(key=lambda f: f.row)

    adapters = report.adapter_index(layout, {c.row.motion_id: c.row.row for c in ing.clips})
    write_table(layout, "adapters", adapters)
    write_table(layout, "failures", [f.to_row() for f in failures])
    if scored:
        write_table(layout, "results", results)
        write_table(layout, "summary", summary)

    info |= {
        "status": "completed", "finished_at": time.time(), "seconds": round(time.time() - started, 3),
        "stages": {
            "ingest": {"seconds": round(ing.seconds, 3), "clips": len(ing.clips), "indexed": ing.indexed, "decoded": ing.decoded,
                       "encoded": ing.encoded, "failed": len(ing.failures)},
            "train": {"seconds": round(tr.seconds, 3), "tune_seconds": round(tr.tune_seconds, 3), "scheduler": cfg.pipeline.scheduler,
                      "trained": sum(a.trained for a in tr.adapters.values()), "resumed": tr.resumed,
                      "failed": len(tr.failures), "gang_errors": tr.gang_errors, "commit_conflicts": sum(tr.conflicts.values()),
                      "preempted": sum(tr.preempted.values())},
            "render_evaluate": {"seconds": round(ev.seconds, 3), "motions": len(summary), "kept": len(st.kept),
                                # time inside the render / metric actors, summed over the motions done now
                                "render_seconds": round(sum(m["render_seconds"] for m in ev.motions), 3),
                                "eval_seconds": round(sum(m["eval_seconds"] for m in ev.motions), 3),
                                "videos": len(results) or st.rendered_videos, "failed": len(ev.failures)},
        },
        "counts": {"rows": manifest.total, "summary": len(summary), "failures": len(failures), "adapters": len(adapters)},
    }
    if scored:
        report.write_html(layout, info, summary, results, failures)
    info["driver"] = {"plan_seconds": round(planned, 3), "tables_seconds": round(time.time() - tables_started, 3)}
    storage.write_bytes(layout.run_json, _json(info))
    return info


def _stage(name: str, work):
    """One log line at the start and one at the end of a stage, with its time."""
    log.info("%s: started", name)
    started = time.time()
    result = work()
    log.info("%s: done in %.1f s", name, time.time() - started)
    return result


def rewrite_report(layout: RunLayout) -> dict:
    """`motioncrafter report`: report.html again from the run's run.json and tables (no Ray)."""
    if not storage.exists(layout.run_json):
        raise FileNotFoundError(f"{storage.redact(layout.root)}: no run.json; run the pipeline first")
    info = json.loads(storage.read_bytes(layout.run_json))
    summary, results, failures = report.read_tables(layout)
    report.write_html(layout, info, summary, results, failures)
    return info


def _summary_row(motion: dict, prompt: str, adapter: AdapterOutcome, layout: RunLayout) -> dict:
    """A motion's metrics (from evaluate) with where its files are and what training it took."""
    return {**motion, "prompt": prompt, "adapter_uri": adapter.adapter_uri, "grid_uri": layout.grid(motion["motion_id"]),
            "train_seconds": adapter.seconds, "train_attempts": adapter.attempts,
            "resumed": not adapter.trained}  # its adapter was committed by an earlier run of this run id


def _json(data: dict) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True, default=str) + "\n").encode()


STAGE_HELP = {
    None: ("Run the whole pipeline over a manifest on Ray: ingest, train, render + evaluate, report.",
           "motioncrafter run --manifest manifests/demo.jsonl --output runs/ --run-id demo --config manifests/demo.toml"),
    "ingest": ("Decode the manifest's clips and VAE-encode them into the output's cache (nothing else).",
               "motioncrafter ingest --manifest s3://bucket/clips.parquet --output s3://bucket/runs --run-id lib-v1"),
    "train": ("Tune a motion adapter for every ingested clip that has no committed one yet (no rendering).",
              "motioncrafter train --manifest s3://bucket/clips.parquet --output s3://bucket/runs --run-id lib-v1"),
    "render": ("Render the eval prompts x seeds of every committed adapter: videos and grids (no scoring).",
               "motioncrafter render --manifest m.jsonl --output runs/ --run-id demo --set 'render.seeds=[0,1,2,3]'"),
    "evaluate": ("Score the rendered videos on storage: results/, summary/, failures/ and report.html.",
                 "motioncrafter evaluate --manifest m.jsonl --output runs/ --run-id demo"),
    "report": ("Write report.html again from the run's run.json and tables (no Ray, no manifest).",
               "motioncrafter report --output runs/ --run-id demo"),
}


def build_parser(stage: str | None = None) -> argparse.ArgumentParser:
    description, example = STAGE_HELP[stage]
    p = argparse.ArgumentParser(prog=f"motioncrafter {stage or 'run'}", description=description,
                                epilog=f"example:\n  {example}", formatter_class=argparse.RawDescriptionHelpFormatter)
    if stage != "report":
        p.add_argument("--manifest", required=True, help="Parquet, JSONL or CSV manifest: path or fsspec URI")
    p.add_argument("--output", required=True, help="output folder: path or fsspec URI (s3://...); the run goes to <output>/<run-id>/")
    p.add_argument("--run-id", required=stage is not None,
                   help="name of the run (default for run: run-<UTC time>); the same id again resumes")
    if stage != "report":
        p.add_argument("--config", help="TOML or YAML config file (reference: docs/config.md)")
        p.add_argument("--base-model", help="diffusers folder or fsspec URI (default: the shipped MovingShapes base)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override one config field, e.g. --set tune.steps=100 (repeatable)")
    verbosity = p.add_mutually_exclusive_group()
    verbosity.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    verbosity.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(argv: list[str] | None = None, stage: str | None = None) -> int:
    args = build_parser(stage).parse_args(argv)
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("motioncrafter").setLevel(level)
    logging.getLogger("pipelines").setLevel(level)
    try:
        cfg = load_config(getattr(args, "config", None), getattr(args, "overrides", []))
        info = run_pipeline(getattr(args, "manifest", ""), args.output, cfg, args.run_id, getattr(args, "base_model", None), stage)
    except (ManifestError, ConfigError, ValueError, OSError, ConnectionError) as err:
        print(f"motioncrafter {stage or 'run'}: error: {err}".splitlines()[0], file=sys.stderr)
        return 1
    except Interrupted as err:
        print(f"motioncrafter {stage or 'run'}: {err}; run it again with the same --run-id to resume", file=sys.stderr)
        leave(err.exit_code)
    c = info.get("counts", {})
    if not args.quiet:
        print(f"{stage or 'run'} {info['run_id']} completed in {info.get('seconds', 0):.0f} s: {c.get('summary', 0)} motions, "
              f"{c.get('failures', 0)} failed rows, {c.get('adapters', 0)} adapters -> {info['output']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
