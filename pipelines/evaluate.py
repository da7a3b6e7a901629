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
from pipelines.ingest import load_frames
from pipelines.manifest import ManifestRow
from pipelines.render import STAGE as RENDER

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
        self.clip = ClipScorer(cfg.metrics.clip_model) if cfg.metrics.clip_model else None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        out: dict[str, list] = {"row_json": [], "results_json": [], "summary_json": [], "render_seconds": [],
                                "eval_seconds": [], "stage": [], "error": []}
        for i, row_json in enumerate(batch["row_json"]):
            started = time.time()
            stage, error, results, summary = RENDER, str(batch["error"][i]), [], {}
            if not error:
                try:
                    stage = STAGE
                    results, summary = self._score(ManifestRow(**json.loads(row_json)), batch, i)
                except Exception as err:  # this motion's failure, not the dataset's
                    error = f"{type(err).__name__}: {err}"
            out["row_json"].append(row_json)
            out["results_json"].append(json.dumps(results))
            out["summary_json"].append(json.dumps(summary))
            out["render_seconds"].append(float(batch["render_seconds"][i]))
            out["eval_seconds"].append(time.time() - started)
            out["stage"].append(stage)
            out["error"].append(error)
        return out

    def _score(self, row: ManifestRow, batch: dict, i: int) -> tuple[list[dict], dict]:
        videos = np.frombuffer(batch["videos"][i], np.uint8).reshape([int(n) for n in batch["shape"][i]])
        pairs, uris = json.loads(batch["pairs_json"][i]), json.loads(batch["uris_json"][i])
        reference = load_frames(str(batch["frames_uri"][i]))
        results, metrics = [], []
        for k, ((prompt, seed), (mp4, gif), video) in enumerate(zip(pairs, uris, videos)):
            scores = score_video(video, prompt, reference, row.prompt, self.cfg, self.clip)
            metrics.append(scores)
            results.append({"motion_id": row.motion_id, "row": row.row, "k": k, "prompt": prompt, "seed": int(seed),
                            "video_uri": mp4, "gif_uri": gif, **scores})
        summary = summarize(metrics, [p for p, _ in pairs], list(videos))
        return results, {"num_videos": len(results), **summary}


def evaluate(rendered: ray.data.Dataset, total: int, cfg: Config) -> EvaluateResult:
    """Score every rendered motion; render and evaluation errors become failure rows."""
    started = time.time()
    ds = rendered.map_batches(Evaluator, fn_constructor_args=(cfg,), batch_size=1,
                              compute=ray.data.ActorPoolStrategy(size=min(cfg.pipeline.evaluate_concurrency, total)), num_cpus=1)
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
