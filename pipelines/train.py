"""Train (Ray Train): gangs of workers pull clips from a lease-based queue and tune them.

A *gang* is one Ray Train worker group (`TorchTrainer`, `workers_per_gang`
ranks, gloo on CPU / nccl on GPU). Each of its workers opens the base model
once, then loops: rank 0 leases a clip from the `LeaseQueue` actor and shares
it with the other ranks, every rank runs `tune_clip` on it (data-parallel with
the DeepSpeed engine; the engine is only `tune.engine` in the config), rank 0
commits the adapter and leases the next. `num_gangs` gangs run side by side.

Exactly once: an adapter's files are written first and its `_COMMITTED`
marker last; only a marker makes an adapter count. A clip whose marker exists
is never tuned again, whether it is found so before queueing (a resumed run)
or after a lease (a gang died between commit and reporting it).

Faults: rank 0 renews its lease while tuning. A lease that is not renewed in
`lease_seconds` (dead worker, lost node) returns the clip to the queue; after
`max_attempts` leases the clip fails with its last error. A gang whose worker
dies is restarted by Ray Train (`FailureConfig`) and goes on with the queue.

`scheduler = "per_clip"` runs one TorchTrainer per clip instead (the same loop,
stopping after one clip): simpler, and the baseline the gangs are measured against.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
import uuid
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace

import ray
import torch
from ray.train import FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from tqdm.auto import tqdm

from motioncrafter import storage
from motioncrafter.adapters import save_adapter
from motioncrafter.base import open_base
from motioncrafter.config import Config
from motioncrafter.runformat import AdapterProvenance, CommitMarker, Failure, RunLayout, committed_adapters
from motioncrafter.trainer import tune_clip
from pipelines.ingest import Clip, load_array, load_frames
from pipelines.manifest import ManifestRow

STAGE = "train"
log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    adapters: dict[str, dict]  # motion_id -> outcome (adapter_uri, trained, seconds, attempts, gang)
    failures: list[Failure]
    resumed: int  # committed by an earlier run of the same run id: not tuned again
    tune_seconds: float  # time inside tune_clip, summed over clips (orchestration efficiency)
    seconds: float
    conflicts: dict[str, int] = field(default_factory=dict)  # motion_id -> tuned again after its commit (should be empty)
    gang_errors: list[str] = field(default_factory=list)


# ----------------------------------------------------------------- the queue


@ray.remote(num_cpus=0, max_restarts=0)
class LeaseQueue:
    """Hands out clips under leases that expire unless renewed.

    States of a clip: pending -> leased -> done | failed, or leased -> pending
    again when its lease expires or its gang reports a retryable error, until
    `max_attempts` leases have been spent.
    """

    def __init__(self, items: list[dict], max_attempts: int, lease_seconds: float):
        self.items = {it["motion_id"]: it for it in items}
        self.pending = deque(self.items)
        self.leases: dict[str, tuple[str, str, float]] = {}  # lease id -> (motion_id, gang, expiry)
        self.attempts: Counter = Counter()
        self.conflicts: Counter = Counter()
        self.done: dict[str, dict] = {}
        self.failed: dict[str, str] = {}
        self.leased_at: dict[str, float] = {}  # wall clock of each clip's latest lease (where the time goes: benchmarks)
        self.max_attempts, self.lease_seconds = max_attempts, lease_seconds
        self.counter = 0

    def _reap(self) -> None:
        now = time.monotonic()
        for lease_id, (motion_id, gang, expiry) in list(self.leases.items()):
            if expiry < now:
                del self.leases[lease_id]
                self._retry(motion_id, f"lease expired: {gang} stopped renewing it (worker or node lost)")

    def _retry(self, motion_id: str, reason: str) -> None:
        if motion_id in self.done or motion_id in self.failed:
            return
        if self.attempts[motion_id] >= self.max_attempts:
            self.failed[motion_id] = f"gave up after {self.attempts[motion_id]} attempts; last: {reason}"
        else:
            self.pending.append(motion_id)

    def lease(self, gang: str) -> dict:
        """{"status": "lease", ...} with a clip, "wait" (clips are leased elsewhere and may come back), or "done"."""
        self._reap()
        if not self.pending:
            return {"status": "wait" if self.leases else "done"}
        motion_id = self.pending.popleft()
        self.attempts[motion_id] += 1
        self.counter += 1
        lease_id = f"{gang}#{self.counter}"
        self.leases[lease_id] = (motion_id, gang, time.monotonic() + self.lease_seconds)
        self.leased_at[motion_id] = time.time()
        return {"status": "lease", "lease": lease_id, "item": self.items[motion_id], "attempt": self.attempts[motion_id]}

    def renew(self, lease_id: str) -> bool:
        self._reap()
        if lease_id not in self.leases:
            return False
        motion_id, gang, _ = self.leases[lease_id]
        self.leases[lease_id] = (motion_id, gang, time.monotonic() + self.lease_seconds)
        return True

    def conflict(self, motion_id: str) -> None:
        """A gang tuned a clip that turned out to be committed already (exactly-once was at risk; the first commit stands)."""
        self.conflicts[motion_id] += 1

    def complete(self, lease_id: str, outcome: dict) -> None:
        """The clip's adapter is committed. Accepted even if the lease expired meanwhile:
        the marker is on storage, so the clip is done whoever holds it now."""
        self.leases.pop(lease_id, None)
        motion_id = outcome["motion_id"]
        if motion_id in self.done or motion_id in self.failed:
            return
        self.done[motion_id] = {**outcome, "attempts": self.attempts[motion_id],
                                "leased_at": self.leased_at.get(motion_id), "completed_at": time.time()}
        if motion_id in self.pending:
            self.pending.remove(motion_id)

    def fail(self, lease_id: str, reason: str, retry: bool) -> None:
        lease = self.leases.pop(lease_id, None)
        if lease is None:
            return  # the lease expired and the clip was already put back
        if retry:
            self._retry(lease[0], reason)
        elif lease[0] not in self.done:
            self.failed[lease[0]] = reason

    def progress(self) -> dict:
        self._reap()
        return {"pending": len(self.pending), "leased": len(self.leases), "done": len(self.done), "failed": len(self.failed)}

    def close(self, reason: str) -> tuple[dict, dict, dict]:
        """End the queue: clips not finished fail with `reason`; returns (done, failed, conflicts)."""
        for motion_id in self.items:
            if motion_id not in self.done and motion_id not in self.failed:
                self.failed[motion_id] = reason
        self.pending.clear()
        self.leases.clear()
        return self.done, self.failed, dict(self.conflicts)


# ------------------------------------------------------------ a gang's workers


class _Renewer:
    """Renews a lease every quarter of its length while the block runs (rank 0 only)."""

    def __init__(self, queue, lease_id: str, lease_seconds: float):
        self.queue, self.lease_id, self.period = queue, lease_id, lease_seconds / 4
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(self.period):
            self.queue.renew.remote(self.lease_id)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def _from_rank0(rank: int, world: int, make):
    """`make()` on rank 0, the same object on every rank of the gang."""
    obj = [make() if rank == 0 else None]
    if world > 1:
        torch.distributed.broadcast_object_list(obj, src=0)
    return obj[0]


def _lease(queue, gang: str) -> dict:
    msg = ray.get(queue.lease.remote(gang))
    if msg["status"] == "lease":  # committed by an attempt whose completion never arrived: do not tune again
        msg["committed"] = storage.exists(msg["item"]["committed_uri"])
    return msg


def gang_loop(config: dict) -> None:
    """Every worker of a gang runs this: open the base once, then tune leased clips until the queue is done."""
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    cfg: Config = config["cfg"]
    queue, gang = config["queue"], config["gang"]
    base = open_base(cfg.model)
    tuned = 0
    while not config["max_clips"] or tuned < config["max_clips"]:
        msg = _from_rank0(rank, world, lambda: _lease(queue, gang))
        if msg["status"] == "done":
            return
        if msg["status"] == "wait":
            time.sleep(min(1.0, cfg.pipeline.lease_seconds / 4))
            continue
        tuned += 1
        if msg["committed"]:
            if rank == 0:
                queue.complete.remote(msg["lease"], _outcome(msg, gang, trained=False, seconds=0.0))
            continue
        with _Renewer(queue, msg["lease"], cfg.pipeline.lease_seconds) if rank == 0 else nullcontext():
            _tune_leased(base, msg, cfg, queue, gang, rank)


def _outcome(msg: dict, gang: str, **fields) -> dict:
    item = msg["item"]
    return {"motion_id": item["motion_id"], "row": item["row"]["row"], "adapter_uri": item["adapter_uri"], "gang": gang, **fields}


def _tune_leased(base, msg: dict, cfg: Config, queue, gang: str, rank: int) -> None:
    """Tune one leased clip on every rank; rank 0 commits it (files, then the marker) and reports."""

    item, lease = msg["item"], msg["lease"]
    row = ManifestRow(**item["row"])
    try:
        row_cfg = row.config(cfg)
        tune = replace(row_cfg.tune, progress=False)  # the driver shows progress; per-step bars from many workers only garble logs
        frames = load_frames(item["frames_uri"])
        latents = torch.from_numpy(load_array(item["latents_uri"], "latents"))
        result = tune_clip(base, frames, row.prompt, tune, row_cfg.adapter, row_cfg.enhance, subject=row.subject, latents=latents)
    except Exception as err:
        # Bad input (ValueError) fails the same way on every attempt: fail it now. Anything else may be transient.
        if rank == 0:
            queue.fail.remote(lease, f"{type(err).__name__}: {err}", not isinstance(err, ValueError))
        return
    if rank != 0 or not ray.get(queue.renew.remote(lease)):
        return  # rank 0 lost the lease (it could not renew in time): the clip is someone else's now
    try:
        fresh = _commit(result, msg, gang)
    except Exception as err:
        queue.fail.remote(lease, f"commit failed: {type(err).__name__}: {err}", True)
        return
    if not fresh:
        queue.conflict.remote(row.motion_id)
    final = result.history[-1] if result.history else {}
    queue.complete.remote(lease, _outcome(msg, gang, trained=fresh, seconds=result.seconds, final_loss=final.get("loss")))


def _commit(result, msg: dict, gang: str) -> bool:
    """Write the adapter's files, then its marker, exclusively. False: the clip was committed already
    (by an earlier holder whose lease had lapsed while it still worked); that commit stands untouched."""
    item = msg["item"]
    if storage.exists(item["committed_uri"]):
        return False
    result.adapter.meta["pipeline"] = asdict(AdapterProvenance(item["motion_id"], item["row"]["row"], item["run_id"]))
    save_adapter(result.adapter, item["adapter_uri"])
    # `writer` makes this marker's bytes this attempt's own: a create retried after a time-out that had
    # in fact succeeded finds its own marker (storage.create_exclusive), not a conflict
    marker = CommitMarker(item["motion_id"], item["clip_sha256"], item["run_id"], gang, msg["attempt"],
                          round(result.seconds, 3), time.time(), writer=uuid.uuid4().hex)
    # create, never overwrite (a hard link or O_EXCL locally, an S3 conditional PUT): one marker per clip whatever races
    return storage.create_exclusive(item["committed_uri"], marker.to_json())


# ------------------------------------------------------------------- driver


def queue_name(run_id: str) -> str:
    return f"motioncrafter-queue-{run_id}"


def _item(clip: Clip, layout: RunLayout) -> dict:
    motion_id = clip.row.motion_id
    return {"motion_id": motion_id, "row": clip.row.to_dict(), "frames_uri": clip.frames_uri, "latents_uri": clip.latents_uri,
            "clip_sha256": clip.clip_sha256,
            "adapter_uri": layout.adapter(motion_id), "committed_uri": layout.committed(motion_id), "run_id": layout.run_id}


def _fit(name: str, cfg: Config, queue, max_clips: int) -> None:
    pc = cfg.pipeline
    resources = {"CPU": pc.cpus_per_worker} | ({"GPU": pc.gpus_per_worker} if pc.gpus_per_worker else {})
    trainer = TorchTrainer(
        gang_loop,
        train_loop_config={"cfg": cfg, "queue": queue, "gang": name, "max_clips": max_clips},
        scaling_config=ScalingConfig(num_workers=pc.workers_per_gang, use_gpu=pc.gpus_per_worker > 0, resources_per_worker=resources),
        run_config=RunConfig(
            name=name,
            # Ray Train's own bookkeeping; nothing of the run's output goes there (no checkpoints are reported)
            storage_path=os.path.join(tempfile.gettempdir(), "motioncrafter-ray-train"),
            failure_config=FailureConfig(max_failures=pc.max_gang_restarts),
        ),
    )
    trainer.fit()


def _drive(index: int, cfg: Config, queue, run_id: str) -> str | None:
    """One driver thread: a long-lived gang, or (per_clip) one Ray Train run per clip until the queue is empty.
    Returns the gang's error if it gave up."""
    name = f"{run_id}-gang{index}"
    try:
        if cfg.pipeline.scheduler == "gangs":
            _fit(name, cfg, queue, max_clips=0)
        else:
            n = 0
            while (p := ray.get(queue.progress.remote()))["pending"] + p["leased"]:
                n += 1
                _fit(f"{name}-clip{n}", cfg, queue, max_clips=1)
        return None
    except Exception as err:  # the gang is out of restarts; the other gangs go on with the queue
        log.error("%s stopped: %s", name, err)
        return f"{name}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"


