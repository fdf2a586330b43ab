"""Every figure of one generation, from feature arrays (pure: the score stage loads, this computes).

Per feature space (docs/SCIENCE.md, "Definitions"):
    entropy            H(D_n), Kozachenko-Leonenko, k = 1, of the training set (nats)
    pool_entropy       H of the scored generated samples
    gs                 generalization score of the generated samples against D_n
    holdout_gs         the same mean nearest-D_n distance, of the real held-out images
    manifold_ratio     gs / holdout_gs, the on-manifold ratio: ~1 when samples lie as close to D_n
                       as unseen real images do, >> 1 for off-manifold samples (noise), -> 0 for copies;
                       the sample-quality figure that needs no labels
    memorization       share of generated samples that copy a training image (d1/d2 < 1/3)
    memorization_real_scale   share of generated samples within rho of a training image, rho = 1/3 of
                       the median nearest-neighbour distance between real training images (D_1): the
                       copy test that near-duplicates inside a synthetic D_n do not defeat
                       (collapse.novelty; given when ``copy_radius`` is)
    duplicate_share    share of D_n with another image of D_n within rho (copies inside D_n)
    mean_nn_distance   mean nearest-neighbour distance inside D_n
    covariance_trace   Tr Cov(D_n) (falls slowly: collapse is not variance shrinkage)
    fd, kid, kid_std   Frechet distance and KID of the generated samples against held-out real data
    precision, recall, density, coverage   Naeem et al., generated against held-out real, k = prdc_k
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from collapse.entropy import entropy_from_radii, kl_entropy
from collapse.knn import knn
from collapse.novelty import copy_mask_from_distances, covariance_trace, within
from collapse.quality import frechet_distance, kid, prdc


class ExactIndex:
    """The nearest rows of D_n for the figures that search it: exact, in this process (collapse.knn).
    A scorer with D_n sharded across actors passes its own object with the same ``search``
    (cluster.score.ShardedKNN): the figures are then computed from the same exact neighbours."""

    def __init__(self, reference: np.ndarray):
        self.reference = reference

    def search(self, query: np.ndarray, k: int, exclude_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
        return knn(query, self.reference, k, exclude_self=exclude_self)


def space_metrics(train: np.ndarray, generated: np.ndarray, holdout: np.ndarray, *, prdc_k: int = 5,
                  seed: int = 0, copy_radius: float | None = None, index=None) -> dict:
    """The figures of one feature space. train (N, d), generated (M, d), holdout (R, d); copy_radius:
    rho of this space (collapse.novelty.real_copy_radius of D_1), for the fixed-scale copy figures;
    index: what searches D_n (default :class:`ExactIndex` of ``train``), three searches in all."""
    index = ExactIndex(train) if index is None else index
    if len(train) < 2:
        raise ValueError(f"the training set needs at least 2 rows, got {len(train)}")
    r_self = index.search(train, 1, exclude_self=True)[0][:, 0]     # nearest other image of D_n
    d_gen = index.search(generated, 2)[0]                              # d1, d2 of every sample
    d_hold = index.search(holdout, 1)[0][:, 0]
    # subsets of min(1000, half of each set) rows (collapse.quality.kid_subset_size); kid_std NaN under 4 rows
    kid_mean, kid_std = kid(generated, holdout, n_subsets=50, subset_size=1000, seed=seed)
    quality = prdc(holdout, generated, k=prdc_k)
    gs, holdout_gs = float(np.mean(d_gen[:, 0])), float(np.mean(d_hold))
    return {"entropy": entropy_from_radii(r_self, np.asarray(train).shape[1]), "pool_entropy": kl_entropy(generated),
            "gs": gs, "holdout_gs": holdout_gs, "manifold_ratio": gs / holdout_gs if holdout_gs > 0 else float("nan"),
            "memorization": float(np.mean(copy_mask_from_distances(d_gen[:, 0], d_gen[:, 1]))),
            "mean_nn_distance": float(np.mean(r_self)), "covariance_trace": covariance_trace(train),
            "fd": frechet_distance(generated, holdout), "kid": kid_mean, "kid_std": kid_std,
            "precision": quality.precision, "recall": quality.recall, "density": quality.density,
            "coverage": quality.coverage,
            **({} if copy_radius is None else {
                "copy_radius": float(copy_radius),
                "memorization_real_scale": float(np.mean(within(d_gen[:, 0], copy_radius))),
                "duplicate_share": float(np.mean(within(r_self, copy_radius)))})}


def generation_metrics(train: Mapping[str, np.ndarray], generated: Mapping[str, np.ndarray],
                       holdout: Mapping[str, np.ndarray], *, prdc_k: int = 5, seed: int = 0,
                       copy_radius: Mapping[str, float] | None = None, indexes: Mapping | None = None) -> dict:
    """``{space: space_metrics(...)}`` for every feature space given (the same spaces in all three);
    ``copy_radius``: rho per space (all of them, or None); ``indexes``: a D_n index per space (or None)."""
    if not (set(train) == set(generated) == set(holdout)):
        raise ValueError(f"feature spaces differ: train {sorted(train)}, generated {sorted(generated)}, "
                         f"holdout {sorted(holdout)}")
    if copy_radius is not None and set(copy_radius) != set(train):
        raise ValueError(f"copy radii are for {sorted(copy_radius)}, the features for {sorted(train)}")
    return {space: space_metrics(train[space], generated[space], holdout[space], prdc_k=prdc_k, seed=seed,
                                 copy_radius=None if copy_radius is None else copy_radius[space],
                                 index=None if indexes is None else indexes.get(space))
            for space in sorted(train)}
