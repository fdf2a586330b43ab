"""Importers: turn a real image source into sample sets ``<out>/train`` (and ``<out>/holdout``).

Sources (``collapse ingest SOURCE --out URL``):

    fashion-mnist       Debian package dataset-fashion-mnist (IDX .gz files); holdout from its test split
    digits              scikit-learn's 1797 real 8x8 digits (0..16 scaled to 0..255)
    folder:PATH         every .png/.jpg/.jpeg/.bmp/.webp file under PATH, sorted by path; when PATH holds
                        class subfolders instead (torchvision's ImageFolder: ant/, cat/...), the images found
                        recursively in each, labelled by the folder's place among the sorted class names
    npy:PATH            a .npy (N, H, W[, C]) uint8 array, or a .npz with 'images' (or 'x') and 'labels' (or 'y')
    wds:URL             existing WebDataset shards (brace patterns allowed) with .png/.jpg and .cls/.json members
    cifar10:PATH        the CIFAR-10 python version (cifar-10-python.tar.gz or its extracted cifar-10-batches-py
                        folder): 50000 training images with labels; holdout from its test_batch
    parquet:PATH        Hugging Face datasets' Parquet export (a file, a directory of .parquet files, or a glob):
                        an 'image' (or 'img') Image-feature column and an optional 'label' (or 'labels') column

Sources that name their classes (class folders, CIFAR-10's batches.meta, a Parquet ClassLabel) put the
name beside the label in each sample's lineage (``class_name``).

Options: resize to ``size`` x ``size`` (Lanczos), convert to ``grey`` or ``rgb``, take a seeded subset
of ``n`` training images, and split off ``holdout`` images (disjoint from the training subset).
"""
from __future__ import annotations

import gzip
import io
import json
import os
import re
import struct
from dataclasses import dataclass

import numpy as np
from PIL import Image

from collapse.data import storage
from collapse.data.manifest import config_hash, try_read_manifest
from collapse.data.samples import Sample, write_sample_set
from collapse.data.sources import Source, cifar10, image_array, parquet
from collapse.errors import DataError

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

#: Sources whose size is known without reading them: name -> (training images, test-split images
#: or None when the held-out images are split off the training images). Lets --dry-run refuse N too large.
KNOWN_SIZES = {"fashion-mnist": (60000, 10000), "fashion_mnist": (60000, 10000), "fmnist": (60000, 10000),
               "digits": (1797, None), "cifar10": (50000, 10000)}
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def read_idx(path: str) -> np.ndarray:
    """Read an IDX file (optionally gzipped), the format of (Fashion-)MNIST."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
        data = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
        zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
        if zero != 0 or dtype_code != 0x08:
            raise DataError(f"{path}: not an unsigned-byte IDX file (header {data[:4].hex()})")
        dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
        body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
        if body.size != int(np.prod(dims)):
            raise DataError(f"{path}: truncated IDX file ({body.size} bytes of data, expected {int(np.prod(dims))})")
        return body.reshape(dims)
    except FileNotFoundError:
        raise DataError(f"{path} not found: install the Debian package dataset-fashion-mnist "
                        "(infra/install-system.sh does)") from None
    except (OSError, EOFError, struct.error) as e:
        raise DataError(f"{path}: not a readable IDX file ({e})") from e


def _array_source(name: str, images: np.ndarray, labels, origin_prefix: str) -> Source:
    return Source(name, len(images), lambda i: images[i], labels, lambda i: f"{origin_prefix}:{i}")


def fashion_mnist(split: str, root: str = FASHION_MNIST_DIR) -> Source:
    prefix = {"train": "train", "test": "t10k"}[split]
    images = read_idx(os.path.join(root, f"{prefix}-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(root, f"{prefix}-labels-idx1-ubyte.gz"))
    if len(images) != len(labels):
        raise DataError(f"fashion-mnist {split}: {len(images)} images but {len(labels)} labels")
    return _array_source("fashion-mnist", images, [int(v) for v in labels], split)


def digits() -> Source:
    from sklearn.datasets import load_digits
    d = load_digits()
    images = np.rint(d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    return _array_source("digits", images, [int(v) for v in d.target], "digits")


def _class_folders(path: str) -> tuple[list[str], dict[str, list[str]]]:
    """``(loose image files at the top of path, {class: its image files})``, the classes being the
    subfolders that hold images (recursively), in torchvision ImageFolder's order."""
    loose, classes = [], {}
    for entry in sorted(os.listdir(path)):
        full = os.path.join(path, entry)
        if os.path.isdir(full):
            files = [os.path.join(d, f) for d, _, fs in sorted(os.walk(full, followlinks=True))
                     for f in sorted(fs) if f.lower().endswith(IMAGE_EXTENSIONS)]
            if files:
                classes[entry] = files
        elif entry.lower().endswith(IMAGE_EXTENSIONS):
            loose.append(full)
    return loose, classes


