"""Records the stages hand each other that the lease queue holds too.

Kept apart from `pipelines.train` on purpose: the queue actor unpickles them, and importing this
module costs it no torch, Ray Train or model code (a worker that must import those can miss Ray's
worker start-up deadline on a loaded node).
"""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.manifest import ManifestRow


@dataclass(frozen=True)
class WorkItem:
    """What a gang leases: one ingested clip and where its adapter goes."""

    row: ManifestRow
    frames_uri: str
    latents_uri: str
    clip_sha256: str
    adapter_uri: str
    committed_uri: str
    run_id: str

    @property
    def motion_id(self) -> str:
        return self.row.motion_id


@dataclass(frozen=True)
class AdapterOutcome:
    """A clip's committed adapter, as the train stage reports it."""

    motion_id: str
    row: int
    adapter_uri: str
    trained: bool  # tuned by this run; False: committed by an earlier run of the run id
    seconds: float = 0.0  # inside tune_clip
    attempts: int = 0  # leases it took
    gang: str = ""
    final_loss: float | None = None
    leased_at: float | None = None  # wall clock of its last lease and of its completion (benchmarks)
    completed_at: float | None = None
