"""Ray on one machine: every port on 127.0.0.1, `ray job submit` exit codes, what reaches workers.

RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 is what binds Ray to loopback on Linux, an undocumented knob
(docs/PLATFORM.md, "Ray on one machine"): these tests notice when a Ray upgrade stops honouring it.
"""

from __future__ import annotations

import ipaddress
import json
import shlex
import sys
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cluster.runtime import WORKER_ENV

PROBE_NAMES = sorted(WORKER_ENV) + ["COLLAPSE_PROBE", "DRIVER_ONLY"]

# A job: imports collapse, connects as `collapse run` does, and prints the environment that its
# driver and an actor see.
PROBE_JOB = f"""
import json, os
import collapse
from cluster.runtime import connect
ray = connect()

@ray.remote(num_cpus=0.1)
class Probe:
    def env(self, names):
        return {{n: os.environ.get(n) for n in names}}

names = {PROBE_NAMES!r}
print("collapse from", os.path.dirname(collapse.__file__))
print("DRIVER", json.dumps({{n: os.environ.get(n) for n in names}}))
print("ACTOR", json.dumps(ray.get(Probe.remote().env.remote(names))))
"""

FAILING_JOB = """
import sys
print("about to fail")
sys.exit(3)
"""


def _listeners(pids) -> dict[int, list[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]]]:
    """{pid: [(address, port)]} of the listening TCP sockets that the processes hold."""
    listening = {}  # socket inode -> (address, port)
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # LISTEN
                continue
            hex_addr, hex_port = fields[1].split(":")
            raw = bytes.fromhex(hex_addr)
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))  # 32-bit words, host order
            listening[fields[9]] = (ipaddress.ip_address(raw), int(hex_port, 16))
    result = {}
    for pid in pids:
        sockets = set()
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:  # exited meanwhile
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in listening:
                sockets.add(listening[target[8:-1]])
        result[pid] = sorted(sockets, key=str)
    return result


def _is_loopback(addr) -> bool:
    mapped = getattr(addr, "ipv4_mapped", None)  # [::ffff:127.0.0.1]
    return (mapped or addr).is_loopback


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def _assert_loopback_only(listeners: dict) -> set[int]:
    bound = [(pid, _comm(pid), addr, port) for pid, sockets in listeners.items() for addr, port in sockets]
    assert bound, "no listening sockets found"
    wide = [b for b in bound if not _is_loopback(b[2])]
    assert not wide, f"listening beyond loopback: {wide}"
    return {port for *_, port in bound}


@pytest.fixture(scope="module")
def jobs(ray_head, tmp_path_factory):
    """The two jobs, submitted at the same time (each takes a few seconds of Ray's start-up)."""
    wd = tmp_path_factory.mktemp("job")
    (wd / "probe.py").write_text(PROBE_JOB)
    (wd / "fail.py").write_text(FAILING_JOB)
    with ThreadPoolExecutor(2) as pool:
        # the venv's python: a bare "python" on the head's PATH may be one without the project
        py = shlex.quote(sys.executable)
        ok = pool.submit(ray_head.submit, f"env DRIVER_ONLY=from-driver {py} probe.py", wd,
                         env={"COLLAPSE_PROBE": "from-runtime-env"})
        failed = pool.submit(ray_head.submit, f"{py} fail.py", wd)
        return ok.result(), failed.result()


def _line(stdout: str, tag: str) -> dict:
    for line in stdout.splitlines():
        if line.startswith(tag + " "):
            return json.loads(line[len(tag) + 1:])
    raise AssertionError(f"no {tag} line in the job's output:\n{stdout[-3000:]}")


def test_job_submit_succeeds_and_shows_the_output(jobs):
    ok, _ = jobs
    assert ok.returncode == 0, ok.stdout[-3000:] + ok.stderr[-3000:]
    assert "collapse from" in ok.stdout


def test_failed_job_makes_job_submit_exit_1(jobs):
    _, failed = jobs
    assert failed.returncode == 1, failed.stdout[-3000:] + failed.stderr[-3000:]
    assert "about to fail" in failed.stdout
    assert "exit code 3" in failed.stdout + failed.stderr


def test_actors_get_runtime_env_not_the_driver_environment(jobs):
    ok, _ = jobs
    driver, actor = _line(ok.stdout, "DRIVER"), _line(ok.stdout, "ACTOR")
    assert driver["DRIVER_ONLY"] == "from-driver"
    assert actor["DRIVER_ONLY"] is None                    # the driver's own environment stays there
    assert actor["COLLAPSE_PROBE"] == "from-runtime-env"   # the job's runtime_env reaches actors
    assert {k: actor[k] for k in WORKER_ENV} == WORKER_ENV  # and so does connect()'s


def test_head_listens_on_loopback_only(ray_head, jobs):
    if ray_head.state_dir is None:
        pytest.skip("a head that this session did not start: its processes are unknown")
    pids = ray_head.pids()  # after the jobs: workers and actors are among them
    names = {_comm(p) for p in pids}
    assert {"gcs_server", "raylet"} <= names, names
    ports = _assert_loopback_only(_listeners(pids))
    for url in (ray_head.address, ray_head.dashboard):
        assert int(url.rsplit(":", 1)[1]) in ports


def test_local_ray_listens_on_loopback_only(ray_local):
    ray = ray_local

    @ray.remote(num_cpus=0.1)
    class Probe:
        def pid(self):
            return os.getpid()

    actor = Probe.remote()
    actor_pid = ray.get(actor.pid.remote())
    pids = _descendants(os.getpid())  # the test process (the driver) and what ray.init started
    assert actor_pid in pids
    names = {_comm(p) for p in pids}
    assert {"gcs_server", "raylet"} <= names, names
    ports = _assert_loopback_only(_listeners(pids))
    assert int(ray.get_runtime_context().gcs_address.rsplit(":", 1)[1]) in ports
    ray.kill(actor)


def test_local_actor_sees_worker_env_and_not_later_driver_variables(ray_local, monkeypatch):
    ray = ray_local
    monkeypatch.setenv("DRIVER_ONLY", "set-after-connect")

    @ray.remote(num_cpus=0.1)
    class Probe:
        def env(self, names):
            return {n: os.environ.get(n) for n in names}

    actor = Probe.remote()
    seen = ray.get(actor.env.remote(PROBE_NAMES))
    ray.kill(actor)
    assert {k: seen[k] for k in WORKER_ENV} == WORKER_ENV
    assert seen["DRIVER_ONLY"] is None



def test_the_driver_gets_every_line_of_workers_that_print_the_same_pattern(ray_local, capfd):
    """Ray merges worker lines that match once the words holding digits are masked ("[repeated 2x
    across cluster]"); two trainings side by side print such lines, and each must reach the driver
    (cluster/__init__.py turns the merging off)."""
    import time

    import ray

    @ray.remote(num_cpus=0)
    def say(name: str) -> None:
        print(f"train /runs/demo/{name}/gen-002/model: step 120/3000, loss 0.0831", flush=True)

    ray.get([say.remote("vanilla"), say.remote("greedy")])
    seen, deadline = "", time.monotonic() + 30
    while time.monotonic() < deadline and not all(f"/{n}/gen-002/model: step 120" in seen for n in ("vanilla", "greedy")):
        time.sleep(0.2)
        captured = capfd.readouterr()
        seen += captured.out + captured.err
    assert "/vanilla/gen-002/model: step 120" in seen and "/greedy/gen-002/model: step 120" in seen, seen[-2000:]
    assert "repeated" not in seen, seen[-2000:]
