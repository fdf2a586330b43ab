"""Novelty of generated samples against their training set, and the shape of one set.

All distances are Euclidean in whatever feature space the rows live in (pixels on the 0-255
scale, an embedding), exact float64 through :func:`collapse.knn.knn`.

- generalization score (GS, the paper): mean over generated g_j of min_y ||g_j - y||.
- memorization fraction (Yoon et al. / Gu et al.): share of g_j with d1/d2 < ratio, d1 and d2
  its distances to the first and second nearest training rows. A g_j with d1 = 0 (an exact copy)
  always counts, even when its training row is itself duplicated (d2 = 0, where d1/d2 is 0/0).
- memorization at the real data's scale: share of g_j with d1 < rho, rho = ratio times the median
  nearest-neighbour distance between the real training images (D_1). The d1/d2 test asks "is g_j
  much closer to one training image than to any other?", which assumes the training images are
  distinct. In a self-consuming loop they are not: a memorizing model puts near-copies of one image
  into D_{n+1}, so a sample copying that image has d2 ~ d1 and the ratio test stops counting it
  (measured on the demo: vanilla's d1/d2 share *falls* 11.5% -> 5.4% while the share of D_n with a
  near-duplicate in D_n rises 0 -> 19%). rho is fixed by the real data, so the figure is comparable
  across generations, and on distinct real training images it tracks the ratio test (there
  d2 ~ the typical real nearest-neighbour distance).
- duplicate share of a set: rows whose nearest other row lies within rho (copies inside D_n).
- mean nearest-neighbour distance inside a set, and the trace of its covariance (the paper's
  "variance does not explain collapse" figure).
"""
from __future__ import annotations

import numpy as np

from collapse.knn import as_rows, knn

COPY_RATIO = 1.0 / 3.0


def nearest_training_distance(generated, training, *, chunk: int = 65536, device=None) -> np.ndarray:
    """float64 (M,): distance from each generated row (M, d) to its nearest training row (N, d)."""
    return knn(generated, training, 1, chunk=chunk, device=device)[0][:, 0]


def generalization_score(generated, training, *, chunk: int = 65536, device=None) -> float:
    """GS: mean nearest-training-row distance of the generated rows. High = novel, 0 = copies."""
    return float(np.mean(nearest_training_distance(generated, training, chunk=chunk, device=device)))


def copy_mask_from_distances(d1, d2, ratio: float = COPY_RATIO) -> np.ndarray:
    """bool (M,): a copy when d1 < ratio * d2 (or d1 == 0); d1, d2 (M,) the first and second
    nearest-training-row distances (split out so a distributed scorer can finish here)."""
    if not (isinstance(ratio, (int, float)) and 0 < ratio <= 1):
        raise ValueError(f"ratio must be a number in (0, 1], got {ratio!r}")
    d1, d2 = np.asarray(d1, dtype=np.float64), np.asarray(d2, dtype=np.float64)
    return (d1 < ratio * d2) | (d1 == 0)


def copy_mask(generated, training, ratio: float = COPY_RATIO, *, chunk: int = 65536, device=None) -> np.ndarray:
    """bool (M,): generated row j is a copy when d1 < ratio * d2 (or d1 == 0). Needs N >= 2."""
    if not (isinstance(ratio, (int, float)) and 0 < ratio <= 1):
        raise ValueError(f"ratio must be a number in (0, 1], got {ratio!r}")
    dist, _ = knn(generated, training, 2, chunk=chunk, device=device)
    return copy_mask_from_distances(dist[:, 0], dist[:, 1], ratio)


def memorization_fraction(generated, training, ratio: float = COPY_RATIO, *, chunk: int = 65536,
                          device=None) -> float:
    """Share of generated rows that are copies of a training row (see :func:`copy_mask`)."""
    return float(np.mean(copy_mask(generated, training, ratio, chunk=chunk, device=device)))


def real_copy_radius(real, ratio: float = COPY_RATIO, *, chunk: int = 65536, device=None) -> float:
    """rho = ratio * median over the real rows (N, d), N >= 2, of the distance to the nearest other row."""
    if not (isinstance(ratio, (int, float)) and 0 < ratio <= 1):
        raise ValueError(f"ratio must be a number in (0, 1], got {ratio!r}")
    return float(ratio * np.median(knn(real, real, 1, exclude_self=True, chunk=chunk, device=device)[0][:, 0]))


def _check_radius(radius) -> float:
    if isinstance(radius, bool) or not isinstance(radius, (int, float, np.floating)) or not np.isfinite(radius) \
            or radius <= 0:
        raise ValueError(f"the copy radius must be a finite number > 0, got {radius!r}")
    return float(radius)


def within(d1, radius: float) -> np.ndarray:
    """bool (M,): the distance d1 (M,) lies below ``radius`` (or at 0, an exact copy)."""
    r = _check_radius(radius)
    d1 = np.asarray(d1, dtype=np.float64)
    return (d1 < r) | (d1 == 0)


def memorization_within(generated, training, radius: float, *, chunk: int = 65536, device=None) -> float:
    """Share of generated rows whose nearest training row lies closer than ``radius`` (or at 0):
    the memorization fraction at a fixed scale (``radius`` from :func:`real_copy_radius`)."""
    _check_radius(radius)
    return float(np.mean(within(nearest_training_distance(generated, training, chunk=chunk, device=device), radius)))


def duplicate_share(x, radius: float, *, chunk: int = 65536, device=None) -> float:
    """Share of the rows of x (N, d), N >= 2, whose nearest other row lies closer than ``radius``."""
    _check_radius(radius)
    return float(np.mean(within(knn(x, x, 1, exclude_self=True, chunk=chunk, device=device)[0][:, 0], radius)))


def mean_nn_distance(x, *, chunk: int = 65536, device=None) -> float:
    """Mean over the rows of x (N, d), N >= 2, of the distance to the nearest other row."""
    return float(np.mean(knn(x, x, 1, exclude_self=True, chunk=chunk, device=device)[0][:, 0]))


def covariance_trace(x, *, chunk: int = 16384) -> float:
    """Tr Cov(x) = sum of the per-dimension variances (ddof = 1) of x (N, d), N >= 2, in float64
    chunk by chunk (no (d, d) matrix, no float64 copy of x)."""
    a = as_rows(x, "x")
    if a.shape[0] < 2:
        raise ValueError(f"covariance_trace needs N >= 2 rows, got {a.shape[0]}")
    mean = a.mean(axis=0, dtype=np.float64)
    total = 0.0
    for s in range(0, a.shape[0], chunk):
        c = a[s:s + chunk].astype(np.float64) - mean
        total += float(np.einsum("nd,nd->", c, c))
    return total / (a.shape[0] - 1)
