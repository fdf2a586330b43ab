"""Sample-quality metrics between a reference feature set (real) and a generated one (fake).

- Frechet distance (FD, Heusel et al.): ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)),
  covariances with ddof = 1 (as pytorch-fid). With A = (X_a - mu_a) / sqrt(N_a - 1), so that
  S_a = A^T A (and B likewise), the nonzero eigenvalues of S_a S_b are those of (A B^T)(A B^T)^T,
  so Tr (S_a S_b)^(1/2) is the nuclear norm ||A B^T||_* (the sum of its singular values). A and B
  are first reduced to their triangular QR factors R (min(N, d) x d, R^T R = S): the same nuclear
  norm, from at most d x d matrices. Why not a matrix square root of S_a: with N <= d (64 images
  of 256 pixels) the covariances are singular, and the square root of a rounding-sized eigenvalue
  e is sqrt(e), so rounding of order 1e-16 ||S|| grows to 1e-8 sqrt(||S||) per null direction;
  BLAS threads then change FD at 1e-9. Singular values move at most by the rounding of R_a R_b^T
  (Weyl): the error of the trace term is about min(N, d) * d * eps * sqrt(Tr S_a Tr S_b).
- KID (Binkowski et al.): unbiased MMD^2 with the cubic polynomial kernel
  k(x, y) = (x.y / d + 1)^3, averaged over random subsets; returns (mean, std) over subsets.
  Subsets hold at most half of each set (see ``kid``), so that they differ and the std is the
  subset-to-subset spread, not 0 from the same rows drawn n_subsets times.
- PRDC (Naeem et al. 2020) with k neighbours: precision, recall, density, coverage. The ball of a
  point is open (distance < its k-th neighbour distance), as in the authors' code.

Features are float rows (N, d); everything is accumulated in float64.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from collapse.errors import check_int
from collapse.knn import as_rows, knn, pair_distance, resolve_device

_ROUNDING = 1e-9  # relative error bound of |p|^2 + |c|^2 - 2 p.c in float64, generously


def _centred_factor(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mu (d,), R (min(N, d), d)) with R^T R = the ddof-1 covariance of the rows of x (N, d), in float64."""
    a = x.astype(np.float64)
    mu = a.mean(axis=0)
    return mu, np.linalg.qr((a - mu) / np.sqrt(a.shape[0] - 1), mode="r")


def frechet_distance(feats_a, feats_b) -> float:
    """FD between two feature sets (N_a, d) and (N_b, d), N >= 2 each (see the module docstring)."""
    a, b = as_rows(feats_a, "feats_a"), as_rows(feats_b, "feats_b")
    if a.shape[1] != b.shape[1] or min(a.shape[0], b.shape[0]) < 2:
        raise ValueError(f"frechet_distance needs two sets of >= 2 rows of the same d, got {a.shape} and {b.shape}")
    mu_a, r_a = _centred_factor(a)
    mu_b, r_b = _centred_factor(b)
    tr_sqrt = float(np.linalg.svd(r_a @ r_b.T, compute_uv=False).sum())   # Tr (S_a S_b)^(1/2)
    diff = mu_a - mu_b
    return float(diff @ diff + (r_a * r_a).sum() + (r_b * r_b).sum() - 2.0 * tr_sqrt)


