"""The sampler pool: images keyed by sample index, whatever the actors, batches or interruptions."""
import os
import signal
import tempfile
import time

import numpy as np
import pytest
import torch

from cluster.sample import SampleSpec, sample_pool
from tests.cluster import staging_dirs
from collapse import diffusion
from collapse.data import directories, storage
from collapse.data.samples import open_sample_set
from collapse.errors import NotFinishedError

pytestmark = [pytest.mark.ceph, pytest.mark.slow]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QUIET = dict(progress=lambda *_: None)
SPEC = SampleSpec(count=40, run_seed=7, generation=2, method="ddim", steps=6, shard_size=8, batch_size=4)


@pytest.fixture(scope="module")
def model(ceph_s3):
    """A tiny model (a few plain torch steps towards a constant image: enough to be a real model)."""
    import s3fs
    opts = ceph_s3.storage_options
    fs = s3fs.S3FileSystem(**opts)
    if not fs.exists("sample-tests"):
        fs.mkdir("sample-tests")
    torch.manual_seed(0)
    unet, scheduler = diffusion.build("tiny")
    with tempfile.TemporaryDirectory() as d:
        diffusion.save_model(unet, scheduler, d)
        directories.upload_directory(d, "s3://sample-tests/model", storage_options=opts)
    return "s3://sample-tests", opts


def _images(url, opts):
    s = open_sample_set(url, opts)
    keys, images, metas = s.load()
    return s, keys, images, metas


def test_one_and_two_actors_give_identical_pools_with_lineage(ray_local, model):
    root, opts = model
    staged = staging_dirs("collapse-sampler-")
    one = sample_pool(f"{root}/model", f"{root}/pool-1", SPEC, max_actors=1, storage_options=opts, **QUIET)
    two = sample_pool(f"{root}/model", f"{root}/pool-2", SPEC, min_actors=2, max_actors=2, storage_options=opts,
                      **QUIET)
    assert [r["sha256"] for r in one["shards"]] == [r["sha256"] for r in two["shards"]]
    s, keys, images, metas = _images(f"{root}/pool-2", opts)
    assert keys == [f"gen-002-{i:07d}" for i in range(40)] and images.shape == (40, 16, 16)
    assert len({m["seed"] for m in metas}) == 40
    assert all(m["source"] == "gen-002" and m["model"] == f"{root}/model" for m in metas)
    assert images.std() > 0
    assert staging_dirs("collapse-sampler-") - staged == set()  # each actor's model copy is gone once loaded


def test_images_do_not_depend_on_batch_size_in_batch_invariant_mode(ray_local, model):
    root, opts = model
    spec = {**SPEC.__dict__, "batch_invariant": True, "count": 12, "shard_size": 6}
    a = sample_pool(f"{root}/model", f"{root}/inv-a", SampleSpec(**{**spec, "batch_size": 1}), storage_options=opts,
                    **QUIET)
    ia = _images(f"{root}/inv-a", opts)[2]
    # batches of 5 (one of them short) in a larger pool: a sample's image is its own, whatever its batch
    # and the pool's size, so the first 12 are the images drawn one at a time
    c = sample_pool(f"{root}/model", f"{root}/inv-c", SampleSpec(**{**spec, "batch_size": 5, "count": 18}),
                    storage_options=opts, **QUIET)
    assert np.array_equal(_images(f"{root}/inv-c", opts)[2][:12], ia) and ia.std() > 0
    assert a["count"] == 12 and c["count"] == 18


def _kill_sampler_actors() -> int:
    """SIGKILL every live sampler actor process of this test's Ray; returns how many."""
    import ray
    from ray.util.state import list_actors
    actors = list_actors(address=ray.get_runtime_context().gcs_address, filters=[("state", "=", "ALIVE")],
                         detail=True)
    pids = [a.pid for a in actors if "Sampler" in (a.class_name or "") and a.pid]
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    return len(pids)


def test_killed_sampler_stage_rerun_gives_the_uninterrupted_set(ray_local, model):
    """The stage's actor is SIGKILLed after its first shard; the stage fails, leaves no manifest, and a
    rerun samples only the missing shards into exactly the set an uninterrupted run makes."""
    import threading
    root, opts = model
    slow = SampleSpec(**{**SPEC.__dict__, "steps": 40})  # ~1 s a shard: time to kill it midway
    pool, failures = f"{root}/pool-killed", []

    def stage():
        try:
            sample_pool(f"{root}/model", pool, slow, max_actors=1, retries=0, storage_options=opts, **QUIET)
        except Exception as e:  # the killed actor fails the stage
            failures.append(e)
    worker = threading.Thread(target=stage)
    worker.start()
    deadline = time.time() + 120
    while not any(n.startswith("shard-") and n.endswith(".json") for n in storage.list_names(pool, opts)):
        assert worker.is_alive() and time.time() < deadline, "the sampler wrote no shard"
        time.sleep(0.05)
    assert _kill_sampler_actors() == 1
    worker.join(timeout=120)
    assert failures and not worker.is_alive()
    names = storage.list_names(pool, opts)
    assert "manifest.json" not in names
    with pytest.raises(NotFinishedError):
        open_sample_set(pool, opts)
    done_before = [n for n in names if n.endswith(".json")]
    assert 1 <= len(done_before) < 5
    said = []
    sample_pool(f"{root}/model", pool, slow, max_actors=1, storage_options=opts, progress=said.append)
    assert f"({len(done_before)} already done)" in said[0]
    uninterrupted = sample_pool(f"{root}/model", f"{root}/pool-slow", slow, storage_options=opts, **QUIET)
    assert [r["sha256"] for r in open_sample_set(pool, opts).shards] == [r["sha256"] for r in uninterrupted["shards"]]
