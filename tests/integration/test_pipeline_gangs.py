"""The lease queue as a Ray actor, and exactly-once commits."""

from __future__ import annotations

import json

import pytest
import ray

from pipeline_support import start_ray

from pipelines.queue import Lease, QueueActor

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def queue_ray():
    """Only the queue actor runs here: one logical CPU is plenty."""
    start_ray(num_cpus=1)
    yield
    ray.shutdown()


def test_the_queue_actor_hosts_the_plain_queue() -> None:
    """The queue's behaviour is tested without Ray (tests/unit/test_queue.py); this is the actor around it."""
    q = QueueActor.remote({"a": "item-a"}, 3, 30.0)
    lease = ray.get(q.lease.remote("g0"))
    assert isinstance(lease, Lease) and lease.item == "item-a" and ray.get(q.renew.remote(lease.lease_id))
    assert ray.get(q.lease.remote("g1")) == "wait"
    q.complete.remote(lease.lease_id, "a", "outcome")
    assert ray.get(q.lease.remote("g1")) == "done"
    closed = ray.get(q.close.remote("unused"))
    assert closed.done == {"a": "outcome"} and closed.failed == {} and closed.attempts == {"a": 1}


def test_the_commit_marker_is_created_once_and_a_late_commit_leaves_the_first_untouched(tmp_path) -> None:
    import torch

    from motioncrafter.adapters import Adapter
    from motioncrafter.runformat import RunLayout
    from motioncrafter.trainer import TuneResult
    from pipelines.manifest import ManifestRow
    from pipelines.records import WorkItem
    from pipelines.train import _commit

    layout = RunLayout(str(tmp_path), "run")
    item = WorkItem(ManifestRow(0, "m", "clip.mp4", "a prompt"), "frames", "latents", "abc", layout.adapter("m"),
                    layout.committed("m"), "run")

    def result(value: float) -> TuneResult:
        return TuneResult(Adapter({"w": torch.full((2,), value)}, {"kind": "lora"}), [], 1.0)

    assert _commit(result(1.0), Lease("l1", "m", item, 1), "gang0")
    first = {p.name: p.read_bytes() for p in (tmp_path / "run" / "adapters" / "m").iterdir()}
    assert not _commit(result(2.0), Lease("l2", "m", item, 2), "gang1")  # a lapsed holder finishing late
    assert {p.name: p.read_bytes() for p in (tmp_path / "run" / "adapters" / "m").iterdir()} == first
    assert json.loads(first["_COMMITTED"])["gang"] == "gang0"


def test_a_worker_that_died_with_a_preempted_node_gives_its_gangs_leases_back() -> None:
    """No drain notice seen: Ray Train's controller hands the callback the workers' errors. A death by
    preemption (`RayActorError.preempted`, bare or in Ray Train's health-check error) releases the
    gang's leases without spending attempts; any other error (a crash, the clip's own) releases nothing."""
    from ray.exceptions import ActorDiedError, RayActorError
    from ray.train.v2._internal.exceptions import WorkerHealthCheckFailedError

    from pipelines.train import _ReleaseOnPreemption

    q = QueueActor.remote({"a": "item-a", "b": "item-b"}, 1, 300.0)
    a, b = ray.get(q.lease.remote("gang0")), ray.get(q.lease.remote("gang1"))
    callback = _ReleaseOnPreemption(q, "gang0")
    callback.after_exception(None, {0: ActorDiedError(), 1: ValueError("the clip's own error")})  # not a preemption
    assert ray.get(q.progress.remote())["leased"] == 2
    callback.after_exception(None, {0: WorkerHealthCheckFailedError("worker 0 died", RayActorError(preempted=True)),
                                    1: RuntimeError("collective aborted")})
    assert ray.get(q.renew.remote(b.lease_id)) and not ray.get(q.renew.remote(a.lease_id))
    again = ray.get(q.lease.remote("gang0"))
    assert (again.motion_id, again.attempt) == ("a", 1)  # max_attempts 1, and leased again
    closed = ray.get(q.close.remote("unused"))
    assert closed.preempted == {"a": 1} and closed.failed == {"a": "unused", "b": "unused"}
