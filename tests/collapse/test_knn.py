"""Exact kNN helper: against brute-force float64 numpy, both backends, shards merged."""
import numpy as np
import pytest

from collapse.knn import knn, merge_topk


def brute(q, r, k, exclude_self=False):
    d = np.sqrt(((q.astype(np.float64)[:, None, :] - r.astype(np.float64)[None]) ** 2).sum(-1))
    if exclude_self:
        np.fill_diagonal(d, np.inf)
    i = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, i, 1), i


@pytest.mark.parametrize("backend", ["faiss", "torch"])
@pytest.mark.parametrize("k", [1, 4])
def test_matches_brute_force(backend, k):
    rng = np.random.default_rng(0)
    q, r = rng.normal(size=(70, 12)), rng.normal(size=(90, 12))
    d, i = knn(q, r, k, backend=backend, chunk=16)
    bd, bi = brute(q, r, k)
    np.testing.assert_array_equal(i, bi)
    np.testing.assert_allclose(d, bd, rtol=1e-12)
    assert d.dtype == np.float64 and i.dtype == np.int64


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_exclude_self_and_duplicates(backend):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 5))
    x[10] = x[3]                                  # an exact duplicate pair
    d, i = knn(x, x, 2, exclude_self=True, backend=backend)
    assert not (i == np.arange(50)[:, None]).any()  # never itself
    assert i[3, 0] == 10 and i[10, 0] == 3 and d[3, 0] == 0.0 and d[10, 0] == 0.0
    bd, bi = brute(x, x, 2, exclude_self=True)
    np.testing.assert_allclose(d, bd, rtol=1e-12)


def test_many_copies_of_one_row_still_excludes_self():
    x = np.zeros((8, 3))
    x[6:] = 1.0
    d, i = knn(x, x, 1, exclude_self=True, extra=0)
    assert (i[:, 0] != np.arange(8)).all() and (d[:6] == 0).all()


def test_far_from_origin_distances_are_exact():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(200, 30)) + 1e4           # float32 alone would lose the small distances
    d, i = knn(x, x, 1, exclude_self=True)
    bd, bi = brute(x, x, 1, exclude_self=True)
    np.testing.assert_array_equal(i, bi)
    np.testing.assert_allclose(d, bd, rtol=1e-9)


def test_uint8_pixels_do_not_wrap_around():
    x = np.array([[0] * 4, [255] * 4, [250] * 4], dtype=np.uint8)
    d, i = knn(x[:1], x[1:], 2)
    np.testing.assert_allclose(d[0], [500.0, 510.0])  # 250 * sqrt(4), 255 * sqrt(4)
    assert list(i[0]) == [1, 0]


def test_chunking_does_not_change_the_answer():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 8)).astype(np.float32)
    a = knn(x, x, 3, exclude_self=True, chunk=7)
    b = knn(x, x, 3, exclude_self=True, chunk=1000)
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[0], b[0])


def test_merge_topk_of_shards_equals_one_search():
    rng = np.random.default_rng(4)
    q, r = rng.normal(size=(40, 6)), rng.normal(size=(100, 6))
    parts = []
    for lo, hi in [(0, 30), (30, 31), (31, 100)]:
        kk = min(3, hi - lo)
        d, i = knn(q, r[lo:hi], kk)
        pad = 3 - kk                              # a small shard pads with -1, as faiss does
        parts.append((np.pad(d, ((0, 0), (0, pad)), constant_values=np.inf),
                      np.pad(i + lo, ((0, 0), (0, pad)), constant_values=-1)))
    d, i = merge_topk(parts, 3)
    fd, fi = knn(q, r, 3)
    np.testing.assert_array_equal(i, fi)
    np.testing.assert_array_equal(d, fd)
    with pytest.raises(ValueError, match="fewer candidates"):
        merge_topk(parts[1:2], 2)


def test_merge_topk_breaks_ties_by_index():
    d, i = merge_topk([(np.array([[1.0, 2.0]]), np.array([[7, 3]])), (np.array([[1.0]]), np.array([[2]]))], 2)
    assert i.tolist() == [[2, 7]] and d.tolist() == [[1.0, 1.0]]


@pytest.mark.parametrize("kwargs, match", [
    (dict(query=np.zeros((3, 2)), reference=np.zeros((3, 2)), k=3, exclude_self=True), "only 2 other rows"),
    (dict(query=np.zeros((3, 2)), reference=np.zeros((3, 3)), k=1), "d=2"),
    (dict(query=np.array([[np.nan, 0.0]]), reference=np.zeros((3, 2)), k=1), "NaN"),
    (dict(query=np.zeros((3, 2)), reference=np.zeros((3, 2)), k=0), "k must be"),
    (dict(query=np.zeros((2, 2)), reference=np.zeros((3, 2)), k=1, exclude_self=True), "exclude_self"),
    (dict(query=np.zeros(3), reference=np.zeros((3, 2)), k=1), "2-D"),
])
def test_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        knn(**kwargs)


def test_torch_tiles_keep_a_running_top_k():
    from collapse.knn import _torch_searcher
    import torch
    rng = np.random.default_rng(5)
    q, r = rng.normal(size=(30, 4)).astype(np.float32), rng.normal(size=(50, 4)).astype(np.float32)
    got = _torch_searcher(r, torch.device("cpu"), rows=7, cols=11)(q, 3)
    np.testing.assert_array_equal(got, brute(q, r, 3)[1])
