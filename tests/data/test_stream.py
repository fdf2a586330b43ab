"""Training streams: explicit rank/world splits, seeded shuffles, resampling."""
import numpy as np
import pytest

from collapse.data.samples import write_sample_set
from collapse.data.stream import node_shards, stream_samples
from collapse.errors import DataError
from tests.data.helpers import make_samples


@pytest.fixture(scope="module")
def set_url():
    url = "memory://stream/set"
    write_sample_set(url, make_samples(40), shard_size=5, overwrite=True)
    return url


def _keys(pipeline):
    return [meta["key"] for _, meta in pipeline]


def test_ranks_partition_one_epoch(set_url):
    parts = [_keys(stream_samples(set_url, rank=r, world_size=3, seed=7, shuffle_buffer=8)) for r in range(3)]
    flat = sum(parts, [])
    assert sorted(flat) == [f"s-{i:05d}" for i in range(40)]
    assert all(len(p) > 0 for p in parts)


def test_seeded_and_deterministic(set_url):
    a = _keys(stream_samples(set_url, seed=1, shuffle_buffer=16))
    b = _keys(stream_samples(set_url, seed=1, shuffle_buffer=16))
    c = _keys(stream_samples(set_url, seed=2, shuffle_buffer=16))
    d = _keys(stream_samples(set_url, seed=1, epoch=1, shuffle_buffer=16))
    assert a == b and sorted(a) == sorted(c) and a != c and a != d


def test_images_decode_with_lineage(set_url):
    image, meta = next(iter(stream_samples(set_url, shuffle_buffer=0)))
    assert image.dtype == np.uint8 and image.shape == (8, 8) and meta["source"] == "real"


def test_resampled_is_endless_and_seeded(set_url):
    it = iter(stream_samples(set_url, seed=3, resampled=True, shuffle_buffer=4))
    first = [next(it)[1]["key"] for _ in range(100)]
    again = iter(stream_samples(set_url, seed=3, resampled=True, shuffle_buffer=4))
    assert first == [next(again)[1]["key"] for _ in range(100)]


def test_more_ranks_than_shards_is_a_clear_error(set_url):
    with pytest.raises(DataError, match="8 shards, fewer than the 9 ranks"):
        node_shards([f"u{i}" for i in range(8)], 0, 9, 0, 0)
    with pytest.raises(ValueError, match="rank"):
        node_shards(["a"], 1, 1, 0, 0)
