"""The sample-quality classifier: confident on real held-out images, not on noise; seeded."""
import numpy as np
import pytest

from collapse.classifier import Classifier, classifier_figures, negatives, train_classifier
from collapse.data.importers import fashion_mnist, transform


def _fmnist(split, n, seed):
    src = fashion_mnist(split)
    idx = np.sort(np.random.default_rng(seed).permutation(src.count)[:n])
    images = np.stack([transform(src.load(int(i)), 16, "grey", "t") for i in idx])
    return images, np.array([src.labels[int(i)] for i in idx])


@pytest.fixture(scope="module")
def trained():
    x, y = _fmnist("train", 2000, 0)
    return train_classifier(x, y, seed=0), _fmnist("test", 500, 1)


def test_real_held_out_images_are_recognized_and_noise_is_not(trained):
    clf, (x_test, y_test) = trained
    real = classifier_figures(clf.probabilities(x_test), 10)
    accuracy = float((clf.probabilities(x_test)[:, :10].argmax(1) == y_test).mean())
    noise = negatives(x_test, 300, np.random.default_rng(7))
    blank = np.full((100, 16, 16, 1), 128, np.uint8)
    fake = classifier_figures(clf.probabilities(np.concatenate([noise, blank])), 10)
    assert accuracy > 0.75
    assert real["confidence"] > 0.75 and real["rejected"] < 0.05
    assert real["class_entropy"] > 0.9 * np.log(10)
    assert fake["confidence"] < 0.5 * real["confidence"]


def test_training_is_seeded_and_round_trips(trained):
    clf, (x_test, _) = trained
    again = Classifier.from_bytes(clf.to_bytes())
    assert np.array_equal(again.probabilities(x_test[:50]), clf.probabilities(x_test[:50]))
    x, y = _fmnist("train", 300, 3)
    a, b = train_classifier(x, y, seed=5, epochs=1), train_classifier(x, y, seed=5, epochs=1)
    assert np.array_equal(a.probabilities(x_test[:20]), b.probabilities(x_test[:20]))


def test_figures_closed_form():
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.1, 0.7]])
    f = classifier_figures(p, 2)
    assert f["class_histogram"] == [1, 1] and f["rejected"] == pytest.approx(1 / 3)
    assert f["confidence"] == pytest.approx((0.7 + 0.8 + 0.2) / 3)
    assert f["class_entropy"] == pytest.approx(np.log(2))


def test_stored_classifier_is_a_feature_space_and_its_damage_is_caught(trained, tmp_path):
    from collapse.classifier import load_classifier, recognizability, save_classifier
    from collapse.errors import DataError
    from collapse.features import get_extractor
    clf, (x_test, _) = trained
    url = str(tmp_path / "classifier")
    held = classifier_figures(clf.probabilities(x_test), 10)
    record = save_classifier(url, clf, {"holdout": held}, None)
    assert record["labelled"] and record["num_classes"] == 10
    ext = get_extractor("classifier", device="cpu", url=url)
    feats = ext(x_test[:40])
    assert feats.shape == (40, 128) == (40, ext.dim) and feats.dtype == np.float32
    assert np.array_equal(feats, clf.features(x_test[:40]))
    assert np.array_equal(load_classifier(url).probabilities(x_test[:5]), clf.probabilities(x_test[:5]))
    r = recognizability({**held, "confidence": 0.4 * held["confidence"]}, held)
    assert r["confidence_ratio"] == pytest.approx(0.4) and r["recognizable"] is False
    assert recognizability(held, held)["recognizable"] is True
    (tmp_path / "classifier" / "classifier.pt").write_bytes(b"x" + clf.to_bytes()[1:])
    with pytest.raises(DataError, match="sha256"):
        load_classifier(url)
    save_classifier(str(tmp_path / "none"), None, {}, None)
    with pytest.raises(DataError, match="no labels"):
        load_classifier(str(tmp_path / "none"))


def test_labelled_training_images_never_include_held_out_ones():
    from collapse.data.importers import _split, digits, labelled_training_images
    images, labels = labelled_training_images("digits", 5000, size=16, mode="grey", holdout=300, seed=4)
    assert images.shape == (1797 - 300, 16, 16) and labels.shape == (1497,) and set(labels) == set(range(10))
    pool, _, held = _split("digits", digits(), None, 300, 4)
    assert not set(pool.tolist()) & set(held.tolist()) and len(pool) == 1497
    assert labelled_training_images("digits", 10, holdout=300, seed=4)[0].shape == (10, 8, 8)
