"""Sample sets: images with per-sample lineage, in WebDataset tar shards on any fsspec URL.

A sample set is a directory URL holding

    shard-000000.tar    one tar per shard: <key>.png (8-bit grey or RGB) + <key>.json (lineage)
    shard-000000.json   the shard's sidecar: count, keys, sha256 of the tar (written after the tar)
    manifest.json       written last: shard list, counts, image shape, content hashes, config hash

A shard is uploaded only once complete (object stores: one PUT; local/memory: rename), and the
manifest is the commit: a reader never sees a set without it as finished. A sidecar marks a shard
as complete, so a writer that crashed can resume and rewrite only the missing shards.

Lineage (the ``.json`` of a sample): ``key``, ``source`` (``real`` or ``gen-NNN``), and for
synthetic samples ``model`` (URL) and ``seed``; ``label`` when known; ``decisions`` is the list of
selection decisions taken about it. Tar member times are fixed, so equal samples give equal bytes.
"""
from __future__ import annotations

import hashlib
import io
import itertools
import json
import re
import tarfile
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

import numpy as np
from PIL import Image

from collapse.data import manifest as manifests
from collapse.data import storage
from collapse.data.urls import shard_name
from collapse.errors import DamagedError, DataError, check_int

KIND = "sample-set"
KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")  # no dots: WebDataset splits the extension at the first dot
SOURCE_RE = re.compile(r"^(real|gen-\d{3})$")


@dataclass(frozen=True)
class Sample:
    """One image and its lineage. ``image`` is uint8, (H, W) grey or (H, W, 3) RGB."""
    key: str
    image: np.ndarray
    meta: dict = field(default_factory=dict)


def image_mode(shape: Sequence[int]) -> str:
    if len(shape) == 2:
        return "L"
    if len(shape) == 3 and shape[2] == 3:
        return "RGB"
    raise DataError(f"image shape {tuple(shape)} is neither grey (H, W) nor RGB (H, W, 3)")


