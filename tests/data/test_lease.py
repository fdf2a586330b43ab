"""The run lease: one driver per run directory, by compare-and-swap on a local disk and on Ceph's S3."""
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from collapse.data.lease import LEASE_NAME, Lease, LeaseHeldError, LeaseLostError, read_holder
from collapse.errors import StorageError

ROOT = Path(__file__).resolve().parents[2]


class Clock:
    def __init__(self, t=1_000_000.0):
        self.t = t

    def __call__(self):
        return self.t


def _lease(url, opts=None, ttl=120.0, clock=None, said=None):
    return Lease(url, opts, ttl_s=ttl, clock=clock or Clock(), say=(said.append if said is not None else print))


def _roots(tmp_path, request):
    return str(tmp_path / "run") if request.param == "file" else f"memory://lease-{uuid.uuid4().hex}/run"


@pytest.fixture(params=["file", "memory"])
def run_url(tmp_path, request):
    return _roots(tmp_path, request)


def test_a_second_driver_is_refused_while_the_first_beats(run_url):
    clock = Clock()
    first = _lease(run_url, clock=clock).acquire()
    clock.t += 100  # older than a beat, younger than the ttl
    with pytest.raises(LeaseHeldError) as e:
        _lease(run_url, clock=clock).acquire()
    msg = str(e.value)
    assert run_url in msg and f"pid {os.getpid()}" in msg and "last heartbeat 100 s ago" in msg
    assert "--take-over" in msg and "\n" not in msg
    first.check()  # the refused driver changed nothing
    first.release()
    assert read_holder(run_url).released
    said = []
    _lease(run_url, clock=clock, said=said).acquire()  # a released lease is free: no take-over to report
    assert said == []


def test_a_stale_lease_is_taken_over_and_its_old_holder_stops(run_url):
    old_clock, new_clock, said = Clock(), Clock(), []
    old = _lease(run_url, clock=old_clock).acquire()
    new_clock.t = old_clock.t + 121
    new = _lease(run_url, clock=new_clock, said=said).acquire()
    assert len(said) == 1 and "took over" in said[0] and "stale for 121 s" in said[0]
    assert read_holder(run_url).id == new.me.id
    old.renew()  # the old driver wakes up: its compare-and-swap fails, it learns it lost
    with pytest.raises(LeaseLostError, match="taken over by driver " + new.me.id[:8]):
        old.check()
    old.release()  # changes nothing: the new holder's lease stays
    assert read_holder(run_url).id == new.me.id and not read_holder(run_url).released
    new.check()


def test_take_over_forces_a_fresh_lease(run_url):
    said = []
    first = _lease(run_url).acquire()
    second = _lease(run_url, said=said).acquire(take_over=True)
    assert "forced by --take-over" in said[0]
    with pytest.raises(LeaseLostError):
        first.renew() or first.check()
    second.check()


def test_a_driver_that_cannot_beat_for_a_ttl_stops(run_url):
    clock = Clock()
    lease = _lease(run_url, ttl=10, clock=clock).acquire()
    clock.t += 5
    lease.check()
    lease.store.write = lambda *a, **k: (_ for _ in ()).throw(StorageError("gateway down"))
    clock.t += 20
    with pytest.raises(LeaseLostError, match="could not be renewed for 25 s .last attempt: StorageError: gateway down"):
        lease.check()
    with pytest.raises(LeaseLostError):
        lease.check()  # and stays stopped


def test_an_unreadable_lease_counts_as_stale(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / LEASE_NAME).write_bytes(b'{"id": "cut')
    said = []
    _lease(str(run), said=said).acquire()
    assert "took over" in said[0] and json.loads((run / LEASE_NAME).read_bytes())["id"] != "cut"


