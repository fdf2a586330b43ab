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
