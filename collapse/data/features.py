"""Features stored inside the set they describe: ``<set>/features/<extractor>/`` (a set is featurized once).

``features.npy`` holds float32 (N, d) rows in the set's key order; ``manifest.json`` (written last)
records the extractor, the dimension, and the sha256 of the set's manifest, so features of a set
that was rewritten are never mistaken for current ones.
"""
from __future__ import annotations

import hashlib
import io

import numpy as np

from collapse.data import manifest as mf
from collapse.data import storage
from collapse.data.samples import SampleSet
from collapse.data.urls import features_url
from collapse.errors import DataError, NotFinishedError

KIND = "features"


def _set_fingerprint(sample_set: SampleSet) -> str:
    return hashlib.sha256(mf.canonical_json(sample_set.manifest).encode()).hexdigest()[:16]


def save_features(sample_set: SampleSet, extractor: str, keys: list[str], values: np.ndarray,
                  identity: str = "") -> str:
    """Store ``values`` (N, d) for ``keys`` (must be the set's keys, in any order); returns the URL.
    ``identity``: what else the features depend on (a learned extractor's weights), checked on reuse."""
    values = np.asarray(values, dtype=np.float32)
    if values.ndim != 2 or values.shape[0] != len(keys):
        raise DataError(f"features for {len(keys)} keys must be (N, d), got {values.shape}")
    if not np.isfinite(values).all():
        raise DataError(f"features {extractor!r} of {sample_set.url!r} contain NaN or inf")
    position = {k: i for i, k in enumerate(keys)}
    if len(position) != len(keys) or set(position) != set(sample_set.keys):
        raise DataError(f"features {extractor!r} must cover exactly the {sample_set.count} keys of {sample_set.url!r}")
    ordered = values[[position[k] for k in sample_set.keys]]
    url = features_url(sample_set.url, extractor)
    buf = io.BytesIO()
    np.save(buf, ordered, allow_pickle=False)
    storage.write_bytes(storage.join(url, "features.npy"), buf.getvalue(), sample_set.storage_options)
    mf.write_manifest(url, {"kind": KIND, "extractor": extractor, "count": len(keys), "dim": int(values.shape[1]),
                            "set": _set_fingerprint(sample_set), "identity": identity}, sample_set.storage_options)
    return url


def has_features(sample_set: SampleSet, extractor: str, identity: str = "") -> bool:
    """Stored features of this version of the set, by an extractor of the same ``identity``."""
    m = mf.try_read_manifest(features_url(sample_set.url, extractor), sample_set.storage_options)
    return m is not None and m.get("set") == _set_fingerprint(sample_set) and m.get("identity", "") == identity


def load_features(sample_set: SampleSet, extractor: str, keys: list[str] | None = None) -> np.ndarray:
    """Float32 (N, d) features in the set's key order (or in the order of ``keys``)."""
    url = features_url(sample_set.url, extractor)
    m = mf.read_manifest(url, sample_set.storage_options, kind=KIND)
    if m.get("set") != _set_fingerprint(sample_set):
        raise NotFinishedError(f"features {url!r} were computed for an earlier version of the set")
    values = np.load(io.BytesIO(storage.read_bytes(storage.join(url, "features.npy"), sample_set.storage_options)),
                     allow_pickle=False)
    if keys is None:
        return values
    position = {k: i for i, k in enumerate(sample_set.keys)}
    try:
        return values[[position[k] for k in keys]]
    except KeyError as e:
        raise DataError(f"key {e.args[0]!r} is not in {sample_set.url!r}") from None
