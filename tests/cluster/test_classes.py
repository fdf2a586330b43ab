"""A class-conditional run end to end: `ray job submit` of the tiny preset with labels, guidance and a
per-class selection on the loopback Ray head; its lineage, quotas and per-class figures."""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from collapse.classes import assign_labels, class_counts, class_quotas
from collapse.data import manifest as mf
from collapse.data import storage
from collapse.data.samples import open_sample_set
from collapse.data.urls import RunLayout

pytestmark = [pytest.mark.slow]
ROOT = pathlib.Path(__file__).resolve().parents[2]
K = 10
STRATEGIES = ("[{name: vanilla, kind: vanilla}, {name: greedy, kind: greedy, pool_factor: 2, features: pixel, "
              "per_class: true}, {name: g3, kind: vanilla, guidance_scale: 3}]")
SCALES = {"vanilla": 1.0, "greedy": 1.0, "g3": 3.0}


@pytest.fixture(scope="module")
def conditional_run(ray_head, tmp_path_factory):
    root = str(tmp_path_factory.mktemp("conditional") / "run")
    cmd = [str(pathlib.Path(sys.executable).parent / "ray"), "job", "submit", "--address", ray_head.dashboard,
           "--working-dir", str(ROOT), "--runtime-env-json",
           json.dumps({"excludes": [".venv", ".git", ".state", "runs", "**/__pycache__", ".pytest_cache"]}),
           "--", sys.executable, "-m", "jobs.cli", "run", "--config", "tiny", "--run-dir", root,
           "--set", f"model.num_classes={K}", "--set", f"strategies={STRATEGIES}"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=dict(os.environ, RAY_ADDRESS=ray_head.dashboard))
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    return root, r.stdout


def test_a_class_conditional_run_trains_guided_models_and_reports_each_class(conditional_run):
    root, out = conditional_run
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


def test_every_synthetic_training_image_of_generation_two_carries_its_conditioning_label(conditional_run):
    root, _ = conditional_run
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


def test_per_class_selection_keeps_each_class_share_of_the_candidates_exactly(conditional_run):
    root, _ = conditional_run
    L = RunLayout(root)
    decision = mf.read_manifest(L.selection("greedy", 1))
    candidates = np.arange(128) % K                    # the first 2N of the shared pool, labels i mod K
    quotas = class_quotas(class_counts(candidates, K), 64).tolist()
    assert quotas == [7, 7, 7, 7, 6, 6, 6, 6, 6, 6] and decision["per_class"]["quotas"] == quotas
    kept = [s.meta["label"] for s in open_sample_set(L.train_set("greedy", 2)).iter_samples()]
    assert class_counts(kept, K).tolist() == quotas
    assert all(s.meta["decisions"][-1]["per_class"] for s in open_sample_set(L.train_set("greedy", 2)).iter_samples())


def test_balanced_labels_are_the_same_with_one_and_two_sampler_actors(ray_local, conditional_run, tmp_path):
    from cluster.sample import SampleSpec, sample_pool
    root, _ = conditional_run
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
