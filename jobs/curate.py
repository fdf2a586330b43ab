"""``collapse score`` and ``collapse select``: the loop's scoring and selection on any sample set.

Both run in one process (no Ray): features are computed once per set and extractor and cached
beside the set (``<set>/features/<name>/``). Import other image collections with ``collapse ingest``.
"""
from __future__ import annotations

import functools
import json

import numpy as np


def add_score_arguments(p) -> None:
    p.add_argument("set", help="URL of a sample set (written by collapse ingest or a run)")
    p.add_argument("--reference", help="a sample set to compare with (e.g. the training set or held-out real data)")
    p.add_argument("--features", action="append", help="feature space(s): pixel (default), effnet-lite0, dinov2")
    p.add_argument("--k", type=int, default=1, help="the neighbour of the Kozachenko-Leonenko estimate (default 1)")
    p.add_argument("--prdc-k", type=int, default=5)
    p.add_argument("--out", help="where to write the figures as JSON (default <set>/score.json)")


def add_select_arguments(p) -> None:
    p.add_argument("pool", help="URL of the sample set to select from")
    p.add_argument("--n", type=int, required=True, help="how many images to keep")
    p.add_argument("--strategy", required=True, choices=("greedy", "tdf", "random"))
    p.add_argument("--out", required=True, help="URL of the new sample set")
    p.add_argument("--features", default="pixel", help="selection space: pixel (default), effnet-lite0, dinov2")
    p.add_argument("--tau0", type=float, help="tdf: the initial radius (paper: 60 in DINOv2 space, 2000 in pixels)")
    p.add_argument("--alpha", type=float, help="tdf: the decay per pass, in (0, 1) (default 0.95)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shards", type=int, default=1,
                   help="greedy, tdf: split the pool across this many Ray actors (same picks; default 1: here)")
    p.add_argument("--address", help="with --shards > 1: Ray cluster address (default: RAY_ADDRESS, else a local "
                                     "Ray on 127.0.0.1)")
    p.add_argument("--per-class", action="store_true",
                   help="select within each class of the pool's labels (its lineage), each keeping its share of "
                        "--n (largest remainder); every image needs a label")


def _choose(args, x: np.ndarray, params: dict, labels=None):
    """The selection, in this process or (--shards K > 1) across K actors of a Ray cluster; with
    ``labels`` one selection per class (collapse.classes.select_per_class)."""
    from collapse.classes import select_per_class
    from collapse.selection import select as choose

    def run(how):
        if labels is None:
            return how(x, args.n, args.strategy, seed=args.seed, **params)
        return select_per_class(x, labels, args.n, args.strategy, args.seed, max(labels) + 1, select_fn=how,
                                **params)
    if args.shards == 1:
        return run(choose)
    import os
    if args.address:
        os.environ["RAY_ADDRESS"] = args.address  # before cluster/ imports ray (see cluster/__init__.py)
    import ray

    from cluster.runtime import connect
    from cluster.selection import sharded_select
    connect(args.address, num_cpus=max(args.shards, os.cpu_count() or 1), log_to_driver=False)
    try:
        return run(functools.partial(sharded_select, shards=args.shards))
    finally:
        ray.shutdown()


def set_features(sample_set, extractor: str, batch_size: int = 256) -> np.ndarray:
    """Features of a set in its key order, computed once (in this process) and cached beside it."""
    from collapse.data.features import has_features, load_features, save_features
    from collapse.features import get_extractor
    if not has_features(sample_set, extractor):
        extract = get_extractor(extractor)
        keys, rows = [], []
        for k, images, _ in sample_set.iter_batches(batch_size):
            keys += k
            rows.append(np.asarray(extract(images), dtype=np.float32))
        save_features(sample_set, extractor, keys, np.concatenate(rows))
    return load_features(sample_set, extractor)


def score(args, storage_options=None) -> int:
    from collapse.data import storage
    from collapse.data.samples import SampleSet
    from collapse.entropy import kl_entropy
    from collapse.metrics import space_metrics
    from collapse.novelty import covariance_trace, mean_nn_distance
    from collapse.errors import DataError
    from collapse.features import EXTRACTORS, get_extractor
    for space in args.features or []:
        if space not in EXTRACTORS:
            get_extractor(space)  # the error that names the known extractors
    target = SampleSet(args.set, storage_options)
    ref = SampleSet(args.reference, storage_options) if args.reference else None
    if ref is not None and tuple(ref.shape) != tuple(target.shape):
        raise DataError(f"--reference {args.reference} holds images of shape {tuple(ref.shape)} and {args.set} of "
                        f"{tuple(target.shape)}: expected the same image size")
    out = {"set": args.set, "count": target.count, "reference": args.reference, "spaces": {}}
    for space in args.features or ["pixel"]:
        x = set_features(target, space)
        if ref is None:
            figures = {"entropy": kl_entropy(x, k=args.k), "mean_nn_distance": mean_nn_distance(x),
                       "covariance_trace": covariance_trace(x)}
        else:
            figures = space_metrics(set_features(ref, space), x, set_features(ref, space), prdc_k=args.prdc_k)
            figures = {"entropy": kl_entropy(x, k=args.k), "reference_entropy": figures.pop("entropy"),
                       **{k: v for k, v in figures.items() if k not in ("pool_entropy", "mean_nn_distance",
                                                                         "covariance_trace")}}
        out["spaces"][space] = figures
        print(f"{space}: " + "  ".join(f"{k}={v:.6g}" for k, v in figures.items()))
    storage.write_bytes(args.out or storage.join(args.set, "score.json"), json.dumps(out, indent=1).encode(),
                        storage_options)
    print(f"figures written to {args.out or storage.join(args.set, 'score.json')}")
    return 0


