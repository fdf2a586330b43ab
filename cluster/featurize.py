"""The featurizing stage: an actor pool computes a set's features with a named extractor, once.

Each actor loads the extractor once (``collapse.features.get_extractor``) and turns whole shards
into feature rows, which it stores inside the set (``<set>/features/<name>/shard-NNNNNN.npy``); the
caller commits the manifest once every shard is written. A set already featurized is skipped.
"""
from __future__ import annotations

import json

import numpy as np

from cluster.runtime import map_actor_pool
from collapse.data.features import commit_features, feature_file, has_features, load_features, save_feature_shard
from collapse.data.samples import SampleSet
from cluster.progress_board import poster
from collapse.progress import ImagesProgress


# Extractors without a model (a reshape) or with a small one (the run's classifier, thousands of
# images per second on one core): cheaper in the driver than an actor pool's start-up. So is any
# extractor on a set of one shard when the actors would have no GPU: a pool of one task on CPUs
# costs its start-up (a process, its imports, a Ray Data execution: ~10-20 s here) for nothing.
IN_DRIVER = ("pixel", "classifier")


class Featurizer:
    """Ray Data callable class: one extractor per actor; a batch of shard indices in, and for each
    shard its feature rows written beside the set (``save_feature_shard``) and its record out."""

    def __init__(self, set_url: str, extractor: str, storage_options=None, threads: int = 1, batch_size: int = 256,
                 options: dict | None = None):
        import torch

        from collapse.features import get_extractor
        torch.set_num_threads(threads)
        self.set, self.name = SampleSet(set_url, storage_options), extractor
        self.extract = get_extractor(extractor, device="cuda" if torch.cuda.is_available() else "cpu",
                                     **(options or {}))
        self.batch_size = batch_size

    def rows(self, j: int) -> np.ndarray:
        """Shard ``j``'s features (float32, its key order)."""
        samples, rows = list(self.set.read_shard(j)), []
        for s in range(0, len(samples), self.batch_size):
            chunk = samples[s:s + self.batch_size]
            rows.append(np.asarray(self.extract(np.stack([x.image for x in chunk])), dtype=np.float32))
        return np.concatenate(rows)

    def save(self, j: int) -> dict:
        return save_feature_shard(self.set, self.name, j, self.rows(j))

    def __call__(self, batch: dict) -> dict:
        return {"record": [json.dumps(self.save(int(j))) for j in batch["shard"]]}


def featurize(set_url: str, extractor: str, *, min_actors: int = 1, max_actors: int = 1, cpus_per_actor: float = 1.0,
              gpus_per_actor: float = 0.0, storage_options: dict | None = None, options: dict | None = None,
              progress=print) -> np.ndarray:
    """Features (N, d) of the set at ``set_url`` in its key order, computed once and stored beside it
    (shard by shard: no process holds more than a shard's rows until the caller loads them).
    ``options``: the extractor's (collapse.features), e.g. the classifier's ``url``, dinov2's
    ``model_id``, inception's ``weights_path``; every actor builds its extractor with them."""
    sample_set = SampleSet(set_url, storage_options)
    identity = extractor_identity(options, storage_options)
    if has_features(sample_set, extractor, identity):
        return load_features(sample_set, extractor)
    progress(f"featurize: {sample_set.count} images of {set_url} with {extractor!r}")
    done = ImagesProgress(f"featurize {set_url} ({extractor})", sample_set.count, progress, post=poster())  # every 30 s
    if extractor in IN_DRIVER or (len(sample_set.shards) == 1 and not gpus_per_actor):
        import torch
        f = Featurizer(set_url, extractor, storage_options, threads=torch.get_num_threads(), options=options)
        records = []
        for j in range(len(sample_set.shards)):
            records.append(f.save(j))
            done.add(records[-1]["count"])
    else:
        records = _actor_records(set_url, extractor, sample_set, min_actors, max_actors, cpus_per_actor,
                                 gpus_per_actor, storage_options, options,
                                 on_row=lambda row: done.add(json.loads(row["record"])["count"]))
    commit_features(sample_set, extractor, records, identity)
    return load_features(sample_set, extractor)


def extractor_identity(options: dict | None, storage_options: dict | None = None) -> str:
    """What stored features depend on besides the set: the extractor's options and, for one whose
    weights live in a committed directory (the run's classifier, option ``url``), that directory's
    manifest (every file's sha256). A retrained classifier so never reuses the old one's features.
    Left out: credentials, and where standard weights are (``LOCATION_OPTIONS``: the dinov2
    directory, the inception file), which say where, not what: moving them reuses the features."""
    import hashlib

    from collapse.data import manifest
    from collapse.features import LOCATION_OPTIONS
    left_out = ("storage_options",) + LOCATION_OPTIONS
    options = {k: v for k, v in (options or {}).items() if k not in left_out}
    if not options:
        return ""
    parts = {"options": options}
    if options.get("url"):
        m = manifest.read_manifest(options["url"], storage_options)
        parts["weights"] = m.get("files") or m.get("sha256")
    return hashlib.sha256(manifest.canonical_json(parts).encode()).hexdigest()[:16]


def _actor_records(set_url, extractor, sample_set, min_actors, max_actors, cpus_per_actor, gpus_per_actor,
                   storage_options, options, on_row=None) -> list[dict]:
    out = map_actor_pool([{"shard": j} for j in range(len(sample_set.shards))], Featurizer,
                         {"set_url": set_url, "extractor": extractor, "storage_options": storage_options,
                          "threads": max(1, int(cpus_per_actor)), "options": options},
                         min_actors=min_actors, max_actors=max_actors, cpus_per_actor=cpus_per_actor,
                         gpus_per_actor=gpus_per_actor, on_row=on_row)
    order = {feature_file(r["name"]): j for j, r in enumerate(sample_set.shards)}
    return sorted((json.loads(row["record"]) for row in out), key=lambda r: order[r["name"]])
