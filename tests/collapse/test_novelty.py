"""Generalization score, memorization fraction and set statistics against brute-force numpy."""
import numpy as np
import pytest

from collapse.novelty import (copy_mask, covariance_trace, generalization_score, mean_nn_distance,
                              memorization_fraction, nearest_training_distance)


def dists(a, b):
    return np.sqrt(((a.astype(np.float64)[:, None] - b.astype(np.float64)[None]) ** 2).sum(-1))


@pytest.fixture
def sets():
    rng = np.random.default_rng(0)
    training = rng.normal(size=(120, 10))
    near_copies = training[:30] + 0.01 * rng.normal(size=(30, 10))   # memorized, up to noise
    novel = rng.normal(size=(50, 10))
    return np.concatenate([near_copies, novel]), training


def test_generalization_score_matches_brute_force(sets):
    gen, train = sets
    d = dists(gen, train)
    np.testing.assert_allclose(nearest_training_distance(gen, train), d.min(1), rtol=1e-12)
    assert generalization_score(gen, train) == pytest.approx(d.min(1).mean(), rel=1e-12)


@pytest.mark.parametrize("ratio", [1 / 3, 0.5, 0.9])
def test_memorization_fraction_matches_brute_force(sets, ratio):
    gen, train = sets
    d = np.sort(dists(gen, train), axis=1)
    expected = d[:, 0] / d[:, 1] < ratio
    np.testing.assert_array_equal(copy_mask(gen, train, ratio), expected)
    assert memorization_fraction(gen, train, ratio) == pytest.approx(expected.mean())
    assert 0 < memorization_fraction(gen, train, ratio) < 1


def test_copies_of_training_rows_have_gs_0_and_memorization_1():
    rng = np.random.default_rng(1)
    train = rng.normal(size=(100, 8))
    train[7] = train[3]                          # a duplicated training row: d1 = d2 = 0 still counts
    gen = train[rng.integers(0, 100, size=60)]
    assert generalization_score(gen, train) == 0.0
    assert memorization_fraction(gen, train) == 1.0
    assert memorization_fraction(train[[3, 7]], train) == 1.0


def test_uint8_pixels_do_not_wrap_around():
    gen = np.full((1, 12), 255, dtype=np.uint8)
    train = np.zeros((2, 12), dtype=np.uint8)
    assert generalization_score(gen, train) == pytest.approx(255 * np.sqrt(12))


def test_mean_nn_distance_and_covariance_trace():
    x = np.random.default_rng(2).normal(size=(150, 7)) * np.arange(1, 8)
    d = dists(x, x)
    np.fill_diagonal(d, np.inf)
    assert mean_nn_distance(x) == pytest.approx(d.min(1).mean(), rel=1e-12)
    assert covariance_trace(x, chunk=13) == pytest.approx(np.trace(np.cov(x, rowvar=False)), rel=1e-12)
    assert covariance_trace(x.astype(np.float32) + 1e4) == pytest.approx(np.trace(np.cov(x, rowvar=False)), rel=1e-3)


def test_clear_errors():
    x = np.zeros((5, 2))
    with pytest.raises(ValueError, match="ratio"):
        memorization_fraction(x, x, ratio=0)
    with pytest.raises(ValueError, match="only 1 other rows|only 1"):
        memorization_fraction(x, x[:1])
    with pytest.raises(ValueError, match="N >= 2"):
        covariance_trace(x[:1])
    with pytest.raises(ValueError, match="d=2"):
        generalization_score(x, np.zeros((5, 3)))
