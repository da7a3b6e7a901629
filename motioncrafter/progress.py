"""Progress bars that suit where the output goes.

On a terminal: tqdm. Anywhere else (`ray job logs`, a KubeRay submitter pod's log, CI) a tqdm
bar writes a whole line per refresh (`make demo` logged 856 lines of one bar for six clips), so
there progress is a plain log line every `LOG_EVERY_SECONDS`, and one when the loop ends.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Sized

log = logging.getLogger("motioncrafter.progress")

LOG_EVERY_SECONDS = 30.0


def progress(iterable: Iterable | None = None, *, desc: str = "", total: int | None = None, unit: str = "it",
             disable: bool = False, leave: bool = True):
    """tqdm(iterable, desc=..., total=..., unit=..., disable=..., leave=...) on a terminal, else `LogLines`."""
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(iterable, desc=desc, total=total, unit=unit, disable=disable, leave=leave)
    return LogLines(iterable, desc=desc, total=total, unit=unit, disable=disable)


class LogLines:
    """The part of tqdm's interface the project uses (iterate, update, n, set_postfix, refresh, close, with),
    reported as log lines: `desc: n/total unit (p%), rate, postfix`, at most one per LOG_EVERY_SECONDS."""

    def __init__(self, iterable: Iterable | None = None, *, desc: str = "", total: int | None = None,
                 unit: str = "it", disable: bool = False):
        self.iterable, self.desc, self.unit, self.disable = iterable, desc, unit, disable
        self.total = total if total is not None else (len(iterable) if isinstance(iterable, Sized) else None)
        self.n = 0
        self.postfix: dict = {}
        self.started = self.logged = time.monotonic()
        self.closed = False

    def __iter__(self):
        try:
            for item in self.iterable:
                yield item
                self.update()
        finally:
            self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        self.refresh()

    def set_postfix(self, ordered_dict: dict | None = None, **values) -> None:
        self.postfix = {**(ordered_dict or {}), **values}

    def refresh(self) -> None:
        if time.monotonic() - self.logged >= LOG_EVERY_SECONDS:
            self._line()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._line()

    def __enter__(self) -> "LogLines":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _line(self) -> None:
        self.logged = time.monotonic()
        if self.disable:
            return
        seconds = self.logged - self.started
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        share = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        extra = "".join(f", {k}={v}" for k, v in self.postfix.items())
        log.info("%s: %s %s%s in %.0f s (%.2f %s/s)%s", self.desc, done, self.unit, share, seconds,
                 self.n / seconds if seconds > 0 else 0.0, self.unit, extra)
