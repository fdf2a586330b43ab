"""The report's per-class view of a class-conditional run, and a strategy's own generation 1.

The run directory is built here in the real formats (as tests/report/test_report.py builds its
runs): K = 3 classes, every image of class c a flat grey of value 30 + 90 c plus a per-set offset
(so a grid's tile names its class and its set) and one dark pixel per sample (no two images
alike). ``greedy`` samples at guidance scale 1.5 against the run's 3.0, so it owns its generation
1 pool and figures; ``vanilla`` shares the shared generation 1. The report is read from its files;
Chromium is left to test_report.py.
"""
from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from collapse import config as cf
from collapse.data import manifest as mf
from collapse.data import storage
from collapse.data.samples import Sample, write_sample_set
from collapse.data.urls import RunLayout
from collapse.plan import SHARED
from collapse.report import render_report
from collapse.report.figures import first_by_label
from collapse.report.plots import class_grid
from collapse.report.read import read_run
from jobs.presets import load_config
from tests.report.test_report import Page, build_run, colour_pixels

K, SIZE, TILE, GAP, LABEL_WIDTH, SHOWN = 3, 16, 32, 2, 24, 8    # the grid as render.py draws it
RUN_SCALE, GREEDY_SCALE = 3.0, 1.5
# per set: (owner, generation) -> (offset of its grey values, conditioning labels of its 24 samples)
POOLS = {(SHARED, 1): (1, [i % K for i in range(24)]),
         ("greedy", 1): (2, [i % K for i in range(24)]),
         ("vanilla", 2): (3, [0] * 10 + [1] * 11 + [2] * 3),          # class 2: fewer than a grid row
         ("greedy", 2): (4, [0] * 12 + [2] * 12)}                      # class 1: none at all
TRAIN_COUNTS = {(SHARED, 1): [8, 8, 8], ("vanilla", 2): [10, 10, 4], ("greedy", 2): [9, 6, 9]}
AGREEMENT = {(SHARED, 1): 0.8, ("greedy", 1): 0.6, ("vanilla", 2): 0.7, ("greedy", 2): 0.5}
GS = {(SHARED, 1): 100.0, ("greedy", 1): 80.0, ("vanilla", 2): 90.0, ("greedy", 2): 70.0}


def grey(c: int, offset: int) -> int:
    return 30 + 90 * c + offset


def class_images(labels, offset: int) -> np.ndarray:
    """(n, 16, 16) uint8: image i flat at grey(label, offset), one pixel (at i) black."""
    out = np.stack([np.full((SIZE, SIZE), grey(c, offset), np.uint8) for c in labels])
    for i in range(len(out)):
        out[i].flat[i % (SIZE * SIZE)] = 0
    return out


def write_set(url, keys, labels, offset, source, model=None, scale=None):
    def meta(i, c):
        m = {"source": source, "label": c}
        return m if model is None else {**m, "model": model, "seed": i, "guidance_scale": scale}
    images = class_images(labels, offset)
    write_sample_set(url, (Sample(k, im, meta(i, c)) for i, (k, im, c) in enumerate(zip(keys, images, labels))),
                     shard_size=4)


def entropy(counts) -> float:
    p = np.asarray(counts, float) / sum(counts)
    return float(-(p[p > 0] * np.log(p[p > 0])).sum())


def classes_figures(key, train_counts) -> dict:
    """A made-up ``classes`` entry of metrics.json (collapse.classes.class_figures plus agreement)."""
    gen_counts = np.bincount(POOLS[key][1], minlength=K).tolist()
    per = lambda v: [v if n else None for n in gen_counts]   # noqa: E731
    return {"num_classes": K, "guidance_scale": GREEDY_SCALE if key == ("greedy", 1) else RUN_SCALE,
            "train_counts": train_counts, "train_class_entropy": entropy(train_counts),
            "generated_counts": gen_counts,
            "spaces": {"pixel": {"entropy": [300.0 + c for c in range(K)], "gs": per(GS[key]),
                                 "memorization_real_scale": per(0.25)}},
            "agreement": per(AGREEMENT[key]), "agreement_mean": AGREEMENT[key], "real_agreement": 0.9}


