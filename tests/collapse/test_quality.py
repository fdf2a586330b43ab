"""FD, KID and PRDC against direct numpy/scipy computations on small sets."""
import numpy as np
import pytest
import scipy.linalg
from scipy.spatial.distance import cdist

from collapse import quality
from collapse.quality import frechet_distance, kid, kid_subset_size, prdc


def fd_scipy(a, b):
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s_a @ s_b).real
    return ((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * covmean)


@pytest.fixture
def ab():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6))
    b = rng.normal(size=(250, 6)) * 1.5 + 0.3
    return a, b


def test_frechet_distance_matches_scipy(ab):
    a, b = ab
    assert frechet_distance(a, b) == pytest.approx(fd_scipy(a, b), rel=1e-8)
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-9)


def test_frechet_distance_of_a_set_with_itself_is_zero(ab):
    a, _ = ab
    assert abs(frechet_distance(a, a)) < 1e-9 * np.trace(np.cov(a, rowvar=False))


def test_frechet_distance_one_dimension_closed_form():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(400, 1)), 2.0 * rng.normal(size=(500, 1)) + 1.0
    sa, sb = a.std(ddof=1), b.std(ddof=1)
    assert frechet_distance(a, b) == pytest.approx((a.mean() - b.mean()) ** 2 + (sa - sb) ** 2, rel=1e-10)


def test_frechet_distance_of_singular_covariances_is_exact():
    """N < d (64 images of 256 pixels in the tiny run): both covariances are singular. Sets on one
    line of R^256 have the 1-D closed form; a matrix square root would be off by ~1e-8 relative
    (sqrt of rounding-sized eigenvalues), the nuclear norm of R_a R_b^T by ~1e-13."""
    rng = np.random.default_rng(2)
    u = rng.normal(size=256)
    u /= np.linalg.norm(u)
    ta, tb = 100.0 * rng.normal(size=40) + 20.0, 60.0 * rng.normal(size=30) - 5.0
    a, b = ta[:, None] * u + 128.0, tb[:, None] * u + 128.0   # pixel-like: far from 0
    closed = (ta.mean() - tb.mean()) ** 2 + (ta.std(ddof=1) - tb.std(ddof=1)) ** 2
    assert frechet_distance(a, b) == pytest.approx(closed, rel=1e-11)


def test_frechet_distance_does_not_follow_the_blas_thread_count():
    """The figure the loop tests compare across processes: rank-deficient pixel-scale sets, FD with
    one BLAS thread and with two equal to the conditioning bound (module docstring of quality)."""
    from threadpoolctl import threadpool_limits
    rng = np.random.default_rng(3)
    a, b = rng.integers(0, 256, size=(64, 256)).astype(np.float64), rng.integers(0, 256, size=(64, 256)) * 0.9
    with threadpool_limits(1):
        one = frechet_distance(a, b)
    with threadpool_limits(2):
        two = frechet_distance(a, b)
    bound = 64 * 256 * np.finfo(float).eps * (np.cov(a, rowvar=False).trace() + np.cov(b, rowvar=False).trace())
    assert abs(one - two) <= bound


