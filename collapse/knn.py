"""Exact Euclidean k-nearest neighbours, the one helper every metric and stage uses.

How it stays exact and fast:

1. Both sets are shifted by the reference mean (distances do not change) and cast to float32;
   centring keeps ``|x|^2 + |y|^2 - 2 x.y`` from cancelling badly when the data sit far from 0
   (pixels on the 0-255 scale).
2. faiss ``IndexFlatL2`` (exact, BLAS) finds ``k + extra`` candidates per query, query chunk by
   query chunk, so memory stays bounded at large N. With a CUDA device and ``backend="torch"``
   (the default there) the same search runs as chunked matrix products on the GPU.
3. The candidates' distances are recomputed directly in float64 from the caller's rows and the
   list is re-sorted by (distance, index). Returned distances are therefore exact float64
   Euclidean distances (faiss gives float32 *squared* ones); only candidates whose float32
   distances lie within rounding of each other can be ranked differently from an all-float64
   search, and their float64 distances are then nearly equal too. ``extra`` spare candidates
   absorb such swaps at the k-th place.

A later distributed scorer searches each shard of the reference and merges the per-shard lists
with :func:`merge_topk` (indices already made global by adding the shard's offset).
"""
from __future__ import annotations

import numpy as np
import torch

from collapse.errors import check_int

_MAX_REFINE_ELEMS = 1 << 23  # float64 elements held at once while refining (64 MiB)


def as_rows(x, name: str) -> np.ndarray:
    """Validate an (N, d) array of real numbers: 2-D, non-empty, finite. Returns it as ndarray."""
    a = np.asarray(x)
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array (N, d), got shape {a.shape}")
    if a.dtype == np.bool_ or not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise ValueError(f"{name} must hold real numbers, got dtype {a.dtype}")
    if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or inf in {int((~np.isfinite(a)).any(axis=1).sum())} rows")
    return a


def centred(x: np.ndarray, mean: np.ndarray, dtype=np.float32, chunk: int = 16384) -> np.ndarray:
    """``x - mean`` as C-contiguous ``dtype``, computed in float64 chunk by chunk (bounded memory)."""
    out = np.empty(x.shape, dtype=dtype)
    for s in range(0, x.shape[0], chunk):
        out[s:s + chunk] = x[s:s + chunk].astype(np.float64) - mean
    return out


def resolve_device(device=None) -> torch.device:
    """``None`` picks CUDA when present, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def knn(query, reference, k: int, *, exclude_self: bool = False, chunk: int = 65536, extra: int = 3,
        device=None, backend: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest reference rows of each query row.

    query (M, d), reference (N, d): any real dtype (uint8 pixels are fine: no wrap-around, all
    arithmetic is float). exclude_self: query *is* reference (row i == row i) and each row's own
    index is left out of its list; an exact duplicate of the row is still a neighbour at 0.
    backend: "faiss" (CPU) or "torch" (chunked matmul, CPU or GPU); default torch on CUDA, else faiss.
    chunk: query rows per search call; memory holds O(chunk * (k + extra)) results beside the
    float32 copy of the reference (faiss and the torch blocks tile the distance matrix themselves).
    Returns (distances float64 (M, k) ascending, indices int64 (M, k)); ties ordered by index.
    """
    q = as_rows(query, "query")
    r = as_rows(reference, "reference")
    check_int(k, "k", low=1)
    check_int(chunk, "chunk", low=1)
    check_int(extra, "extra", low=0)
    if q.shape[1] != r.shape[1]:
        raise ValueError(f"query has d={q.shape[1]} but reference has d={r.shape[1]}")
    if exclude_self and q is not r and (q.shape != r.shape or not np.array_equal(q, r)):
        raise ValueError(f"exclude_self needs query to be the reference, got {q.shape} and {r.shape} rows")
    n_ref = r.shape[0] - int(exclude_self)
    if k > n_ref:
        raise ValueError(f"k={k} neighbours asked but the reference has only {n_ref} other rows")
    dev = resolve_device(device)
    backend = backend or ("torch" if dev.type == "cuda" else "faiss")
    if backend not in ("faiss", "torch"):
        raise ValueError(f"backend must be 'faiss' or 'torch', got {backend!r}")

    k_search = min(k + int(exclude_self) + extra, r.shape[0])
    mean = r.mean(axis=0, dtype=np.float64)
    r32 = centred(r, mean)
    search = _faiss_searcher(r32) if backend == "faiss" else _torch_searcher(r32, dev)
    dist = np.empty((q.shape[0], k), dtype=np.float64)
    idx = np.empty((q.shape[0], k), dtype=np.int64)
    for s in range(0, q.shape[0], chunk):
        e = min(s + chunk, q.shape[0])
        q32 = r32[s:e] if exclude_self else centred(q[s:e], mean)
        cand = search(q32, k_search)
        if exclude_self:
            cand = _drop_self(cand, np.arange(s, e))
        d, i = _refine(q[s:e], r, cand)
        dist[s:e], idx[s:e] = d[:, :k], i[:, :k]
    return dist, idx


