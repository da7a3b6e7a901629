"""The lease queue that feeds the training gangs: a plain class, and the Ray actor that hosts it.

States of a clip: pending -> leased -> done | failed, or leased -> pending again
when its lease expires or its gang reports a retryable error, until
`max_attempts` leases have been spent. A lease *released* (its gang's node is
preempted) puts the clip back first in line and gives its attempt back. Time comes from an injectable clock, so
expiry is tested without Ray and without sleeping.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

import ray

log = logging.getLogger(__name__)
T = TypeVar("T")  # a work item
R = TypeVar("R")  # what a completed item reports


@dataclass(frozen=True)
class Lease(Generic[T]):
    lease_id: str
    motion_id: str
    item: T
    attempt: int  # 1 for the first lease of this clip


@dataclass
class Closed(Generic[R]):
    """What the queue ends with."""

    done: dict[str, R]
    failed: dict[str, str]  # motion_id -> reason
    conflicts: dict[str, int]  # motion_id -> tuned again after its commit (should be empty)
    attempts: dict[str, int]
    leased_at: dict[str, float]  # wall clock of each clip's latest lease (where the time goes: benchmarks)
    completed_at: dict[str, float] = field(default_factory=dict)
    preempted: dict[str, int] = field(default_factory=dict)  # motion_id -> leases released by a preemption


class LeaseQueue(Generic[T, R]):
    """Hands out items (keyed by motion_id) under leases that expire unless renewed."""

    def __init__(self, items: dict[str, T], max_attempts: int, lease_seconds: float,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time):
        self.items = items
        self.pending = deque(items)
        self.leases: dict[str, tuple[str, str, float]] = {}  # lease id -> (motion_id, holder, expiry)
        self.attempts: Counter[str] = Counter()
        self.conflicts: Counter[str] = Counter()
        self.preempted: Counter[str] = Counter()
        self.done: dict[str, R] = {}
        self.failed: dict[str, str] = {}
        self.leased_at: dict[str, float] = {}
        self.completed_at: dict[str, float] = {}
        self.max_attempts, self.lease_seconds = max_attempts, lease_seconds
        self.clock, self.wall = clock, wall
        self.counter = 0

    def _reap(self) -> None:
        now = self.clock()
        for lease_id, (motion_id, holder, expiry) in list(self.leases.items()):
            if expiry < now:
                del self.leases[lease_id]
                self._retry(motion_id, f"lease expired: {holder} stopped renewing it (worker or node lost)")

    def _retry(self, motion_id: str, reason: str) -> None:
        if motion_id in self.done or motion_id in self.failed:
            return
        if self.attempts[motion_id] >= self.max_attempts:
            self.failed[motion_id] = f"gave up after {self.attempts[motion_id]} attempts; last: {reason}"
        else:
            self.pending.append(motion_id)

    def lease(self, holder: str) -> Lease[T] | Literal["wait", "done"]:
        """A lease on the next item; "wait" when items are leased elsewhere and may come back; "done"."""
        self._reap()
        if not self.pending:
            return "wait" if self.leases else "done"
        motion_id = self.pending.popleft()
        self.attempts[motion_id] += 1
        self.counter += 1
        lease_id = f"{holder}#{self.counter}"
        self.leases[lease_id] = (motion_id, holder, self.clock() + self.lease_seconds)
        self.leased_at[motion_id] = self.wall()
        return Lease(lease_id, motion_id, self.items[motion_id], self.attempts[motion_id])

    def renew(self, lease_id: str) -> bool:
        """Extend a lease; False when it has expired (the item is someone else's now)."""
        self._reap()
        if lease_id not in self.leases:
            return False
        motion_id, holder, _ = self.leases[lease_id]
        self.leases[lease_id] = (motion_id, holder, self.clock() + self.lease_seconds)
        return True

    def release(self, lease_id: str, reason: str) -> bool:
        """Give a leased item back without spending its attempt: its holder is going away for a reason
        that says nothing about the item (a preempted node). It is leased next, before the others (its
        work had begun). False when the lease had ended already (expired, completed, failed)."""
        lease = self.leases.pop(lease_id, None)
        if lease is None:
            return False
        motion_id = lease[0]
        if motion_id not in self.done and motion_id not in self.failed:
            self.attempts[motion_id] -= 1
            self.preempted[motion_id] += 1
            self.pending.appendleft(motion_id)
            log.warning("%s back in the queue, its attempt not spent: %s", motion_id, reason)
        return True

    def release_holder(self, holder: str, reason: str) -> list[str]:
        """`release` every lease `holder` has (its workers died with a preempted node); the items released."""
        mine = [(lease_id, motion_id) for lease_id, (motion_id, h, _) in self.leases.items() if h == holder]
        return [motion_id for lease_id, motion_id in mine if self.release(lease_id, reason)]

    def conflict(self, motion_id: str) -> None:
        """A gang tuned an item that turned out to be committed already (the first commit stands)."""
        self.conflicts[motion_id] += 1

    def complete(self, lease_id: str, motion_id: str, outcome: R) -> None:
        """The item is committed. Accepted even if the lease expired meanwhile: the marker is on
        storage, so the item is done whoever holds it now."""
        self.leases.pop(lease_id, None)
        if motion_id in self.done or motion_id in self.failed:
            return
        self.done[motion_id] = outcome
        self.completed_at[motion_id] = self.wall()
        if motion_id in self.pending:
            self.pending.remove(motion_id)

    def fail(self, lease_id: str, reason: str, retry: bool) -> None:
        lease = self.leases.pop(lease_id, None)
        if lease is None:
            return  # the lease expired and the item was already put back
        if retry:
            self._retry(lease[0], reason)
        elif lease[0] not in self.done:
            self.failed[lease[0]] = reason

    def progress(self) -> dict[str, int]:
        self._reap()
        return {"pending": len(self.pending), "leased": len(self.leases), "done": len(self.done), "failed": len(self.failed)}

    def close(self, reason: str) -> Closed[R]:
        """End the queue: items not finished fail with `reason`."""
        for motion_id in self.items:
            if motion_id not in self.done and motion_id not in self.failed:
                self.failed[motion_id] = reason
        self.pending.clear()
        self.leases.clear()
        return Closed(self.done, self.failed, dict(self.conflicts), dict(self.attempts), self.leased_at, self.completed_at,
                      dict(self.preempted))


# The queue as a Ray actor: one per run, on the driver's node, never restarted (its state is the run's).
QueueActor = ray.remote(num_cpus=0, max_restarts=0)(LeaseQueue)
