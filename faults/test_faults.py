"""The fault matrix: faults injected into real runs of the tiny preset (a driver process with its own
local Ray, or joined to a 3-node loopback cluster for the raylet rows; its run directory on the
session's Ceph gateway), each run then compared with an undisturbed run of the same config: samples
lost, samples duplicated, selections and metrics equal.

Run with `make faults`. Each row is one test; the table is printed at the end (faults/conftest.py).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from cluster.reaper import MARKER, marked_pids
from collapse.data import manifest as mf
from collapse.data import storage
from collapse.data.urls import RunLayout
from faults.conftest import TABLE
from tests.cluster.conftest import three_nodes  # noqa: F401 - a fixture of the raylet rows
from tests.cluster.test_loop import _assert_same_metrics

pytestmark = [pytest.mark.ceph, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]
SEED = int(os.environ.get("COLLAPSE_FAULT_SEED", "20261202"))
K_KILLS = 5


class Driver:
    """`collapse run --config tiny` as a user starts it, with a marker on its Ray processes."""

    def __init__(self, endpoint, run_dir: str, log: Path, env: dict | None = None, *extra: str):
        self.token, self.log = f"faults-{uuid.uuid4().hex}", log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jobs.cli", "run", "--config", "tiny", "--run-dir", run_dir, *extra],
            cwd=ROOT, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT), MARKER: self.token, "AWS_ENDPOINT_URL": endpoint.endpoint_url,
                 "AWS_ACCESS_KEY_ID": endpoint.key, "AWS_SECRET_ACCESS_KEY": endpoint.secret, **(env or {})})

    def wait(self, timeout: float = 900) -> int:
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=60)
        deadline = time.time() + 60  # its reaper ends its Ray; wait for that before the next driver
        while marked_pids(self.token) and time.time() < deadline:
            time.sleep(0.5)

    def ray_pids(self, name: bytes) -> list[int]:
        out = []
        for pid in marked_pids(self.token):
            try:
                if name in Path(f"/proc/{pid}/cmdline").read_bytes():
                    out.append(pid)
            except OSError:
                pass
        return out

    def text(self) -> str:
        return self.log.read_bytes().decode(errors="replace")


def _wait_for(cond, what: str, driver: Driver | None = None, timeout: float = 600, every: float = 0.2):
    deadline = time.time() + timeout
    while not cond():
        if driver is not None and driver.proc.poll() is not None:
            raise AssertionError(f"the run ended before {what}: {driver.text()[-3000:]}")
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(every)


def _record(root, key, opts) -> bool:
    return storage.exists(mf.manifest_url(RunLayout(root).stage_record(key)), opts)


def outcome(root: str, opts) -> dict:
    """What a comparison needs: every committed sample set's keys (with repeats), the selections, the metrics."""
    from collapse.data.verify import committed_dirs
    sets, selections = {}, {}
    for d in committed_dirs(root, opts):
        m = mf.read_manifest(d, opts)
        rel = d[len(root):].strip("/")
        if m.get("kind") == "sample-set":
            sets[rel] = [k for r in m["shards"] for k in r["keys"]]
        elif rel.endswith("/selection"):
            selections[rel] = [k["key"] for k in m["kept"]]
    rows = [json.loads(ln) for ln in storage.read_bytes(RunLayout(root).metrics_log, opts).decode().splitlines()]
    for r in rows:
        r.pop("stage_seconds")
    return {"sets": sets, "selections": selections, "metrics": rows}


def compare(ref: dict, got: dict) -> tuple[int, int, bool]:
    lost = sum(len(set(keys) - set(got["sets"].get(name, []))) for name, keys in ref["sets"].items())
    duplicated = sum(n - 1 for keys in got["sets"].values() for n in Counter(keys).values() if n > 1)
    try:
        _assert_same_metrics(ref["metrics"], got["metrics"])
        same_metrics = True
    except AssertionError:
        same_metrics = False
    equal = same_metrics and ref["selections"] == got["selections"] and ref["sets"].keys() == got["sets"].keys()
    return lost, duplicated, equal