def encode_png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image, mode=image_mode(image.shape)).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def decode_png(data: bytes, where: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.mode not in ("L", "RGB"):
                raise DataError(f"{where}: PNG mode {im.mode!r}, expected 'L' (grey) or 'RGB'")
            return np.asarray(im).copy()
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{where}: not a readable PNG ({e})") from e


def check_sample(sample: Sample, shape: tuple | None) -> None:
    """Raise a DataError naming the sample when its key, image or lineage is not as expected."""
    where = f"sample {sample.key!r}"
    if not isinstance(sample.key, str) or not KEY_RE.match(sample.key):
        raise DataError(f"{where}: key must match {KEY_RE.pattern}")
    img = sample.image
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8:
        raise DataError(f"{where}: image must be a uint8 numpy array, got {getattr(img, 'dtype', type(img))}")
    image_mode(img.shape)
    if shape is not None and tuple(img.shape) != tuple(shape):
        raise DataError(f"{where}: image shape {tuple(img.shape)}, expected {tuple(shape)} like the rest of the set")
    meta = sample.meta
    if meta.get("key", sample.key) != sample.key:
        raise DataError(f"{where}: lineage key {meta.get('key')!r} differs from the sample key")
    source = meta.get("source")
    if source is None:
        raise DataError(f"{where}: lineage is missing the field 'source' ('real' or 'gen-NNN')")
    if not SOURCE_RE.match(str(source)):
        raise DataError(f"{where}: lineage source {source!r}, expected 'real' or 'gen-NNN'")
    if source != "real" and ("model" not in meta or "seed" not in meta):
        raise DataError(f"{where}: a synthetic sample's lineage needs 'model' and 'seed'")


def build_shard(samples: Sequence[Sample]) -> bytes:
    """The tar bytes of one shard (deterministic: fixed member times, owner and order)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for s in samples:
            meta = dict(s.meta, key=s.key)
            for ext, data in (("png", encode_png(s.image)),
                              ("json", json.dumps(meta, sort_keys=True).encode())):
                info = tarfile.TarInfo(f"{s.key}.{ext}")
                info.size, info.mtime, info.mode, info.uname, info.gname = len(data), 0, 0o444, "collapse", "collapse"
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _sidecar_url(set_url: str, index: int) -> str:
    return storage.join(set_url, shard_name(index).replace(".tar", ".json"))


def write_shard(set_url: str, index: int, samples: Sequence[Sample], *, config_hash: str = "",
                storage_options: dict | None = None) -> dict:
    """Write one complete shard and its sidecar; return the shard record for the manifest."""
    if not samples:
        raise DataError(f"shard {index} of {set_url!r} would be empty")
    shape = tuple(samples[0].image.shape)
    keys = []
    for s in samples:
        check_sample(s, shape)
        keys.append(s.key)
    data = build_shard(samples)
    record = {"name": shard_name(index), "count": len(samples), "sha256": hashlib.sha256(data).hexdigest(),
              "shape": list(shape), "keys": keys, "config_hash": config_hash}
    storage.write_bytes(storage.join(set_url, record["name"]), data, storage_options)
    storage.write_bytes(_sidecar_url(set_url, index), json.dumps(record).encode(), storage_options)
    return record


def completed_shard(set_url: str, index: int, config_hash: str = "",
                    storage_options: dict | None = None) -> dict | None:
    """The record of a shard a previous writer finished with the same config hash, else None."""
    try:
        record = json.loads(storage.read_bytes(_sidecar_url(set_url, index), storage_options))
    except (FileNotFoundError, ValueError):
        return None
    return record if record.get("config_hash") == config_hash else None


def commit_sample_set(set_url: str, records: Sequence[dict], *, config_hash: str = "", extra: dict | None = None,
                      storage_options: dict | None = None) -> dict:
    """Write the manifest of a set whose shards are all written: the set becomes visible as finished."""
    if not records:
        raise DataError(f"sample set {set_url!r} would be empty: nothing to commit")
    shapes = {tuple(r["shape"]) for r in records}
    if len(shapes) != 1:
        raise DataError(f"sample set {set_url!r} mixes image shapes {sorted(shapes)}")
    keys = [k for r in records for k in r["keys"]]
    if len(set(keys)) != len(keys):
        dup = next(k for k, n in _count(keys) if n > 1)
        raise DataError(f"sample set {set_url!r}: key {dup!r} appears more than once")
    shape = list(shapes.pop())
    manifest = {"kind": KIND, "version": 1, "count": len(keys), "shape": shape, "mode": image_mode(shape),
                "config_hash": config_hash, "shards": list(records), "extra": dict(extra or {})}
    manifests.write_manifest(set_url, manifest, storage_options)
    return manifest


def _count(keys):
    seen: dict = {}
    for k in keys:
        seen[k] = seen.get(k, 0) + 1
    return seen.items()


def write_sample_set(set_url: str, samples: Iterable[Sample], *, shard_size: int = 1000, config_hash: str = "",
                     extra: dict | None = None, overwrite: bool = False, resume: bool = True,
                     storage_options: dict | None = None) -> dict:
    """Write a whole set, shard by shard, then its manifest. Returns the manifest.

    A finished set at ``set_url`` is refused unless ``overwrite``; overwriting first removes the
    old manifest, so the set is never visible as finished while its shards change. With
    ``resume``, shards a crashed writer completed (same config hash, same keys) are kept.
    """
    if shard_size < 1:
        raise DataError(f"shard size {shard_size}: expected at least 1 sample per shard")
    if manifests.try_read_manifest(set_url, storage_options) is not None:
        if not overwrite:
            raise DataError(f"sample set {set_url!r} already exists (pass overwrite=True to replace it)")
        storage.remove(manifests.manifest_url(set_url), storage_options)
    records, it = [], iter(samples)
    for index in itertools.count():
        chunk = list(itertools.islice(it, shard_size))
        if not chunk:
            break
        done = completed_shard(set_url, index, config_hash, storage_options) if resume and not overwrite else None
        if done is not None and done["keys"] == [s.key for s in chunk]:
            records.append(done)
        else:
            records.append(write_shard(set_url, index, chunk, config_hash=config_hash,
                                       storage_options=storage_options))
    if not records:
        raise DataError(f"no samples to write to {set_url!r}: the source is empty")
    return commit_sample_set(set_url, records, config_hash=config_hash, extra=extra, storage_options=storage_options)


class SampleSet:
    """A finished sample set, opened from its manifest. Pass URLs between processes, not these."""

    def __init__(self, url: str, storage_options: dict | None = None):
        self.url = url.rstrip("/")
        self.storage_options = storage_options
        self.manifest = manifests.read_manifest(self.url, storage_options, kind=KIND)
        self.shape = tuple(self.manifest["shape"])
        self.count = int(self.manifest["count"])
        self.shards = self.manifest["shards"]

    @property
    def keys(self) -> list[str]:
        return [k for r in self.shards for k in r["keys"]]

    @property
    def shard_urls(self) -> list[str]:
        return [storage.join(self.url, r["name"]) for r in self.shards]

    def shard_bytes(self, i: int) -> bytes:
        """The bytes of shard ``i``, checked against the manifest's sha256 (DamagedError otherwise)."""
        record, url = self.shards[i], self.shard_urls[i]
        try:
            data = storage.read_bytes(url, self.storage_options)
        except FileNotFoundError:
            raise DamagedError(url, self.url, "the shard listed in its manifest is missing") from None
        if hashlib.sha256(data).hexdigest() != record["sha256"]:
            raise DamagedError(url, self.url, "its sha256 differs from the manifest's")
        return data

    def read_shard(self, i: int) -> Iterator[Sample]:
        """Samples of shard ``i`` in order, after checking the shard's bytes against the manifest."""
        record, url = self.shards[i], self.shard_urls[i]
        samples = list(iter_tar_samples(self.shard_bytes(i), url, self.shape))
        if [s.key for s in samples] != record["keys"]:
            raise DamagedError(url, self.url, "its keys differ from the manifest's")
        return iter(samples)

    def iter_samples(self, keys: Iterable[str] | None = None) -> Iterator[Sample]:
        """Every sample (or those of ``keys``, in set order), one shard in memory at a time."""
        wanted = None if keys is None else set(keys)
        if wanted is not None:
            missing = wanted.difference(self.keys)
            if missing:
                raise DataError(f"{len(missing)} keys are not in {self.url!r}, e.g. {sorted(missing)[:3]}")
        for i, record in enumerate(self.shards):
            if wanted is not None and not wanted.intersection(record["keys"]):
                continue
            for s in self.read_shard(i):
                if wanted is None or s.key in wanted:
                    yield s

    def iter_batches(self, batch_size: int, keys: Iterable[str] | None = None
                     ) -> Iterator[tuple[list[str], np.ndarray, list[dict]]]:
        """Batches ``(keys, images (B, H, W[, C]) uint8, lineage)``; memory stays bounded by one shard + batch."""
        check_int(batch_size, "batch_size", low=1)
        it = self.iter_samples(keys)
        while chunk := list(itertools.islice(it, batch_size)):
            yield [s.key for s in chunk], np.stack([s.image for s in chunk]), [s.meta for s in chunk]

    def labels(self, keys: Iterable[str] | None = None) -> dict[str, int | None]:
        """``{key: meta["label"]}`` of every sample (or of ``keys``); None for a sample without one."""
        return {s.key: s.meta.get("label") for s in self.iter_samples(keys)}

    def load(self, keys: Iterable[str] | None = None) -> tuple[list[str], np.ndarray, list[dict]]:
        """The whole set (or ``keys``) in memory: ``(keys, images, lineage)``."""
        samples = list(self.iter_samples(keys))
        if not samples:
            return [], np.zeros((0, *self.shape), np.uint8), []
        return [s.key for s in samples], np.stack([s.image for s in samples]), [s.meta for s in samples]


def open_sample_set(url: str, storage_options: dict | None = None) -> SampleSet:
    return SampleSet(url, storage_options)


def iter_tar_samples(data: bytes, where: str, shape: tuple | None = None) -> Iterator[Sample]:
    """Parse one shard's tar bytes into samples; a truncated or corrupt tar raises a DataError naming it."""
    members: dict[str, dict] = {}
    order: list[str] = []
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                key, _, ext = info.name.partition(".")
                if key not in members:
                    members[key] = {}
                    order.append(key)
                members[key][ext] = tar.extractfile(info).read()
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DataError(f"{where}: not a readable tar shard ({e})") from e
    if not order and data:
        raise DataError(f"{where}: not a readable tar shard (no members)")
    for key in order:
        parts = members[key]
        for ext in ("png", "json"):
            if ext not in parts:
                raise DataError(f"{where}: sample {key!r} is missing its .{ext} member")
        image = decode_png(parts["png"], f"{where}: sample {key!r}")
        if shape is not None and tuple(image.shape) != tuple(shape):
            raise DataError(f"{where}: sample {key!r} has image shape {image.shape}, expected {tuple(shape)}")
        try:
            meta = json.loads(parts["json"])
        except ValueError as e:
            raise DataError(f"{where}: sample {key!r} has invalid lineage JSON ({e})") from e
        yield Sample(key, image, meta)


@dataclass(frozen=True)
class SubsetPlan:
    """How to materialize ``keys`` of ``sources`` shard by shard without holding the subset in one
    process: ``shards[i]`` are the keys of output shard i (``keys`` cut into ``shard_size`` runs, as
    :func:`write_subset` cuts them); ``reads`` lists every source shard that holds one of them once,
    as (source set URL, shard index, {key: output shard}) in source order."""
    shards: tuple[tuple[str, ...], ...]
    reads: tuple[tuple[str, int, dict], ...]

    def feeds(self, read: int) -> list[int]:
        """The output shards that read ``read`` contributes to, ascending."""
        return sorted(set(self.reads[read][2].values()))


def plan_subset(sources: Sequence[SampleSet], keys: Sequence[str], shard_size: int) -> SubsetPlan:
    """The :class:`SubsetPlan` of ``keys`` (each taken from the first source that holds it), from the
    manifests alone. Refuses missing and repeated keys as :func:`write_subset` does."""
    if shard_size < 1:
        raise DataError(f"shard size {shard_size}: expected at least 1 sample per shard")
    where: dict[str, tuple[int, int]] = {}
    for a, src in enumerate(sources):
        for j, record in enumerate(src.shards):
            for k in record["keys"]:
                where.setdefault(k, (a, j))
    missing = [k for k in keys if k not in where]
    if missing:
        raise DataError(f"{len(missing)} keys are in none of {[s.url for s in sources]}, e.g. {missing[:3]}")
    if len(set(keys)) != len(keys):
        raise DataError("write_subset: keys repeat")
    shards = tuple(tuple(keys[i:i + shard_size]) for i in range(0, len(keys), shard_size))
    wanted: dict[tuple[int, int], dict] = {}
    for out, chunk in enumerate(shards):
        for k in chunk:
            wanted.setdefault(where[k], {})[k] = out
    reads = tuple((sources[a].url, j, wanted[(a, j)]) for a, j in sorted(wanted))
    return SubsetPlan(shards, reads)


def annotated(sample: Sample, why: dict | None) -> Sample:
    """``sample`` with ``why`` (a selection decision) appended to its lineage's ``decisions``."""
    if why is None:
        return sample
    return Sample(sample.key, sample.image, dict(sample.meta, decisions=list(sample.meta.get("decisions", [])) + [why]))


def write_subset(sources: Sequence[SampleSet], keys: Sequence[str], out_url: str, *,
                 annotate=None, shard_size: int = 1000, config_hash: str = "", extra: dict | None = None,
                 overwrite: bool = False, storage_options: dict | None = None) -> dict:
    """Materialise the samples of ``keys`` (found in any of ``sources``) as a new set, in ``keys`` order.

    ``annotate(sample) -> meta`` may extend each sample's lineage (e.g. with a selection decision).
    """
    plan = plan_subset(sources, keys, shard_size)  # where each key is, missing and repeated keys refused
    by_url: dict[str, SampleSet] = {}
    for src in sources:
        by_url.setdefault(src.url, src)
    found: dict[str, Sample] = {}
    for url, shard, wanted in plan.reads:  # each source shard that holds wanted keys, read once
        for s in by_url[url].read_shard(shard):
            if s.key in wanted:
                found[s.key] = s

    def gen():
        for k in keys:
            s = found[k]
            yield Sample(k, s.image, annotate(s) if annotate else s.meta)

    return write_sample_set(out_url, gen(), shard_size=shard_size, config_hash=config_hash, extra=extra,
                            overwrite=overwrite, storage_options=storage_options)
