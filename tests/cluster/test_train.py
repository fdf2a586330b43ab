"""Training through Ray Train + DeepSpeed (gloo) from shards on the Ceph endpoint, in bf16 mixed
precision on the CPU (DeepSpeed's torch_autocast: fp32 master weights, EMA and saved model)."""
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

SPEC = TrainSpec(preset="tiny", steps=16, batch_size=32, lr=1e-3, warmup_steps=4, checkpoint_every=8, log_every=1,
                 zero_stage=1, precision="bf16", ema_decay=0.9, ema_warmup=True)


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
    assert [s for s, _ in curve] == list(range(1, 17))
    first, last = np.mean([v for _, v in curve[:4]]), np.mean([v for _, v in curve[-4:]])
    assert last < 0.6 * first, curve
    assert manifest["extra"]["steps"] == 16 and manifest["extra"]["resumed_from"] == 0
    ckpt = latest_checkpoint(f"{root}/model-a", opts)
    assert ckpt["extra"]["step"] == 16
    # ZeRO-1 on 2 ranks: each rank's optimizer shard is in the committed checkpoint
    files = directories.download_directory(f"{root}/model-a/checkpoints/step-00000016", tempfile.mkdtemp(), opts)
    names = [f["name"] for f in files["files"]]
    assert sum("optim_states" in n for n in names) == 2 and any("model_states" in n for n in names)


def test_final_model_is_fp32_and_loads_in_a_plain_diffusers_pipeline(trained):
    from diffusers import DDPMPipeline
    root, opts, *_ = trained
    assert {w.dtype for w in _weights(f"{root}/model-a", opts).values()} == {torch.float32}
    with tempfile.TemporaryDirectory() as d:
        directories.download_directory(f"{root}/model-a", d, opts)
        pipe = DDPMPipeline.from_pretrained(d)
        assert pipe.unet.dtype == torch.float32
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


def test_one_worker_takes_the_steps_of_two(trained):
    """A step's images, timesteps and noise are a function of (seed, step, slot), not of the rank:
    on 1 worker the loss curve is that of 2 (bf16 autocast: to its rounding, not bit for bit)."""
    root, opts, manifest, *_ = trained
    one = train_model(f"{root}/real/train", f"{root}/model-one", SPEC, num_workers=1, cpus_per_worker=1,
                      storage_options=opts, progress=lambda *_: None)
    a, b = (np.array([v for _, v in m["extra"]["loss_curve"]]) for m in (manifest, one))
    print("step  loss (2 workers)  loss (1 worker)")
    for step, (x, y) in enumerate(zip(a, b), 1):
        print(f"{step:4d}  {x:.6f}  {y:.6f}")
    np.testing.assert_allclose(b[:4], a[:4], rtol=2e-2)   # another batch or noise: tens of percent apart
    assert np.abs(b - a).max() < 0.1 * a.max()


def test_resume_with_another_worker_count_is_refused(trained):
    """A half-finished training (checkpoints of 2 workers, no model) resumed on 1: refused, saying how."""
    from collapse.data import manifest as mf
    root, opts, *_ = trained
    import fsspec
    fs, _ = fsspec.core.url_to_fs(f"{root}/model-a", **opts)
    fs.copy(f"{root}/model-a/checkpoints".removeprefix("s3://"), f"{root}/model-half/checkpoints".removeprefix("s3://"),
            recursive=True)
    assert mf.try_read_manifest(f"{root}/model-half", opts) is None
    with pytest.raises(DataError) as e:
        train_model(f"{root}/real/train", f"{root}/model-half", SPEC, num_workers=1, cpus_per_worker=1,
                    storage_options=opts, progress=lambda *_: None)
    print(e.value)
    assert "checkpoint of 2 worker(s)" in str(e.value) and "resources.train_workers=2" in str(e.value)


def test_fp16_on_a_cpu_is_one_line_that_says_what_works(ceph_data):
    root, opts = ceph_data
    with pytest.raises(ValueError) as e:
        train_model(f"{root}/real/train", f"{root}/model-fp16", TrainSpec(**{**SPEC.__dict__, "precision": "fp16"}),
                    storage_options=opts)
    assert "\n" not in str(e.value) and "train.precision=fp16" in str(e.value) and "bf16 or fp32" in str(e.value)
