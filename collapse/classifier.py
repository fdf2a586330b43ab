"""A small sample-quality classifier: is a generated image recognizable as one of the real classes?

Trained once per run on the real training split (when it has labels), in seconds on a CPU, and
then asked about every generation's samples. The figures (:func:`classifier_figures`):

    confidence        mean over samples of max_c p(c | x), c over the K real classes
    class_histogram   how many samples the classifier assigns to each real class (argmax)
    class_entropy     entropy (nats) of that histogram; log K when balanced (mode collapse lowers it)
    rejected          share of samples whose most likely label is the "no class" label (below)

Why an extra "no class" label. A softmax classifier trained only on the K classes is confidently
wrong far from its data: a linear or conv net's logits grow with the input's norm, so noise images
can get p ~ 1 for some class. We add a (K+1)-th label, trained on images that are *not* of the data
but share its pixel statistics: uniform noise, Gaussian noise with the data's per-pixel mean and
spread, and real images with their pixels permuted (same histogram, no structure). The confidence
is then low on noise and stays high on real held-out images, which a test checks. The negatives
are drawn with a generator seeded by ``seed``, and training is seeded: same data, same classifier.

Its penultimate layer (``Classifier.features``, d = 128) is also a learned feature space for
selection and scoring, registered as the extractor ``classifier`` (collapse.features): on small
grey images an ImageNet network sees 16x16 garments upsampled 14x, while this one is trained on
the run's own data, as the LeNet of "MNIST FID" is (and as Inception is for ImageNet-like data).

Pure torch over arrays: images uint8 (N, H, W) or (N, H, W, C), labels int (N,). The loop trains
it in the run-level stage ``classifier`` (collapse.plan) and stores it with :meth:`to_bytes`.
"""
from __future__ import annotations