def merge_topk(parts, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-shard neighbour lists into the global k nearest.

    parts: a sequence of (distances (M, k_i), indices (M, k_i)) for the same M queries, indices
    already global (shard offset added); index -1 marks a missing entry (as faiss pads).
    Returns (distances float64 (M, k), indices int64 (M, k)), ascending, ties ordered by index:
    the same answer as one search over the union of the shards.
    """
    check_int(k, "k", low=1)
    if len(parts) == 0:
        raise ValueError("parts must hold at least one (distances, indices) pair")
    d = np.concatenate([np.asarray(p[0], dtype=np.float64) for p in parts], axis=1)
    i = np.concatenate([np.asarray(p[1], dtype=np.int64) for p in parts], axis=1)
    if d.shape != i.shape or d.ndim != 2:
        raise ValueError(f"every part must be a pair of equal (M, k_i) arrays, got {d.shape} and {i.shape}")
    d = np.where(i < 0, np.inf, d)
    d, i = _sort_rows(d, i)
    if k > d.shape[1] or (i[:, :k] < 0).any():
        raise ValueError(f"k={k} but some queries have fewer candidates across the parts")
    return d[:, :k], i[:, :k]


def _faiss_searcher(r32: np.ndarray):
    import faiss  # imported here: a module that only merges lists does not need it

    index = faiss.IndexFlatL2(r32.shape[1])
    index.add(r32)

    def search(q32: np.ndarray, kk: int) -> np.ndarray:
        return index.search(np.ascontiguousarray(q32), kk)[1].astype(np.int64)
    return search


def _torch_searcher(r32: np.ndarray, dev: torch.device, rows: int = 4096, cols: int = 16384):
    """Search by (rows, cols) tiles of squared distances (256 MiB in float32), keeping a running top-k."""
    ref = torch.from_numpy(r32).to(dev)
    ref_sq = (ref * ref).sum(1)

    def search_block(qt: torch.Tensor, kk: int) -> torch.Tensor:
        q_sq = (qt * qt).sum(1, keepdim=True)
        best_d = best_i = None
        for s in range(0, ref.shape[0], cols):
            d2 = q_sq + ref_sq[s:s + cols] - 2.0 * (qt @ ref[s:s + cols].T)
            d, i = torch.topk(d2, min(kk, d2.shape[1]), dim=1, largest=False)
            i = i + s
            if best_d is not None:
                d, i = torch.cat([best_d, d], 1), torch.cat([best_i, i], 1)
                d, j = torch.topk(d, kk, dim=1, largest=False)
                i = torch.gather(i, 1, j)
            best_d, best_i = d, i
        return best_i

    def search(q32: np.ndarray, kk: int) -> np.ndarray:
        qt = torch.from_numpy(np.ascontiguousarray(q32)).to(dev)
        return torch.cat([search_block(qt[s:s + rows], kk) for s in range(0, qt.shape[0], rows)]).cpu().numpy()
    return search


def _drop_self(cand: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Remove each row's own index from its candidates; where absent (many exact duplicates
    filled the list first), drop the last candidate instead. (m, kk) -> (m, kk - 1)."""
    own = cand == rows[:, None]
    own[~own.any(axis=1), -1] = True
    return cand[~own].reshape(cand.shape[0], cand.shape[1] - 1)


def pair_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float64 ||a - b|| over the last axis, by direct differences; a and b broadcast, e.g.
    (n, d) with (n, d) -> (n,), or (m, 1, d) with (m, k, d) -> (m, k). Any real dtype.

    The one formula for every exact distance in the package, so that a distance computed twice
    (a neighbour radius, then a ball-membership test) is bit-identical.
    """
    diff = np.subtract(b, a, dtype=np.float64)
    return np.sqrt(np.einsum("...d,...d->...", diff, diff))


def _refine(q: np.ndarray, r: np.ndarray, cand: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact float64 distances of the candidates, rows sorted by (distance, index)."""
    m, kk = cand.shape
    dist = np.empty((m, kk), dtype=np.float64)
    step = max(1, _MAX_REFINE_ELEMS // (kk * q.shape[1]))
    for s in range(0, m, step):
        dist[s:s + step] = pair_distance(q[s:s + step, None, :], r[cand[s:s + step]])
    return _sort_rows(dist, cand)


def _sort_rows(d: np.ndarray, i: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    o = np.argsort(i, axis=1, kind="stable")  # index first, so the stable distance sort breaks ties by index
    d, i = np.take_along_axis(d, o, 1), np.take_along_axis(i, o, 1)
    o = np.argsort(d, axis=1, kind="stable")
    return np.take_along_axis(d, o, 1), np.take_along_axis(i, o, 1)

