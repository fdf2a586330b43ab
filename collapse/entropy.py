"""Kozachenko-Leonenko differential entropy (nats), as in docs/SCIENCE.md, "Definitions":

    H_k(D) = psi(N) - psi(k) + log c_d + (d/N) * sum_i log r_k(i)
    c_d    = pi^(d/2) / Gamma(d/2 + 1)       (volume of the unit d-ball)
    r_k(i) = distance from x_i to its k-th nearest neighbour in D, x_i itself excluded

Exact duplicates (the guard). A point with an exact copy in D has r_1 = 0 and log 0 = -inf.
We follow the paper's reference code: ``log(r_k + eps)`` with ``eps = 1e-10`` by default, so a
memorized copy pulls H strongly down (by d/N * (log r - log 1e-10) per duplicated point), which
is the signal the paper reads. The guard is in the units of the features, so it is not scale
invariant; it only matters when r_k = 0 (or below ~1e-8 units). ``eps=0`` turns it off: then
duplicates raise a ValueError saying how many points have r_k = 0. H is never NaN or -inf.

r_k comes from the exact kNN helper (:mod:`collapse.knn`): float64 distances recomputed from the
rows; the sum of logs is accumulated in float64. Values are comparable only within one feature
space (pixels on the 0-255 scale, or one embedding).
"""
from __future__ import annotations

import math

import numpy as np
from scipy.special import digamma

from collapse.errors import check_int
from collapse.knn import as_rows, knn

DUPLICATE_EPS = 1e-10  # the reference code's guard inside the log


def log_unit_ball_volume(d: int) -> float:
    """log c_d = (d/2) log pi - lgamma(d/2 + 1): finite for any d (c_d itself underflows past d ~ 1400)."""
    return 0.5 * d * math.log(math.pi) - math.lgamma(0.5 * d + 1.0)


def kth_neighbour_distance(x, k: int = 1, *, chunk: int = 65536, device=None) -> np.ndarray:
    """r_k: float64 (N,) distance from each row of x (N, d) to its k-th nearest other row."""
    a = as_rows(x, "x")
    check_int(k, "k", low=1)
    if a.shape[0] <= k:
        raise ValueError(f"kl_entropy needs more than k={k} rows, got N={a.shape[0]}")
    dist, _ = knn(a, a, k, exclude_self=True, chunk=chunk, device=device)
    return dist[:, k - 1]


def entropy_from_radii(r_k, d: int, k: int = 1, *, eps: float = DUPLICATE_EPS) -> float:
    """H_k from the (N,) k-th neighbour distances of N points in R^d (nats).

    Split from :func:`kl_entropy` so a distributed scorer can gather r_k and finish here.
    """
    r = np.asarray(r_k, dtype=np.float64)
    if r.ndim != 1 or r.size < 2:
        raise ValueError(f"r_k must be a 1-D array of at least 2 distances, got shape {r.shape}")
    if not np.isfinite(r).all() or (r < 0).any():
        raise ValueError("r_k must hold finite distances >= 0")
    check_int(d, "d", low=1)
    check_int(k, "k", low=1)
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    zeros = int((r == 0).sum())
    if eps == 0 and zeros:
        raise ValueError(f"{zeros} of {r.size} points have r_k = 0 (exact duplicates): the entropy is -inf; "
                         f"pass eps > 0 (the reference uses {DUPLICATE_EPS}) or remove duplicates")
    n = r.size
    mean_log_r = float(np.mean(np.log(r + eps)))  # float64 pairwise summation
    return float(digamma(n) - digamma(k) + log_unit_ball_volume(int(d)) + d * mean_log_r)


def kl_entropy(x, k: int = 1, *, eps: float = DUPLICATE_EPS, chunk: int = 65536, device=None) -> float:
    """Kozachenko-Leonenko entropy in nats of the rows of x (N, d), any real dtype.

    k: which neighbour (the paper uses 1). eps: the duplicate guard inside the log (see module
    docstring; 0 raises on duplicates). chunk, device: passed to the kNN search.
    """
    r = kth_neighbour_distance(x, k, chunk=chunk, device=device)
    return entropy_from_radii(r, np.asarray(x).shape[1], k, eps=eps)
