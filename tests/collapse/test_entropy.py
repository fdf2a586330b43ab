"""Kozachenko-Leonenko entropy: the exact formula, closed forms, invariances, the duplicate guard.

Tolerance for the closed forms (0.2 nats). Over 10-20 seeds per case (measured when this was
written) the estimator's spread was <= 0.06 nats for N >= 2000 (about 1-3x sqrt(psi'(k)/N), the
sd of independent log r_k terms), its bias was <= 0.07 nats for Gaussians with d <= 8 and
<= 0.15 for the uniform cube with d <= 3 (boundary points see their neighbours on one side only:
a positive bias growing like (k/N)^(1/d)), and the largest error of any run was 0.15. 0.2 nats is
therefore a few standard deviations beyond the worst case seen, and still small against what
formula mistakes cost: dropping log c_d is >= 0.69 nats for d <= 8, using r^2 for r doubles the
d*mean(log r) term (several nats here). The exact formula is tested separately, to 1e-12.
"""
import math

import numpy as np
import pytest
from scipy.special import digamma

from collapse.entropy import entropy_from_radii, kl_entropy, kth_neighbour_distance, log_unit_ball_volume

TOL = 0.2


def brute_rk(x, k):
    d = np.sqrt(((x[:, None, :] - x[None]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    return np.sort(d, axis=1)[:, k - 1]


@pytest.mark.parametrize("d, c_d", [(1, 2.0), (2, math.pi), (3, 4.0 * math.pi / 3.0), (4, math.pi ** 2 / 2.0)])
def test_unit_ball_volume(d, c_d):
    assert log_unit_ball_volume(d) == pytest.approx(math.log(c_d), rel=1e-13)


def test_unit_ball_volume_is_finite_in_pixel_dimensions():
    v = log_unit_ball_volume(3072)  # c_d itself underflows to 0 in float64 here
    assert math.isfinite(v) and v == pytest.approx(1536 * math.log(math.pi) - math.lgamma(1537), rel=1e-14)


@pytest.mark.parametrize("k", [1, 3])
def test_formula_on_brute_force_radii(k):
    x = np.random.default_rng(0).normal(size=(60, 3))
    r = brute_rk(x, k)
    expected = digamma(60) - digamma(k) + math.log(4 * math.pi / 3) + 3 * np.mean(np.log(r + 1e-10))
    np.testing.assert_allclose(kth_neighbour_distance(x, k), r, rtol=1e-12)
    assert kl_entropy(x, k) == pytest.approx(expected, rel=1e-12)
    assert entropy_from_radii(r, 3, k) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("k", [1, 5])
@pytest.mark.parametrize("d, n", [(1, 2000), (2, 5000), (5, 2000), (8, 5000)])
def test_gaussian_matches_analytic_entropy(d, n, k):
    rng = np.random.default_rng(100 * d + k)
    sigma = rng.uniform(0.5, 3.0, size=d)            # anisotropic on purpose
    x = rng.normal(size=(n, d)) * sigma
    analytic = 0.5 * d * math.log(2 * math.pi * math.e) + np.log(sigma).sum()
    assert abs(kl_entropy(x, k) - analytic) < TOL


@pytest.mark.parametrize("k", [1, 5])
@pytest.mark.parametrize("d", [1, 2, 3])
def test_uniform_cube_matches_log_volume(d, k):
    side = 3.0
    x = np.random.default_rng(d + 10 * k).uniform(0, side, size=(5000, d))
    assert abs(kl_entropy(x, k) - d * math.log(side)) < TOL


def test_invariant_to_a_shift():
    x = np.random.default_rng(1).normal(size=(1000, 6))
    assert kl_entropy(x + 1e3) == pytest.approx(kl_entropy(x), abs=1e-9)


@pytest.mark.parametrize("c", [1e-3, 7.0, 1e3])
def test_scaling_by_c_adds_d_log_c(c):
    x = np.random.default_rng(2).normal(size=(1000, 6))
    assert kl_entropy(c * x, eps=0) - kl_entropy(x, eps=0) == pytest.approx(6 * math.log(c), abs=1e-8)
    # the default guard (1e-10 inside the log, in feature units) shifts this by at most
    # d * 1e-10 / min r_k: ~1e-6 nats here at c = 1e-3
    min_r = c * kth_neighbour_distance(x).min()
    assert kl_entropy(c * x) - kl_entropy(x) == pytest.approx(6 * math.log(c), abs=6e-10 / min_r + 1e-8)


def test_duplicates_use_the_reference_guard_and_never_nan():
    x = np.random.default_rng(3).normal(size=(200, 4))
    x[5] = x[17]
    r = brute_rk(x, 1)
    assert r[5] == 0.0 and r[17] == 0.0
    expected = digamma(200) - digamma(1) + log_unit_ball_volume(4) + 4 * np.mean(np.log(r + 1e-10))
    h = kl_entropy(x)
    assert h == pytest.approx(expected, rel=1e-12)
    assert h < kl_entropy(np.delete(x, 5, axis=0)) - 0.5     # a copy pulls H strongly down
    with pytest.raises(ValueError, match="exact duplicates"):
        kl_entropy(x, eps=0.0)
    same = np.ones((10, 3))
    assert math.isfinite(kl_entropy(same))                   # all copies: very low, not NaN/-inf


def test_uint8_pixels_equal_float_pixels():
    x = np.random.default_rng(4).integers(0, 256, size=(300, 48)).astype(np.uint8)
    assert kl_entropy(x) == pytest.approx(kl_entropy(x.astype(np.float64)), rel=1e-12)


@pytest.mark.parametrize("x, k, match", [
    (np.zeros((1, 3)), 1, "more than k"),
    (np.zeros((5, 3)), 5, "more than k"),
    (np.zeros((5, 3)), 0, "k must be"),
    (np.array([[0.0, np.inf], [1.0, 2.0], [3.0, 1.0]]), 1, "NaN or inf"),
])
def test_clear_errors(x, k, match):
    with pytest.raises(ValueError, match=match):
        kl_entropy(x, k)