def row(fault: str, injected: int, completed: int, ref: dict, root: str, opts, note: str = "") -> None:
    lost, dup, equal = compare(ref, outcome(root, opts))
    TABLE.append({"fault": fault, "injected": injected, "runs_completed": completed, "samples_lost": lost,
                  "samples_duplicated": dup, "equal_to_undisturbed": equal, "note": note})
    assert (lost, dup, equal) == (0, 0, True), TABLE[-1]


@pytest.fixture(scope="module")
def store(ceph_s3, tmp_path_factory):
    fs = ceph_s3.filesystem()
    bucket = f"faults-{uuid.uuid4().hex[:8]}"
    fs.mkdir(bucket)
    return ceph_s3, f"s3://{bucket}", ceph_s3.storage_options, tmp_path_factory.mktemp("faults")


@pytest.fixture(scope="module")
def reference(store):
    endpoint, bucket, opts, logs = store
    root = f"{bucket}/undisturbed"
    d = Driver(endpoint, root, logs / "undisturbed.log")
    assert d.wait() == 0, d.text()[-3000:]
    return outcome(root, opts)


def _finish(endpoint, root, log, attempts: int = 3) -> int:
    """Resubmit until the run completes; returns the number of runs it took (fails after ``attempts``)."""
    for i in range(1, attempts + 1):
        d = Driver(endpoint, root, log)
        if d.wait() == 0:
            return i
    raise AssertionError(f"{root} did not complete in {attempts} runs: {log.read_text()[-3000:]}")


def test_driver_sigkill_at_random_moments(store, reference):
    endpoint, bucket, opts, logs = store
    root, log = f"{bucket}/driver-kills", logs / "driver-kills.log"
    rng = np.random.default_rng(SEED)
    moments = [round(float(t), 1) for t in rng.uniform(6.0, 45.0, K_KILLS)]
    killed = 0
    for t in moments:  # each driver lives t seconds, then SIGKILL; the next one resumes
        d = Driver(endpoint, root, log)
        try:
            d.proc.wait(timeout=t)
        except subprocess.TimeoutExpired:
            d.kill()
            killed += 1
    completed = _finish(endpoint, root, log)
    row("driver SIGKILL", killed, 1 if completed else 0, reference, root, opts,
        note=f"seed {SEED}: kills after {moments} s of each driver's life; completed by run {completed} after")


def test_two_drivers_on_one_run_directory(store, reference):
    endpoint, bucket, opts, logs = store
    root = f"{bucket}/two-drivers"
    first = Driver(endpoint, root, logs / "two-drivers-1.log")
    _wait_for(lambda: storage.exists(storage.join(root, "lease.json"), opts), "the first driver's lease", first)
    second = Driver(endpoint, root, logs / "two-drivers-2.log")
    assert second.wait(timeout=120) == 2
    message = second.text().strip().splitlines()[-1]
    assert "is in use" in message and "--take-over" in message, message
    assert first.wait() == 0, first.text()[-3000:]
    row("two drivers", 1, 1, reference, root, opts, note=f"the second driver was told: {message}")


def _kill_a_ray_process(store, reference, name: str, process: bytes, settle: float, how_many: int | None):
    """Start a run, SIGKILL its Ray processes whose title holds ``process`` once they are ``settle`` s
    old (the first ``how_many`` of them, or all), resubmit until it completes, compare."""
    endpoint, bucket, opts, logs = store
    slug = name.replace(" ", "-")
    root, log = f"{bucket}/{slug}", logs / f"{slug}.log"
    d = Driver(endpoint, root, log)
    _wait_for(lambda: d.ray_pids(process), f"a {process.decode()} process", d, every=0.1)
    time.sleep(settle)
    victims = d.ray_pids(process)[:how_many]
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    runs = 1 if d.wait() == 0 else 1 + _finish(endpoint, root, log)
    row(f"{name} SIGKILL", len(victims), 1, reference, root, opts, note=f"completed in {runs} run(s)")


