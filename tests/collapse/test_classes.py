"""collapse.classes: conditioning labels by identity, per-class quotas and selection, per-class figures."""
import math

import numpy as np
import pytest

from collapse import classes as C
from collapse.selection import select


def test_balanced_labels_hold_every_class_equally_in_every_prefix_of_k_m():
    labels = C.assign_labels(0, 1, range(300), 10)
    for m in (1, 7, 30):
        assert np.bincount(labels[:10 * m], minlength=10).tolist() == [m] * 10


def test_a_label_depends_on_the_sample_identity_only():
    for weights in ((), (1, 2, 3, 4)):
        whole = C.assign_labels(3, 2, range(200), 4, weights)
        parts = C.assign_labels(3, 2, range(120, 200), 4, weights) + C.assign_labels(3, 2, range(120), 4, weights)
        assert whole[120:] + whole[:120] == parts
        assert C.assign_labels(3, 2, [150, 7], 4, weights) == [whole[150], whole[7]]


def test_weighted_labels_follow_the_configured_distribution():
    w = np.array([0.5, 0.3, 0.2, 0.0])
    y = np.array(C.assign_labels(1, 1, range(20000), 4, tuple(w)))
    share = np.bincount(y, minlength=4) / len(y)
    sigma = np.sqrt(w * (1 - w) / len(y))
    assert (np.abs(share - w) <= 5 * sigma + 1e-12).all(), share
    assert share[3] == 0
    other_generation = C.assign_labels(1, 2, range(20000), 4, tuple(w))
    assert other_generation != y.tolist()  # each generation draws its own labels


@pytest.mark.parametrize("weights", [(1, 1), (1, -1, 1), (0, 0, 0)])
def test_bad_weights_are_refused(weights):
    with pytest.raises(ValueError, match="weights must be 3 numbers"):
        C.assign_labels(0, 1, range(5), 3, weights)


def test_quotas_add_up_to_n_and_follow_the_shares():
    assert C.class_quotas([20, 20, 20, 20], 40).tolist() == [10, 10, 10, 10]
    assert C.class_quotas([10, 20, 30], 30).tolist() == [5, 10, 15]
    # 7 * (1/3, 1/3, 1/3) = 2.33 each: one more seat goes to the lowest class id
    assert C.class_quotas([3, 3, 3], 7).tolist() == [3, 2, 2]
    assert C.class_quotas([5, 0, 5], 0).tolist() == [0, 0, 0]
    rng = np.random.default_rng(0)
    for _ in range(200):
        counts = rng.integers(0, 30, size=rng.integers(2, 12))
        if counts.sum() == 0:
            continue
        n = int(rng.integers(0, counts.sum() + 1))
        q = C.class_quotas(counts, n)
        exact = counts * n / counts.sum()
        assert q.sum() == n and (q <= counts).all() and (np.abs(q - exact) < 1).all()
    with pytest.raises(ValueError, match="cannot keep 11 of 10"):
        C.class_quotas([5, 5], 11)


@pytest.mark.parametrize("kind,params", [("greedy", {}), ("tdf", {"tau0": 2.0, "alpha": 0.9}), ("random", {})])
def test_per_class_selection_keeps_each_class_share_exactly_and_selects_within_classes(kind, params):
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(4), [30, 50, 40, 40])[rng.permutation(160)]
    x = rng.normal(size=(160, 5)) + 3 * y[:, None]
    sel = C.select_per_class(x, y.tolist(), 80, kind, 7, 4, **params)
    assert np.bincount(y[sel.indices], minlength=4).tolist() == [15, 25, 20, 20] == sel.params["per_class"]
    assert len(set(sel.indices.tolist())) == 80 and sel.n_pool == 160
    start = 0
    for c, q in enumerate([15, 25, 20, 20]):
        rows = np.flatnonzero(y == c)
        alone = select(x[rows], q, kind, seed=C.class_seed(7, c), **params)
        assert sel.indices[start:start + q].tolist() == rows[alone.indices].tolist()
        near = sel.nearest[start:start + q]
        assert (y[near[near >= 0]] == c).all()  # a kept item's nearest kept item is of its class
        start += q


def test_per_class_selection_names_a_missing_label():
    with pytest.raises(ValueError, match="candidates: item 2 has no label"):
        C.select_per_class(np.zeros((3, 2)), [0, 1, None], 2, "greedy", 0, 2)
    with pytest.raises(ValueError, match="label 5 .* allowed: 0..1"):
        C.select_per_class(np.zeros((3, 2)), [0, 1, 5], 2, "greedy", 0, 2)


def test_per_class_entropy_of_gaussian_classes_matches_the_closed_form():
    rng = np.random.default_rng(2)
    sigmas, d, per = (0.5, 1.0, 2.0), 2, 3000
    x = np.concatenate([rng.normal(scale=s, size=(per, d)) for s in sigmas])
    y = np.repeat(np.arange(3), per)
    gen_y = np.array([0, 0, 1, 2, 2, 2])
    d1 = np.array([1.0, 3.0, 2.0, 0.0, 0.5, 4.0])
    out = C.class_figures({"pixel": x}, y, {"pixel": d1}, gen_y, 3, {"pixel": 1.0})
    for h, s in zip(out["spaces"]["pixel"]["entropy"], sigmas):
        assert h == pytest.approx(0.5 * d * math.log(2 * math.pi * math.e * s * s), abs=0.05)
    assert out["train_counts"] == [per] * 3 and out["generated_counts"] == [2, 1, 3]
    assert out["train_class_entropy"] == pytest.approx(math.log(3))
    gs, mem = out["spaces"]["pixel"]["gs"], out["spaces"]["pixel"]["memorization_real_scale"]
    assert gs == pytest.approx([2.0, 2.0, 1.5]) and mem == pytest.approx([0.0, 0.0, 2 / 3])
    # the per-class figures weighted by the class counts are the figures of the whole generation
    w = np.array(out["generated_counts"]) / len(d1)
    assert float(np.dot(w, gs)) == pytest.approx(d1.mean())
    assert float(np.dot(w, mem)) == pytest.approx(np.mean((d1 < 1.0) | (d1 == 0)))


def test_a_class_without_samples_or_images_has_no_figure():
    out = C.class_figures({"pixel": np.eye(3)}, [0, 0, 0], {"pixel": np.ones(2)}, [0, 0], 2, {"pixel": 0.5})
    assert out["spaces"]["pixel"]["entropy"][1] is None and out["spaces"]["pixel"]["gs"][1] is None
    assert out["train_class_entropy"] == 0.0


def test_agreement_counts_a_rejected_sample_against_its_class():
    p = np.array([[0.8, 0.1, 0.1],    # asked 0, called 0
                  [0.2, 0.7, 0.1],    # asked 0, called 1
                  [0.1, 0.2, 0.7],    # asked 1, rejected (not an image)
                  [0.1, 0.8, 0.1]])   # asked 1, called 1
    per, mean = C.agreement(p, [0, 0, 1, 1], 2)
    assert per == [0.5, 0.5] and mean == 0.5
    per, _ = C.agreement(p[:2], [0, 0], 2)
    assert per == [0.5, None]
    with pytest.raises(ValueError, match=r"probabilities must be \(4, 3\)"):
        C.agreement(p[:, :2], [0, 0, 1, 1], 2)
