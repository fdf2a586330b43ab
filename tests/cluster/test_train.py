"""Training through Ray Train + DeepSpeed (2 workers, gloo) from shards on the Ceph endpoint."""
import tempfile

import numpy as np
import pytest
import torch

from cluster.train import TrainSpec, latest_checkpoint, train_model
from collapse.data import directories, storage
from collapse.data.importers import ingest
from collapse.errors import DataError
from tests.cluster import staging_dirs

pytestmark = [pytest.mark.ceph, pytest.mark.slow]

SPEC = TrainSpec(preset="tiny", steps=16, batch_size=32, lr=1e-3, warmup_steps=4, checkpoint_every=8, log_every=4,
                 zero_stage=1, shuffle_buffer=64)


@pytest.fixture(scope="module")
def ceph_data(ceph_s3):
    import s3fs
    opts = ceph_s3.storage_options
    bucket = "train-tests"
    fs = s3fs.S3FileSystem(**opts)
    if not fs.exists(bucket):
        fs.mkdir(bucket)
    ingest("fashion-mnist", f"s3://{bucket}/real", size=16, n=256, holdout=0, shard_size=32,
           storage_options=opts, progress=lambda *_: None)
    return f"s3://{bucket}", opts


def _built_extensions() -> set:
    """What torch/DeepSpeed JIT-compiled so far (DeepSpeed builds its C++ ops there)."""
    import os
    root = os.environ.get("TORCH_EXTENSIONS_DIR", os.path.expanduser("~/.cache/torch_extensions"))
    return {os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f.endswith(".so")}


@pytest.fixture(scope="module")
def trained(ray_local, ceph_data):
    root, opts = ceph_data
    before, staged = _built_extensions(), staging_dirs("collapse-train-")
    manifest = train_model(f"{root}/real/train", f"{root}/model-a", SPEC, num_workers=2, cpus_per_worker=0.5,
                           storage_options=opts, progress=lambda *_: None)
    return root, opts, manifest, _built_extensions() - before, staging_dirs("collapse-train-") - staged


def _weights(model_url, opts):
    from collapse import diffusion
    with tempfile.TemporaryDirectory() as d:
        directories.download_directory(model_url, d, opts)
        unet, _ = diffusion.load_model(d)
    return {k: v.clone() for k, v in unet.state_dict().items()}


def test_nothing_is_compiled_at_run_time(trained):
    assert trained[3] == set()


def test_workers_leave_no_staging_directory_behind(trained):
    """Each training stages ~23 MB of checkpoints locally; a cluster node runs hundreds of them."""
    assert trained[4] == set()


def test_two_workers_train_and_loss_falls(trained):
    root, opts, manifest, *_ = trained
    curve = manifest["extra"]["loss_curve"]
    assert [s for s, _ in curve] == [4, 8, 12, 16]
    assert curve[-1][1] < 0.6 * curve[0][1], curve
    assert manifest["extra"]["steps"] == 16 and manifest["extra"]["resumed_from"] == 0
    ckpt = latest_checkpoint(f"{root}/model-a", opts)
    assert ckpt["extra"]["step"] == 16
    # ZeRO-1 on 2 ranks: each rank's optimizer shard is in the committed checkpoint
    files = directories.download_directory(f"{root}/model-a/checkpoints/step-00000016", tempfile.mkdtemp(), opts)
    names = [f["name"] for f in files["files"]]
    assert sum("optim_states" in n for n in names) == 2 and any("model_states" in n for n in names)


def test_final_model_loads_in_a_plain_diffusers_pipeline(trained):
    from diffusers import DDPMPipeline
    root, opts, *_ = trained
    with tempfile.TemporaryDirectory() as d:
        directories.download_directory(f"{root}/model-a", d, opts)
        pipe = DDPMPipeline.from_pretrained(d)
        out = pipe(batch_size=2, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np")
    assert out.images.shape == (2, 16, 16, 1) and np.isfinite(out.images).all()


def test_a_finished_training_is_skipped_and_a_different_one_refused(trained):
    root, opts, manifest, *_ = trained
    said = []
    again = train_model(f"{root}/real/train", f"{root}/model-a", SPEC, num_workers=2, cpus_per_worker=0.5,
                        storage_options=opts, progress=said.append)
    assert again == manifest and "skipping" in said[0]
    other = TrainSpec(**{**SPEC.__dict__, "lr": 5e-4})
    with pytest.raises(DataError, match="other settings"):
        train_model(f"{root}/real/train", f"{root}/model-a", other, num_workers=2, cpus_per_worker=0.5,
                    storage_options=opts, progress=said.append)


def test_failed_worker_group_resumes_from_checkpoint_and_matches(trained):
    """A worker dies at step 12; Ray Train restarts the group, which resumes from step 8's checkpoint.
    The result equals the uninterrupted run bit for bit (data and noise are keyed by step)."""
    root, opts, *_ = trained
    manifest = train_model(f"{root}/real/train", f"{root}/model-b", SPEC, num_workers=2, cpus_per_worker=0.5,
                           max_failures=1, fail_at_step=12, storage_options=opts, progress=lambda *_: None)
    assert storage.exists(f"{root}/model-b/failed-at-12", opts)
    assert manifest["extra"]["resumed_from"] == 8
    a, b = _weights(f"{root}/model-a", opts), _weights(f"{root}/model-b", opts)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
