"""Where a run's files go: DESIGN.md section 5, in one place.

    <output>/<run_id>/run.json, adapters/<motion_id>/..., adapters.parquet,
                      videos/<motion_id>/<k>.mp4|gif, grids/<motion_id>.png,
                      results/, summary/, failures/, report.html
    <output>/_cache/  decoded frames and VAE latents by content hash, shared by
                      every run under <output> (a re-run never decodes a clip twice)

Every id that becomes a path component has passed `manifest.check_id`, so no
manifest value can reach outside the run's folder.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from motioncrafter.storage import join

RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
COMMITTED = "_COMMITTED"


def absolute_uri(uri: str) -> str:
    """Local paths become absolute: Ray workers do not share the driver's working directory."""
    return uri if "://" in uri else os.path.abspath(os.path.expanduser(uri))


@dataclass(frozen=True)
class RunLayout:
    output: str  # the --output URI
    run_id: str

    def __post_init__(self) -> None:
        if not RUN_ID_PATTERN.fullmatch(self.run_id):
            raise ValueError(f"run id {self.run_id!r} must match {RUN_ID_PATTERN.pattern}")

    @property
    def root(self) -> str:
        return join(self.output, self.run_id)

    @property
    def run_json(self) -> str:
        return join(self.root, "run.json")

    def adapter(self, motion_id: str) -> str:
        return join(self.root, "adapters", motion_id)

    def committed(self, motion_id: str) -> str:
        return join(self.adapter(motion_id), COMMITTED)

    @property
    def adapters_index(self) -> str:
        return join(self.root, "adapters.parquet")

    def video(self, motion_id: str, k: int, ext: str) -> str:
        return join(self.root, "videos", motion_id, f"{k}.{ext}")

    def grid(self, motion_id: str) -> str:
        return join(self.root, "grids", f"{motion_id}.png")

    def table(self, name: str) -> str:
        """results / summary / failures: one Parquet file in a folder of that name."""
        return join(self.root, name, f"{name}.parquet")

    @property
    def report(self) -> str:
        return join(self.root, "report.html")

    def frames_cache(self, key: str) -> str:
        return join(self.output, "_cache", "frames", f"{key}.safetensors")

    def latents_cache(self, base_fingerprint: str, key: str) -> str:
        return join(self.output, "_cache", "latents", base_fingerprint, f"{key}.safetensors")