def _poly_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def kid_subset_size(n_a: int, n_b: int, subset_size: int = 1000) -> int:
    """Rows per subset: ``min(subset_size, N_a // 2, N_b // 2)``, so that subsets of a set differ
    (two share about m^2 / N rows); ``min(subset_size, N_a, N_b)`` when that is < 2 (sets of < 4 rows)."""
    m = min(subset_size, n_a // 2, n_b // 2)
    return m if m >= 2 else min(subset_size, n_a, n_b)


def kid(feats_a, feats_b, *, n_subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """KID: (mean, std) over ``n_subsets`` of the unbiased MMD^2 between random subsets of
    m = ``kid_subset_size(N_a, N_b, subset_size)`` rows drawn without replacement from each set (seeded).

    Every subset's MMD^2 is unbiased, so the mean is too. The std is the spread of the m-row estimate
    across subsets of these two sets: how much KID moves with the choice of rows. Subsets of one pair
    of sets share rows, so it is smaller than the spread across fresh m-row samples of the two
    distributions (about 0.3-0.6 of it for two 1000-row Gaussian sets, m = 500), and it is not the
    standard error of the mean. It is NaN where it cannot be estimated: one subset, or a set of fewer
    than 4 rows (only the whole set is a subset).
    """
    a, b = as_rows(feats_a, "feats_a"), as_rows(feats_b, "feats_b")
    check_int(n_subsets, "n_subsets", low=1)
    check_int(subset_size, "subset_size", low=2)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"kid needs the same d, got {a.shape} and {b.shape}")
    m = kid_subset_size(a.shape[0], b.shape[0], subset_size)
    if m < 2:
        raise ValueError(f"kid needs at least 2 rows in each set, got {a.shape[0]} and {b.shape[0]}")
    spread = n_subsets > 1 and m <= min(a.shape[0], b.shape[0]) // 2  # else no distinct subsets to compare
    if m == a.shape[0] == b.shape[0]:
        n_subsets = 1  # both whole sets: every subset is the same pair
    rng = np.random.default_rng(seed)
    values = np.empty(n_subsets, dtype=np.float64)
    for t in range(n_subsets):
        x = a[rng.choice(a.shape[0], m, replace=False)].astype(np.float64)
        y = b[rng.choice(b.shape[0], m, replace=False)].astype(np.float64)
        k_xx, k_yy, k_xy = _poly_kernel(x, x), _poly_kernel(y, y), _poly_kernel(x, y)
        off = m * (m - 1)
        values[t] = ((k_xx.sum() - np.trace(k_xx)) / off + (k_yy.sum() - np.trace(k_yy)) / off
                     - 2.0 * k_xy.mean())
    return float(values.mean()), float(values.std()) if spread else float("nan")


@dataclass(frozen=True)
class PRDC:
    """Naeem et al.'s four numbers; precision and density judge fake, recall and coverage real."""
    precision: float
    recall: float
    density: float
    coverage: float
    k: int


def _ball_counts(points: np.ndarray, centres: np.ndarray, radii: np.ndarray, chunk: int, dev) -> np.ndarray:
    """int64 (P,): for each point, how many centres c have ||point - c|| < radii[c].

    Chunked float64 matrix products decide every pair except those within rounding of the ball's
    surface (a set against itself puts each k-th neighbour exactly there); those are decided with
    the same exact distance that produced the radius.
    """
    shift = centres.mean(axis=0, dtype=np.float64)
    c = torch.from_numpy(centres.astype(np.float64) - shift).to(dev)
    c_sq = (c * c).sum(1)
    r_sq = torch.from_numpy(radii.astype(np.float64) ** 2).to(dev)
    out = np.empty(points.shape[0], dtype=np.int64)
    for s in range(0, points.shape[0], chunk):
        p = torch.from_numpy(points[s:s + chunk].astype(np.float64) - shift).to(dev)
        p_sq = (p * p).sum(1, keepdim=True)
        gap = p_sq + c_sq - 2.0 * (p @ c.T) - r_sq
        tol = _ROUNDING * (p_sq + c_sq)
        count = (gap < -tol).sum(1).cpu().numpy()
        pi, ci = (x.cpu().numpy() for x in torch.nonzero(gap.abs() <= tol, as_tuple=True))
        if pi.size:
            inside = pair_distance(points[s + pi], centres[ci]) < radii[ci]
            np.add.at(count, pi[inside], 1)
        out[s:s + chunk] = count
    return out


def prdc(real, fake, k: int = 5, *, chunk: int = 2048, device=None) -> PRDC:
    """Precision, recall, density, coverage of fake (M, d) against real (N, d) with k neighbours.

    r_real(i) / r_fake(j): distance to the k-th nearest other row of the same set.
    precision = share of fake inside some real ball; recall = share of real inside some fake ball;
    density = (1 / kM) * sum_j #{real balls holding fake_j}; coverage = share of real balls that hold
    at least one fake (nearest fake closer than r_real(i)).
    """
    r_set, f_set = as_rows(real, "real"), as_rows(fake, "fake")
    check_int(k, "k", low=1)
    if r_set.shape[1] != f_set.shape[1]:
        raise ValueError(f"prdc needs the same d, got {r_set.shape} and {f_set.shape}")
    if min(r_set.shape[0], f_set.shape[0]) <= k:
        raise ValueError(f"prdc needs more than k={k} rows in each set, got {r_set.shape[0]} and {f_set.shape[0]}")
    dev = resolve_device(device)
    r_real = knn(r_set, r_set, k, exclude_self=True, device=dev)[0][:, -1]
    r_fake = knn(f_set, f_set, k, exclude_self=True, device=dev)[0][:, -1]
    in_real = _ball_counts(f_set, r_set, r_real, chunk, dev)   # (M,) real balls holding each fake
    in_fake = _ball_counts(r_set, f_set, r_fake, chunk, dev)   # (N,) fake balls holding each real
    nearest_fake = knn(r_set, f_set, 1, device=dev)[0][:, 0]
    return PRDC(precision=float(np.mean(in_real > 0)), recall=float(np.mean(in_fake > 0)),
                density=float(in_real.sum() / (k * f_set.shape[0])),
                coverage=float(np.mean(nearest_fake < r_real)), k=int(k))