def folder(path: str) -> Source:
    if not os.path.isdir(path):
        raise DataError(f"folder {path!r} does not exist or is not a directory")
    loose, classes = _class_folders(path)
    if loose and classes:
        raise DataError(f"folder {path!r} holds both images at its top level ({os.path.basename(loose[0])!r}, ...) "
                        f"and class subfolders ({', '.join(list(classes)[:5])}): expected either images only "
                        "(no labels) or every image in a class subfolder (labels by folder name)")
    files = loose or [f for c in classes for f in classes[c]]
    if not files:
        raise DataError(f"folder {path!r} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
    names = list(classes) or None
    labels = [k for k, c in enumerate(classes) for _ in classes[c]] if names else None

    def load(i):
        try:
            with Image.open(files[i]) as im:
                return image_array(im)
        except Exception as e:
            raise DataError(f"{files[i]}: not a readable image ({e})") from e
    return Source("folder", len(files), load, labels, lambda i: os.path.relpath(files[i], path), class_names=names)


def numpy_file(path: str) -> Source:
    try:
        obj = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"array file {path!r} not found") from None
    except Exception as e:
        raise DataError(f"{path!r}: not a readable .npy/.npz file ({e})") from e
    labels = None
    if isinstance(obj, np.lib.npyio.NpzFile):
        names = set(obj.files)
        key = next((k for k in ("images", "x") if k in names), None)
        if key is None:
            raise DataError(f"{path!r}: an .npz needs an 'images' (or 'x') array, it has {sorted(names)}")
        images = obj[key]
        lk = next((k for k in ("labels", "y") if k in names), None)
        labels = [int(v) for v in obj[lk]] if lk else None
    else:
        images = obj
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] != 3):
        raise DataError(f"{path!r}: images must be (N, H, W), (N, H, W, 1) or (N, H, W, 3), got {images.shape}")
    if images.dtype != np.uint8:
        if not np.issubdtype(images.dtype, np.integer) or images.min() < 0 or images.max() > 255:
            raise DataError(f"{path!r}: images must be uint8 (or integers in 0..255), got {images.dtype}")
        images = images.astype(np.uint8)
    if labels is not None and len(labels) != len(images):
        raise DataError(f"{path!r}: {len(images)} images but {len(labels)} labels")
    return _array_source("array", images, labels, os.path.basename(path))


def webdataset_urls(pattern: str, storage_options: dict | None = None) -> Source:
    """Existing WebDataset shards, one in memory at a time: a first pass keeps each sample's shard,
    key, label and origin (not its image); ``load(i)`` reads the shard that holds sample i (ingest
    asks in ascending order, so each shard is read once more). ``locate(i)`` is that entry, so that
    another process reads sample i alone (:func:`webdataset_entries`)."""
    from braceexpand import braceexpand
    entries = {}
    for url in braceexpand(pattern):
        for key, _, label, origin in _foreign_samples(_shard(url, storage_options), url):
            entries[len(entries)] = (url, key, label, origin)
    src = webdataset_entries(entries, all(e[2] is not None for e in entries.values()), storage_options)
    src.labels = [entries[i][2] for i in range(len(entries))] if src.labels is not None else None
    return src


