"""Generalization score, memorization fraction and set statistics against brute-force numpy."""
import numpy as np
import pytest

from collapse.novelty import (copy_mask, covariance_trace, duplicate_share, generalization_score, mean_nn_distance,
                              memorization_fraction, memorization_within, nearest_training_distance,
                              real_copy_radius)


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


# -- memorization at the real data's scale (d1 < rho)

def test_real_copy_radius_is_a_third_of_the_median_nearest_neighbour_distance():
    real = np.arange(10, dtype=np.float64)[:, None] * np.array([[3.0, 4.0]])  # a line, spacing 5
    real[-1] += 1.0                                                           # one gap of ~6.4
    assert real_copy_radius(real) == pytest.approx(5.0 / 3.0, rel=1e-12)
    assert real_copy_radius(real, ratio=0.5) == pytest.approx(2.5, rel=1e-12)
    with pytest.raises(ValueError, match="ratio"):
        real_copy_radius(real, ratio=0)


def test_near_duplicates_in_the_training_set_hide_copies_from_d1_over_d2_but_not_from_the_fixed_scale():
    """A synthetic D_n that holds each image twice (a memorizing model's output): samples that copy its
    images have d2 ~ d1, so the ratio test counts none; at the real scale all of them are copies."""
    rng = np.random.default_rng(1)
    real = rng.normal(size=(40, 8)) * 10.0                         # distinct images, nn distance ~ 15
    rho = real_copy_radius(real)
    d_n = np.concatenate([real, real + 0.2 * rng.normal(size=real.shape)])   # every image twice
    copies = real + 0.3 * rng.normal(size=real.shape)                          # samples copying them
    assert memorization_fraction(copies, d_n) < 0.1
    assert memorization_within(copies, d_n, rho) == 1.0
    assert duplicate_share(d_n, rho) == 1.0 and duplicate_share(real, rho) == 0.0
    # on distinct real images, the two tests agree on these copies
    assert memorization_fraction(copies, real) == memorization_within(copies, real, rho) == 1.0
    novel = rng.normal(size=(30, 8)) * 10.0
    assert memorization_within(novel, d_n, rho) == 0.0


def test_memorization_within_matches_brute_force(sets):
    gen, train = sets
    for radius in (0.05, 1.0, 3.0):
        expected = (dists(gen, train).min(1) < radius).mean()
        assert memorization_within(gen, train, radius) == pytest.approx(expected)
    nn = dists(train, train) + np.diag(np.full(len(train), np.inf))
    assert duplicate_share(train, 2.0) == pytest.approx((nn.min(1) < 2.0).mean())
    assert memorization_within(train[:3], train, 1e-9) == 1.0  # exact copies count at any radius
    for bad in (0, -1.0, float("nan"), True, "1"):
        with pytest.raises(ValueError, match="copy radius"):
            memorization_within(gen, train, bad)
