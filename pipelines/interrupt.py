"""Stopping a run from outside: Ctrl-C, `ray job stop` (SIGTERM, then SIGKILL 3 s later unless
RAY_JOB_STOP_WAIT_TIME_S says otherwise), a pod's SIGTERM.

The gangs run `TorchTrainer.fit()` in driver threads, where Ray Train installs no abort handler
(it does so only in the main thread), so the driver handles the signal itself: `Interrupts` turns
the first SIGINT or SIGTERM into `Interrupted` in the main thread, wherever it waits (a stage's
`ray.get`, Ray Data's iteration, a sleep). The train stage then closes the queue (no clip is handed
out again, no late commit is accepted), `run_pipeline` writes run.json with status "interrupted"
first (within `ray job stop`'s grace time) and leaves Ray up, and the CLI exits at once: the gangs
end with the driver (an embedded Ray's processes die with it; on a cluster, a gone driver's actors
are ended). Ray is not shut down under the gangs, because a gang thread touching Ray after
`ray.shutdown()` makes Ray end the process with status 1. Committed adapters stay committed; the
same run id again resumes, and a clip whose adapter was not committed is tuned again from the start.
"""

from __future__ import annotations

import signal
import threading

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