def webdataset_entries(entries: dict, labelled: bool, storage_options: dict | None = None) -> Source:
    """A source of the samples ``entries`` locates (index -> (shard URL, key, label, origin)), reading
    one shard at a time; indices are those of the whole source, so keys and lineage are the same."""
    cache: dict = {}

    def load(i):
        from collapse.data.samples import decode_png
        url, key, _, origin = entries[i]
        if cache.get("url") != url:  # drop the previous shard before reading the next
            cache.clear()
            cache.update(url=url, images={k: img for k, img, _, _ in _foreign_samples(_shard(url, storage_options),
                                                                                      url)})
        return decode_png(cache["images"][key], origin)
    labels = {i: e[2] for i, e in entries.items()} if labelled else None
    return Source("wds", len(entries), load, labels, lambda i: entries[i][3], locate=lambda i: entries[i])


def _shard(url: str, storage_options: dict | None) -> bytes:
    try:
        return storage.read_bytes(url, storage_options)
    except FileNotFoundError:
        raise DataError(f"WebDataset shard {url!r} not found") from None


def _foreign_samples(data: bytes, url: str):
    import tarfile
    groups: dict[str, dict] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for info in tar:
                if info.isfile():
                    key, _, ext = info.name.partition(".")
                    groups.setdefault(key, {})[ext.lower()] = tar.extractfile(info).read()
            end = tar.offset  # where the end-of-archive marker must be
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DataError(f"{url}: not a readable tar shard ({e})") from e
    # Python's tarfile ends quietly at a header cut short: a shard cut after its first member (a partial
    # upload) would read as a shorter set. A whole tar ends with zero blocks of 512 bytes (POSIX: two;
    # one is enough here, since what follows the first is no member).
    if data[end:end + 512] != bytes(512):
        raise DataError(f"{url}: the tar shard is cut short after {len(groups)} sample(s) ({len(data)} bytes, no "
                        f"end-of-archive marker at byte {end}): a partial upload or copy? Write it again whole")
    for key, parts in groups.items():
        img = next((parts[e] for e in ("png", "jpg", "jpeg", "webp") if e in parts), None)
        if img is None:
            raise DataError(f"{url}: sample {key!r} has no image member (.png/.jpg/.jpeg/.webp)")
        label = None
        if "cls" in parts:
            label = int(parts["cls"].decode().strip())
        elif "json" in parts:
            label = json.loads(parts["json"]).get("label")
        yield key, img, label, f"{url}#{key}"


def open_source(spec: str, storage_options: dict | None = None) -> tuple[Source, Source | None]:
    """``(train source, held-out source or None)`` for a source spec (see the module docstring)."""
    if spec in ("fashion-mnist", "fashion_mnist", "fmnist"):
        return fashion_mnist("train"), fashion_mnist("test")
    if spec == "digits":
        return digits(), None
    kind, _, arg = spec.partition(":")
    if kind == "folder" and arg:
        return folder(arg), None
    if kind == "npy" and arg:
        return numpy_file(arg), None
    if kind == "wds" and arg:
        return webdataset_urls(arg, storage_options), None
    if kind == "cifar10" and arg:
        return cifar10(arg)
    if kind == "parquet" and arg:
        return parquet(arg), None
    raise DataError(f"unknown source {spec!r}: expected fashion-mnist, digits, folder:PATH, npy:PATH, wds:URL, "
                    "cifar10:PATH or parquet:PATH")