def _race(make, n=6):
    """n drivers acquire at the same moment; returns how many got the lease."""
    barrier, won, refused = threading.Barrier(n), [], []

    def go(i):
        lease = make(i)
        barrier.wait()
        try:
            lease.acquire()
            won.append(i)
        except LeaseHeldError:
            refused.append(i)
    threads = [threading.Thread(target=go, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return won, refused


def test_of_drivers_racing_for_a_local_run_exactly_one_wins(tmp_path):
    won, refused = _race(lambda i: _lease(str(tmp_path / "run")))
    assert len(won) == 1 and len(refused) == 5


def test_the_heartbeat_keeps_a_lease_fresh(tmp_path):
    lease = _lease(str(tmp_path / "run"), ttl=0.4, clock=time.time).acquire().start(interval_s=0.05)
    time.sleep(1.0)  # 2.5 ttls: without the beat the lease would be stale
    lease.check()
    assert time.time() - read_holder(str(tmp_path / "run")).heartbeat_at < 0.4
    lease.release()
    assert read_holder(str(tmp_path / "run")).released


def test_a_store_that_ignores_conditional_writes_is_refused(moto_bucket, monkeypatch):
    """A lease on a store that ignores If-None-Match would guard nothing: refuse it by name."""
    from collapse.data import lease as lease_mod
    real = lease_mod._Store.write

    def ignoring(self, data, expect):
        out = self.fs.pipe_file(self.path, data)  # the condition dropped, as such a store does
        return str(out["ETag"]).strip('"')
    endpoint, bucket = moto_bucket
    monkeypatch.setattr(lease_mod._Store, "write", ignoring)
    with pytest.raises(StorageError, match="ignores conditional writes"):
        _lease(f"{bucket}/run", endpoint.storage_options).acquire()
    monkeypatch.setattr(lease_mod._Store, "write", real)


@pytest.mark.ceph
def test_on_ceph_one_of_racing_drivers_wins_and_a_stale_lease_is_taken_over(ceph_bucket):
    endpoint, bucket = ceph_bucket
    opts, url = endpoint.storage_options, f"{bucket}/run"
    won, refused = _race(lambda i: _lease(url, {**opts, "skip_instance_cache": True}))
    assert len(won) == 1 and len(refused) == 5
    holder = read_holder(url, opts)
    clock, said = Clock(holder.heartbeat_at + 1000), []
    new = _lease(url, opts, clock=clock, said=said).acquire()
    assert "took over" in said[0]
    stale = _lease(url, opts, clock=clock)  # a second taker that read the old version loses the swap
    stale.version = "0" * 32
    stale.renew()
    assert stale.lost and "taken over by driver " + new.me.id[:8] in stale.lost
    new.release()
    assert read_holder(url, opts).released


@pytest.mark.slow
def test_a_second_collapse_run_on_a_held_run_dir_exits_2_naming_the_holder(tmp_path):
    run = tmp_path / "run"
    held = _lease(str(run), clock=time.time).acquire()
    r = subprocess.run([sys.executable, "-m", "jobs.cli", "run", "--config", "tiny", "--run-dir", str(run)],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"{run} is in use" in lines[0] and f"pid {os.getpid()}" in lines[0] and held.me.id[:8] in lines[0]
    print(lines[0])  # as a user sees it
    assert not (run / "config.yaml").exists() and not (run / "stages").exists()  # nothing written
    held.check()
    held.release()


def test_the_lease_ttl_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="ttl"):
        Lease(str(tmp_path), ttl_s=0)
    r = subprocess.run([sys.executable, "-m", "jobs.cli", "run", "--lease-ttl", "-3"], capture_output=True,
                       text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 2 and "expected a positive number of seconds, got '-3'" in r.stderr



def test_a_lease_whose_process_on_this_host_is_gone_is_taken_over_at_once(tmp_path):
    """A driver killed with SIGKILL and resubmitted on the same head node need not wait out the ttl."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run = tmp_path / "run"
    lease = _lease(str(run), clock=time.time).acquire()
    (run / LEASE_NAME).write_bytes(replace(lease.me, pid=dead.pid).to_bytes())
    said = []
    _lease(str(run), clock=time.time, said=said).acquire()
    assert "its process is gone" in said[0] and f"pid {dead.pid}" in said[0]


@pytest.mark.slow
def test_a_loop_whose_lease_is_taken_mid_stage_commits_nothing_more(tmp_path, monkeypatch):
    import cluster.stages
    from cluster.loop import Loop
    from jobs.presets import load_config
    run = str(tmp_path / "run")
    # stages in this process (not in stage runner actors), so that the patched stage is the one that runs
    cfg = load_config("tiny", [f"run.run_dir={run}", "resources.max_parallel_stages=1"])
    lease = _lease(run, clock=time.time).acquire()
    loop = Loop(cfg, progress=lambda *_: None, lease=lease)

    def ingest_then_lose(ctx, stage):  # another driver takes the run over while this stage runs
        _lease(run, clock=time.time).acquire(take_over=True)
    monkeypatch.setitem(cluster.stages.STAGES, "ingest", ingest_then_lose)
    with pytest.raises(LeaseLostError, match="taken over"):
        loop.run()
    assert not (tmp_path / "run" / "stages").exists()  # the stage's record was never committed


def test_the_heartbeat_and_commits_renewing_at_once_never_lose_the_lease(tmp_path):
    lease = _lease(str(tmp_path / "run"), clock=time.time).acquire().start(interval_s=0.001)
    for _ in range(300):  # a commit's confirm() while the heartbeat thread beats
        lease.confirm()
    lease.release()
    assert lease.lost is None


def _answers_lost(monkeypatch, every_write: bool = True):
    """Every conditional PUT of the lease is applied by the store and its answer lost: the client sends
    it again (as botocore does after a reset connection), and the caller sees the retry's answer, a 412
    from our own first write. Returns the list of (condition, status of the retry) seen."""
    from collapse.data import lease as lease_mod
    seen = []
    real_open = lease_mod._Store.__init__

    def opened(self, url, so):
        real_open(self, url, so)
        pipe = self.fs.pipe_file

        def applied_then_retried(path, data, **cond):
            if not cond or path != self.path:  # only the lease's conditional writes lose their answer
                return pipe(path, data, **cond)
            pipe(path, data, **cond)          # applied; the answer never reaches the client
            try:
                out = pipe(path, data, **cond)  # the client's retry of the same request
            except OSError as e:
                seen.append((next(iter(cond)), "refused" if lease_mod._precondition_failed(e) else repr(e)))
                raise
            seen.append((next(iter(cond)), "applied"))
            return out
        # on the instance, undone after the test: s3fs shares filesystem instances between callers
        monkeypatch.setattr(self.fs, "pipe_file", applied_then_retried)
    monkeypatch.setattr(lease_mod._Store, "__init__", opened)
    return seen


def _lost_answers_change_nothing(url, opts, monkeypatch):
    seen = _answers_lost(monkeypatch)
    said = []
    lease = Lease(url, {**opts, "skip_instance_cache": True}, ttl_s=120.0, say=said.append).acquire()
    # the create was refused on its retry (by itself), and so was the check that conditions are honoured
    assert seen[0] == ("IfNoneMatch", "refused") and lease.version
    lease.renew()
    lease.confirm()
    assert lease.lost is None and seen[-1] == ("IfMatch", "refused")
    holder = read_holder(url, opts)
    assert holder.id == lease.me.id and holder.write == lease.me.write and not holder.released
    # a take-over of a stale lease whose answer is lost: the new driver holds it, and says so once
    clock = Clock(holder.heartbeat_at + 1000)
    new = Lease(url, {**opts, "skip_instance_cache": True}, ttl_s=120.0, clock=clock, say=said.append).acquire()
    assert len(said) == 1 and "took over" in said[0] and read_holder(url, opts).id == new.me.id
    lease.renew()  # the old holder sees another driver's write: a real take-over
    assert lease.lost and f"taken over by driver {new.me.id[:8]}" in lease.lost
    new.release()
    assert read_holder(url, opts).released and read_holder(url, opts).id == new.me.id


def test_a_lease_write_whose_answer_is_lost_and_retried_is_ours_on_moto(moto_bucket, monkeypatch):
    endpoint, bucket = moto_bucket
    _lost_answers_change_nothing(f"{bucket}/run", endpoint.storage_options, monkeypatch)


@pytest.mark.ceph
def test_a_lease_write_whose_answer_is_lost_and_retried_is_ours_on_ceph(ceph_bucket, monkeypatch):
    endpoint, bucket = ceph_bucket
    _lost_answers_change_nothing(f"{bucket}/run", endpoint.storage_options, monkeypatch)


def test_a_lease_whose_create_answer_is_lost_was_refused_before_the_fix(moto_bucket, monkeypatch):
    """Without the write's token the same lost answer stops the driver: our own lease read as another's."""
    from collapse.data import lease as lease_mod
    endpoint, bucket = moto_bucket
    _answers_lost(monkeypatch)
    monkeypatch.setattr(lease_mod.Lease, "_swap", lambda self, holder, expect: self.store.write(holder.to_bytes(),
                                                                                                 expect))
    with pytest.raises(LeaseHeldError, match=f"pid {os.getpid()}"):
        Lease(f"{bucket}/run", {**endpoint.storage_options, "skip_instance_cache": True}).acquire()


def test_a_run_directory_that_is_a_file_is_one_clear_error(tmp_path):
    (tmp_path / "run").write_text("not a directory")
    with pytest.raises(StorageError) as e:
        _lease(str(tmp_path / "run")).acquire()
    assert str(tmp_path / "run") in str(e.value) and "is a file, not a directory" in str(e.value)
    assert (tmp_path / "run").read_text() == "not a directory"  # nothing was touched
    with pytest.raises(StorageError) as e:  # a file further up, too: that file is named
        _lease(str(tmp_path / "run" / "deeper")).acquire()
    assert f"{str(tmp_path / 'run')!r} is a file, not a directory" in str(e.value)
