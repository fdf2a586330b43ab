"""Stages of independent strategies side by side (cluster.loop.Loop.run_side_by_side) on a simulated
3-node loopback cluster, in one class-conditional run of three strategies: the stage records overlap
in time across strategies, and the selections and metrics equal those of the same run forced one
stage after another. The class-conditional tests read the same run (the module's fixture): the
guided models, the labels of every synthetic training image, the per-class selection's quotas and
the per-class figures.

The run one stage after another redoes, in a copy of the run directory, every stage of one strategy,
greedy (per-class selection from the shared pool: the chain with the most of its own; its selections,
training sets, model, pool, features and figures are deleted with their records first); the stages
it reads and did not make (ingest, the classifier, the real set's features, the shared generation 1)
are kept, so that the two runs differ only where greedy ran beside the other chains. The other two
chains run the same code in the same stage runners; redoing them too cost ~100 s of the suite."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from collapse.classes import assign_labels, class_counts, class_quotas
from collapse.data import manifest as mf
from collapse.data import storage
from collapse.data.samples import open_sample_set
from collapse.data.urls import RunLayout
from collapse.plan import plan
from collapse.schedule import overlaps
from jobs.presets import load_config
from tests import ray_logs
from tests.cluster.test_loop import _assert_same_metrics

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
K = 10
STRATEGIES = ("vanilla", "greedy", "g3")
SCALES = {"vanilla": 1.0, "greedy": 1.0, "g3": 3.0}
THREE = ("strategies=[{name: vanilla, kind: vanilla}, {name: greedy, kind: greedy, pool_factor: 2, features: pixel, "
         "per_class: true}, {name: g3, kind: vanilla, guidance_scale: 3}]")

# the tiny preset, cheaper still (its classifier kept: the per-class figures need it), class-conditional;
# 3 generations planned, and a stop rule that every forecast meets (noise models generalize: their GS is
# far above rho, 10^6 rho is not), so that each chain ends before training M_3 (run.stop_chain_below_rho)
CHEAP = (THREE, f"model.num_classes={K}", "train.steps=10", "sample.steps=4", "run.generations=3",
         "run.stop_chain_below_rho=1000000")


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
    return {(s, n): [k["key"] for k in mf.read_manifest(str(run_dir / s / f"gen-{n:03d}" / "selection"))["kept"]]
            for s in STRATEGIES for n in (1, 2)}


def _stopped(planned) -> list[str]:
    """The stages the stop rule leaves out: every strategy's generation 3."""
    return [st.key for st in planned if st.strategy in STRATEGIES and st.generation == 3]


def _assert_each_chain_stopped_before_m3(run_dir: Path, out: str, said_by=STRATEGIES) -> None:
    """Each chain's gen-2 selection holds the decision and why; the driver said it (of the chains in
    ``said_by``: those whose select stage it ran); the report shows it."""
    report = (run_dir / "report" / "index.html").read_text()
    for s in STRATEGIES:
        stop = mf.read_manifest(str(run_dir / s / "gen-002" / "selection"))["stop"]
        assert stop["generation"] == 3 and stop["space"] == "pixel" and stop["factor"] == 1e6
        assert stop["forecast"]["gs"] < 1e6 * stop["forecast"]["rho"] and stop["forecast"]["memorizes"] is False
        assert stop["why"].startswith(f"{s} stops before training M_3: in pixel space H(D_3) = ")
        if s in said_by:
            assert stop["why"] in out and f"{s}: the chain ends; not run: {s}/gen-003/train" in out, out[-3000:]
        assert f"{stop['why']}; the chain ends at generation 2." in report.replace("&#x27;", "'")
        assert not (run_dir / s / "gen-003" / "model").exists()


# Figures of the classifier (float32 torch): the driver of the sequential run and the stage runners
# of the side-by-side one run it on other thread counts, whose sums round otherwise; ~1e-7 relative
# per operation over a network of a few thousand terms per output. Counts and labels stay exact.
CLASSIFIER_REL = 1e-4