def transform(image: np.ndarray, size: int | None, mode: str | None, where: str) -> np.ndarray:
    """Convert to ``mode`` ('grey' or 'rgb') and resize to size x size (Lanczos)."""
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise DataError(f"{where}: expected a uint8 grey or RGB image, got {image.dtype} {image.shape}")
    im = Image.fromarray(image)
    if mode == "grey" and im.mode != "L":
        im = im.convert("L")
    elif mode == "rgb" and im.mode != "RGB":
        im = im.convert("RGB")
    if size is not None and im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(im)


def _key(name: str, split: str, index: int) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", f"{name}-{split}-{index:06d}")


def _split(spec, train_src: Source, test_src: Source | None, holdout: int, seed: int):
    """``(training pool, held-out source, held-out indices)``: the seeded order ingest draws from.
    The held-out images come from the source's test split when it has one, else from the front of
    the permuted training split (and are then never in the pool)."""
    pool = np.random.default_rng(seed).permutation(train_src.count)
    if test_src is not None:
        if holdout > test_src.count:
            raise DataError(f"holdout={holdout} is larger than the {test_src.count} held-out images of {spec!r}")
        return pool, test_src, np.random.default_rng(seed + 1).permutation(test_src.count)[:holdout]
    if holdout >= train_src.count:
        raise DataError(f"holdout={holdout} leaves no training images of the {train_src.count} in {spec!r}")
    return pool[holdout:], train_src, pool[:holdout]


def labelled_training_images(spec: str, count: int, *, size: int | None = None, mode: str | None = None,
                             holdout: int = 0, seed: int = 0, storage_options: dict | None = None):
    """``(images uint8 (M, H, W[, C]), labels int (M,))``: the first ``count`` images (M = fewer when
    the source holds fewer) of the training pool that ``ingest`` draws from with the same
    ``holdout`` and ``seed``, so never a held-out image; ``None`` when the source has no labels.
    (The training set D_1 is the pool's first N images: they are among these.)"""
    train_src, test_src = open_source(spec, storage_options)
    if train_src.labels is None:
        return None
    pool, _, _ = _split(spec, train_src, test_src, holdout, seed)
    idx = np.sort(pool[:count])
    images = np.stack([transform(train_src.load(int(i)), size, mode, f"{spec} image {train_src.origin(int(i))}")
                       for i in idx])
    return images, np.array([int(train_src.labels[int(i)]) for i in idx])


@dataclass
class IngestJob:
    """One split of an import still to write: its URL, source, sorted source indices and key prefix."""
    split: str          # "train" or "holdout"
    url: str
    src: Source
    idx: np.ndarray
    split_name: str     # the source split the keys name ("train" or "test")
    overwrite: bool


@dataclass
class IngestPlan:
    spec: str
    options: dict
    chash: str
    done: dict          # split -> manifest of a split already imported with these options
    jobs: list          # IngestJob of every split still to write