def select(args, storage_options=None) -> int:
    from collapse.data import manifest
    from collapse.data import storage
    from collapse.data.samples import SampleSet, write_subset
    from collapse.errors import ConfigError, DataError
    if args.strategy == "tdf" and args.tau0 is None:
        raise ConfigError("--strategy tdf needs --tau0, the initial radius in feature units (the paper: 60 in "
                          "dinov2 space, 2000 in pixel space at 32x32x3; scale by sqrt(d / 3072) for other pixel sizes)")
    if args.strategy != "tdf" and (args.tau0 is not None or args.alpha is not None):
        raise ConfigError(f"--tau0 and --alpha are parameters of --strategy tdf, not of {args.strategy}")
    if args.alpha is not None and not 0 < args.alpha < 1:
        raise ConfigError(f"--alpha {args.alpha}: expected a decay in (0, 1), e.g. 0.95")
    if args.tau0 is not None and not args.tau0 > 0:
        raise ConfigError(f"--tau0 {args.tau0}: expected a radius > 0 in feature units")
    if args.n < 1:
        raise ConfigError(f"--n {args.n}: expected at least 1 image to keep")
    if args.shards < 1:
        raise ConfigError(f"--shards {args.shards}: expected at least 1 (1: select in this process)")
    pool = SampleSet(args.pool, storage_options)
    if args.n > pool.count:
        raise DataError(f"--n {args.n} is larger than the {pool.count} images of {args.pool}")
    if args.shards > pool.count:
        raise DataError(f"--shards {args.shards} is more than the {pool.count} images of {args.pool}: a shard "
                        "holds at least one")
    params = {k: v for k, v in (("tau0", args.tau0), ("alpha", args.alpha)) if v is not None}
    labels = _labels(args.pool, pool) if args.per_class else None
    sel = _choose(args, set_features(pool, args.features), params, labels)
    keys, cols = pool.keys, sel.columns()
    why = {keys[int(i)]: {"order": int(o), "distance": _num(d), "pass": int(p), "tau": _num(t),
                          "nearest": keys[int(n)] if n >= 0 else None}
           for o, i, d, n, p, t in zip(cols["order"], cols["index"], cols["distance"], cols["nearest"],
                                       cols["pass"], cols["tau"])}

    def annotate(sample):
        decision = {"strategy": args.strategy, "features": args.features, "kept": True, "from": args.pool,
                    **({"per_class": True} if args.per_class else {}), **why[sample.key]}
        return dict(sample.meta, decisions=list(sample.meta.get("decisions", [])) + [decision])
    kept = [keys[int(i)] for i in sel.indices]
    manifest.write_manifest(storage.join(args.out, "selection"), {
        "kind": "selection", "strategy": args.strategy, "features": args.features, "seed": args.seed,
        "params": sel.params, "pool": args.pool, "kept": [{"key": k, **why[k]} for k in kept],
        "dropped": sorted(set(keys) - set(kept))}, storage_options)
    write_subset([pool], kept, args.out, annotate=annotate, storage_options=storage_options)  # committed last
    print(f"kept {len(kept)} of {pool.count} images of {args.pool} by {args.strategy} in {args.features} space; "
          f"wrote {args.out}")
    return 0


def _labels(url: str, pool) -> list[int]:
    """The class of every image of the pool, from its lineage, in key order."""
    from collapse.errors import DataError
    found = pool.labels()
    bad = next((k for k in pool.keys if not isinstance(found[k], int) or found[k] < 0), None)
    if bad is not None:
        raise DataError(f"--per-class: image {bad!r} of {url} has no class label (its lineage's 'label' is "
                        f"{found[bad]!r}); expected an int >= 0 for every image, e.g. from collapse ingest of a "
                        "labelled source (fashion-mnist, digits, an .npz with labels, WebDataset .cls)")
    return [found[k] for k in pool.keys]


def _num(v) -> float | None:
    v = float(v)
    return v if np.isfinite(v) else None
