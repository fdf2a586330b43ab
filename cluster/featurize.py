"""The featurizing stage: an actor pool computes a set's features with a named extractor, once.

Each actor loads the extractor once (``collapse.features.get_extractor``) and turns whole shards
into feature rows; the driver gathers them and stores them inside the set
(``<set>/features/<name>/``, committed by a manifest). A set already featurized is skipped.
"""
from __future__ import annotations

import numpy as np

from cluster.runtime import map_actor_pool
from collapse.data.features import has_features, load_features, save_features
from collapse.data.samples import SampleSet


# Extractors without a model (a reshape) or with a small one (the run's classifier, thousands of
# images per second on one core): cheaper in the driver than an actor pool's start-up.
IN_DRIVER = ("pixel", "classifier")


class Featurizer:
    """Ray Data callable class: one extractor per actor; a batch of shard indices in, feature rows out."""

    def __init__(self, set_url: str, extractor: str, storage_options=None, threads: int = 1, batch_size: int = 256,
                 options: dict | None = None):
        import torch

        from collapse.features import get_extractor
        torch.set_num_threads(threads)
        self.set = SampleSet(set_url, storage_options)
        self.extract = get_extractor(extractor, device="cuda" if torch.cuda.is_available() else "cpu",
                                     **(options or {}))
        self.batch_size = batch_size

    def __call__(self, batch: dict) -> dict:
        keys, rows = [], []
        for j in batch["shard"]:
            samples = list(self.set.read_shard(int(j)))
            for s in range(0, len(samples), self.batch_size):
                chunk = samples[s:s + self.batch_size]
                rows.append(np.asarray(self.extract(np.stack([x.image for x in chunk])), dtype=np.float32))
                keys += [x.key for x in chunk]
        return {"key": keys, "features": list(np.concatenate(rows))}


def featurize(set_url: str, extractor: str, *, min_actors: int = 1, max_actors: int = 1, cpus_per_actor: float = 1.0,
              gpus_per_actor: float = 0.0, storage_options: dict | None = None, options: dict | None = None,
              progress=print) -> np.ndarray:
    """Features (N, d) of the set at ``set_url`` in its key order, computed once and stored beside it.
    ``options``: the extractor's (collapse.features), e.g. the classifier's ``url``."""
    sample_set = SampleSet(set_url, storage_options)
    identity = extractor_identity(options, storage_options)
    if has_features(sample_set, extractor, identity):
        return load_features(sample_set, extractor)
    progress(f"featurize: {sample_set.count} images of {set_url} with {extractor!r}")
    if extractor in IN_DRIVER:
        import torch
        f = Featurizer(set_url, extractor, storage_options, threads=torch.get_num_threads(), options=options)
        rows = [r for j in range(len(sample_set.shards)) for r in _rows(f({"shard": [j]}))]
    else:
        rows = _actor_rows(set_url, extractor, sample_set, min_actors, max_actors, cpus_per_actor, gpus_per_actor,
                           storage_options, options)
    keys = [r["key"] for r in rows]
    values = np.stack([np.asarray(r["features"], dtype=np.float32) for r in rows])
    save_features(sample_set, extractor, keys, values, identity)
    return load_features(sample_set, extractor)


def extractor_identity(options: dict | None, storage_options: dict | None = None) -> str:
    """What stored features depend on besides the set: the extractor's options and, for one whose
    weights live in a committed directory (the run's classifier, option ``url``), that directory's
    manifest (every file's sha256). A retrained classifier so never reuses the old one's features."""
    import hashlib

    from collapse.data import manifest as mf
    options = {k: v for k, v in (options or {}).items() if k != "storage_options"}  # credentials: not hashed
    if not options:
        return ""
    parts = {"options": options}
    if options.get("url"):
        m = mf.read_manifest(options["url"], storage_options)
        parts["weights"] = m.get("files") or m.get("sha256")
    return hashlib.sha256(mf.canonical_json(parts).encode()).hexdigest()[:16]


def _rows(batch: dict) -> list[dict]:
    return [{"key": k, "features": f} for k, f in zip(batch["key"], batch["features"])]


def _actor_rows(set_url, extractor, sample_set, min_actors, max_actors, cpus_per_actor, gpus_per_actor,
                storage_options, options) -> list[dict]:
    return map_actor_pool([{"shard": j} for j in range(len(sample_set.shards))], Featurizer,
                          {"set_url": set_url, "extractor": extractor, "storage_options": storage_options,
                           "threads": max(1, int(cpus_per_actor)), "options": options},
                          min_actors=min_actors, max_actors=max_actors, cpus_per_actor=cpus_per_actor,
                          gpus_per_actor=gpus_per_actor)