def plan_ingest(spec: str, out_url: str, *, size: int | None = None, mode: str | None = None, n: int | None = None,
                holdout: int = 0, seed: int = 0, overwrite: bool = False,
                storage_options: dict | None = None) -> IngestPlan:
    """What ``ingest`` will write, after checking the options and what ``out_url`` already holds."""
    if mode not in (None, "grey", "rgb"):
        raise DataError(f"mode must be 'grey' or 'rgb', got {mode!r}")
    if size is not None and size < 1:
        raise DataError(f"size must be a positive number of pixels, got {size}")
    if n is not None and n < 1:
        raise DataError(f"n must be >= 1, got {n}")
    if holdout < 0:
        raise DataError(f"holdout must be >= 0, got {holdout}")
    options = {"source": spec, "size": size, "mode": mode, "n": n, "holdout": holdout, "seed": seed}
    chash = config_hash(options)
    splits = {"train": storage.join(out_url, "train")}
    if holdout:
        splits["holdout"] = storage.join(out_url, "holdout")
    existing = {s: try_read_manifest(u, storage_options) for s, u in splits.items()}
    if all(m is not None and m.get("config_hash") == chash for m in existing.values()):
        return IngestPlan(spec, options, chash, existing, [])
    stale = [u for s, u in splits.items() if existing[s] is not None and existing[s].get("config_hash") != chash]
    if stale and not overwrite:
        raise DataError(f"{stale[0]!r} already holds a different import; pass --overwrite to replace it")

    train_src, test_src = open_source(spec, storage_options)
    pool, hold_src, hold_idx = _split(spec, train_src, test_src, holdout, seed)
    if n is not None and n > len(pool):
        raise DataError(f"n={n} is larger than the {len(pool)} training images available in {spec!r}")
    done, jobs = {}, []
    for split, src, idx in (("train", train_src, np.sort(pool[:n] if n is not None else pool)),
                            ("holdout", hold_src, np.sort(hold_idx))):
        if split not in splits:
            continue
        if existing[split] is not None and existing[split].get("config_hash") == chash:
            done[split] = existing[split]
            continue
        jobs.append(IngestJob(split, splits[split], src, idx,
                              "test" if (split == "holdout" and test_src is not None) else "train",
                              overwrite or existing[split] is not None))
    return IngestPlan(spec, options, chash, done, jobs)


def ingest_samples(spec: str, job: IngestJob, idx, *, size: int | None, mode: str | None, progress=None):
    """The samples of source indices ``idx`` (part of ``job.idx``, in order): resized, converted, with
    their lineage; every image of the same shape as the first (a DataError names the one that is not)."""
    shape, src = None, job.src
    for j, i in enumerate(idx):
        where = f"{spec} image {src.origin(int(i))}"
        img = transform(src.load(int(i)), size, mode, where)
        if shape is None:
            shape = img.shape
        elif img.shape != shape:
            raise DataError(f"{where}: image shape {img.shape}, expected {shape} like the first image "
                            "(pass --size to resize every image)")
        meta = {"source": "real", "dataset": src.name, "origin": src.origin(int(i))}
        if src.labels is not None:
            meta["label"] = src.labels[int(i)]
            if src.class_names is not None and 0 <= meta["label"] < len(src.class_names):
                meta["class_name"] = src.class_names[meta["label"]]
        if progress is not None and (j + 1) % 5000 == 0:
            progress(f"ingest {job.split}: {j + 1}/{len(idx)}")
        yield Sample(_key(src.name, job.split_name, int(i)), img, meta)


def ingest(spec: str, out_url: str, *, size: int | None = None, mode: str | None = None, n: int | None = None,
           holdout: int = 0, seed: int = 0, shard_size: int = 1000, overwrite: bool = False,
           storage_options: dict | None = None, progress=print) -> dict:
    """Import ``spec`` into ``<out>/train`` (and ``<out>/holdout``). Returns ``{split: manifest}``.

    Resumable and idempotent: a finished import with the same options is a no-op; one with other
    options is refused unless ``overwrite``. (``cluster.ingest`` writes the same shards with tasks.)
    """
    plan = plan_ingest(spec, out_url, size=size, mode=mode, n=n, holdout=holdout, seed=seed, overwrite=overwrite,
                       storage_options=storage_options)
    if not plan.jobs:
        progress(f"ingest: {out_url} already holds this import (config {plan.chash}); nothing to do")
        return plan.done
    manifests = dict(plan.done)
    for job in plan.jobs:
        manifests[job.split] = write_sample_set(
            job.url, ingest_samples(spec, job, job.idx, size=size, mode=mode, progress=progress),
            shard_size=shard_size, config_hash=plan.chash, extra={"ingest": plan.options}, overwrite=job.overwrite,
            storage_options=storage_options)
        progress(f"ingest: wrote {manifests[job.split]['count']} images {tuple(manifests[job.split]['shape'])} "
                 f"to {job.url}")
    return {k: manifests[k] for k in ("train", "holdout") if k in manifests}
