"""Helpers of the pipeline tests (fixtures are in conftest.py): tiny configs, MovingShapes manifests, a small Ray."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from motioncrafter.config import Config, load_config

# Tiny everything: the tests check the pipeline's plumbing, not the method's quality.
TINY = ["tune.steps=2", "tune.log_every=1", "render.num_steps=2", "render.seeds=[0]", "pipeline.lease_seconds=30",
        "pipeline.start_timeout_s=300"]


def tiny_config(*overrides: str) -> Config:
    return load_config(None, [*TINY, *overrides])


def write_manifest(folder: Path, count: int, seed: int = 0, name: str = "manifest.jsonl") -> Path:
    """`count` MovingShapes clips of held-out motions under folder/clips, as JSONL with URIs relative to it."""
    from motioncrafter.toyworld.world import HELD_OUT_MOTIONS, sample_specs, write_clips

    written = write_clips(sample_specs(count, seed, HELD_OUT_MOTIONS), folder / "clips")
    rows = [json.loads(line) for line in written.read_text().splitlines()]
    for row in rows:
        row["video_uri"] = f"clips/{row['video_uri']}"
    path = folder / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def start_ray(**kwargs) -> None:
    """A small local Ray of our own (other test sessions may run beside us on the machine)."""
    import ray

    options = {"address": "local", "num_cpus": 4, "object_store_memory": 200 * 2**20, "include_dashboard": False,
               "namespace": f"mc-test-{uuid.uuid4().hex[:8]}"}
    for attempt in (1, 2, 3):
        try:
            ray.init(**(options | kwargs))
            return
        except Exception as err:
            # On a starved 2-core machine Ray's dashboard agent can miss the raylet's fixed ~20 s
            # start-up window (the raylet then aborts). A second try finds Ray's modules in the page
            # cache and usually makes it.
            if "timed out during startup" not in str(err) or attempt == 3:
                raise
            ray.shutdown()
