"""Train (Ray Train): gangs of workers pull clips from a lease-based queue and tune them.

A *gang* is one Ray Train worker group (`TorchTrainer`, `workers_per_gang`
ranks, gloo on CPU / nccl on GPU). Each of its workers opens the base model
once, then loops: rank 0 leases a clip from the lease queue actor (`pipelines.queue`) and shares
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

Preemption (a spot node reclaimed) is not the clip's fault, so it spends none of the clip's
attempts: the leased clip is *released* back to the front of the queue (`LeaseQueue.release`).
Ray Train 2.60 gives two signals, and both are used. Advance notice: when Ray Core drains a node
of the gang (`ray drain-node --reason DRAIN_NODE_REASON_PREEMPTION`, what the autoscaler / KubeRay
do on a spot reclaim notice), Ray Train's preemption watcher tells every worker; rank 0's renewer
then releases the clip it tunes at once, and the gang leases nothing more
(`ray.train.get_preemption_info()`) until Ray Train restarts it off the drained node at the drain
deadline (`FailureConfig.max_preemption_failures`, unlimited, counted apart from
`max_gang_restarts`). No notice: a worker that died with its node reports
`RayActorError.preempted` to Ray Train's controller, where `_ReleaseOnPreemption` (a
`ray.train.UserCallback`) releases the gang's leases. Any other death of a worker (a crash, an
OOM kill, a node lost for another reason) may be the clip's doing and spends its attempt.

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
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace

import ray
import torch
from ray.train import FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from motioncrafter import storage
from motioncrafter.adapters import save_adapter
from motioncrafter.config import Config
from motioncrafter.progress import progress
from motioncrafter.runformat import AdapterProvenance, CommitMarker, Failure, RunLayout, committed_adapters
from motioncrafter.trainer import tune_clip
from pipelines.devices import open_worker_base
from pipelines.ingest import Clip, load_array, load_frames
from pipelines.manifest import ManifestRow
from pipelines.queue import Closed, Lease, QueueActor
from pipelines.records import AdapterOutcome, WorkItem

STAGE = "train"
log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    adapters: dict[str, AdapterOutcome]
    failures: list[Failure]
    resumed: int  # committed by an earlier run of the same run id: not tuned again
    tune_seconds: float  # time inside tune_clip, summed over clips (orchestration efficiency)
    seconds: float
    conflicts: dict[str, int] = field(default_factory=dict)  # motion_id -> tuned again after its commit (should be empty)
    gang_errors: list[str] = field(default_factory=list)
    preempted: dict[str, int] = field(default_factory=dict)  # motion_id -> leases given back by a preemption


# ------------------------------------------------------------ a gang's workers


def _preemption_notice():
    """This worker's copy of Ray Train's preemption notice (None: no node of the gang is draining).

    `ray.train.get_preemption_info()` is a collective of all ranks; the renewer thread needs the
    value without one, so it reads what Ray Train's watcher stored on this worker (`mark_preempt`),
    which is what that call broadcasts from rank 0. An internal of Ray Train 2.60 (pinned in
    pyproject.toml; the drain test in tests/integration/test_pipeline_nodes.py goes through it)."""
    from ray.train.v2._internal.execution.context import get_train_context

    return get_train_context().preemption_context.preemption_info


def _preempted() -> bool:
    """Whether a node of this gang is being preempted (all ranks call it: a collective)."""
    return ray.train.get_preemption_info() is not None


class _Renewer:
    """Renews a lease every quarter of its length while the block runs (rank 0 only); releases it
    instead, without spending the clip's attempt, once a node of the gang is being preempted."""

    def __init__(self, queue, lease_id: str, lease_seconds: float):
        self.queue, self.lease_id, self.period = queue, lease_id, lease_seconds / 4
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        renewed = time.monotonic()
        while not self.stop.wait(min(self.period, 1.0)):  # the notice is looked at every second at least
            notice = _preemption_notice()
            if notice is not None:
                # the clip goes to another gang now; this tune's result is dropped (its renew fails)
                self.queue.release.remote(self.lease_id, f"node preempted (nodes {', '.join(notice.preempted_node_ids)})")
                return
            if time.monotonic() - renewed >= self.period:
                self.queue.renew.remote(self.lease_id)
                renewed = time.monotonic()

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


def _lease(queue, gang: str) -> tuple[Lease[WorkItem] | str, bool]:
    """The queue's answer, and whether the leased clip is committed already (by an attempt whose
    completion never arrived: it is not tuned again)."""
    got = ray.get(queue.lease.remote(gang))
    return got, isinstance(got, Lease) and storage.exists(got.item.committed_uri)