def build_class_run(root: str) -> RunLayout:
    """config (K = 3; greedy at its own guidance scale, per class), real/, the shared generation 1,
    greedy's own generation-1 pool and figures, both strategies' generation 2."""
    L = RunLayout(root)
    cfg = cf.to_dict(load_config("tiny", [f"run.run_dir={root}", "run.generations=2"]))
    cfg["model"]["num_classes"], cfg["sample"]["guidance_scale"] = K, RUN_SCALE
    greedy = next(s for s in cfg["strategies"] if s["name"] == "greedy")
    greedy["guidance_scale"], greedy["per_class"] = GREEDY_SCALE, True
    storage.write_bytes(L.config, yaml.safe_dump(cfg, sort_keys=False).encode())
    storage.write_bytes(L.config + ".json", json.dumps(cfg).encode())
    real = [i % K for i in range(33)]
    write_set(L.real("train"), [f"real-{i:04d}" for i in range(30)], real[:30], 0, "real")
    write_set(L.real("holdout"), [f"real-{i:04d}" for i in range(30, 33)], real[30:], 0, "real")
    for (owner, n), (offset, labels) in POOLS.items():
        counts = TRAIN_COUNTS.get((owner, n), TRAIN_COUNTS[(SHARED, 1)])
        if (owner, n) in TRAIN_COUNTS:        # greedy's own generation 1 has no train set and no model
            t_labels = [c for c in range(K) for _ in range(counts[c])]
            write_set(L.train_set(owner, n), [f"t{n}-{i:04d}" for i in range(24)], t_labels, 0 if n == 1 else 9,
                      "real" if n == 1 else "gen-001", None if n == 1 else L.model(SHARED, 1), RUN_SCALE)
            mf.write_manifest(L.model(owner, n), {"kind": "model", "steps": 20})
        scale = GREEDY_SCALE if (owner, n) == ("greedy", 1) else RUN_SCALE
        write_set(L.pool(owner, n), [f"gen-{n:03d}-{i:07d}" for i in range(24)], labels, offset, f"gen-{n:03d}",
                  L.model(owner if (owner, n) in TRAIN_COUNTS else SHARED, n), scale)
        pixel = {"entropy": 320.0, "gs": GS[(owner, n)], "memorization_real_scale": 0.25}
        m = {"strategy": owner, "generation": n, "spaces": {"pixel": pixel}, "real_share": 1.0 / n, "quality": None,
             "train_count": 24, "pool_count": 24, "scored_count": 24, "holdout_count": 3, "stage_seconds": {},
             "classes": classes_figures((owner, n), counts)}
        storage.write_bytes(L.metrics(owner, n), json.dumps(m).encode())
    for s in ("vanilla", "greedy"):
        mf.write_manifest(L.selection(s, 1), {"kind": "selection", "strategy": s, "kept": []})
    return L


