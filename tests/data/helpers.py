"""Small real-looking sample sets for the data tests."""
import numpy as np

from collapse.data.samples import Sample


def make_samples(n, shape=(8, 8), seed=0, source="real", prefix="s"):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        meta = {"source": source, "label": int(i % 10)}
        if source != "real":
            meta.update(model="memory://m/model", seed=1000 + i)
        out.append(Sample(f"{prefix}-{i:05d}", rng.integers(0, 256, size=shape, dtype=np.uint8), meta))
    return out


def assert_same_samples(got, want):
    assert [s.key for s in got] == [s.key for s in want]
    for g, w in zip(got, want):
        assert g.image.dtype == np.uint8 and g.image.shape == w.image.shape
        assert np.array_equal(g.image, w.image)
        assert g.meta == dict(w.meta, key=w.key)
