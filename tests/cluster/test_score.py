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


@pytest.mark.parametrize("n_shards", [2, 3])
def test_every_figure_of_a_generation_is_the_same_with_d_n_sharded(ray_local, data, n_shards):
    from collapse.metrics import space_metrics
    train, generated = data
    holdout = generated[60:] + 1.0
    index = ShardedKNN(train, n_shards)
    try:
        got = space_metrics(train, generated, holdout, copy_radius=3.0, index=index)
    finally:
        index.close()
    want = space_metrics(train, generated, holdout, copy_radius=3.0)
    assert got.keys() == want.keys()
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-9, abs=0), k


def test_a_lost_actor_or_node_is_told_from_a_failure_of_the_stage():
    """The loop reruns a stage that lost a machine (cluster.runtime.lost_to_the_cluster), and only then."""
    import ray.exceptions as rx
    from cluster.runtime import lost_to_the_cluster
    from collapse.errors import DataError
    try:
        try:
            raise rx.ActorDiedError()
        except rx.ActorDiedError as e:
            raise RuntimeError("the pool failed") from e
    except RuntimeError as wrapped:
        assert lost_to_the_cluster(wrapped)
    assert lost_to_the_cluster(rx.NodeDiedError("node 1 died"))
    assert not lost_to_the_cluster(DataError("shard-000001.tar of s3://b/p is not a tar archive"))
    assert not lost_to_the_cluster(ValueError("bad"))