import contextlib
import io
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class SmallCNN(nn.Module):
    """Two 3x3 conv layers with 2x2 max-pooling, then two linear layers over K + 1 labels
    (~150k parameters at 16x16)."""

    def __init__(self, channels: int, height: int, width_px: int, num_labels: int, width: int = 32):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.hidden = nn.Linear(2 * width * (height // 4) * (width_px // 4), 128)
        self.head = nn.Linear(128, num_labels)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate layer (128 ReLU units): the classifier's learned feature space."""
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return F.relu(self.hidden(x.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


@dataclass
class Classifier:
    """A trained classifier of K real classes (label K is "no class")."""
    net: SmallCNN
    num_classes: int
    shape: tuple                 # (H, W, C) of the images it takes

    def probabilities(self, images, batch_size: int = 512) -> np.ndarray:
        """float64 (N, K + 1): p(label | image) for each image (uint8, the training shape)."""
        return self._map(images, lambda x: torch.softmax(self.net(x), dim=1).double(), self.num_classes + 1,
                         batch_size)

    def features(self, images, batch_size: int = 512) -> np.ndarray:
        """float32 (N, 128): the penultimate layer (``SmallCNN.embed``) of each image."""
        return self._map(images, lambda x: self.net.embed(x).float(), self.net.hidden.out_features, batch_size)

    def _map(self, images, fn, dim: int, batch_size: int) -> np.ndarray:
        x = _as_tensor(images, self.shape)
        self.net.eval()
        out = []
        with torch.no_grad(), one_thread():
            for s in range(0, len(x), batch_size):
                out.append(fn(x[s:s + batch_size]).numpy())
        return np.concatenate(out) if out else np.zeros((0, dim))

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        torch.save({"state": self.net.state_dict(), "num_classes": self.num_classes, "shape": list(self.shape),
                    "width": self.net.conv1.out_channels}, buf)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Classifier":
        d = torch.load(io.BytesIO(data), weights_only=True)
        h, w, c = d["shape"]
        net = SmallCNN(c, h, w, d["num_classes"] + 1, width=d["width"])
        net.load_state_dict(d["state"])
        return cls(net, int(d["num_classes"]), (h, w, c))


@contextlib.contextmanager
def one_thread():
    """Run torch on one CPU thread inside: the same bits in every process (a job's driver, a test),
    whatever its thread count; the network is small enough that this costs seconds at most."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _nhwc(images) -> np.ndarray:
    a = np.asarray(images)
    if a.dtype != np.uint8 or a.ndim not in (3, 4):
        raise ValueError(f"images must be uint8 (N, H, W) or (N, H, W, C), got {a.dtype} {a.shape}")
    return a[..., None] if a.ndim == 3 else a


def _as_tensor(images, shape: tuple) -> torch.Tensor:
    a = _nhwc(images)
    if tuple(a.shape[1:]) != tuple(shape):
        raise ValueError(f"images of shape {tuple(a.shape[1:])}, the classifier takes {tuple(shape)}")
    return torch.from_numpy(a.astype(np.float32) / 127.5 - 1.0).permute(0, 3, 1, 2).contiguous()


def negatives(images: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n uint8 images that are not of the data: a third uniform noise, a third Gaussian noise with the
    data's per-pixel mean and std, a third real images with their pixels permuted."""
    a = _nhwc(images)
    k = n // 3
    flat = a.reshape(len(a), -1)
    uniform = rng.integers(0, 256, size=(k, flat.shape[1]))
    mu, sd = flat.mean(0), flat.std(0) + 1.0
    gauss = rng.normal(mu, sd, size=(k, flat.shape[1]))
    picks = flat[rng.integers(0, len(a), size=n - 2 * k)]
    shuffled = np.stack([row[rng.permutation(row.size)] for row in picks])
    out = np.concatenate([uniform, gauss, shuffled]).clip(0, 255).astype(np.uint8)
    return out.reshape((n,) + a.shape[1:])


def train_classifier(images, labels, *, num_classes: int | None = None, epochs: int = 8, batch_size: int = 128,
                     lr: float = 3e-3, seed: int = 0) -> Classifier:
    """Train on the real images (labels 0..K-1) and as many "no class" negatives as a class has images."""
    a = _nhwc(images)
    y = np.asarray(labels, dtype=np.int64)
    if y.shape != (len(a),) or len(a) < 2:
        raise ValueError(f"need one label per image and at least 2 images, got {len(a)} images, labels {y.shape}")
    k = int(num_classes if num_classes is not None else y.max() + 1)
    if y.min() < 0 or y.max() >= k or k < 2:
        raise ValueError(f"labels must lie in 0..{k - 1} with at least 2 classes, got {y.min()}..{y.max()}")
    rng = np.random.default_rng(seed)
    neg = negatives(a, max(3, math.ceil(len(a) / k)), rng)
    x_all = np.concatenate([a, neg])
    y_all = np.concatenate([y, np.full(len(neg), k)])
    gen = torch.Generator().manual_seed(seed)
    torch_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    net = SmallCNN(a.shape[3], a.shape[1], a.shape[2], k + 1)
    torch.random.set_rng_state(torch_state)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    x_t, y_t = _as_tensor(x_all, a.shape[1:]), torch.from_numpy(y_all)
    steps = epochs * math.ceil(len(x_t) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    net.train()
    with one_thread():
        _fit(net, opt, sched, x_t, y_t, epochs, batch_size, gen)
    return Classifier(net, k, tuple(a.shape[1:]))


def _fit(net, opt, sched, x_t, y_t, epochs: int, batch_size: int, gen: torch.Generator) -> None:
    for _ in range(epochs):
        order = torch.randperm(len(x_t), generator=gen)
        for s in range(0, len(x_t), batch_size):
            idx = order[s:s + batch_size]
            loss = F.cross_entropy(net(x_t[idx]), y_t[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()


def classifier_figures(probabilities: np.ndarray, num_classes: int) -> dict:
    """The figures of the module docstring from (N, K + 1) probabilities."""
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != num_classes + 1 or len(p) == 0:
        raise ValueError(f"probabilities must be (N, {num_classes + 1}) with N >= 1, got {p.shape}")
    label = p.argmax(1)
    real_label = p[:, :num_classes].argmax(1)
    hist = np.bincount(real_label[label < num_classes], minlength=num_classes)
    share = hist / hist.sum() if hist.sum() else np.zeros(num_classes)
    nz = share[share > 0]
    return {"confidence": float(p[:, :num_classes].max(1).mean()), "class_histogram": hist.tolist(),
            "class_entropy": float(-(nz * np.log(nz)).sum()), "rejected": float((label == num_classes).mean())}



RECOGNIZABLE_SHARE = 0.5   # samples are "recognizable" when their confidence is >= this share of real's


def recognizability(generated: dict, real: dict, share: float = RECOGNIZABLE_SHARE) -> dict:
    """The generated samples' figures beside the real held-out images' (both from
    :func:`classifier_figures`): ``confidence_ratio`` = confidence / real confidence, and
    ``recognizable`` when that ratio is at least ``share`` (the report warns otherwise)."""
    ratio = generated["confidence"] / real["confidence"] if real["confidence"] > 0 else float("nan")
    return {**generated, "real_confidence": real["confidence"], "real_rejected": real["rejected"],
            "real_class_entropy": real["class_entropy"], "confidence_ratio": ratio,
            "recognizable": bool(ratio >= share)}


# -- stored in a run: <run>/real/classifier/{classifier.pt, manifest.json} (the manifest last)
KIND = "classifier"
WEIGHTS = "classifier.pt"


def save_classifier(url: str, classifier: "Classifier | None", extra: dict, storage_options=None) -> dict:
    """Store ``classifier`` (None: the source has no labels, so only ``extra`` is recorded)."""
    import hashlib

    from collapse.data import manifest, storage
    record = {"kind": KIND, "labelled": classifier is not None, **extra}
    if classifier is not None:
        data = classifier.to_bytes()
        storage.write_bytes(storage.join(url, WEIGHTS), data, storage_options)
        record.update(sha256=hashlib.sha256(data).hexdigest(), num_classes=classifier.num_classes,
                      shape=list(classifier.shape))
    manifest.write_manifest(url, record, storage_options)
    return record


def read_classifier_record(url: str, storage_options=None) -> dict:
    from collapse.data import manifest
    return manifest.read_manifest(url, storage_options, kind=KIND)


def load_classifier(url: str, storage_options=None) -> "Classifier":
    """The classifier stored at ``url``; a clear error when the run's data had no labels or the
    weights do not match their manifest."""
    import hashlib

    from collapse.data import storage
    from collapse.errors import DamagedError, DataError
    record = read_classifier_record(url, storage_options)
    if not record["labelled"]:
        raise DataError(f"{url}: the run's source has no labels, so it has no classifier (and no 'classifier' "
                        "feature space); use another space, e.g. effnet-lite0")
    part = storage.join(url, WEIGHTS)
    try:
        data = storage.read_bytes(part, storage_options)
    except FileNotFoundError:
        raise DamagedError(part, url, "the weights listed in its manifest are missing") from None
    if hashlib.sha256(data).hexdigest() != record["sha256"]:
        raise DamagedError(part, url, "its sha256 differs from the manifest's")
    return Classifier.from_bytes(data)
