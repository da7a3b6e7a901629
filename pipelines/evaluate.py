"""Evaluate (Ray Data actors): metrics per rendered video and per motion.

An `Evaluator` actor holds the metric models (a CLIP model when one is
configured) and scores each motion's videos against its reference clip with
`motioncrafter.evaluate`: ground-truth MovingShapes metrics when the prompts
are MovingShapes captions, optical-flow and temporal metrics always.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import numpy as np
import ray

from motioncrafter.config import Config
from motioncrafter.evaluate import score_video, summarize
from motioncrafter.metrics import ClipScorer
from motioncrafter.progress import progress
from motioncrafter.runformat import Failure
from pipelines.devices import worker_device
from pipelines.ingest import load_frames
from pipelines.manifest import ManifestRow
from pipelines.render import STAGE as RENDER
from pipelines.render import RenderedMotion, rows_of

STAGE = "evaluate"


@dataclass
class EvaluateResult:
    results: list[dict] = field(default_factory=list)  # one row per video
    motions: list[dict] = field(default_factory=list)  # one row per motion: aggregates and timings
    failures: list[Failure] = field(default_factory=list)
    seconds: float = 0.0


class Evaluator:
    def __init__(self, cfg: Config):
        self.cfg = cfg.metrics
        self.clip = ClipScorer(cfg.metrics.clip_model, worker_device(cfg.model.device)) if cfg.metrics.clip_model else None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        out: dict[str, list] = {"row_json": [], "results_json": [], "summary_json": [], "render_seconds": [],
                                "eval_seconds": [], "stage": [], "error": []}
        for item in rows_of(batch):
            started = time.time()
            motion = RenderedMotion.from_row(item)
            stage, error = RENDER, motion.error
            results: list[dict] = []
            summary: dict = {}
            if not error:
                try:
                    stage = STAGE
                    results, summary = self._score(motion)
                except Exception as err:  # this motion's failure, not the dataset's
                    error = f"{type(err).__name__}: {err}"
            out["row_json"].append(item["row_json"])
            out["results_json"].append(json.dumps(results))
            out["summary_json"].append(json.dumps(summary))
            out["render_seconds"].append(motion.render_seconds)
            out["eval_seconds"].append(time.time() - started)
            out["stage"].append(stage)
            out["error"].append(error)
        return out

    def _score(self, motion: RenderedMotion) -> tuple[list[dict], dict]:
        row, videos, pairs = motion.row, motion.videos, motion.pairs
        assert videos is not None  # a rendered motion without an error has its videos
        reference = load_frames(motion.frames_uri)
        results, metrics = [], []
        for k, ((prompt, seed), (mp4, gif), video) in enumerate(zip(pairs, motion.uris, videos)):
            scores = score_video(video, prompt, reference, row.prompt, self.cfg, self.clip, reference_attributes=row.attributes or None)
            metrics.append(scores)
            results.append({"motion_id": row.motion_id, "row": row.row, "k": k, "prompt": prompt, "seed": int(seed),
                            "video_uri": mp4, "gif_uri": gif, **scores})
        summary = summarize(metrics, [p for p, _ in pairs], list(videos))
        return results, {"num_videos": len(results), **summary}


def evaluate(rendered: ray.data.Dataset, total: int, cfg: Config) -> EvaluateResult:
    """Score every rendered motion; render and evaluation errors become failure rows."""
    started = time.time()
    ds = rendered.map_batches(Evaluator, fn_constructor_args=(cfg,), batch_size=1,
                              compute=ray.data.ActorPoolStrategy(size=min(cfg.pipeline.evaluate_concurrency, total)), num_cpus=1,
                              num_gpus=cfg.pipeline.evaluate_gpus or None)
    results, motions, failures = [], [], []
    for out in progress(ds.iter_rows(), total=total, desc="render + evaluate", unit="motion"):
        row = ManifestRow(**json.loads(out["row_json"]))
        if out["error"]:
            failures.append(Failure(row.motion_id, row.row, out["stage"], out["error"]))
            continue
        results.extend(json.loads(out["results_json"]))
        motions.append({"motion_id": row.motion_id, "row": row.row, **json.loads(out["summary_json"]),
                        "render_seconds": float(out["render_seconds"]), "eval_seconds": float(out["eval_seconds"])})
    return EvaluateResult(results, motions, failures, time.time() - started)
