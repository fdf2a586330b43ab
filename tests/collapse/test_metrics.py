"""space_metrics computes each D_n figure from three exact searches: the same values as the standalone
functions of collapse.entropy and collapse.novelty."""
import numpy as np
import pytest

from collapse.entropy import kl_entropy
from collapse.metrics import ExactIndex, generation_metrics, space_metrics
from collapse.novelty import (duplicate_share, generalization_score, mean_nn_distance, memorization_fraction,
                              memorization_within, real_copy_radius)
from collapse.quality import kid


@pytest.fixture(scope="module")
def sets():
    rng = np.random.default_rng(3)
    train = rng.normal(0, 10, (300, 12))
    train[5] = train[6]                                                        # an exact duplicate
    generated = np.concatenate([train[:40] + 0.05 * rng.normal(size=(40, 12)), rng.normal(0, 10, (160, 12))])
    holdout = rng.normal(0, 10, (120, 12))
    return train, generated, holdout


def test_space_metrics_equal_the_standalone_functions(sets):
    train, generated, holdout = sets
    rho = real_copy_radius(train[100:])
    f = space_metrics(train, generated, holdout, copy_radius=rho)
    expected = {"entropy": kl_entropy(train), "pool_entropy": kl_entropy(generated),
                "gs": generalization_score(generated, train), "holdout_gs": generalization_score(holdout, train),
                "memorization": memorization_fraction(generated, train), "mean_nn_distance": mean_nn_distance(train),
                "memorization_real_scale": memorization_within(generated, train, rho),
                "duplicate_share": duplicate_share(train, rho), "copy_radius": rho}
    for k, v in expected.items():
        assert f[k] == pytest.approx(v, rel=1e-12, abs=0), k
    assert f["manifold_ratio"] == pytest.approx(f["gs"] / f["holdout_gs"], rel=1e-12)
    assert 0.1 <= f["memorization"] <= 0.25 and f["duplicate_share"] == pytest.approx(2 / 300)
    assert "memorization_real_scale" not in space_metrics(train, generated, holdout)
    # KID over 50 subsets of min(1000, half of each set) = 60 rows: distinct subsets, a spread > 0
    assert (f["kid"], f["kid_std"]) == kid(generated, holdout, n_subsets=50, subset_size=60, seed=0)
    assert f["kid_std"] > 0


def test_an_index_object_answers_every_search_of_d_n(sets):
    train, generated, holdout = sets
    calls = []

    class Counting(ExactIndex):
        def search(self, query, k, exclude_self=False):
            calls.append((len(query), k, exclude_self))
            return super().search(query, k, exclude_self)

    got = generation_metrics({"x": train}, {"x": generated}, {"x": holdout}, copy_radius={"x": 1.0},
                             indexes={"x": Counting(train)})["x"]
    assert sorted(calls) == sorted([(300, 1, True), (200, 2, False), (120, 1, False)])
    assert got == space_metrics(train, generated, holdout, copy_radius=1.0)
    with pytest.raises(ValueError, match="copy radii"):
        generation_metrics({"x": train}, {"x": generated}, {"x": holdout}, copy_radius={"y": 1.0})
