"""Nearest-neighbour scoring against a reference set too large for one process.

The reference rows are split into contiguous shards, one per scorer actor; each actor answers a
query with its local top-k (exact, ``collapse.knn.knn``) with global indices, and the driver merges
the lists exactly (``collapse.knn.merge_topk``). From the merged neighbours come the figures of
``collapse.entropy`` and ``collapse.novelty``, equal to the single-process functions on the same
data. FD and KID depend on moments, not neighbours, and PRDC on neighbour balls of both sets:
those are computed by ``collapse.quality`` from the gathered features.
"""
from __future__ import annotations

import numpy as np

from collapse.entropy import DUPLICATE_EPS, entropy_from_radii
from collapse.errors import check_int
from collapse.knn import merge_topk
from collapse.novelty import COPY_RATIO, copy_mask_from_distances


class ReferenceShard:
    """Ray actor: rows ``[offset, offset + len(rows))`` of the reference set."""

    def __init__(self, rows: np.ndarray, offset: int, threads: int = 1):
        import torch
        torch.set_num_threads(threads)
        self.rows, self.offset = np.asarray(rows), int(offset)

    def search(self, query: np.ndarray, k: int, query_offset: int | None = None):
        """Local top-k of each query row: (distances (M, k'), global indices (M, k')).

        ``query_offset``: the query rows are reference rows ``query_offset + j``; each one's own
        index is dropped (marked -1) so that the merged list excludes the point itself.
        """
        from collapse.knn import knn
        kk = min(k + (query_offset is not None), len(self.rows))
        d, i = knn(query, self.rows, kk)
        i = i + self.offset
        if query_offset is not None:
            own = (query_offset + np.arange(len(query)))[:, None]
            d, i = np.where(i == own, np.inf, d), np.where(i == own, -1, i)
        return d, i


class ShardedKNN:
    """Exact k-NN over a reference split across ``n_shards`` actors."""

    def __init__(self, reference: np.ndarray, n_shards: int, cpus_per_shard: float = 1.0):
        import ray
        check_int(n_shards, "n_shards", low=1, high=len(reference))
        bounds = np.linspace(0, len(reference), n_shards + 1).astype(int)
        actor = ray.remote(num_cpus=cpus_per_shard)(ReferenceShard)
        self.n, self.d = reference.shape
        self.shards = [actor.remote(reference[a:b], int(a), max(1, int(cpus_per_shard)))
                       for a, b in zip(bounds[:-1], bounds[1:])]

    def search(self, query: np.ndarray, k: int, exclude_self: bool = False, chunk: int = 65536):
        """(distances (M, k), indices (M, k)) over the whole reference, as one exact search would give."""
        import ray
        if exclude_self and len(query) != self.n:
            raise ValueError("exclude_self needs the query to be the reference itself")
        out_d, out_i = [], []
        for s in range(0, len(query), chunk):
            q = ray.put(np.ascontiguousarray(query[s:s + chunk]))
            parts = ray.get([sh.search.remote(q, k, s if exclude_self else None) for sh in self.shards])
            d, i = merge_topk(parts, k)
            out_d.append(d)
            out_i.append(i)
        return np.concatenate(out_d), np.concatenate(out_i)

    def close(self):
        import ray
        for sh in self.shards:
            ray.kill(sh)


def sharded_entropy(x: np.ndarray, n_shards: int, k: int = 1, eps: float = DUPLICATE_EPS) -> float:
    """Kozachenko-Leonenko entropy of the rows of ``x`` with the kNN sharded across actors."""
    index = ShardedKNN(x, n_shards)
    try:
        r_k = index.search(x, k, exclude_self=True)[0][:, k - 1]
    finally:
        index.close()
    return entropy_from_radii(r_k, x.shape[1], k, eps=eps)


def sharded_novelty(generated: np.ndarray, training: np.ndarray, n_shards: int, ratio: float = COPY_RATIO) -> dict:
    """GS and memorization fraction of ``generated`` against ``training`` sharded across actors."""
    index = ShardedKNN(training, n_shards)
    try:
        d, _ = index.search(generated, 2)
    finally:
        index.close()
    return {"gs": float(np.mean(d[:, 0])),
            "memorization": float(np.mean(copy_mask_from_distances(d[:, 0], d[:, 1], ratio)))}
