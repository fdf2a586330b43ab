"""The whole loop: `ray job submit` of the tiny preset with its run directory on Ceph; kill and resubmit."""
import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest

from collapse.data import manifest as mf
from collapse.data import storage
from collapse.data.samples import open_sample_set
from collapse.data.urls import RunLayout
from collapse.plan import SHARED
from collapse.seeding import sample_seed

pytestmark = [pytest.mark.ceph, pytest.mark.slow]
ROOT = pathlib.Path(__file__).resolve().parents[2]
RUNTIME_EXCLUDES = [".venv", ".git", ".state", "runs", "**/__pycache__", ".pytest_cache"]


def _store_env(endpoint) -> dict:
    """The standard variables that name the test store to a driver."""
    return {"AWS_ENDPOINT_URL": endpoint.endpoint_url, "AWS_ACCESS_KEY_ID": endpoint.key,
            "AWS_SECRET_ACCESS_KEY": endpoint.secret, "AWS_EC2_METADATA_DISABLED": "true"}


def _job_env(endpoint, **env) -> str:
    return json.dumps({"env_vars": {**_store_env(endpoint), **env}, "excludes": RUNTIME_EXCLUDES})


def _ray_job(head, *args, timeout=600) -> subprocess.CompletedProcess:
    cmd = [str(pathlib.Path(sys.executable).parent / "ray"), "job", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, RAY_ADDRESS=head.dashboard))


def _submit(head, endpoint, run_dir, *extra, wait=True, job_id=None, env=None):
    args = ["submit", "--address", head.dashboard, "--working-dir", str(ROOT), "--runtime-env-json",
            _job_env(endpoint, **(env or {}))]
    if not wait:
        args.append("--no-wait")
    if job_id:
        args += ["--submission-id", job_id]
    return _ray_job(head, *args, "--", sys.executable, "-m", "jobs.cli", "run", "--config", "tiny", "--run-dir", run_dir,
                    *extra)


def _selections(root, opts):
    L = RunLayout(root)
    return {s: [k["key"] for k in mf.read_manifest(L.selection(s, 1), opts)["kept"]] for s in ("vanilla", "greedy")}


def _metrics(root, opts):
    rows = [json.loads(line) for line in storage.read_bytes(RunLayout(root).metrics_log, opts).decode().splitlines()]
    for r in rows:
        r.pop("stage_seconds")
    return rows


# Tolerances of the pixel-space figures when two processes (a job's driver, this test process) score the
# same sets: their BLAS may use other thread counts and so round otherwise. Each bound follows from how
# the figure is computed (collapse/knn.py, collapse/quality.py) with eps = 2.2e-16, d = 256 pixels on
# the 0-255 scale and n rows per set:
#   counts (memorization, precision, recall, density, coverage): exact, so equal;
#   distance figures (gs, holdout_gs, mean_nn_distance, copy_radius): float64 distances recomputed from the rows,
#       d eps relative; manifold_ratio = gs / holdout_gs, twice that;
#   entropy, pool_entropy = const + (d / N) sum log r_i: r_i to d eps relative, so d * d eps in nats;
#   covariance_trace: a sum of n d squares, (n + d) eps relative;
#   fd: the QR factors and singular values of R_a R_b^T are backward stable; their rounding is about
#       min(n, d) d eps (|mu_a|^2 + |mu_b|^2 + Tr S_a + Tr S_b) <= min(n, d) d eps * 4 d 255^2;
#   kid, kid_std: kernel values (x.y / d + 1)^3 <= (255^2 + 1)^3, each to 3 d eps relative, and the
#       MMD adds 4 such means: 12 d eps (255^2 + 1)^3.
# A factor 4 on each covers the constants the estimates leave out.
EPS, D_PIXEL, PIXEL_MAX = np.finfo(np.float64).eps, 16 * 16, 255.0
COUNTS = ("memorization", "memorization_real_scale", "duplicate_share", "precision", "recall", "density", "coverage")


def _tolerance(figure: str, value: float, n: int) -> float:
    d = D_PIXEL
    if figure in COUNTS:
        return 0.0
    if figure in ("gs", "holdout_gs", "mean_nn_distance", "copy_radius"):
        return 4 * d * EPS * abs(value)
    if figure == "manifold_ratio":   # gs / holdout_gs: the two relative errors add
        return 2 * 4 * d * EPS * abs(value)
    if figure in ("entropy", "pool_entropy"):
        return 4 * d * d * EPS
    if figure == "covariance_trace":
        return 4 * (n + d) * EPS * abs(value)
    if figure == "fd":
        return 4 * min(n, d) * d * EPS * 4 * d * PIXEL_MAX ** 2
    if figure in ("kid", "kid_std"):
        return 4 * 12 * d * EPS * (PIXEL_MAX ** 2 + 1) ** 3
    raise AssertionError(f"no tolerance derived for the figure {figure!r}")