def _committed(clips: list[Clip], layout: RunLayout) -> tuple[dict[str, dict], list[Clip]]:
    """The clips whose adapter an earlier run of this run id committed (one listing of adapters/), and the others."""
    committed = committed_adapters(layout)
    adapters, todo = {}, []
    for clip in clips:
        motion_id = clip.row.motion_id
        if motion_id in committed:
            adapters[motion_id] = {"motion_id": motion_id, "row": clip.row.row, "trained": False,
                                   "adapter_uri": layout.adapter(motion_id), "seconds": 0.0, "attempts": 0}
        else:
            todo.append(clip)
    return adapters, todo


def committed_only(clips: list[Clip], layout: RunLayout) -> TrainResult:
    """For later stages run alone: the committed adapters; a clip without one fails, nothing is trained."""
    started = time.time()
    adapters, todo = _committed(clips, layout)
    failures = [Failure(c.row.motion_id, c.row.row, STAGE, "no committed adapter: run `motioncrafter train` first")
                for c in todo]
    return TrainResult(adapters, failures, len(adapters), 0.0, time.time() - started)


def train(clips: list[Clip], layout: RunLayout, cfg: Config) -> TrainResult:
    """Tune every clip without a committed adapter; committed ones (a resumed run) are kept as they are."""
    started = time.time()
    pc = cfg.pipeline
    adapters, todo = _committed(clips, layout)
    resumed = len(adapters)
    if not todo:
        return TrainResult(adapters, [], resumed, 0.0, time.time() - started)

    # Ray Train waits this long for a gang's workers; on a busy machine the default (60 s) is too short.
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", str(pc.start_timeout_s))
    # The queue lives on the driver's node: if that node goes, the run goes with it anyway. It is named
    # after the run, so a second driver on the same run id fails here instead of racing this one,
    # and anyone can watch it: ray.get_actor(queue_name(run_id)).progress.remote().
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    queue = LeaseQueue.options(name=queue_name(layout.run_id), scheduling_strategy=here).remote(
        [_item(c, layout) for c in todo], pc.max_attempts, pc.lease_seconds)
    with ThreadPoolExecutor(pc.num_gangs) as pool, tqdm(total=len(todo), desc=f"train ({pc.scheduler})", unit="clip") as bar:
        futures = [pool.submit(_drive, i, cfg, queue, layout.run_id) for i in range(pc.num_gangs)]
        while not all(f.done() for f in futures):
            p = ray.get(queue.progress.remote())
            bar.n = p["done"] + p["failed"]
            bar.set_postfix(leased=p["leased"], failed=p["failed"])
            bar.refresh()
            time.sleep(1.0)
        errors = [e for e in (f.result() for f in futures) if e]
    done, failed, conflicts = ray.get(queue.close.remote("no gang left to train it: " + "; ".join(errors) if errors else "not trained"))
    ray.kill(queue)

    adapters |= done
    rows = {c.row.motion_id: c.row for c in todo}
    failures = [Failure(m, rows[m].row, STAGE, reason) for m, reason in failed.items()]
    tune_seconds = sum(o["seconds"] for o in done.values())
    return TrainResult(adapters, failures, resumed, tune_seconds, time.time() - started, conflicts, errors)