def gang_loop(config: dict) -> None:
    """Every worker of a gang runs this: open the base once, then tune leased clips until the queue is done."""
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    cfg: Config = config["cfg"]
    queue, gang = config["queue"], config["gang"]
    base = open_worker_base(cfg.model)  # the GPU Ray Train reserved for this rank, else the CPU
    tuned = 0
    while not config["max_clips"] or tuned < config["max_clips"]:
        if _preempted():  # lease nothing: Ray Train restarts the gang off the drained node at the deadline
            time.sleep(1.0)
            continue
        lease, committed = _from_rank0(rank, world, lambda: _lease(queue, gang))
        if lease == "done":
            return
        if not isinstance(lease, Lease):  # "wait": clips are leased elsewhere and may come back
            time.sleep(min(1.0, cfg.pipeline.lease_seconds / 4))
            continue
        tuned += 1
        if committed:
            if rank == 0:
                queue.complete.remote(lease.lease_id, lease.motion_id, _outcome(lease, gang, trained=False))
            continue
        with _Renewer(queue, lease.lease_id, cfg.pipeline.lease_seconds) if rank == 0 else nullcontext():
            _tune_leased(base, lease, cfg, queue, gang, rank)


def _outcome(lease: Lease[WorkItem], gang: str, trained: bool, seconds: float = 0.0, final_loss: float | None = None) -> AdapterOutcome:
    item = lease.item
    return AdapterOutcome(item.motion_id, item.row.row, item.adapter_uri, trained, seconds, lease.attempt, gang, final_loss)


def _tune_leased(base, lease: Lease[WorkItem], cfg: Config, queue, gang: str, rank: int) -> None:
    """Tune one leased clip on every rank; rank 0 commits it (files, then the marker) and reports."""
    item, row = lease.item, lease.item.row
    try:
        row_cfg = row.config(cfg)
        tune = replace(row_cfg.tune, progress=False)  # the driver shows progress; per-step bars from many workers only garble logs
        frames = load_frames(item.frames_uri)
        latents = torch.from_numpy(load_array(item.latents_uri, "latents"))
        result = tune_clip(base, frames, row.prompt, tune, row_cfg.adapter, row_cfg.enhance, subject=row.subject, latents=latents)
    except Exception as err:
        # Bad input (ValueError) fails the same way on every attempt: fail it now. Anything else may be transient.
        if rank == 0:
            queue.fail.remote(lease.lease_id, f"{type(err).__name__}: {err}", not isinstance(err, ValueError))
        return
    if rank != 0 or not ray.get(queue.renew.remote(lease.lease_id)):
        return  # rank 0 lost the lease (it could not renew in time): the clip is someone else's now
    try:
        fresh = _commit(result, lease, gang)
    except Exception as err:
        queue.fail.remote(lease.lease_id, f"commit failed: {type(err).__name__}: {err}", True)
        return
    if not fresh:
        queue.conflict.remote(row.motion_id)
    final = result.history[-1] if result.history else {}
    queue.complete.remote(lease.lease_id, row.motion_id, _outcome(lease, gang, fresh, result.seconds, final.get("loss")))


def _commit(result, lease: Lease[WorkItem], gang: str) -> bool:
    """Write the adapter's files, then its marker, exclusively. False: the clip was committed already
    (by an earlier holder whose lease had lapsed while it still worked); that commit stands untouched."""
    item = lease.item
    if storage.exists(item.committed_uri):
        return False
    result.adapter.meta["pipeline"] = asdict(AdapterProvenance(item.motion_id, item.row.row, item.run_id))
    save_adapter(result.adapter, item.adapter_uri)
    # `writer` makes this marker's bytes this attempt's own: a create retried after a time-out that had
    # in fact succeeded finds its own marker (storage.create_exclusive), not a conflict
    marker = CommitMarker(item.motion_id, item.clip_sha256, item.run_id, gang, lease.attempt,
                          round(result.seconds, 3), time.time(), writer=uuid.uuid4().hex)
    # create, never overwrite (a hard link or O_EXCL locally, an S3 conditional PUT): one marker per clip whatever races
    return storage.create_exclusive(item.committed_uri, marker.to_json())


# ------------------------------------------------------------------- driver


def queue_name(run_id: str) -> str:
    return f"motioncrafter-queue-{run_id}"


def _item(clip: Clip, layout: RunLayout) -> WorkItem:
    motion_id = clip.row.motion_id
    return WorkItem(clip.row, clip.frames_uri, clip.latents_uri, clip.clip_sha256, layout.adapter(motion_id),
                    layout.committed(motion_id), layout.run_id)


def is_preemption(error: BaseException) -> bool:
    """A worker's death by node preemption, as Ray Train's controller sees it: a `RayActorError`
    with `preempted` set (the node was drained for preemption), bare or inside Ray Train's
    health-check error. A death for any other reason (a crash, an OOM kill, a node lost without
    a drain) is False: it may be the clip's doing."""
    error = getattr(error, "health_check_failure", error)
    return isinstance(error, ray.exceptions.RayActorError) and error.preempted


