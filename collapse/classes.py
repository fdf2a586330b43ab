"""Classes in the loop: conditioning labels of samples, per-class selection, per-class figures (pure).

A class-conditional run (``model.num_classes = K >= 2``) trains every model on images with
their labels (ids 0..K-1) and asks it for a class per sample:

* ``assign_labels``: the label of sample i of generation n is a function of its identity only.
  Balanced (no weights): ``i mod K``, so every prefix of K*m samples holds exactly m of each
  class, with any number of sampler actors or retries, and the shared generation-1 pool's prefix
  of k*N samples is balanced for every strategy. With weights w: a draw from the categorical
  distribution w / sum(w) seeded by ``sample_seed(run seed, n, i, "label")`` (its own stream:
  the noise of the sample is unchanged).
* ``class_quotas``: a selection ``per_class`` keeps, of each class, its share of the candidates
  times the n kept, rounded by the largest-remainder rule (Hamilton's: floors, then one more to
  the classes of the largest fractional parts, ties to the lower class id), so the quotas add up
  to n exactly and a class never gets more than it has.
* ``select_per_class``: one selection per class among that class's candidates, with the class's
  quota and a seed of (seed, class); the result is one :class:`collapse.selection.Selection`
  over the whole candidate list, class after class.
* ``class_figures``: per class, H(D_n^c) (Kozachenko-Leonenko over D_n's images of class c),
  and over the samples generated for class c the mean distance to their nearest image of D_n
  (all of D_n, as GS is defined: the per-class GS weighted by the class counts is the GS) and the
  share within the copy radius rho; the class balance of D_n; and, from the sample-quality
  classifier's probabilities, the share of class-c samples it calls c ("agreement": a sample it
  rejects as not an image counts against).
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np

from collapse.entropy import kl_entropy
from collapse.errors import check_int
from collapse.novelty import within
from collapse.seeding import sample_seed

LABEL_STREAM = "label"


def check_labels(labels, num_classes: int, what: str) -> np.ndarray:
    """``labels`` as an int64 array, each in [0, num_classes); a ValueError naming ``what`` otherwise."""
    if any(v is None for v in labels):
        missing = next(i for i, v in enumerate(labels) if v is None)
        raise ValueError(f"{what}: item {missing} has no label; a class-conditional run needs one for every image")
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    bad = np.flatnonzero((y < 0) | (y >= num_classes))
    if bad.size:
        raise ValueError(f"{what}: label {int(y[bad[0]])} (item {int(bad[0])}) is not a class id of "
                         f"model.num_classes={num_classes}; allowed: 0..{num_classes - 1}")
    return y


def assign_labels(run_seed: int, generation: int, indices: Sequence[int], num_classes: int,
                  weights: Sequence[float] = ()) -> list[int]:
    """The conditioning label of each sample index (module docstring); a function of identity only."""
    check_int(num_classes, "num_classes", low=2)
    if not weights:
        return [int(i) % num_classes for i in indices]
    p = np.asarray(weights, dtype=np.float64)
    if p.shape != (num_classes,) or (p < 0).any() or p.sum() <= 0:
        raise ValueError(f"weights must be {num_classes} numbers >= 0 with a positive sum, got {list(weights)}")
    cdf = np.cumsum(p / p.sum())
    out = []
    for i in indices:
        u = np.random.default_rng(sample_seed(run_seed, generation, int(i), LABEL_STREAM)).random()
        out.append(int(min(np.searchsorted(cdf, u, side="right"), num_classes - 1)))
    return out


def class_counts(labels, num_classes: int) -> np.ndarray:
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)[:num_classes]


def class_quotas(counts: Sequence[int], n: int) -> np.ndarray:
    """How many of each class a per-class selection of n keeps (largest remainder; module docstring)."""
    c = np.asarray(counts, dtype=np.int64)
    total = int(c.sum())
    if not 0 <= n <= total:
        raise ValueError(f"cannot keep {n} of {total} candidates")
    exact = c * n / total if total else np.zeros(len(c))
    q = np.floor(exact).astype(np.int64)
    left = n - int(q.sum())
    order = sorted(range(len(c)), key=lambda j: (-(exact[j] - q[j]), j))
    for j in order[:left]:
        q[j] += 1
    return q


def class_seed(seed: int, c: int) -> int:
    """The selection seed of class c within a per-class selection seeded ``seed``."""
    state = np.random.SeedSequence(entropy=int(seed), spawn_key=(int(c),)).generate_state(1, dtype=np.uint64)
    return int(state[0]) >> 1


def select_per_class(features, labels, n: int, strategy: str, seed: int, num_classes: int,
                     select_fn: Callable | None = None, **params):
    """Keep n of the candidates, each class its quota (``class_quotas``), selecting within classes.

    ``select_fn(x, n, strategy, seed=..., **params) -> Selection`` (default collapse.selection.select;
    cluster.selection.sharded_select with its actor arguments bound works too). The result's indices,
    nearest items and reasons refer to rows of ``features``; its params add ``per_class`` (the quotas)."""
    from collapse.selection import Selection, select
    select_fn = select_fn or select
    x = np.asarray(features)
    y = check_labels(labels, num_classes, "candidates")
    if len(y) != len(x):
        raise ValueError(f"{len(y)} labels for {len(x)} candidates")
    quotas = class_quotas(class_counts(y, num_classes), n)
    parts, params_out = [], None
    for c in range(num_classes):
        if quotas[c] == 0:
            continue
        rows = np.flatnonzero(y == c)
        sel = select_fn(x[rows], int(quotas[c]), strategy, seed=class_seed(seed, c), **params)
        params_out = params_out or dict(sel.params)
        nearest = np.where(sel.nearest >= 0, rows[np.maximum(sel.nearest, 0)], -1)
        parts.append((rows[sel.indices], sel.distance, nearest, sel.pass_index, sel.tau))
    arrays = [np.concatenate([p[i] for p in parts]) for i in range(5)]
    arrays[0], arrays[2], arrays[3] = (arrays[i].astype(np.int64) for i in (0, 2, 3))
    for a in arrays:
        a.setflags(write=False)
    params_out = {**(params_out or {}), "per_class": [int(q) for q in quotas]}
    return Selection(strategy, int(seed), len(x), params_out, *arrays)


def agreement(probabilities: np.ndarray, labels, num_classes: int) -> tuple[list, float]:
    """(per class: the share of samples asked for as c that the classifier calls c, or None when
    there are none; over all samples). ``probabilities`` (M, K + 1): K classes and "not an image"."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = check_labels(labels, num_classes, "generated samples")
    if p.ndim != 2 or p.shape != (len(y), num_classes + 1):
        raise ValueError(f"probabilities must be ({len(y)}, {num_classes + 1}), got {p.shape}")
    hit = p.argmax(1) == y
    per = [float(hit[y == c].mean()) if (y == c).any() else None for c in range(num_classes)]
    return per, float(hit.mean()) if len(hit) else float("nan")


