"""`collapse run` as a user starts it: a subprocess with a relative --run-dir, its own local Ray, killed or not.

Ray Train workers and actors run in other working directories than the driver, so a relative path
that reached them would name another place (the newcomer's `make demo` failed so). The driver's
local Ray must also go with the driver, even when it is killed with SIGKILL.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from cluster.reaper import MARKER, alive, descendants, marked_pids
from collapse.data import manifest as mf
from tests import ray_logs

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _collapse_run(run_dir: str, cwd, *extra, env=None, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.cli", "run", "--config", "tiny", "--run-dir", run_dir, *extra],
                          cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def _assert_clean(r: subprocess.CompletedProcess) -> None:
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert "Traceback" not in ray_logs.ours(out) and "Reporting training result" not in out, out[-4000:]


def _stage_records(run_dir: Path) -> list[str]:
    return sorted(str(p.parent.relative_to(run_dir / "stages")) for p in (run_dir / "stages").rglob(mf.MANIFEST_NAME))


def _run_in_a_terminal(argv, cwd, env, timeout=600) -> tuple[int, str]:
    """``argv`` with a pseudo-terminal as its stdin, stdout and stderr, as in a person's shell; its exit
    code and all it wrote."""
    import fcntl
    import pty
    import select
    import struct
    import termios
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # 24 x 120, as a terminal window
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if select.select([master], [], [], 1.0)[0]:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: every writer has gone
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        return proc.wait(timeout=max(1.0, deadline - time.monotonic())), b"".join(chunks).decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)


# One generation exercises every kind of process a path reaches (Train workers, sampler and featurizer
# actors, the driver); the second adds only driver-side selection, which the loop tests cover.
def test_from_the_repository_root_with_a_relative_run_dir_in_a_terminal_a_training_draws_a_bar():
    """`make demo`'s case: a relative --run-dir from the repository root, in a terminal. The long
    stages draw tqdm bars (cluster.progress_board) and print no progress lines; the driver's stage
    lines stay (above the bars). Plain lines, without a terminal, are checked on a submitted job
    (tests/cluster/test_loop.py)."""
    rel = f"runs/test-relative-{uuid.uuid4().hex[:8]}"
    try:
        code, out = _run_in_a_terminal(
            [sys.executable, "-m", "jobs.cli", "run", "--config", "tiny", "--run-dir", rel,
             "--set", "run.generations=1", "--set", "train.steps=40",
             "--set", "trackers.tensorboard=true", "--set", "trackers.mlflow=local"],
            ROOT, {**os.environ, "PYTHONPATH": str(ROOT), "COLLAPSE_PROGRESS_EVERY_S": "0", "TERM": "xterm"})
        assert code == 0 and "Traceback" not in ray_logs.ours(out) and "Reporting training result" not in out, \
            out[-4000:]
        # the training's bar: its name, step/total and loss, redrawn in place (carriage returns)
        assert "train shared/gen-001/model:" in out and "/40 steps [" in out and "loss 0." in out and "\r" in out, \
            out[-4000:]
        assert "step 40/40, loss" not in out, out[-4000:]          # no plain line, although every_s is 0
        assert "[5/8] shared/gen-001/train done in" in out and "min so far, ETA " in out, out[-4000:]
        run_dir = ROOT / rel
        records = _stage_records(run_dir)
        assert records == sorted(["ingest", "classifier", "featurize-real", "shared/gen-001/train-set",
                                  "shared/gen-001/train", "shared/gen-001/sample", "shared/gen-001/featurize",
                                  "shared/gen-001/score"])
        # each record says when its stage ran (UTC seconds), in the plan's order
        times = [(mf.read_manifest(str(run_dir / "stages" / k))["started_at"],
                  mf.read_manifest(str(run_dir / "stages" / k))["ended_at"])
                 for k in ("ingest", "shared/gen-001/train", "shared/gen-001/score")]
        assert all(a <= b for a, b in times) and times[0][1] <= times[1][0] <= times[1][1] <= times[2][0]
        assert (run_dir / "shared" / "gen-001" / "metrics.json").is_file()
        assert (run_dir / "report" / "index.html").is_file()
        assert f"run {run_dir} finished" in out
        _assert_trackers_hold_generation_one(run_dir)
    finally:
        shutil.rmtree(ROOT / rel, ignore_errors=True)


def _assert_trackers_hold_generation_one(run_dir: Path) -> None:
    """The driver sent generation 1's figures and M_1's loss and steps/s to TensorBoard and MLflow, for both
    strategies that share them, read back with their own readers (tests/cluster/test_trackers.py)."""
    from tests.cluster.test_trackers import _mlflow, _tensorboard
    figures = json.loads((run_dir / "shared" / "gen-001" / "metrics.json").read_text())
    model = mf.read_manifest(str(run_dir / "shared" / "gen-001" / "model"))["extra"]
    runs = _mlflow(str(run_dir / "mlruns"))
    assert sorted(runs) == ["greedy", "vanilla"]
    for strategy in ("vanilla", "greedy"):
        for scalars in (_tensorboard(run_dir, strategy), runs[strategy][1]):
            assert scalars["pixel/gs"] == [(1, pytest.approx(figures["spaces"]["pixel"]["gs"], rel=1e-6))]
            assert scalars["pixel/entropy"] == [(1, pytest.approx(figures["spaces"]["pixel"]["entropy"], rel=1e-6))]
            assert scalars["train/loss"] == [(1, pytest.approx(model["loss_curve"][-1][1], rel=1e-6))]
            assert scalars["train/steps_per_s"] == [(1, pytest.approx(model["steps_per_s"], rel=1e-6))]


def _start_time(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except OSError:
        return ""


def test_a_relative_run_dir_from_another_directory_killed_with_sigkill_resumes_and_leaves_no_ray_process(tmp_path):
    """One run, from another working directory with a relative --run-dir: killed with SIGKILL in its
    sampling stage (its Ray must go with it), then run again with the same command, which takes the
    killed driver's lease at once and finishes the run where it stopped."""
    token = f"test-{uuid.uuid4().hex}"
    run_dir = tmp_path / "my-run"
    log = open(tmp_path / "driver.log", "wb")
    argv = [sys.executable, "-m", "jobs.cli", "run", "--config", "tiny", "--run-dir", "my-run",
            "--set", "run.generations=1"]
    driver = subprocess.Popen(argv, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, "PYTHONPATH": str(ROOT), MARKER: token})
    try:
        record = run_dir / "stages" / "shared" / "gen-001" / "train" / mf.MANIFEST_NAME
        deadline = time.time() + 400
        while not record.exists():  # Ray is up, with its agents, and Train has run: kill it mid-run
            assert driver.poll() is None and time.time() < deadline, \
                f"the run ended or stalled before training: {(tmp_path / 'driver.log').read_bytes()[-3000:]!r}"
            time.sleep(0.5)
        time.sleep(2.0)  # into the sampling stage: actors alive
        ray_procs = {**descendants(driver.pid), **{p: _start_time(p) for p in marked_pids(token)}}
        assert len(marked_pids(token)) >= 3, "the driver's Ray processes should carry the marker"
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
        deadline = time.time() + 60
        while (alive(ray_procs) or marked_pids(token)) and time.time() < deadline:
            time.sleep(0.5)
        left = set(alive(ray_procs)) | set(marked_pids(token))
        names = {pid: Path(f"/proc/{pid}/cmdline").read_bytes()[:80].replace(b"\0", b" ").strip()
                 for pid in left if Path(f"/proc/{pid}").exists()}
        assert not left, f"left running after the driver's SIGKILL: {names}; " \
                         f"{(tmp_path / 'driver.log').read_bytes()[-3000:].decode(errors='replace')}"
        assert not (run_dir / "shared" / "gen-001" / "metrics.json").exists()
    finally:
        if driver.poll() is None:
            driver.kill()
        for pid in marked_pids(token):  # only ours, by the marker this test chose
            os.kill(pid, signal.SIGKILL)

    # the same command again: the killed driver held the run's lease; on this host it is taken at once
    r = _collapse_run("my-run", tmp_path, "--set", "run.generations=1")
    _assert_clean(r)
    assert f"pid {driver.pid}" in r.stdout and "its process is gone" in r.stdout, r.stdout[-3000:]
    # resumed where it stopped: the committed stages are not run again
    assert "] shared/gen-001/train ..." not in r.stdout and "] shared/gen-001/score ..." in r.stdout, r.stdout[-3000:]
    records = _stage_records(run_dir)
    assert "shared/gen-001/train" in records and "shared/gen-001/score" in records
    assert (run_dir / "shared" / "gen-001" / "metrics.json").is_file()
    assert not (ROOT / "my-run").exists()
