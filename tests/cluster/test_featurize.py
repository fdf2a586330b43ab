"""Stored features are reused only for the same set and the same extractor weights."""
import numpy as np

from cluster.featurize import featurize
from collapse.classifier import save_classifier, train_classifier
from collapse.data.importers import ingest
from collapse.data.samples import open_sample_set


def test_features_of_a_retrained_classifier_are_recomputed(tmp_path):
    ingest("digits", str(tmp_path / "real"), n=120, progress=lambda *_: None)
    train = open_sample_set(str(tmp_path / "real" / "train"))
    _, images, metas = train.load()
    labels = [m["label"] for m in metas]
    url = str(tmp_path / "classifier")
    said = []
    save_classifier(url, train_classifier(images, labels, num_classes=10, epochs=1, seed=0), {})
    a = featurize(train.url, "classifier", options={"url": url}, progress=said.append)
    again = featurize(train.url, "classifier", options={"url": url}, progress=said.append)
    assert np.array_equal(a, again) and len(said) == 1  # the same weights: read back, not recomputed
    save_classifier(url, train_classifier(images, labels, num_classes=10, epochs=1, seed=1), {})
    b = featurize(train.url, "classifier", options={"url": url}, progress=said.append)
    assert len(said) == 2 and not np.array_equal(a, b)  # other weights: computed again


def test_an_actor_pool_writes_each_shard_s_features_and_the_caller_commits_them(ray_local, tmp_path):
    """The actor path (every extractor but pixel and classifier): each actor writes its shards' rows
    beside the set; the records come back out of order and are committed in shard order."""
    from cluster.featurize import _actor_records
    from collapse.data.features import commit_features, has_features, load_features
    from collapse.data.samples import write_sample_set
    from tests.data.helpers import make_samples
    url = str(tmp_path / "set")
    write_sample_set(url, make_samples(23, shape=(6, 6)), shard_size=5)   # 5 shards
    s = open_sample_set(url)
    records = _actor_records(url, "pixel", s, 1, 2, 1.0, 0.0, None, None)
    assert [r["name"] for r in records] == [f"shard-{j:06d}.npy" for j in range(5)]
    assert not has_features(s, "pixel")   # written, not yet committed
    commit_features(s, "pixel", records)
    _, images, _ = s.load()
    assert np.array_equal(load_features(s, "pixel"), images.reshape(23, -1).astype(np.float32))
