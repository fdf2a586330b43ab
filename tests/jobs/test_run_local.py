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


def _run_in_a_terminal(argv, cwd, env, kill_when, timeout=600) -> tuple[int, int, str]:
    """``argv`` with a pseudo-terminal as its stdin, stdout and stderr, as in a person's shell; its PID, exit
    code and all it wrote. ``kill_when(pid)`` is asked about once a second: when it is true the process gets
    SIGKILL, and what its children still write is read for up to 60 s more."""
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
            if proc.poll() is None and kill_when(proc.pid):
                proc.send_signal(signal.SIGKILL)
                deadline = min(deadline, time.monotonic() + 60)
            if select.select([master], [], [], 1.0)[0]:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: every writer has gone
                    break
                if not data:
                    break
                chunks.append(data)
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        return proc.pid, code, b"".join(chunks).decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)


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


# One generation exercises every kind of process a path reaches (Train workers, sampler and featurizer
# actors, the driver); the second adds only driver-side selection, which the loop tests cover.
def test_a_relative_run_dir_in_a_terminal_killed_with_sigkill_resumes_from_another_directory():
    """`make demo`'s case, then a crash: from the repository root with a relative --run-dir, in a
    terminal, killed with SIGKILL in its sampling stage (its Ray must go with it); then the same run
    resumed from another working directory, by the relative path that names it from there. Ray Train
    workers and actors run in other working directories than the driver: a relative path that reached
    them would name another place. The resumed driver takes the killed one's lease at once and
    finishes the run where it stopped.

    In the terminal the long stages draw tqdm bars (cluster.progress_board) and print no progress
    lines; the driver's stage lines stay (above the bars). Plain lines, without a terminal, are
    checked on a submitted job (tests/cluster/test_loop.py)."""
    name, token = f"test-relative-{uuid.uuid4().hex[:8]}", f"test-{uuid.uuid4().hex}"
    run_dir = ROOT / "runs" / name
    record = run_dir / "stages" / "shared" / "gen-001" / "train" / mf.MANIFEST_NAME
    sets = ["--set", "run.generations=1", "--set", "train.steps=40",
            "--set", "trackers.tensorboard=true", "--set", "trackers.mlflow=local"]
    trained_at, ray_procs, marked_at_kill = [], {}, []

    def into_sampling(pid: int) -> bool:  # Ray is up, with its agents, and Train has run: kill it mid-run
        if not record.exists():
            return False
        trained_at.append(trained_at[0] if trained_at else time.monotonic())
        if time.monotonic() - trained_at[0] < 2.0:  # into the sampling stage: actors alive
            return False
        marked_at_kill.extend(marked_pids(token))
        ray_procs.update({**descendants(pid), **{p: _start_time(p) for p in marked_at_kill}})
        return True

    argv = [sys.executable, "-m", "jobs.cli", "run", "--config", "tiny", "--run-dir", f"runs/{name}", *sets]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLLAPSE_PROGRESS_EVERY_S": "0", "TERM": "xterm", MARKER: token}
    try:
        driver, code, out = _run_in_a_terminal(argv, ROOT, env, into_sampling)
        assert code == -signal.SIGKILL, (code, out[-4000:])
        assert "Traceback" not in ray_logs.ours(out) and "Reporting training result" not in out, out[-4000:]
        # the training's bar: its name, step/total and loss, redrawn in place (carriage returns)
        assert "train shared/gen-001/model:" in out and "/40 steps [" in out and "loss 0." in out and "\r" in out, \
            out[-4000:]
        assert "step 40/40, loss" not in out, out[-4000:]          # no plain line, although every_s is 0
        assert "[5/8] shared/gen-001/train done in" in out and "min so far, ETA " in out, out[-4000:]
        # the driver's Ray goes with it (cluster/reaper.py): every process seen at the kill, and every
        # process that carries the marker
        assert len(marked_at_kill) >= 3, "the driver's Ray processes should carry the marker"
        deadline = time.time() + 60
        while (alive(ray_procs) or marked_pids(token)) and time.time() < deadline:
            time.sleep(0.5)
        left = set(alive(ray_procs)) | set(marked_pids(token))
        names = {pid: Path(f"/proc/{pid}/cmdline").read_bytes()[:80].replace(b"\0", b" ").strip()
                 for pid in left if Path(f"/proc/{pid}").exists()}
        assert not left, f"left running after the driver's SIGKILL: {names}; {out[-3000:]}"
        assert not (run_dir / "shared" / "gen-001" / "metrics.json").exists()

        # the same run from another directory: the killed driver held the run's lease; on this host it is
        # taken at once
        r = _collapse_run(name, ROOT / "runs", *sets)
        _assert_clean(r)
        assert f"pid {driver}" in r.stdout and "its process is gone" in r.stdout, r.stdout[-3000:]
        # resumed where it stopped: the committed stages are not run again
        assert "] shared/gen-001/train ..." not in r.stdout and "] shared/gen-001/score ..." in r.stdout, \
            r.stdout[-3000:]
        assert _stage_records(run_dir) == sorted([
            "ingest", "classifier", "featurize-real", "shared/gen-001/train-set", "shared/gen-001/train",
            "shared/gen-001/sample", "shared/gen-001/featurize", "shared/gen-001/score"])
        # each record says when its stage ran (UTC seconds), in the plan's order
        times = [(mf.read_manifest(str(run_dir / "stages" / k))["started_at"],
                  mf.read_manifest(str(run_dir / "stages" / k))["ended_at"])
                 for k in ("ingest", "shared/gen-001/train", "shared/gen-001/score")]
        assert all(a <= b for a, b in times) and times[0][1] <= times[1][0] <= times[1][1] <= times[2][0]
        assert (run_dir / "shared" / "gen-001" / "metrics.json").is_file()
        assert (run_dir / "report" / "index.html").is_file()
        assert f"run {run_dir} finished" in r.stdout
        _assert_trackers_hold_generation_one(run_dir)
        assert not (ROOT / name).exists() and not (ROOT / "runs" / "runs").exists()
    finally:
        for pid in marked_pids(token):  # only ours, by the marker this test chose
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(run_dir, ignore_errors=True)
