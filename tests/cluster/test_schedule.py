"""Stages of independent strategies side by side (cluster.loop.Loop.run_side_by_side) on a simulated
3-node loopback cluster: the stage records overlap in time across strategies, and the selections and
metrics equal those of the same run forced one stage after another.

The run one stage after another redoes, in the same run directory, every stage of the three
strategies (their selections, training sets, models, pools, features and figures are deleted with
their records first); the stages they all read (ingest, the real set's features and the shared
generation 1) are kept, so that the two runs differ only where the strategies could run side by side."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from collapse.data import manifest as mf
from collapse.plan import plan
from collapse.schedule import overlaps
from jobs.presets import load_config
from tests import ray_logs
from tests.cluster.test_loop import _assert_same_metrics

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
STRATEGIES = ("vanilla", "greedy", "tdf")
THREE = ("strategies=[{name: vanilla, kind: vanilla}, {name: greedy, kind: greedy, pool_factor: 2, features: pixel},"
         " {name: tdf, kind: tdf, pool_factor: 2, features: pixel, tau0: 20.0, alpha: 0.9}]")


# the tiny preset, cheaper still: what is compared is the scheduling, not the models
CHEAP = (THREE, "train.steps=10", "sample.steps=4", "metrics.classifier_images=0")


def _collapse_run(cluster, run_dir: Path, *sets: str) -> str:
    r = subprocess.run([sys.executable, "-m", "jobs.cli", "run", "--config", "tiny", "--run-dir", str(run_dir),
                        "--address", cluster.address, *(a for s in CHEAP + sets for a in ("--set", s))],
                       cwd=ROOT, capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONPATH": str(ROOT)})
    out = r.stdout + r.stderr
    ours = ray_logs.ours(out)  # less Ray Train's own harmless warnings (tests/ray_logs.py)
    assert r.returncode == 0 and "Traceback" not in ours, out[-4000:]
    return r.stdout


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in (run_dir / "stages").rglob(mf.MANIFEST_NAME)]


def _across_strategies(pairs) -> list[tuple[str, str]]:
    owner = (lambda key: key.split("/")[0] if "/" in key else None)
    return [(a, b) for a, b in pairs if owner(a) in STRATEGIES and owner(b) in STRATEGIES and owner(a) != owner(b)]


def _metrics(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("stage_seconds")
    return rows


def _selections(run_dir: Path) -> dict:
    return {s: [k["key"] for k in mf.read_manifest(str(run_dir / s / "gen-001" / "selection"))["kept"]]
            for s in STRATEGIES}


def test_three_strategies_run_side_by_side_with_the_results_of_a_sequential_run(three_nodes, tmp_path):
    run_dir = tmp_path / "run"
    side = _collapse_run(three_nodes, run_dir)
    rec_side, sel_side, met_side = _records(run_dir), _selections(run_dir), _metrics(run_dir)
    assert len(rec_side) == 22
    together = _across_strategies(overlaps(rec_side))
    trains = {frozenset(p) for p in together if all(k.endswith("/train") for k in p)}
    # the three trainings of generation 2 (one CPU each, four CPUs on the worker nodes) ran at once
    assert trains == {frozenset((f"{a}/gen-002/train", f"{b}/gen-002/train"))
                      for a, b in (("vanilla", "greedy"), ("vanilla", "tdf"), ("greedy", "tdf"))}, together
    assert "(beside " in side
    # a stage starts only after every stage it reads has ended
    by_key = {r["key"]: r for r in rec_side}
    for st in plan(load_config("tiny", [f"run.run_dir={run_dir}", *CHEAP])):
        assert all(by_key[a]["ended_at"] <= by_key[st.key]["started_at"] for a in st.after), st.key

    # every stage of the strategies again, one after another
    for s in STRATEGIES:
        shutil.rmtree(run_dir / s)
        shutil.rmtree(run_dir / "stages" / s)
    seq = _collapse_run(three_nodes, run_dir, "resources.max_parallel_stages=1")
    rec_seq = [r for r in _records(run_dir) if r["key"].split("/")[0] in STRATEGIES]
    assert len(rec_seq) == 15 and len(_records(run_dir)) == 22
    assert all(r["started_at"] > max(x["ended_at"] for x in rec_side) for r in rec_seq)  # all of them made again
    assert overlaps(rec_seq) == [] and "(beside " not in seq
    assert _selections(run_dir) == sel_side
    _assert_same_metrics(met_side, _metrics(run_dir))


def test_a_local_ray_starts_beside_another_ray_on_the_machine(three_nodes):
    """A driver without an address starts its own Ray even while another runs here: ray.init alone
    would join the cluster the last `ray start` (or Cluster) recorded in /tmp/ray, and refuse num_cpus
    (`make demo` failed so beside a running cluster)."""
    code = ("from cluster.runtime import connect\n"
            "ray = connect(num_cpus=3)\n"
            "print('CPUs', ray.cluster_resources().get('CPU'), 'nodes', len(ray.nodes()))\n")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**env, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "CPUs 3.0 nodes 1" in r.stdout, r.stdout  # its own one-node Ray, not the 3-node cluster's 4 CPUs
