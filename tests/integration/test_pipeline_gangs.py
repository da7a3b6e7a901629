"""The lease-based queue that feeds the training gangs: leases, renewal, expiry, attempts, exactly-once commits."""

from __future__ import annotations

import json
import time

import pytest
import ray

from pipeline_support import start_ray

from pipelines.train import LeaseQueue

pytestmark = pytest.mark.slow


def items(*ids: str) -> list[dict]:
    return [{"motion_id": i} for i in ids]


@pytest.fixture(scope="module", autouse=True)
def queue_ray():
    """Only the queue actor runs here: one logical CPU is plenty."""
    start_ray(num_cpus=1)
    yield
    ray.shutdown()


def call(actor_method, *args):
    return ray.get(actor_method.remote(*args))


def test_queue_leases_renews_and_completes() -> None:
    q = LeaseQueue.remote(items("a", "b"), 3, 30.0)
    first = call(q.lease, "g0")
    assert first["status"] == "lease" and first["item"]["motion_id"] == "a" and first["attempt"] == 1
    assert call(q.renew, first["lease"])
    call(q.complete, first["lease"], {"motion_id": "a"})
    second = call(q.lease, "g1")
    assert second["item"]["motion_id"] == "b"
    assert call(q.lease, "g0") == {"status": "wait"}  # b may still come back
    call(q.complete, second["lease"], {"motion_id": "b"})
    assert call(q.lease, "g0") == {"status": "done"}
    done, failed, conflicts = call(q.close, "unused")
    assert set(done) == {"a", "b"} and failed == {} and conflicts == {}


def test_an_expired_lease_returns_the_clip_to_the_queue() -> None:
    q = LeaseQueue.remote(items("a"), 3, 0.5)
    stale = call(q.lease, "dead-gang")
    time.sleep(0.8)
    fresh = call(q.lease, "live-gang")
    assert fresh["item"]["motion_id"] == "a" and fresh["attempt"] == 2
    assert not call(q.renew, stale["lease"])  # the stale holder must not commit
    assert call(q.renew, fresh["lease"])
    call(q.complete, fresh["lease"], {"motion_id": "a"})
    done, _, _ = call(q.close, "unused")
    assert done["a"]["attempts"] == 2


def test_a_late_completion_of_a_committed_clip_takes_it_off_the_queue() -> None:
    q = LeaseQueue.remote(items("a"), 3, 0.3)
    lease = call(q.lease, "slow-gang")
    time.sleep(0.5)
    assert call(q.progress)["pending"] == 1  # expired: back in the queue
    call(q.complete, lease["lease"], {"motion_id": "a"})  # but its adapter is committed: done
    assert call(q.progress) == {"pending": 0, "leased": 0, "done": 1, "failed": 0}


def test_a_clip_whose_leases_keep_expiring_fails_after_max_attempts() -> None:
    q = LeaseQueue.remote(items("flaky"), 2, 0.2)
    for attempt in (1, 2):
        assert call(q.lease, "g")["attempt"] == attempt  # leased and never renewed
        time.sleep(0.3)
    assert call(q.lease, "g") == {"status": "done"}
    _, failed, _ = call(q.close, "unused")
    assert failed["flaky"].startswith("gave up after 2 attempts; last: lease expired")


def test_a_permanent_error_fails_the_clip_at_once() -> None:
    q = LeaseQueue.remote(items("bad"), 3, 30.0)
    bad = call(q.lease, "g")
    call(q.fail, bad["lease"], "ValueError: unusable clip", False)
    assert call(q.lease, "g") == {"status": "done"}
    _, failed, _ = call(q.close, "unused")
    assert failed == {"bad": "ValueError: unusable clip"}


def test_retryable_error_goes_back_and_close_fails_the_rest() -> None:
    q = LeaseQueue.remote(items("a", "b"), 3, 30.0)
    a = call(q.lease, "g")
    call(q.fail, a["lease"], "OSError: store down", True)
    assert call(q.progress)["pending"] == 2
    _, failed, _ = call(q.close, "no gang left")
    assert failed == {"a": "no gang left", "b": "no gang left"}


def test_the_commit_marker_is_created_once_and_a_late_commit_leaves_the_first_untouched(tmp_path) -> None:
    import torch

    from motioncrafter.adapters import Adapter
    from motioncrafter.runformat import RunLayout
    from motioncrafter.trainer import TuneResult
    from pipelines.train import _commit

    layout = RunLayout(str(tmp_path), "run")
    item = {"motion_id": "m", "row": {"row": 0}, "run_id": "run", "clip_sha256": "abc",
            "adapter_uri": layout.adapter("m"), "committed_uri": layout.committed("m")}

    def result(value: float) -> TuneResult:
        return TuneResult(Adapter({"w": torch.full((2,), value)}, {"kind": "lora"}), [], 1.0)

    assert _commit(result(1.0), {"item": item, "attempt": 1}, "gang0")
    first = {p.name: p.read_bytes() for p in (tmp_path / "run" / "adapters" / "m").iterdir()}
    assert not _commit(result(2.0), {"item": item, "attempt": 2}, "gang1")  # a lapsed holder finishing late
    assert {p.name: p.read_bytes() for p in (tmp_path / "run" / "adapters" / "m").iterdir()} == first
    assert json.loads(first["_COMMITTED"])["gang"] == "gang0"
