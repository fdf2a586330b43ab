"""Sharded nearest-neighbour scoring equals the single-process functions (same neighbours, 1e-9)."""
import numpy as np
import pytest

from cluster.score import ShardedKNN, sharded_entropy, sharded_novelty
from collapse.entropy import kl_entropy
from collapse.knn import knn
from collapse.novelty import generalization_score, memorization_fraction


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 40, (8, 32))
    train = (centres[rng.integers(0, 8, 900)] + rng.normal(0, 5, (900, 32))).astype(np.float32)
    train[10] = train[11]  # an exact duplicate: r_1 = 0 for both
    generated = np.concatenate([train[:50] + 0.01, rng.normal(0, 40, (150, 32))]).astype(np.float32)  # 50 copies
    return train, generated


@pytest.mark.parametrize("n_shards", [2, 3])
def test_sharded_neighbours_are_the_single_process_ones(ray_local, data, n_shards):
    train, generated = data
    index = ShardedKNN(train, n_shards)
    try:
        d, i = index.search(generated, 4, chunk=64)
        ds, is_ = index.search(train, 2, exclude_self=True, chunk=100)
    finally:
        index.close()
    d0, i0 = knn(generated, train, 4)
    assert np.array_equal(i, i0) and np.allclose(d, d0, rtol=1e-12, atol=0)
    d0, i0 = knn(train, train, 2, exclude_self=True)
    assert np.array_equal(is_, i0) and np.allclose(ds, d0, rtol=1e-12, atol=0)
    assert is_[10, 0] == 11 and ds[10, 0] == 0


@pytest.mark.parametrize("n_shards", [2, 3])
def test_sharded_figures_equal_the_single_process_functions(ray_local, data, n_shards):
    train, generated = data
    assert sharded_entropy(train, n_shards) == pytest.approx(kl_entropy(train), rel=1e-9)
    got = sharded_novelty(generated, train, n_shards)
    assert got["gs"] == pytest.approx(generalization_score(generated, train), rel=1e-9)
    # 48 of the 50 near-copies count (the copies of the duplicated pair have d1 ~ d2)
    assert got["memorization"] == memorization_fraction(generated, train) == 48 / 200


def test_bad_shard_count(ray_local, data):
    with pytest.raises(ValueError, match="n_shards"):
        ShardedKNN(data[0], 0)
