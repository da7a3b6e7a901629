"""Stopping a run from outside: Ctrl-C, `ray job stop` (SIGTERM, then SIGKILL 3 s later unless
RAY_JOB_STOP_WAIT_TIME_S says otherwise), a pod's SIGTERM.

The gangs run `TorchTrainer.fit()` in driver threads, where Ray Train installs no abort handler
(it does so only in the main thread), so the driver handles the signal itself: `Interrupts` turns
the first SIGINT or SIGTERM into `Interrupted` in the main thread, wherever it waits (a stage's
`ray.get`, Ray Data's iteration, a sleep). The train stage then closes the queue (no clip is handed
out again, no late commit is accepted), `run_pipeline` writes run.json with status "interrupted"
first (within `ray job stop`'s grace time) and leaves Ray up, and the CLI exits at once (`leave`):
the gangs end with the driver (on a cluster, a gone driver's actors are ended). Ray is not shut down
under the gangs, and an embedded Ray's processes are ended only once the driver is gone, by a small
reaper (this module run as a program), because a gang thread that finds Ray gone under it
(`ray.shutdown()`, or its raylet killed) makes Ray end the process with status 1 before the exit
code is set. Committed adapters stay committed; the same run id again resumes, and a clip whose
adapter was not committed is tuned again from the start.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from typing import NoReturn

import psutil

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """A BaseException, as KeyboardInterrupt is: the stages' `except Exception` (a row's failure) must
    not catch it."""

    def __init__(self, signum: int):
        self.signal = signal.Signals(signum).name
        self.exit_code = 128 + signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM
        super().__init__(f"interrupted by {self.signal}")


class Interrupts:
    """Within the block, the first SIGINT or SIGTERM raises `Interrupted` in the main thread; a second one
    gets the handler that was there before (Ctrl-C twice: KeyboardInterrupt; SIGTERM twice: exit).

    `arm()` installs the handlers again: `ray.init` replaces the SIGTERM handler with its own
    (`sys.exit`), so the driver re-arms after connecting. Outside the main thread (a run driven
    from another thread, as tests do) signals never arrive, and nothing is installed."""

    def __init__(self) -> None:
        self.active = threading.current_thread() is threading.main_thread()
        self.fired = False
        self.previous: dict[int, object] = {}

    def _handler(self, signum, frame) -> None:
        if self.fired:
            return
        self.fired = True
        for s, h in self.previous.items():
            signal.signal(s, h)  # type: ignore[arg-type]
        raise Interrupted(signum)

    def arm(self) -> None:
        if not self.active or self.fired:
            return
        for s in SIGNALS:
            current = signal.getsignal(s)
            if current != self._handler:
                self.previous[s] = current
                signal.signal(s, self._handler)

    def __enter__(self) -> Interrupts:
        self.arm()
        return self

    def __exit__(self, *exc) -> None:
        if self.active and not self.fired:
            for s, h in self.previous.items():
                signal.signal(s, h)  # type: ignore[arg-type]


def leave(exit_code: int) -> NoReturn:
    """End an interrupted driver now, run.json written, with `exit_code`: without Ray's atexit shutdown,
    which the gang threads would turn into status 1. An embedded Ray's processes are this process's
    children; the reaper ends them as ray.shutdown() would (its raylet and GCS would die with the driver
    anyway, its dashboard and runtime-env agents only a minute later) once this process is gone. It
    stays in the driver's session, so whatever stops the session (a terminal closing, `ray job stop`)
    still reaches it. On a cluster there are no children and no reaper."""
    children = [str(c.pid) for c in psutil.Process().children(recursive=True)]
    if children:
        subprocess.Popen([sys.executable, "-m", "pipelines.interrupt", str(os.getpid()), *children],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)


def reap(parent: int, pids: list[int], parent_wait_s: float = 10.0, grace_s: float = 5.0) -> None:
    """Wait until `parent` has exited, then SIGTERM `pids`, and SIGKILL those still running `grace_s` later."""
    _wait_gone(_existing([parent]), parent_wait_s)
    procs = _existing(pids)
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    for proc in _wait_gone(procs, grace_s):
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()


def _existing(pids: list[int]) -> list[psutil.Process]:
    procs = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            procs.append(psutil.Process(pid))
    return procs


def _wait_gone(procs: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """The processes still running after `timeout_s`. An exited process that its parent has not reaped
    yet (a zombie) counts as gone: not our child, psutil's wait would see it as running."""
    deadline = time.monotonic() + timeout_s
    while True:
        running = [p for p in procs if _running(p)]
        if not running or time.monotonic() >= deadline:
            return running
        time.sleep(0.1)


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


if __name__ == "__main__":
    reap(int(sys.argv[1]), [int(pid) for pid in sys.argv[2:]])
