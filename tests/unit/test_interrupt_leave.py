"""`pipelines.interrupt.leave`: an interrupted driver exits with its own code (130/143) and its embedded
Ray's processes are ended after it, never before it (CI once saw 1 instead of 143: Ray's core worker
in the driver ended the process as soon as the raylet under it went away)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import psutil

# A stand-in for an embedded Ray: a child that, told to stop, first tells the driver (as a dying
# raylet's clients notice at once) and takes a moment to go; and a thread in the driver that ends the
# process with status 1 as soon as it hears of it (as Ray's core worker does).
DRIVER = textwrap.dedent("""
    import os, subprocess, sys, threading
    from pipelines.interrupt import leave

    read_end, write_end = os.pipe()
    child = subprocess.Popen([sys.executable, "-c", '''
    import os, signal, sys, time
    fd = int(sys.argv[1])
    def stop(signum, frame):
        try:
            os.write(fd, b"stopping")
        except BrokenPipeError:  # the driver is gone already
            pass
        time.sleep(1)
        sys.exit(0)
    signal.signal(signal.SIGTERM, stop)
    os.write(fd, b"r")
    time.sleep(60)
    ''', str(write_end)], pass_fds=(write_end,))
    os.close(write_end)
    assert os.read(read_end, 1) == b"r"  # the child is up and listening

    def core_worker():
        os.read(read_end, 1)  # the child stopping, or gone
        os._exit(1)

    threading.Thread(target=core_worker, daemon=True).start()
    print(child.pid, flush=True)
    leave(143)
""")


def test_leave_exits_with_its_code_first_and_then_ends_the_children() -> None:
    driver = subprocess.run([sys.executable, "-c", DRIVER], capture_output=True, text=True, timeout=60)
    assert driver.returncode == 143, driver.stderr
    child = int(driver.stdout.split()[0])
    deadline = time.monotonic() + 30
    while _running(child):
        if time.monotonic() > deadline:
            psutil.Process(child).kill()
            raise AssertionError("the reaper did not end the driver's child")
        time.sleep(0.1)


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
