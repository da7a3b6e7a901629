"""The lease queue as a plain class: leases, renewal, expiry, attempts, late completions, on a fake clock."""

from __future__ import annotations

from pipelines.queue import Lease, LeaseQueue


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def queue(*ids: str, attempts: int = 3, lease: float = 30.0) -> tuple[LeaseQueue[str, str], Clock]:
    clock = Clock()
    return LeaseQueue({i: f"item-{i}" for i in ids}, attempts, lease, clock=clock, wall=clock), clock


def leased(q: LeaseQueue, holder: str = "g") -> Lease:
    got = q.lease(holder)
    assert isinstance(got, Lease), got
    return got


def test_leases_renews_and_completes() -> None:
    q, _ = queue("a", "b")
    first = leased(q, "g0")
    assert (first.motion_id, first.item, first.attempt) == ("a", "item-a", 1)
    assert q.renew(first.lease_id)
    q.complete(first.lease_id, "a", "adapter-a")
    second = leased(q, "g1")
    assert second.motion_id == "b"
    assert q.lease("g0") == "wait"  # b may still come back
    q.complete(second.lease_id, "b", "adapter-b")
    assert q.lease("g0") == "done"
    closed = q.close("unused")
    assert closed.done == {"a": "adapter-a", "b": "adapter-b"} and closed.failed == {} and closed.conflicts == {}
    assert closed.attempts == {"a": 1, "b": 1}


def test_an_expired_lease_returns_the_item_and_its_holder_cannot_renew() -> None:
    q, clock = queue("a", lease=10.0)
    stale = leased(q, "dead-gang")
    clock.now = 9.0
    assert q.renew(stale.lease_id)  # renewed in time: expires at 19 now
    clock.now = 19.5
    fresh = leased(q, "live-gang")
    assert fresh.motion_id == "a" and fresh.attempt == 2
    assert not q.renew(stale.lease_id)
    q.complete(fresh.lease_id, "a", "ok")
    assert q.close("unused").attempts["a"] == 2


def test_a_late_completion_of_a_committed_item_takes_it_off_the_queue() -> None:
    q, clock = queue("a", lease=1.0)
    lease = leased(q)
    clock.now = 2.0
    assert q.progress()["pending"] == 1  # expired: back in the queue
    q.complete(lease.lease_id, "a", "committed")  # but its adapter is committed: done
    assert q.progress() == {"pending": 0, "leased": 0, "done": 1, "failed": 0}


def test_an_item_whose_leases_keep_expiring_fails_after_max_attempts() -> None:
    q, clock = queue("flaky", attempts=2, lease=1.0)
    for attempt in (1, 2):
        assert leased(q).attempt == attempt  # leased and never renewed
        clock.now += 1.5
    assert q.lease("g") == "done"
    assert q.close("unused").failed["flaky"].startswith("gave up after 2 attempts; last: lease expired")


def test_a_permanent_error_fails_at_once_a_retryable_one_goes_back_and_close_fails_the_rest() -> None:
    q, _ = queue("bad", "a", "b")
    q.fail(leased(q).lease_id, "ValueError: unusable clip", False)
    q.fail(leased(q).lease_id, "OSError: store down", True)
    assert q.progress()["pending"] == 2
    assert q.close("no gang left").failed == {"bad": "ValueError: unusable clip", "a": "no gang left", "b": "no gang left"}


def test_conflicts_are_counted() -> None:
    q, _ = queue("a")
    q.conflict("a")
    q.conflict("a")
    assert q.close("unused").conflicts == {"a": 2}


def test_a_preempted_lease_goes_back_first_without_spending_an_attempt() -> None:
    """max_attempts=1: a clip released twice by preemptions is still leased, first in line, and done."""
    q, clock = queue("a", "b", attempts=1)
    first = leased(q, "g0")
    for n in (1, 2):
        assert q.release(first.lease_id, "node preempted")
        assert not q.renew(first.lease_id)  # the released holder cannot commit it any more
        again = leased(q, "g1")
        assert (again.motion_id, again.attempt) == ("a", 1)  # before b, and still its first attempt
        first = again
    q.complete(first.lease_id, "a", "adapter-a")
    assert not q.release(first.lease_id, "too late")  # a finished lease cannot be released
    b = leased(q, "g1")
    clock.now += 31  # an expiry is not a preemption: it spends the attempt
    assert q.lease("g1") == "done"
    closed = q.close("unused")
    assert closed.done == {"a": "adapter-a"} and closed.attempts == {"a": 1, "b": 1} and closed.preempted == {"a": 2}
    assert "gave up after 1 attempts" in closed.failed[b.motion_id]


def test_release_holder_releases_only_that_holders_leases() -> None:
    q, _ = queue("a", "b", "c", attempts=1)
    a, b = leased(q, "g0"), leased(q, "g1")
    assert q.release_holder("g0", "node preempted") == ["a"] and q.release_holder("g0", "again") == []
    assert q.renew(b.lease_id) and not q.renew(a.lease_id)
    assert leased(q, "g2").motion_id == "a" and q.progress() == {"pending": 1, "leased": 2, "done": 0, "failed": 0}