def test_a_sampler_actor_killed_mid_stage(store, reference):
    _kill_a_ray_process(store, reference, "sampler actor", b"Sampler", settle=0.0, how_many=None)


def test_a_training_worker_killed_mid_stage(store, reference):
    _kill_a_ray_process(store, reference, "training worker", b"RayTrainWorker", settle=2.0, how_many=1)


def test_the_gateway_restarted_mid_write_of_a_pool(store, reference):
    endpoint, bucket, opts, logs = store
    root, log = f"{bucket}/gateway-restart", logs / "gateway-restart.log"
    d = Driver(endpoint, root, log)
    _wait_for(lambda: d.ray_pids(b"Sampler"), "the first sampling stage", d, every=0.1)
    endpoint.restart_gateway()
    rc = d.wait()
    runs = 1 if rc == 0 else 1 + _finish(endpoint, root, log)
    row("radosgw restart mid-pool", 1, 1, reference, root, opts,
        note=f"completed in {runs} run(s)" + ("" if rc == 0 else f"; the interrupted run said: "
                                              f"{d.text().strip().splitlines()[-1][:200]}"))


def test_a_flipped_byte_in_a_committed_shard(store, reference):
    endpoint, bucket, opts, logs = store
    root, log = f"{bucket}/flipped-byte", logs / "flipped-byte.log"
    assert _finish(endpoint, root, log) == 1
    shard = storage.join(RunLayout(root).pool("shared", 1), "shard-000000.tar")
    data = bytearray(storage.read_bytes(shard, opts))
    data[700] ^= 0x01
    storage.write_bytes(shard, bytes(data), opts)
    storage.remove(RunLayout(root).stage_record("shared/gen-001/score"), opts, recursive=True)
    assert _finish(endpoint, root, log) == 1
    assert f"damaged: {shard}" in log.read_text()
    row("flipped byte in a pool shard", 1, 1, reference, root, opts, note="re-sampled from its seeds")


def test_a_full_local_spool_is_reported_clearly(store, reference, tmp_path):
    """The training workers stage checkpoints in the local spool ($COLLAPSE_SPOOL): a full one fails the
    stage by name, and nothing of it is committed."""
    endpoint, bucket, opts, logs = store
    root, log = f"{bucket}/full-spool", logs / "full-spool.log"
    spool = tmp_path / "spool"
    spool.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(spool)], capture_output=True,
                             text=True)
    assert mounted.returncode == 0, f"the full-disk case needs root to mount a tmpfs: {mounted.stderr}"
    try:
        d = Driver(endpoint, root, log, {"COLLAPSE_SPOOL": str(spool)})
        assert d.wait() == 2, d.text()[-3000:]
        last = d.text().strip().splitlines()[-1]
        assert "No space left on device" in last and str(spool) in last and "Traceback" not in last, last
        assert not _record(root, "shared/gen-001/train", opts)
    finally:
        subprocess.run(["umount", "-l", str(spool)], check=False)
    runs = _finish(endpoint, root, log)
    row("full local spool", 1, 1, reference, root, opts, note=f"reported as: {last[:220]}; then completed "
                                                                f"in {runs} run(s) with space")


# -- a cluster of several nodes on loopback: a worker node's raylet dies in the middle of a stage

def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _node_running(c, title: bytes):
    """The worker node (of ``c``) with a live process whose title holds ``title``, or None."""
    raylets = {n.all_processes["raylet"][0].process.pid: n for n in c.worker_nodes}
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if title not in cmdline.read_bytes():
                continue
            pid = int(cmdline.parent.name)
            while pid > 1 and pid not in raylets:
                pid = _parent(pid)
        except (OSError, ValueError, IndexError):
            continue
        if pid in raylets:
            return raylets[pid]
    return None