def _assert_same_metrics(a, b):
    """Equal rows; each pixel-space figure within the rounding bound derived above."""
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        assert {k: v for k, v in ra.items() if k != "spaces"} == {k: v for k, v in rb.items() if k != "spaces"}
        assert set(ra["spaces"]) == {"pixel"}
        fa, fb = ra["spaces"]["pixel"], rb["spaces"]["pixel"]
        assert fa.keys() == fb.keys()
        n = min(ra["train_count"], ra["scored_count"], ra["holdout_count"])
        for k in fa:
            assert abs(fa[k] - fb[k]) <= _tolerance(k, fa[k], n), (ra["strategy"], ra["generation"], k, fa[k], fb[k])


@pytest.fixture(scope="module")
def finished_run(ray_head, ceph_s3):
    import s3fs
    opts = ceph_s3.storage_options
    fs = s3fs.S3FileSystem(**opts)
    if not fs.exists("loop-tests"):
        fs.mkdir("loop-tests")
    root = "s3://loop-tests/run-a"
    # two sampler actors (the killed run uses one); a progress line at every step and shard (every 30 s by default)
    r = _submit(ray_head, ceph_s3, root, "--set", "resources.sampler_min_actors=2",
                "--set", "resources.sampler_max_actors=2", env={"COLLAPSE_PROGRESS_EVERY_S": "0"})
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    return root, opts, r.stdout


def test_submitted_job_writes_every_stage_and_metric(finished_run):
    root, opts, out = finished_run
    L = RunLayout(root)
    assert "finished" in out and "last generation" in out
    for strategy in ("vanilla", "greedy"):
        m = json.loads(storage.read_bytes(L.metrics(strategy, 2), opts))
        pixel = m["spaces"]["pixel"]
        for figure in ("entropy", "gs", "memorization", "fd", "kid", "precision", "recall", "density", "coverage",
                       "covariance_trace", "mean_nn_distance", "memorization_real_scale", "duplicate_share",
                       "copy_radius"):
            assert figure in pixel and pixel[figure] == pixel[figure], figure  # present and not NaN
        assert m["real_share"] == 0.0 and m["train_count"] == 64
        # the sample-quality figure can fail: real held-out images are recognized, and the samples of
        # the tiny preset's 20-step models (noise) are not
        q = m["quality"]
        assert q["real_confidence"] > 0.6 and q["real_rejected"] < 0.1, q
        assert q["confidence"] < 0.5 * q["real_confidence"] and q["recognizable"] is False, q
        assert sum(q["class_histogram"]) <= m["scored_count"]
        assert set(m["stage_seconds"]) == {"train", "sample", "featurize"}
        assert mf.read_manifest(L.model(strategy, 2), opts)["kind"] == "directory"
        assert open_sample_set(L.pool(strategy, 2), opts).count == 64
    stages = storage.list_names(storage.join(root, "stages", "greedy", "gen-002"), opts)
    assert stages == ["featurize", "sample", "score", "train"]
    assert len(_metrics(root, opts)) == 4  # generation 1 (shared) and 2, for both strategies


def test_a_submitted_job_prints_a_progress_line_for_every_training_and_pool(finished_run):
    """Without a terminal (a job's log), plain lines (collapse.progress): each training worker's once per
    step here (Ray Train wrapped print() and doubled them once), each pool's, and the run's ETA."""
    root, _, out = finished_run
    for model in ("shared/gen-001", "vanilla/gen-002", "greedy/gen-002"):
        line = f"train {root}/{model}/model: step 20/20, loss "
        assert out.count(line) == 1, (line, out[-3000:])
        assert f"{root}/{model.split('/')[0]}/{model.split('/')[1]}/pool: " in out, (model, out[-3000:])
    assert " steps/s, ETA " in out and "images/s" in out and "min so far, ETA " in out, out[-3000:]
    assert "ETA > 0.0" not in out and "[repeated" not in out and "Reporting training result" not in out


def test_generation_two_training_images_trace_back_to_their_generation_one_sample(finished_run):
    root, opts, _ = finished_run
    L = RunLayout(root)
    model_1 = L.model("shared", 1)
    for strategy in ("vanilla", "greedy"):
        train2 = open_sample_set(L.train_set(strategy, 2), opts)
        pool1 = {s.key: s for s in open_sample_set(L.pool("shared", 1), opts).iter_samples()}
        for s in train2.iter_samples():
            meta = s.meta
            assert meta["source"] == "gen-001" and meta["model"] == model_1
            assert meta["seed"] == sample_seed(0, 1, meta["index"])
            origin = pool1[s.key]
            assert (origin.image == s.image).all() and origin.meta["seed"] == meta["seed"]
            decision = meta["decisions"][-1]
            assert decision["strategy"] == strategy and decision["kept"] and decision["generation"] == 1
            if strategy == "greedy":
                assert decision["how"] == "select" and "distance" in decision


