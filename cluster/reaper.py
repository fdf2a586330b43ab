"""The reaper of a local Ray: when its driver dies, however it dies, no Ray process of it stays behind.

A local ``ray.init()`` starts the GCS and a raylet as children of the driver, and the raylet starts
the dashboard and runtime-env agents and the workers. When the driver is killed with SIGKILL, the
raylet and the GCS go with it, but ``ray::DashboardAgent`` and ``ray::RuntimeEnvAgent`` were seen
to stay, orphaned (shared/design/PLATFORM.md). This process watches the driver and ends them.

How it knows: the driver holds the write end of a pipe whose read end only this process has; the
kernel closes it when the driver exits, for any reason, so the read below returns. Which processes:
every process whose environment holds ``MARKER=<token>``, a token unique to this driver, which the
driver set before ``ray.init`` and every Ray process inherited. They get SIGTERM, then SIGKILL after
a grace period. Nothing else is touched; this file imports nothing of the project (it runs by path).

    python reaper.py <read fd> <token>
"""
from __future__ import annotations

import os
import signal
import sys
import time

MARKER = "COLLAPSE_LOCAL_RAY"


def marked_pids(token: str, exclude: tuple[int, ...] = ()) -> list[int]:
    """Live (not zombie) processes whose initial environment holds ``MARKER=token``."""
    entry = f"{MARKER}={token}".encode()
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in exclude:
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                if entry not in f.read().split(b"\0"):
                    continue
            with open(f"/proc/{name}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except OSError:  # gone, or not ours to read
            continue
        if state != b"Z":
            pids.append(int(name))
    return sorted(pids)


def reap(token: str, grace_s: float = 5.0, exclude: tuple[int, ...] = ()) -> list[int]:
    """SIGTERM every marked process, SIGKILL what is left after ``grace_s``; returns the PIDs signalled."""
    hit = marked_pids(token, exclude)
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 0.0)):
        for pid in marked_pids(token, exclude):
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + wait
        while wait and time.monotonic() < deadline and marked_pids(token, exclude):
            time.sleep(0.1)
    return hit


def main(argv: list[str]) -> int:
    fd, token = int(argv[1]), argv[2]
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C of the terminal is the driver's to handle
    with os.fdopen(fd, "rb") as pipe:
        while pipe.read(4096):  # blocks until the driver's end is closed: the driver has exited
            pass
    time.sleep(1.0)  # a driver that exits normally has shut its Ray down; give stragglers a moment
    reap(token, exclude=(os.getpid(),))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