def _kill_a_node_mid_stage(store, reference, c, name: str, title: bytes, *settings: str):
    """Run on the 3-node cluster; once a process titled ``title`` runs on a worker node, SIGKILL that
    node's raylet and every process of it (Cluster.remove_node, not graceful); a fresh node joins as
    an autoscaler would add one. The run goes on (or is resubmitted) and is compared."""
    endpoint, bucket, opts, logs = store
    slug = name.replace(" ", "-")
    root, log = f"{bucket}/{slug}", logs / f"{slug}.log"
    extra = ("--address", c.address, *(a for s in settings for a in ("--set", s)))
    d = Driver(endpoint, root, log, None, *extra)
    node = None

    def found():
        nonlocal node
        node = _node_running(c, title)
        return node is not None
    _wait_for(found, f"a {title.decode()} process on a worker node", d, every=0.05)
    c.remove_node(node, allow_graceful=False)
    c.add_node(num_cpus=2, node_ip_address="127.0.0.1")
    rc = d.wait()
    runs = 1
    while rc != 0 and runs < 3:
        runs += 1
        rc = Driver(endpoint, root, log, None, *extra).wait()
    assert rc == 0, log.read_text()[-3000:]
    said = [ln for ln in log.read_text().splitlines() if "lost a worker" in ln or "attempt 1 failed" in ln]
    assert said, f"the killed node did not interrupt the stage: {log.read_text()[-3000:]}"
    row(f"worker raylet killed {name.split(' ', 1)[1]}", 1, 1, reference, root, opts,
        note=f"3-node loopback cluster; completed in {runs} run(s); the driver said: {said[0].strip()[:200]}")


def test_a_worker_raylet_killed_mid_sample(store, reference, three_nodes):
    _kill_a_node_mid_stage(store, reference, three_nodes, "raylet mid-sample", b"Sampler")


def test_a_worker_raylet_killed_mid_score(store, reference, three_nodes):
    _kill_a_node_mid_stage(store, reference, three_nodes, "raylet mid-score", b"ReferenceShard",
                           "resources.scorer_shards=2")


FLAKY_RUNS = 3


def test_a_flaky_store(store, reference):
    """Fresh runs on a store behind tests/flaky_store.py at a bad day of a real cloud: 5% of requests
    throttled (503 SlowDown), 2% of connections reset (half of them after the store applied the
    request, its answer lost), 2% delayed by 2 s. Each run must complete in one submission, with the
    undisturbed run's sets, selections and figures."""
    from tests.flaky_store import FlakyStore, Rates
    from tests.s3_endpoint import S3Endpoint
    endpoint, bucket, opts, logs = store
    rates = Rates(throttle=0.05, reset_before=0.01, reset_after=0.01, delay=0.02, delay_s=2.0)
    totals, completed, submissions = Counter(), 0, []
    for i in range(FLAKY_RUNS):
        root, log = f"{bucket}/flaky-store-{i}", logs / f"flaky-store-{i}.log"
        with FlakyStore(endpoint.endpoint_url, rates, seed=SEED + i) as flaky:
            d = Driver(S3Endpoint(flaky.endpoint_url, endpoint.key, endpoint.secret), root, log)
            rc = d.wait()
            totals.update(flaky.counts)
        submissions.append(1 if rc == 0 else None)
        assert rc == 0, f"run {i} on the flaky store failed in its one submission: {d.text()[-3000:]}"
        lost, duplicated, equal = compare(reference, outcome(root, opts))
        assert (lost, duplicated, equal) == (0, 0, True), (i, lost, duplicated, equal)
        completed += 1
    retries = totals["throttle"] + totals["reset_before"] + totals["reset_after"]
    row("flaky store", retries + totals["delay"], completed, reference, f"{bucket}/flaky-store-0", opts,
        note=f"{FLAKY_RUNS} runs, seeds {SEED}..{SEED + FLAKY_RUNS - 1}, rates {rates}: {totals['requests']} requests, "
             f"{totals['throttle']} throttled, {totals['reset_before']} reset before and {totals['reset_after']} after "
             f"forwarding, {totals['delay']} delayed; {retries} client retries at least (one per fault that "
             f"failed a request); submissions per run {submissions}")