def test_a_finished_run_is_a_no_op_and_a_changed_config_is_refused(ray_head, ceph_s3, finished_run):
    """Run again as a driver on the cluster (as the job's entrypoint is): both are decided from the run
    directory before the driver joins Ray (jobs/run.py), so no job is submitted for them."""
    root, opts, _ = finished_run

    def driver(*extra):
        return subprocess.run([sys.executable, "-m", "jobs.cli", "run", "--config", "tiny", "--run-dir", root, *extra],
                              cwd=ROOT, capture_output=True, text=True, timeout=300,
                              env={**ray_head.env, "PYTHONPATH": str(ROOT), **_store_env(ceph_s3)})
    r = driver()
    assert r.returncode == 0 and "already complete" in r.stdout, (r.stdout + r.stderr)[-3000:]
    r = driver("--set", "train.steps=21")
    assert r.returncode == 2 and "train.steps: 20 -> 21" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_killed_job_with_a_damaged_pool_shard_resubmitted_on_one_sampler_actor_matches_the_run_on_two(
        ray_head, ceph_s3, finished_run):
    """Killed in the middle of generation 1, then a bit flipped at rest in its committed pool shard, and
    resubmitted: the same selections and figures as the module's uninterrupted run. `collapse verify`
    names the shard; the resubmitted run finds it when its stages read it, side by side, re-samples that
    shard alone from its seeds (bit for bit), once, and goes on. Both submissions sample with one actor, the module's run
    with two: the pools, and so everything after them, do not depend on the number of sampler actors."""
    from collapse.data.verify import verify
    root_a, opts, _ = finished_run
    root = "s3://loop-tests/run-killed"
    one_actor = ("--set", "resources.sampler_min_actors=1", "--set", "resources.sampler_max_actors=1")
    job_id = f"killed-{time.time_ns()}"
    r = _submit(ray_head, ceph_s3, root, *one_actor, wait=False, job_id=job_id)
    assert r.returncode == 0, r.stderr
    deadline = time.time() + 400
    marker = storage.join(RunLayout(root).stage_record(f"{SHARED}/gen-001/sample"), "manifest.json")
    while not storage.exists(marker, opts):  # kill it in the middle of generation 1
        assert time.time() < deadline, _ray_job(ray_head, "logs", job_id).stdout[-3000:]
        time.sleep(0.5)
    stop = _ray_job(ray_head, "stop", job_id)
    assert stop.returncode == 0, stop.stderr
    assert not storage.exists(RunLayout(root).metrics("greedy", 2), opts)

    shard = storage.join(RunLayout(root).pool(SHARED, 1), "shard-000000.tar")
    original = storage.read_bytes(shard, opts)
    damaged = bytearray(original)
    damaged[700] ^= 0x01
    storage.write_bytes(shard, bytes(damaged), opts)
    assert [f.part_url for f in verify(root, opts).findings] == [shard]
    # three stages that read the pool are still to run, however far the job got before it stopped; they
    # start side by side and each finds the damage
    for key in (f"{SHARED}/gen-001/score", "vanilla/gen-001/select", "greedy/gen-001/select"):
        storage.remove(RunLayout(root).stage_record(key), opts, recursive=True)

    r = _submit(ray_head, ceph_s3, root, *one_actor)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    # rebuilt once, by the driver, for the three stages (each rebuilding it in its own runner raced)
    assert r.stdout.count(f"damaged: {shard}") == 1 and f"rebuilding it with {SHARED}/gen-001/sample" in r.stdout, \
        r.stdout[-4000:]
    # resumed where it stopped: the sample stage is not run again, only the damaged shard re-made
    assert "] shared/gen-001/sample ..." not in r.stdout and "(3 already done) with 1..1 actor(s)" in r.stdout, \
        r.stdout[-4000:]
    assert storage.read_bytes(shard, opts) == original
    assert verify(root, opts).findings == ()
    assert _selections(root, opts) == _selections(root_a, opts)
    _assert_same_metrics(_metrics(root_a, opts), _metrics(root, opts))


def test_no_credential_reaches_the_run_dir_the_report_or_the_logs(ray_head, ceph_s3, finished_run):
    """The job got its keys through the runtime env; none of them may be written anywhere we write."""
    root, opts, job_output = finished_run
    secrets = [s.encode() for s in (ceph_s3.key, ceph_s3.secret)]
    assert all(len(s) >= 12 for s in secrets), "the test store's keys must be distinctive to grep for"
    fs = ceph_s3.filesystem()
    objects = fs.find(root.split("://", 1)[1])
    assert any(o.endswith("report/index.html") for o in objects) and len(objects) > 50
    logs = {"job output": job_output.encode()}
    if ray_head.state_dir is not None:  # the driver's log files on the head, as Ray keeps them
        logs.update({str(p): p.read_bytes() for p in pathlib.Path(ray_head.state_dir).rglob("job-driver-*.log")})
    leaked = [o for o, data in fs.cat(objects).items() if any(s in data for s in secrets)]  # fetched concurrently
    leaked += [name for name, data in logs.items() if any(s in data for s in secrets)]
    assert leaked == []