def balance_entropy(counts) -> float:
    """Entropy (nats) of a class histogram; ln K when balanced."""
    c = np.asarray(counts, dtype=np.float64)
    p = c[c > 0] / c.sum()
    return float(-(p * np.log(p)).sum())


def class_figures(train: Mapping[str, np.ndarray], train_labels, d1: Mapping[str, np.ndarray], generated_labels,
                  num_classes: int, copy_radius: Mapping[str, float]) -> dict:
    """Per-class figures of one generation (module docstring; lists are indexed by class id).

    train: {space: D_n's features (N, d)}; d1: {space: (M,) distance of each scored sample to its
    nearest image of D_n}; copy_radius: rho per space. Entropy is None for a class with fewer than
    2 images in D_n, GS and memorization None for a class with no sample."""
    yt = check_labels(train_labels, num_classes, "training set")
    yg = check_labels(generated_labels, num_classes, "generated samples")
    spaces = {}
    for space in sorted(train):
        x, d = np.asarray(train[space]), np.asarray(d1[space], dtype=np.float64)
        if len(x) != len(yt) or len(d) != len(yg):
            raise ValueError(f"{space}: {len(x)} training rows for {len(yt)} labels, {len(d)} distances for "
                             f"{len(yg)} labels")
        close = within(d, copy_radius[space])
        spaces[space] = {
            "entropy": [kl_entropy(x[yt == c]) if (yt == c).sum() >= 2 else None for c in range(num_classes)],
            "gs": [float(d[yg == c].mean()) if (yg == c).any() else None for c in range(num_classes)],
            "memorization_real_scale": [float(close[yg == c].mean()) if (yg == c).any() else None
                                        for c in range(num_classes)]}
    counts = class_counts(yt, num_classes)
    return {"num_classes": num_classes, "train_counts": counts.tolist(), "train_class_entropy": balance_entropy(counts),
            "generated_counts": class_counts(yg, num_classes).tolist(), "spaces": spaces}