@pytest.fixture(scope="module")
def conditional(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs") / "classes"
    L = build_class_run(str(root))
    index = Path(render_report([str(root)]))
    return L, index, index.read_text()


def reference_line(png: Path, box: list[int]) -> int:
    """The most dark-grey pixels in one pixel row of the axes box: a dotted horizontal reference line
    (plots.line_plot draws it #444444, anti-aliased; the series are coloured, the grid light)."""
    a = np.asarray(Image.open(png).convert("RGB")).astype(int)[box[1]:box[3], box[0]:box[2]]
    grey_dark = (a[..., 0] == a[..., 1]) & (a[..., 1] == a[..., 2]) & (a[..., 0] < 160)
    return int(grey_dark.sum(axis=1).max())


def tile(png: np.ndarray, row: int, column: int) -> np.ndarray:
    x, y = LABEL_WIDTH + GAP + column * (TILE + GAP), GAP + row * (TILE + GAP)
    return png[y:y + TILE, x:x + TILE]


# -- tests

def test_a_strategy_with_its_own_generation_one_gets_its_own_row_and_the_others_the_shared_one(conditional):
    L, _, _ = conditional
    rows = read_run(L.root).rows
    first = {s: [r for r in rows if r["strategy"] == s and r["generation"] == 1] for s in ("vanilla", "greedy")}
    assert [(r["shared"], r["classes"]["guidance_scale"], r["classes"]["agreement_mean"]) for r in first["greedy"]] \
        == [(False, GREEDY_SCALE, AGREEMENT[("greedy", 1)])]
    assert [(r["shared"], r["classes"]["guidance_scale"], r["classes"]["agreement_mean"]) for r in first["vanilla"]] \
        == [(True, RUN_SCALE, AGREEMENT[(SHARED, 1)])]
    assert sorted((r["strategy"], r["generation"]) for r in rows) == [("greedy", 1), ("greedy", 2), ("vanilla", 1),
                                                                      ("vanilla", 2)]


def test_the_plots_count_every_generation_once_and_show_the_class_balance_against_ln_k(conditional):
    _, index, text = conditional
    figs = {f["plot"]: f for f in Page(text).figures}
    scatter = figs["pixel-gs-entropy"]
    assert {s["strategy"]: s["points"] for s in scatter["series"]} == {SHARED: 1, "greedy": 2, "vanilla": 1}
    gs = {s["strategy"]: s["values"] for s in figs["pixel-gs"]["series"]}
    assert gs == {"vanilla": [GS[(SHARED, 1)], GS[("vanilla", 2)]], "greedy": [GS[("greedy", 1)], GS[("greedy", 2)]]}

    balance = figs["classes.train_class_entropy"]
    got = {s["strategy"]: (s["generations"], s["values"]) for s in balance["series"]}
    assert got == {"vanilla": ([1, 2], [pytest.approx(math.log(K)), pytest.approx(entropy([10, 10, 4]))]),
                   "greedy": ([1, 2], [pytest.approx(math.log(K)), pytest.approx(entropy([9, 6, 9]))])}
    agree = {s["strategy"]: s["values"] for s in figs["classes.agreement_mean"]["series"]}
    assert agree == {"vanilla": [0.8, 0.7], "greedy": [0.6, 0.5]}
    for plot in ("classes.train_class_entropy", "classes.agreement_mean"):     # the dotted reference is drawn
        f = figs[plot]
        assert reference_line(index.parent / f"plots/{plot}.png", f["axes-box"]) >= 60, plot
        for s in f["series"]:
            assert colour_pixels(index.parent / f"plots/{plot}.png", f["axes-box"], s["colour"]) >= 8, (plot, s)
    assert reference_line(index.parent / "plots/real_share.png", figs["real_share"]["axes-box"]) == 0


def test_the_per_class_section_has_a_table_and_one_grid_row_per_class(conditional):
    L, index, text = conditional
    page = Page(text)
    assert text.count("<h2 id='per-class'>Per class</h2>") == 1
    assert text.count(">count in D_n</td>") == 4          # shared generation 1 once, greedy's own, two of generation 2
    assert ">count in D_n</td><td>10</td><td>10</td><td>4</td><td>24</td>" in text
    assert "greedy 1.5 (its own generation 1), per-class selection" in text
    sets = {"real-train": (0, [i % K for i in range(30)]),
            **{f"{o}-gen-{n:03d}": v for (o, n), v in POOLS.items()}}
    for stem, (offset, labels) in sets.items():
        name = f"grids/run1-{stem}-classes.png"
        assert name in page.images, name
        png = np.asarray(Image.open(index.parent / name).convert("L"))
        assert png.shape == (K * (TILE + GAP) + GAP, LABEL_WIDTH + SHOWN * (TILE + GAP) + GAP), stem
        for c in range(K):
            shown = min(SHOWN, labels.count(c))
            for j in range(SHOWN):
                t = tile(png, c, j)
                if j < shown:
                    assert np.median(t) == grey(c, offset), (stem, c, j)      # class c, from this very set
                elif j > 0 or shown:                                           # (slot 0 of an empty row says "none")
                    assert (t == 255).all(), (stem, c, j)


def test_a_strategys_own_generation_one_shows_its_samples_against_the_shared_d1_and_its_artefacts(conditional):
    L, index, text = conditional
    page = Page(text)
    for name in ("samples", "neighbours"):
        assert f"grids/run1-greedy-gen-001-{name}.png" in page.images
    assert "run1-vanilla-gen-001-samples.png" not in text
    assert "P_1, 24 generated, guidance scale 1.5" in text
    for target in ("greedy/gen-001/metrics.json", "greedy/gen-001/pool/manifest.json"):
        assert any(h.endswith(target) for h in page.links), target
    assert "the shared D_1" in text and "the shared M_1" in text
    for src in page.images:
        assert (index.parent / src).exists(), src


def test_an_unconditional_run_has_no_per_class_view_and_keeps_the_shared_generation_one(tmp_path):
    root = tmp_path / "run"
    build_run(str(root))
    text = Path(render_report([str(root)])).read_text()
    assert "Per class" not in text and "-classes.png" not in text and "plots/classes." not in text
    assert "the shared D_" not in text and "guidance scale" not in text
    gen1 = [(r["strategy"], r["shared"]) for r in read_run(str(root)).rows if r["generation"] == 1]
    assert gen1 == [("vanilla", True), ("greedy", True)]


def test_first_by_label_reads_only_as_far_as_it_needs():
    consumed = []

    def samples(labels):
        for i, c in enumerate(labels):
            consumed.append(i)
            yield Sample(f"s{i}", np.full((4, 4), i, np.uint8), {"label": c})

    rows = first_by_label(samples([0, 0, 1, 0, 7, 1, 1, 0]), 2, 2, 100)
    assert [[int(im[0, 0]) for im in row] for row in rows] == [[0, 1], [2, 5]] and consumed == list(range(6))
    consumed.clear()
    rows = first_by_label(samples([0] * 50), 2, 2, 10)
    assert [len(r) for r in rows] == [2, 0] and len(consumed) == 10


def test_class_grid_draws_one_row_per_class_even_when_empty():
    rgb = lambda v: np.full((8, 8, 3), v, np.uint8)     # noqa: E731
    png = class_grid([[rgb(10)] * 5, [], [rgb(200)]], columns=4, tile=16, gap=3, label_width=20)
    a = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert a.shape == (3 * (16 + 3) + 3, 20 + 4 * (16 + 3) + 3, 3)
    assert (a[3:19, 23:39] == 10).all() and (a[3:19, 23 + 3 * 19:39 + 3 * 19] == 10).all()
    assert (a[3 + 2 * 19:19 + 2 * 19, 23:39] == 200).all() and (a[3 + 2 * 19:, 23 + 19:] == 255).all()
    with pytest.raises(ValueError):
        class_grid([[], []])