def _close(a, b, path: str, tolerance) -> None:
    """Equal structure; numbers within ``tolerance(path, value)``; the rest equal."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), path
        for k in a:
            _close(a[k], b[k], f"{path}.{k}", tolerance)
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for x, y in zip(a, b):
            _close(x, y, path, tolerance)
    elif isinstance(a, float) and isinstance(b, float):
        assert abs(a - b) <= tolerance(path, a), (path, a, b)
    else:
        assert a == b, (path, a, b)


def _assert_same_rows(a: list[dict], b: list[dict]) -> None:
    """_assert_same_metrics (test_loop) for each row's figures in pixel space and everything plain; the
    per-class pixel figures within the same derived bounds; the classifier's figures within CLASSIFIER_REL."""
    from tests.cluster.test_loop import _tolerance
    _assert_same_metrics(*([{k: v for k, v in r.items() if k not in ("classes", "quality")} for r in rows]
                           for rows in (a, b)))
    for ra, rb in zip(a, b):
        n = min(ra["train_count"], ra["scored_count"], ra["holdout_count"])

        def tolerance(path: str, value: float, n: int = n) -> float:
            parts = path.split(".")
            if parts[:3] == ["classes", "spaces", "pixel"]:
                return _tolerance(parts[3], value, n)
            return CLASSIFIER_REL * max(1.0, abs(value))
        for key in ("classes", "quality"):
            _close(ra[key], rb[key], key, tolerance)


@pytest.fixture(scope="module")
def side_by_side(three_nodes, tmp_path_factory):
    """The module's run: the class-conditional tiny preset with three strategies on the 3-node cluster."""
    run_dir = tmp_path_factory.mktemp("side-by-side") / "run"
    return run_dir, _collapse_run(three_nodes, run_dir)


def test_three_strategies_run_side_by_side_with_the_results_of_a_sequential_run(three_nodes, side_by_side, tmp_path):
    run_dir, side = side_by_side
    planned = plan(load_config("tiny", [f"run.run_dir={run_dir}", *CHEAP]))
    rec_side, sel_side, met_side = _records(run_dir), _selections(run_dir), _metrics(run_dir)
    stopped = _stopped(planned)
    assert len(stopped) == 12 and {k.rsplit("/", 1)[1] for k in stopped} == {"train", "sample", "featurize", "score"}
    assert sorted(r["key"] for r in rec_side) == sorted(st.key for st in planned if st.key not in stopped)
    _assert_each_chain_stopped_before_m3(run_dir, side)
    together = _across_strategies(overlaps(rec_side))
    trains = {frozenset(p) for p in together if all(k.endswith("/train") for k in p)}
    # the three trainings of generation 2 (one CPU each, four CPUs on the worker nodes) ran at once
    assert trains == {frozenset((f"{a}/gen-002/train", f"{b}/gen-002/train"))
                      for a, b in (("vanilla", "greedy"), ("vanilla", "g3"), ("greedy", "g3"))}, together
    assert "(beside " in side
    # a stage starts only after every stage it reads has ended
    by_key = {r["key"]: r for r in rec_side}
    for st in planned:
        if st.key not in stopped:
            assert all(by_key[a]["ended_at"] <= by_key[st.key]["started_at"] for a in st.after), st.key

    # every stage of greedy again, one after another, in a copy (the class tests read the original)
    seq_dir = tmp_path / "run"
    shutil.copytree(run_dir, seq_dir)
    shutil.rmtree(seq_dir / "greedy")
    shutil.rmtree(seq_dir / "stages" / "greedy")
    seq = _collapse_run(three_nodes, seq_dir, "resources.max_parallel_stages=1")
    owned = [st.key for st in planned if st.strategy == "greedy" and st.key not in stopped]
    rec_seq = [r for r in _records(seq_dir) if r["key"].split("/")[0] == "greedy"]
    assert sorted(r["key"] for r in rec_seq) == sorted(owned) and len(_records(seq_dir)) == len(planned) - 12
    _assert_each_chain_stopped_before_m3(seq_dir, seq, said_by=("greedy",))
    assert all(r["started_at"] > max(x["ended_at"] for x in rec_side) for r in rec_seq)  # all of them made again
    assert not any(f"] {s}/" in seq for s in ("vanilla", "g3")), seq[-3000:]      # the others were kept
    # resubmitted, the run reads the committed decisions: complete, generation 3 still not run
    again = _collapse_run(three_nodes, seq_dir, "resources.max_parallel_stages=1")
    assert "is already complete" in again and "12 not run: chains ended by run.stop_chain_below_rho" in again \
        and "/gen-003/" not in again, again[-3000:]
    assert overlaps(rec_seq) == [] and "(beside " not in seq
    assert _selections(seq_dir) == sel_side
    _assert_same_rows(met_side, _metrics(seq_dir))


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


# -- the class-conditional run (the module's fixture)