def mmd2_unbiased(x, y):
    k = lambda u, v: (u @ v.T / u.shape[1] + 1) ** 3
    m = x.shape[0]
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    return ((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
            - 2 * kxy.mean())


def test_kid_matches_direct_mmd(ab):
    a, b = ab
    mean, std = kid(a[:200], b[:200], n_subsets=1, subset_size=1000, seed=5)   # one subset of 100 rows of each
    rng = np.random.default_rng(5)
    x, y = a[rng.choice(200, 100, replace=False)], b[rng.choice(200, 100, replace=False)]
    assert mean == pytest.approx(mmd2_unbiased(x, y), rel=1e-10) and np.isnan(std)  # one subset: no spread
    mean, std = kid(a[:3], b[:3], n_subsets=20)                          # < 4 rows: the whole sets (order-free)
    assert mean == pytest.approx(mmd2_unbiased(a[:3], b[:3]), rel=1e-10) and np.isnan(std)
    m1, s1 = kid(a, b, n_subsets=20, subset_size=100, seed=3)
    assert (m1, s1) == kid(a, b, n_subsets=20, subset_size=100, seed=3)
    assert abs(kid(a, a, n_subsets=20, subset_size=100)[0]) < 0.1 * kid(a, a + 3.0, n_subsets=20, subset_size=100)[0]


def test_kid_subsets_are_at_most_half_of_each_set(monkeypatch):
    assert kid_subset_size(1000, 1000) == 500          # gs_samples = holdout = 1000: no longer the whole sets
    assert kid_subset_size(10000, 10000) == kid_subset_size(50000, 2000) == 1000
    assert kid_subset_size(1000, 300, 1000) == kid_subset_size(300, 1000, 1000) == 150
    assert kid_subset_size(4, 4) == 2 and kid_subset_size(3, 1000) == 3 and kid_subset_size(2, 2) == 2
    seen = []
    kernel = quality._poly_kernel
    monkeypatch.setattr(quality, "_poly_kernel", lambda x, y: seen.append((len(x), len(y))) or kernel(x, y))
    rng = np.random.default_rng(0)
    kid(rng.normal(size=(1000, 4)), rng.normal(size=(1000, 4)), n_subsets=3)
    assert seen == [(500, 500)] * 9
    with pytest.raises(ValueError, match="at least 2 rows"):
        kid(np.zeros((1, 2)), np.zeros((5, 2)))


def test_kid_std_is_the_spread_over_distinct_subsets():
    """Two sets of 1000 rows (as gs_samples = holdout = 1000): the subsets differ, so the std is > 0; KID
    of two samples of one distribution is 0 in expectation (unbiased) and lies within its std of 0 here,
    while a shifted distribution lies many stds away."""
    from threadpoolctl import threadpool_limits
    rng = np.random.default_rng(1)
    with threadpool_limits(1):  # 100-odd small products: BLAS threads only contend
        a, b = rng.normal(size=(1000, 8)), rng.normal(size=(1000, 8))
        mean, std = kid(a, b, n_subsets=50, subset_size=1000, seed=0)
        assert std > 0 and abs(mean) < 3 * std
        a, b = a[:400], b[:400]
        mean, std = kid(a, b, n_subsets=50, seed=0)
        shifted, s_std = kid(a, b + 0.5, n_subsets=50, seed=0)
        assert abs(mean) < 3 * std and s_std > 0 and shifted > 5 * s_std
        # smaller than the spread of 200-row estimates over fresh samples of the distributions (shared rows)
        fresh = np.std([kid(rng.normal(size=(200, 8)), rng.normal(size=(200, 8)), n_subsets=1)[0]
                        for _ in range(40)])
        assert 0.1 * fresh < std < fresh
    assert np.isfinite(kid(a[:4], b[:4], n_subsets=10)[1])           # 4 rows: subsets of 2, distinct
    assert np.isnan(kid(a[:3], b, n_subsets=10)[1])                  # 3 rows: only the whole set


def prdc_numpy(real, fake, k):
    rr, ff, rf = cdist(real, real), cdist(fake, fake), cdist(real, fake)
    r_real = np.sort(rr, axis=1)[:, k]          # column 0 is the point itself
    r_fake = np.sort(ff, axis=1)[:, k]
    precision = (rf < r_real[:, None]).any(axis=0).mean()
    recall = (rf < r_fake[None, :]).any(axis=1).mean()
    density = (rf < r_real[:, None]).sum() / (k * fake.shape[0])
    coverage = (rf.min(axis=1) < r_real).mean()
    return precision, recall, density, coverage


@pytest.mark.parametrize("k", [1, 3, 5])
def test_prdc_matches_numpy(ab, k):
    a, b = ab
    got = prdc(a, b, k=k, chunk=64)
    exp = prdc_numpy(a, b, k)
    assert (got.precision, got.recall, got.density, got.coverage) == pytest.approx(exp, rel=1e-12)
    assert 0 < got.precision < 1 and 0 < got.recall < 1


def test_prdc_of_a_set_with_itself(ab):
    a, _ = ab
    got = prdc(a, a, k=5)
    assert got.precision == 1.0 and got.recall == 1.0 and got.coverage == 1.0
    assert got.density == pytest.approx(prdc_numpy(a, a, 5)[2], rel=1e-12)


def test_clear_errors():
    with pytest.raises(ValueError, match="same d"):
        frechet_distance(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="more than k"):
        prdc(np.random.rand(5, 2), np.random.rand(5, 2), k=5)
    with pytest.raises(ValueError, match="n_subsets"):
        kid(np.zeros((3, 2)), np.zeros((3, 2)), n_subsets=0)
