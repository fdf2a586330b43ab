"""Files in the exact formats the paper's data and feature spaces come in, written small, for the
CPU smoke of the paper presets and for bench/gpu_check.py (which runs on a machine with no network):

- ``write_cifar10_archive``: CIFAR-10's official python-format archive (``cifar-10-python.tar.gz``:
  ``cifar-10-batches-py/data_batch_1..5``, ``test_batch``, ``batches.meta``; protocol-2 pickles with
  bytes keys and (n, 3072) uint8 rows of R, G and B planes), here of scikit-learn's real digits
  drawn in colour at 32x32 so that a model has shapes to learn;
- ``random_dinov2_dir``: a ``Dinov2Model`` built from a ``Dinov2Config`` with random weights, saved
  with ``save_pretrained`` as a local directory (what ``extractors.dinov2`` points at offline);
- ``random_inception_file``: a state dict with exactly the keys and shapes of the standard FID
  Inception file (pt_inception-2015-12-05), random values, saved with ``torch.save`` (~95 MB).
"""
from __future__ import annotations

import io
import os
import pickle
import tarfile

import numpy as np
from PIL import Image

CLASSES = [f"digit-{k}" for k in range(10)]


def digit_images(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(count, 32, 32, 3) uint8 colour digits (scikit-learn's 1797, repeated as needed) and their labels."""
    from sklearn.datasets import load_digits
    d = load_digits()
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(d.images), count)
    out = np.empty((count, 32, 32, 3), np.uint8)
    for i, j in enumerate(idx):
        grey = np.asarray(Image.fromarray(np.uint8(d.images[j] * 255 / 16)).resize((32, 32), Image.BILINEAR), float)
        colour = rng.uniform(0.3, 1.0, 3)
        out[i] = np.clip(grey[..., None] * colour, 0, 255).astype(np.uint8)
    return out, d.target[idx].astype(np.int64)


def _batch(name: str, images: np.ndarray, labels: np.ndarray) -> dict:
    rows = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)   # R plane, G plane, B plane
    return {b"batch_label": name.encode(), b"labels": [int(v) for v in labels], b"data": np.ascontiguousarray(rows),
            b"filenames": [f"{name}_{i}.png".encode() for i in range(len(images))]}


def write_cifar10_archive(path: str, train: int = 200, test: int = 50, seed: int = 0) -> str:
    """``path`` (a .tar.gz) in CIFAR-10's python format, ``train`` images in 5 batches and ``test`` in test_batch."""
    images, labels = digit_images(train + test, seed)
    parts = np.array_split(np.arange(train), 5)
    contents = {f"data_batch_{k + 1}": _batch(f"training batch {k + 1} of 5", images[p], labels[p])
                for k, p in enumerate(parts)}
    contents["test_batch"] = _batch("testing batch 1 of 1", images[train:], labels[train:])
    contents["batches.meta"] = {b"num_cases_per_batch": len(parts[0]), b"label_names": [c.encode() for c in CLASSES],
                                b"num_vis": 3072}
    with tarfile.open(path, "w:gz") as tar:
        for name, obj in contents.items():
            data = pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def random_dinov2_dir(path: str, hidden_size: int = 32, layers: int = 2, seed: int = 0) -> str:
    """A small DINOv2 (patch 14, image 224: the real geometry) with random weights, saved at ``path``."""
    import torch
    from transformers import Dinov2Config, Dinov2Model
    torch.manual_seed(seed)
    config = Dinov2Config(hidden_size=hidden_size, num_hidden_layers=layers, num_attention_heads=2,
                          intermediate_size=2 * hidden_size, image_size=224, patch_size=14)
    Dinov2Model(config).eval().save_pretrained(path)
    return os.path.abspath(path)


def random_inception_state(seed: int = 0) -> dict:
    """Every key and shape of the FID Inception network (collapse.inception), random values at a scale
    that keeps 2048-d features apart."""
    import torch
    from collapse.inception import FIDInceptionV3
    torch.manual_seed(seed)
    state = FIDInceptionV3().state_dict()
    for k, v in state.items():
        if k.endswith("conv.weight"):
            torch.nn.init.kaiming_normal_(v)
        elif k.endswith("running_mean"):
            v.copy_(torch.randn_like(v) * 0.1)
        elif k.endswith("running_var"):
            v.copy_(torch.rand_like(v) + 0.5)
    return state


def random_inception_file(path: str, seed: int = 0) -> str:
    import torch
    torch.save(random_inception_state(seed), path)
    return os.path.abspath(path)