def test_a_class_conditional_run_trains_guided_models_and_reports_each_class(side_by_side):
    root, out = str(side_by_side[0]), side_by_side[1]
    L = RunLayout(root)
    assert "finished" in out
    config = json.loads(storage.read_bytes(storage.join(L.model("shared", 1), "unet", "config.json"), None))
    assert config["num_class_embeds"] == K + 1          # K classes and the null class of guidance
    rows = [json.loads(line) for line in storage.read_bytes(L.metrics_log, None).decode().splitlines()]
    assert sorted((r["strategy"], r["generation"], r["shared"]) for r in rows) == [
        ("g3", 1, False), ("g3", 2, False), ("greedy", 1, True), ("greedy", 2, False),
        ("vanilla", 1, True), ("vanilla", 2, False)]
    for r in rows:
        c = r["classes"]
        assert c["num_classes"] == K and c["guidance_scale"] == SCALES[r["strategy"]]
        assert sum(c["train_counts"]) == r["train_count"] and sum(c["generated_counts"]) == r["scored_count"]
        assert c["generated_counts"] == class_counts(np.arange(r["scored_count"]) % K, K).tolist()
        pixel = c["spaces"]["pixel"]
        assert len(pixel["entropy"]) == len(pixel["gs"]) == len(pixel["memorization_real_scale"]) == K
        weights = np.array(c["generated_counts"]) / r["scored_count"]   # per-class GS averages to the GS
        assert float(np.dot(weights, pixel["gs"])) == pytest.approx(r["spaces"]["pixel"]["gs"], rel=1e-9)
        assert len(c["agreement"]) == K and c["real_agreement"] > 0.6   # the classifier knows real images
    # g3 sampled its own generation 1 at scale 3 from the shared model; the others share scale 1's pool
    own = open_sample_set(L.pool("g3", 1))
    shared = open_sample_set(L.pool("shared", 1))
    assert own.count == 64 and shared.count == 128
    assert {s.meta["guidance_scale"] for s in own.iter_samples()} == {3.0}
    assert {s.meta["model"] for s in own.iter_samples()} == {L.model("shared", 1)}


def test_every_synthetic_training_image_of_generation_two_carries_its_conditioning_label(side_by_side):
    root = str(side_by_side[0])
    L = RunLayout(root)
    for strategy, scale in SCALES.items():
        pool = L.pool("g3" if strategy == "g3" else "shared", 1)
        origin = {s.key: s for s in open_sample_set(pool).iter_samples()}
        train2 = list(open_sample_set(L.train_set(strategy, 2)).iter_samples())
        assert len(train2) == 64
        for s in train2:
            m = s.meta
            assert m["source"] == "gen-001" and m["label"] == assign_labels(0, 1, [m["index"]], K)[0]
            assert m["guidance_scale"] == scale and origin[s.key].meta["label"] == m["label"]
            assert (origin[s.key].image == s.image).all()


def test_per_class_selection_keeps_each_class_share_of_the_candidates_exactly(side_by_side):
    root = str(side_by_side[0])
    L = RunLayout(root)
    decision = mf.read_manifest(L.selection("greedy", 1))
    candidates = np.arange(128) % K                    # the first 2N of the shared pool, labels i mod K
    quotas = class_quotas(class_counts(candidates, K), 64).tolist()
    assert quotas == [7, 7, 7, 7, 6, 6, 6, 6, 6, 6] and decision["per_class"]["quotas"] == quotas
    kept = [s.meta["label"] for s in open_sample_set(L.train_set("greedy", 2)).iter_samples()]
    assert class_counts(kept, K).tolist() == quotas
    assert all(s.meta["decisions"][-1]["per_class"] for s in open_sample_set(L.train_set("greedy", 2)).iter_samples())


def test_balanced_labels_are_the_same_with_one_and_two_sampler_actors(ray_local, side_by_side, tmp_path):
    from cluster.sample import SampleSpec, sample_pool
    root = str(side_by_side[0])
    model = RunLayout(root).model("shared", 1)
    spec = SampleSpec(count=96, run_seed=0, generation=1, method="ddim", steps=5, guidance_scale=3.0,
                      num_classes=K, shard_size=16, batch_size=16)
    pools = {}
    for actors in (1, 2):
        url = str(tmp_path / f"pool-{actors}")
        sample_pool(model, url, spec, min_actors=actors, max_actors=actors, progress=lambda *_: None)
        pools[actors] = open_sample_set(url)
    one, two = ({s.key: s for s in p.iter_samples()} for p in (pools[1], pools[2]))
    assert list(one) == list(two)
    labels = [one[k].meta["label"] for k in one]
    assert labels == [two[k].meta["label"] for k in two] == [i % K for i in range(96)]
    assert class_counts(labels, K).tolist() == [10] * 6 + [9] * 4
    assert all((one[k].image == two[k].image).all() for k in one)
