"""Features stored inside the set they describe: ``<set>/features/<extractor>/`` (a set is featurized once).

One float32 ``.npy`` per shard of the set, ``shard-000000.npy`` beside ``shard-000000.tar``, its
rows in that shard's key order, so that a reader streams them shard by shard and a featurizer
actor writes its shard's rows itself; ``manifest.json`` (written last) records the extractor, the
dimension, each file's sha256, and the sha256 of the set's manifest, so that features of a set that
was rewritten are never mistaken for current ones. A manifest without ``shards`` (runs written
before) points to one ``features.npy`` of every row; it is read as before.
"""
from __future__ import annotations

import hashlib
import io

import numpy as np

from collapse.data import manifest as manifests
from collapse.data import storage
from collapse.data.samples import SampleSet
from collapse.data.urls import features_url
from collapse.errors import DamagedError, DataError, NotFinishedError

KIND = "features"


def _set_fingerprint(sample_set: SampleSet) -> str:
    return hashlib.sha256(manifests.canonical_json(sample_set.manifest).encode()).hexdigest()[:16]


def feature_file(shard_name: str) -> str:
    """The features file of a set's shard: ``shard-000000.tar`` -> ``shard-000000.npy``."""
    return shard_name.replace(".tar", ".npy")


def _npy(values: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(values, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


def _check_rows(sample_set: SampleSet, extractor: str, values: np.ndarray, count: int) -> np.ndarray:
    values = np.asarray(values, dtype=np.float32)
    if values.ndim != 2 or values.shape[0] != count:
        raise DataError(f"features for {count} keys must be (N, d), got {values.shape}")
    if not np.isfinite(values).all():
        raise DataError(f"features {extractor!r} of {sample_set.url!r} contain NaN or inf")
    return values


def save_feature_shard(sample_set: SampleSet, extractor: str, shard: int, values: np.ndarray) -> dict:
    """Write the rows of shard ``shard`` (in its key order); the record :func:`commit_features` takes."""
    record = sample_set.shards[shard]
    values = _check_rows(sample_set, extractor, values, record["count"])
    data = _npy(values)
    name = feature_file(record["name"])
    storage.write_bytes(storage.join(features_url(sample_set.url, extractor), name), data,
                        sample_set.storage_options)
    return {"name": name, "count": record["count"], "dim": int(values.shape[1]),
            "sha256": hashlib.sha256(data).hexdigest()}


def commit_features(sample_set: SampleSet, extractor: str, records: list[dict], identity: str = "") -> str:
    """The manifest of features whose shards are all written (one record per shard of the set, in order)."""
    names = [feature_file(r["name"]) for r in sample_set.shards]
    if [r["name"] for r in records] != names:
        raise DataError(f"features {extractor!r} of {sample_set.url!r}: expected one file per shard {names[:3]}..., "
                        f"got {[r['name'] for r in records][:3]}...")
    dims = {r["dim"] for r in records}
    if len(dims) != 1:
        raise DataError(f"features {extractor!r} of {sample_set.url!r} mix dimensions {sorted(dims)}")
    url = features_url(sample_set.url, extractor)
    manifests.write_manifest(url, {"kind": KIND, "extractor": extractor, "count": sample_set.count, "dim": dims.pop(),
                            "set": _set_fingerprint(sample_set), "identity": identity,
                            "shards": [{k: r[k] for k in ("name", "count", "sha256")} for r in records]},
                      sample_set.storage_options)
    return url


def save_features(sample_set: SampleSet, extractor: str, keys: list[str], values: np.ndarray,
                  identity: str = "") -> str:
    """Store ``values`` (N, d) for ``keys`` (must be the set's keys, in any order); returns the URL.
    ``identity``: what else the features depend on (a learned extractor's weights), checked on reuse."""
    values = _check_rows(sample_set, extractor, values, len(keys))
    position = {k: i for i, k in enumerate(keys)}
    if len(position) != len(keys) or set(position) != set(sample_set.keys):
        raise DataError(f"features {extractor!r} must cover exactly the {sample_set.count} keys of {sample_set.url!r}")
    records = [save_feature_shard(sample_set, extractor, j, values[[position[k] for k in r["keys"]]])
               for j, r in enumerate(sample_set.shards)]
    return commit_features(sample_set, extractor, records, identity)


def has_features(sample_set: SampleSet, extractor: str, identity: str = "") -> bool:
    """Stored features of this version of the set, by an extractor of the same ``identity``."""
    m = manifests.try_read_manifest(features_url(sample_set.url, extractor), sample_set.storage_options)
    return m is not None and m.get("set") == _set_fingerprint(sample_set) and m.get("identity", "") == identity


def _manifest(sample_set: SampleSet, extractor: str) -> tuple[str, dict]:
    url = features_url(sample_set.url, extractor)
    m = manifests.read_manifest(url, sample_set.storage_options, kind=KIND)
    if m.get("set") != _set_fingerprint(sample_set):
        raise NotFinishedError(f"features {url!r} were computed for an earlier version of the set")
    return url, m


def _read(url: str, name: str, sha256: str | None, storage_options) -> np.ndarray:
    part = storage.join(url, name)
    try:
        data = storage.read_bytes(part, storage_options)
    except FileNotFoundError:
        raise DamagedError(part, url, "the file listed in its manifest is missing") from None
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise DamagedError(part, url, "its sha256 differs from the manifest's")
    return np.load(io.BytesIO(data), allow_pickle=False)


def iter_features(sample_set: SampleSet, extractor: str, shards: list[int] | None = None):
    """``(shard index, keys, rows)`` shard by shard (of ``shards``, else all): one shard in memory at a time."""
    url, m = _manifest(sample_set, extractor)
    wanted = range(len(sample_set.shards)) if shards is None else shards
    if "shards" not in m:  # the single-file layout of older runs
        values = _read(url, "features.npy", None, sample_set.storage_options)
        starts = np.cumsum([0] + [r["count"] for r in sample_set.shards])
        for j in wanted:
            yield j, sample_set.shards[j]["keys"], values[starts[j]:starts[j + 1]]
        return
    for j in wanted:
        r = m["shards"][j]
        yield j, sample_set.shards[j]["keys"], _read(url, r["name"], r["sha256"], sample_set.storage_options)


def load_features(sample_set: SampleSet, extractor: str, keys: list[str] | None = None) -> np.ndarray:
    """Float32 (N, d) features in the set's key order (or in the order of ``keys``, reading only the
    shards that hold them)."""
    if keys is None:
        parts = [rows for _, _, rows in iter_features(sample_set, extractor)]
        return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
    shard_of = {k: j for j, r in enumerate(sample_set.shards) for k in r["keys"]}
    missing = next((k for k in keys if k not in shard_of), None)
    if missing is not None:
        raise DataError(f"key {missing!r} is not in {sample_set.url!r}")
    rows = {}
    for _, ks, values in iter_features(sample_set, extractor, sorted({shard_of[k] for k in keys})):
        rows.update(zip(ks, values))
    return np.stack([rows[k] for k in keys]) if keys else np.zeros((0, 0), np.float32)
