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
