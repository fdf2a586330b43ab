"""The reaper of a local Ray: when its driver dies, however it dies, no Ray process of it stays behind.

A local ``ray.init()`` starts the GCS and a raylet as children of the driver, and the raylet starts
the dashboard and runtime-env agents and the workers. When the driver is killed with SIGKILL, the
raylet and the GCS go with it, but ``ray::DashboardAgent`` and ``ray::RuntimeEnvAgent`` were seen
to stay, orphaned (docs/PLATFORM.md). This process watches the driver and ends them.

How it knows the driver is gone: the driver holds the write end of a pipe whose read end only this
process has; the kernel closes it when the driver exits, for any reason, so the read returns.

Which processes: every descendant of the driver, as last seen (the tree is read from ``/proc``
about once a second while the driver lives; orphans are reparented and the tree is lost after),
checked by PID *and* start time so that a reused PID is never hit; and every process whose
environment still holds ``MARKER=<token>``, a token unique to the driver that every Ray process
inherits. (The marker alone is not enough: the agents rewrite their title with ``setproctitle``,
which blanks the environment that ``/proc/<pid>/environ`` shows.) They get SIGTERM, then SIGKILL
after a grace period. Nothing else is touched; this file imports nothing of the project.

    python reaper.py <read fd> <token>        (started by cluster.runtime, a child of the driver)
"""
from __future__ import annotations

import os
import select
import signal
import sys
import time

MARKER = "COLLAPSE_LOCAL_RAY"


def _stat(pid: int) -> tuple[int, str, str] | None:
    """(parent PID, state, start time) from /proc/<pid>/stat, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), fields[0].decode(), fields[19].decode()


def _pids() -> list[int]:
    return [int(n) for n in os.listdir("/proc") if n.isdigit()]


def marked_pids(token: str, exclude: tuple[int, ...] = ()) -> list[int]:
    """Live (not zombie) processes whose environment, as /proc shows it, holds ``MARKER=token``."""
    entry = f"{MARKER}={token}".encode()
    pids = []
    for pid in _pids():
        if pid in exclude:
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if entry not in f.read().split(b"\0"):
                    continue
        except OSError:  # gone, or not ours to read
            continue
        st = _stat(pid)
        if st is not None and st[1] != "Z":
            pids.append(pid)
    return sorted(pids)


def descendants(root: int) -> dict[int, str]:
    """{pid: start time} of every live descendant of ``root``."""
    children: dict[int, list[int]] = {}
    starts = {}
    for pid in _pids():
        st = _stat(pid)
        if st is not None and st[1] != "Z":
            children.setdefault(st[0], []).append(pid)
            starts[pid] = st[2]
    out, todo = {}, [root]
    while todo:
        for c in children.get(todo.pop(), []):
            out[c] = starts[c]
            todo.append(c)
    return out


def alive(known: dict[int, str]) -> list[int]:
    """The PIDs of ``known`` still running as the same process (same start time, not a zombie)."""
    out = []
    for pid, started in known.items():
        st = _stat(pid)
        if st is not None and st[1] != "Z" and st[2] == started:
            out.append(pid)
    return out


def reap(known: dict[int, str], token: str, grace_s: float = 5.0, exclude: tuple[int, ...] = ()) -> list[int]:
    """SIGTERM the live ones of ``known`` and the marked processes, SIGKILL what is left after
    ``grace_s``; returns the PIDs signalled."""
    def targets() -> list[int]:
        return sorted(set(alive(known)) | set(marked_pids(token)) - set(exclude))
    hit = targets()
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 0.0)):
        for pid in targets():
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + wait
        while wait and time.monotonic() < deadline and targets():
            time.sleep(0.1)
    return hit


def watch(fd: int, driver: int, poll_s: float = 1.0) -> dict[int, str]:
    """Read the driver's process tree every ``poll_s`` until the pipe ``fd`` closes; returns the last tree."""
    known: dict[int, str] = {}
    while True:
        known.update(descendants(driver))
        ready, _, _ = select.select([fd], [], [], poll_s)
        if ready and not os.read(fd, 4096):
            return known


def main(argv: list[str]) -> int:
    fd, token = int(argv[1]), argv[2]
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C of the terminal is the driver's to handle
    me, driver = os.getpid(), os.getppid()
    known = watch(fd, driver)
    known.pop(me, None)
    time.sleep(1.0)  # a driver that exits normally has shut its Ray down; give stragglers a moment
    ended = reap(known, token, exclude=(me,))
    if ended:  # only when the driver did not take its Ray down itself (it was killed)
        print(f"collapse: the driver is gone; ended {len(ended)} process(es) of its local Ray", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
