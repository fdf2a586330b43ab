"""Greedy and tdf with the pool split across actors keep the same items in the same order, with the
same reasons, as the single-process selection (cluster.selection; collapse.selection)."""
import numpy as np
import pytest

from cluster.selection import sharded_select
from collapse.selection import select


@pytest.fixture(scope="module")
def pool():
    rng = np.random.default_rng(7)
    centres = rng.normal(0, 30, (12, 24))
    x = (centres[rng.integers(0, 12, 700)] + rng.normal(0, 4, (700, 24))).astype(np.float32)
    x[100:110] = x[5]             # exact duplicates (ties at distance 0)
    return x


CASES = [("greedy", 60, {}), ("tdf", 80, {"tau0": 25.0, "alpha": 0.8}),
         ("tdf", 695, {"tau0": 40.0, "alpha": 0.5})]   # the last one runs into the duplicates' fill pass


@pytest.mark.parametrize("strategy,n,params", CASES)
@pytest.mark.parametrize("shards", [1, 3])
def test_sharded_picks_equal_the_single_process_picks(ray_local, pool, strategy, n, params, shards):
    want = select(pool, n, strategy, seed=4, device="cpu", chunk=128, **params)
    got = sharded_select(pool, n, strategy, seed=4, shards=shards, chunk=128, **params)
    assert got.indices.tolist() == want.indices.tolist()
    assert got.nearest.tolist() == want.nearest.tolist() and got.pass_index.tolist() == want.pass_index.tolist()
    np.testing.assert_array_equal(got.distance, want.distance)
    np.testing.assert_array_equal(got.tau, want.tau)
    assert got.params == want.params
    if n == 695:
        assert (want.tau == 0).sum() == 5   # the fill pass kept 5 duplicates


def test_a_bad_shard_count_is_refused(ray_local, pool):
    with pytest.raises(ValueError, match="shards"):
        sharded_select(pool[:4], 2, "greedy", shards=5)