class _ReleaseOnPreemption(ray.train.UserCallback):
    """On Ray Train's controller: when a worker of the gang died with a preempted node, the gang's
    leases go back to the queue at once, without spending their clips' attempts (otherwise they
    would come back only when they expire, each with an attempt spent)."""

    def __init__(self, queue, gang: str):
        self.queue, self.gang = queue, gang

    def after_exception(self, run_context, worker_exceptions: dict[int, Exception]) -> None:
        preempted = sorted(rank for rank, err in worker_exceptions.items() if is_preemption(err))
        if preempted:
            self.queue.release_holder.remote(self.gang, f"node preempted (ranks {preempted} died with it)")


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
            # preemptions restart the gang on their own budget (max_preemption_failures, unlimited by default)
            failure_config=FailureConfig(max_failures=pc.max_gang_restarts),
            callbacks=[_ReleaseOnPreemption(queue, name)],
        ),
    )
    trainer.fit()


def _drive(index: int, cfg: Config, queue, run_id: str, stopping: threading.Event) -> str | None:
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
        if not stopping.is_set():  # (an interrupted run: Ray is going down under the gang)
            log.error("%s stopped: %s", name, err)
        return f"{name}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"


def _committed(clips: list[Clip], layout: RunLayout) -> tuple[dict[str, AdapterOutcome], list[Clip]]:
    """The clips whose adapter an earlier run of this run id committed (one listing of adapters/), and the others."""
    committed = committed_adapters(layout)
    adapters, todo = {}, []
    for clip in clips:
        motion_id = clip.row.motion_id
        if motion_id in committed:
            adapters[motion_id] = AdapterOutcome(motion_id, clip.row.row, layout.adapter(motion_id), trained=False)
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


def train(clips: list[Clip], layout: RunLayout, cfg: Config, connect: Callable[[], object] = lambda: None) -> TrainResult:
    """Tune every clip without a committed adapter; committed ones (a resumed run) are kept as they are.
    `connect()` is called before Ray is first needed."""
    started = time.time()
    pc = cfg.pipeline
    adapters, todo = _committed(clips, layout)
    resumed = len(adapters)
    if not todo:
        return TrainResult(adapters, [], resumed, 0.0, time.time() - started)
    connect()

    # Ray Train waits this long for a gang's workers; on a busy machine the default (60 s) is too short.
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", str(pc.start_timeout_s))
    # The queue lives on the driver's node: if that node goes, the run goes with it anyway. It is named
    # after the run, so a second driver on the same run id fails here instead of racing this one,
    # and anyone can watch it: ray.get_actor(queue_name(run_id)).progress.remote().
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    queue = QueueActor.options(name=queue_name(layout.run_id), scheduling_strategy=here).remote(
        {c.row.motion_id: _item(c, layout) for c in todo}, pc.max_attempts, pc.lease_seconds)
    # Daemon threads, not a thread pool: an interrupted driver (pipelines.interrupt) must be able to
    # exit while a gang's fit() still waits on Ray; the gangs end with the driver's Ray.
    stopping = threading.Event()
    outcomes: dict[int, str | None] = {}
    threads = [threading.Thread(target=lambda i=i: outcomes.update({i: _drive(i, cfg, queue, layout.run_id, stopping)}),
                                name=f"gang{i}", daemon=True) for i in range(pc.num_gangs)]
    try:
        with progress(total=len(todo), desc=f"train ({pc.scheduler})", unit="clip") as bar:
            for t in threads:
                t.start()
            while any(t.is_alive() for t in threads):
                p = ray.get(queue.progress.remote())
                bar.n = p["done"] + p["failed"]
                bar.set_postfix(leased=p["leased"], failed=p["failed"])
                bar.refresh()
                time.sleep(1.0)
    except BaseException:  # interrupted: no clip is handed out, and no tune finishing now commits (its renew fails)
        stopping.set()
        queue.close.remote("interrupted")  # not waited for: the driver has seconds before a SIGKILL
        raise
    errors = [e for e in (outcomes.get(i) for i in range(pc.num_gangs)) if e]
    closed: Closed[AdapterOutcome] = ray.get(queue.close.remote("no gang left to train it: " + "; ".join(errors) if errors else "not trained"))
    ray.kill(queue)

    adapters |= {m: replace(o, attempts=closed.attempts[m], leased_at=closed.leased_at.get(m), completed_at=closed.completed_at.get(m))
                 for m, o in closed.done.items()}
    rows = {c.row.motion_id: c.row for c in todo}
    failures = [Failure(m, rows[m].row, STAGE, reason) for m, reason in closed.failed.items()]
    tune_seconds = sum(o.seconds for o in closed.done.values())
    return TrainResult(adapters, failures, resumed, tune_seconds, time.time() - started, closed.conflicts, errors, closed.preempted)
