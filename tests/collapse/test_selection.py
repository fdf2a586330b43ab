"""Selection strategies: one shared contract for every registered name, then each strategy's
own promises, checked against straightforward reference loops."""
import numpy as np
import pytest

from collapse.entropy import kl_entropy
from collapse.selection import STRATEGIES, Selection, select

# Parameters a strategy needs in the contract test; a new strategy with required ones adds them here.
CONTRACT_PARAMS = {"tdf": {"tau0": 3.0, "alpha": 0.9}}


def pairwise(x):
    x = x.astype(np.float64)
    return np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))


def clustered(n=400, d=6, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=10.0, size=(5, d))
    sizes = [n * 70 // 100] + [n * 30 // 400] * 4          # one dense cluster, four small ones
    x = np.concatenate([c + rng.normal(size=(m, d)) for c, m in zip(centres, sizes)])
    return x[rng.permutation(len(x))]


@pytest.fixture(scope="module")
def pool():
    return np.random.default_rng(0).normal(size=(200, 5)).astype(np.float32)


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
class TestContract:
    def run(self, x, n, strategy, **kw):
        return select(x, n, strategy, **CONTRACT_PARAMS.get(strategy, {}), **kw)

    def test_returns_n_unique_valid_indices_and_reasons(self, pool, strategy):
        s = self.run(pool, 37, strategy, seed=1)
        assert isinstance(s, Selection) and s.strategy == strategy and len(s) == 37
        assert s.indices.dtype == np.int64 and len(set(s.indices.tolist())) == 37
        assert s.indices.min() >= 0 and s.indices.max() < len(pool)
        for col in s.columns().values():
            assert col.shape == (37,)
        with pytest.raises(ValueError):
            s.indices[0] = 0                                  # a decision is read-only data

    def test_deterministic_per_seed_whatever_the_chunk(self, pool, strategy):
        a = self.run(pool, 50, strategy, seed=7)
        b = self.run(pool, 50, strategy, seed=7, chunk=13)
        c = self.run(pool, 50, strategy, seed=8)
        np.testing.assert_array_equal(a.indices, b.indices)
        np.testing.assert_array_equal(a.distance, b.distance)
        assert not np.array_equal(a.indices, c.indices)

    def test_whole_pool_and_single_item(self, pool, strategy):
        assert sorted(self.run(pool, len(pool), strategy).indices.tolist()) == list(range(len(pool)))
        assert len(self.run(pool, 1, strategy)) == 1

    @pytest.mark.parametrize("n", [0, -1, 201, 2.0, True])
    def test_bad_n(self, pool, strategy, n):
        with pytest.raises(ValueError, match="n must be"):
            self.run(pool, n, strategy)

    def test_non_finite_features(self, pool, strategy):
        bad = pool.copy()
        bad[3, 1] = np.nan
        with pytest.raises(ValueError, match="NaN or inf"):
            self.run(bad, 5, strategy)

    def test_unknown_parameter(self, pool, strategy):
        with pytest.raises(ValueError, match="no parameter"):
            self.run(pool, 5, strategy, colour="red")


def test_unknown_strategy_and_bad_seed(pool):
    with pytest.raises(ValueError, match="unknown selection strategy 'nope'"):
        select(pool, 5, "nope")
    with pytest.raises(ValueError, match="seed"):
        select(pool, 5, "random", seed=-1)


def naive_greedy(x, n, start):
    """Recompute every distance from scratch at every step."""
    kept = [start]
    for _ in range(n - 1):
        d = pairwise(x)[:, kept].min(axis=1)
        d[kept] = -1
        kept.append(int(np.argmax(d)))
    return kept


def test_greedy_equals_the_straightforward_loop():
    x = clustered(300)
    s = select(x, 40, "greedy", seed=3)
    assert s.indices.tolist() == naive_greedy(x, 40, int(s.indices[0]))
    d = pairwise(x)
    for t in range(1, 40):                                    # reasons: exact distance to the nearest kept
        assert s.distance[t] == pytest.approx(d[s.indices[t], s.indices[:t]].min(), rel=1e-12)
        assert s.nearest[t] in s.indices[:t] and d[s.indices[t], s.nearest[t]] == pytest.approx(s.distance[t])
    assert s.distance[0] == np.inf and s.nearest[0] == -1
    assert (np.diff(s.distance[1:]) <= 1e-9).all()            # farthest-point distances never grow


def test_greedy_spreads_out_more_than_random():
    x = clustered(600)
    g, r = select(x, 60, "greedy"), select(x, 60, "random")
    min_pair = lambda idx: pairwise(x[idx])[np.triu_indices(len(idx), 1)].min()
    assert min_pair(g.indices) > 2 * min_pair(r.indices)
    assert kl_entropy(x[g.indices]) > kl_entropy(x[r.indices]) + 1.0


def naive_tdf(x, n, order, tau0, alpha):
    """The algorithm box, one candidate at a time."""
    kept, taus, tau = [], [], tau0
    d = pairwise(x)
    while len(kept) < n:
        for c in order:
            if c not in kept and (not kept or d[c, kept].min() > tau):
                kept.append(int(c))
                taus.append(tau)
                if len(kept) == n:
                    break
        tau *= alpha
    return kept, taus


@pytest.mark.parametrize("tau0", [0.5, 4.0, 40.0])
def test_tdf_equals_the_algorithm_box(tau0):
    x = clustered(300)
    s = select(x, 80, "tdf", seed=5, tau0=tau0, alpha=0.8, chunk=17)
    order = np.random.default_rng(5).permutation(len(x))
    kept, taus = naive_tdf(x, 80, order, tau0, 0.8)
    assert s.indices.tolist() == kept
    np.testing.assert_allclose(s.tau, taus, rtol=1e-12)
    np.testing.assert_allclose(s.tau, tau0 * 0.8 ** s.pass_index, rtol=1e-12)


def test_tdf_keeps_points_farther_apart_than_its_final_threshold():
    x = clustered(500)
    s = select(x, 120, "tdf", tau0=20.0, alpha=0.9)
    d = pairwise(x[s.indices])[np.triu_indices(120, 1)]
    assert d.min() > s.tau[-1]
    assert (s.distance[1:] > s.tau[1:]).all() and (np.diff(s.pass_index) >= 0).all()


def test_tdf_fills_with_duplicates_when_distinct_points_run_out():
    base = np.random.default_rng(2).normal(size=(5, 3))
    x = np.repeat(base, 4, axis=0)                            # 5 distinct points, 4 copies each
    s = select(x, 12, "tdf", tau0=1.0, alpha=0.5)
    assert len(set(map(tuple, x[s.indices[:5]]))) == 5        # the distinct ones first
    assert (s.tau[5:] == 0).all() and (s.distance[5:] == 0).all()


def test_tdf_parameters_are_checked(pool):
    with pytest.raises(ValueError, match=r"needs parameter\(s\) \['tau0'\]"):
        select(pool, 5, "tdf")
    with pytest.raises(ValueError, match="alpha"):
        select(pool, 5, "tdf", tau0=1.0, alpha=1.0)
    with pytest.raises(ValueError, match="tau0"):
        select(pool, 5, "tdf", tau0=-1.0)


def test_uint8_pixels_do_not_wrap_around():
    # uint8 arithmetic would make |10 - 255| = 11 and |0 - 255| = 1: the paper's code bug
    x = np.array([[0] * 8, [255] * 8, [10] * 8], dtype=np.uint8)
    for seed in range(4):
        g = select(x, 2, "greedy", seed=seed)
        assert g.indices[1] == (0 if g.indices[0] == 1 else 1)
        assert g.distance[1] == pytest.approx(np.sqrt(8) * (255 if g.indices[0] != 2 else 245))
    t = select(x, 3, "tdf", tau0=100.0 * np.sqrt(8), alpha=0.5)
    assert set(t.indices[t.pass_index == 0].tolist()) in ({0, 1}, {1, 2})
