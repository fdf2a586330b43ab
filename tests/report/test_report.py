"""The report: rendered from a run directory alone, opened in headless Chromium.

The run directories are built here in the real formats (sample sets, manifests, metrics, stage
records, the resolved config of the ``tiny`` preset): a real tiny loop takes minutes, these take
well under a second. One pool holds an exact copy of a training image, so the memorization
evidence has something to show.
"""
from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from collapse import config as cf
from collapse.data import manifest as mf
from collapse.data import storage
from collapse.data.samples import Sample, write_sample_set
from collapse.data.urls import RunLayout
from collapse.forecast import backtest
from collapse.plan import SHARED
from collapse.report import render_report
from collapse.report.figures import METRICS, QUALITY_METRICS, nearest_training
from collapse.report import html as H
from collapse.report.html import href
from collapse.report.plots import hex_to_rgb, pearson_r
from jobs.presets import load_config

STRATEGIES = ("vanilla", "greedy")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-extensions", "--hide-scrollbars", "--run-all-compositor-stages-before-draw",
                  "--virtual-time-budget=5000", "--window-size=1280,900"]


# -- a tiny run directory in the real formats

def _images(rng, n, base=None):
    """(n, 16, 16) uint8: smooth blobs plus noise (or noisy variations of ``base``)."""
    yy, xx = np.mgrid[0:16, 0:16]
    out = []
    for i in range(n):
        if base is not None:
            img = base[i % len(base)].astype(float) + rng.normal(0, 25, (16, 16))
        else:
            cy, cx, r = rng.uniform(4, 12), rng.uniform(4, 12), rng.uniform(3, 7)
            img = 220 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r)) + rng.normal(0, 10, (16, 16))
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return np.stack(out)


def _set(url, keys, images, source, so, model=None):
    meta = lambda i: {"source": source, **({"model": model, "seed": i} if model else {})}   # noqa: E731
    write_sample_set(url, (Sample(k, im, meta(i)) for i, (k, im) in enumerate(zip(keys, images))),
                     shard_size=16, storage_options=so)


def _metrics(strategy_index: int, n: int) -> dict:
    """Made-up figures: generation 1 equal for all, then a different value per strategy and metric."""
    step = 0 if n == 1 else (n - 1) * (1 + strategy_index)
    return {m.key: 0.5 + 0.1 * j - 0.03 * step if m.unit == "fraction" else 100.0 * (j + 1) - 7.0 * step
            for j, m in enumerate(METRICS)}


def _quality(strategy_index: int, n: int) -> dict:
    """Made-up classifier figures: vanilla's generation 2 and later fall below half the real confidence."""
    conf = 0.7 if n == 1 or strategy_index else 0.3
    return {"confidence": conf, "class_histogram": [12, 12], "class_entropy": 0.69 - 0.01 * n, "rejected": 0.1 * n,
            "real_confidence": 0.8, "real_rejected": 0.0, "real_class_entropy": 0.69, "confidence_ratio": conf / 0.8,
            "recognizable": conf / 0.8 >= 0.5}


def build_run(root: str, so=None, generations: int = 2) -> RunLayout:
    """config, real/, shared gen 1, per strategy its selections and generations 2..G, stage records."""
    L, rng = RunLayout(root), np.random.default_rng(0)
    cfg = load_config("tiny", [f"run.run_dir={root}", f"run.generations={generations}"])
    storage.write_bytes(L.config, cf.to_yaml(cfg).encode(), so)
    storage.write_bytes(L.config + ".json", json.dumps(cf.to_dict(cfg)).encode(), so)
    real = _images(rng, 40)
    _set(L.real("train"), [f"real-{i:04d}" for i in range(32)], real[:32], "real", so)
    _set(L.real("holdout"), [f"real-{i:04d}" for i in range(32, 40)], real[32:], "real", so)
    stages, rows = ["ingest", "featurize-real", f"{SHARED}/gen-001/train-set"], []
    train_keys, train_imgs = {s: [f"real-{i:04d}" for i in range(24)] for s in STRATEGIES}, real[:24]
    for n in range(1, generations + 1):
        owners = [SHARED] if n == 1 else list(STRATEGIES)
        for o in owners:
            t_keys, t_imgs = train_keys[STRATEGIES[0] if o == SHARED else o], train_imgs
            _set(L.train_set(o, n), t_keys, t_imgs, "real" if n == 1 else f"gen-{n - 1:03d}", so,
                 None if n == 1 else L.model(o, n - 1))
            mf.write_manifest(L.model(o, n), {"kind": "model", "steps": 20}, so)
            pool = _images(rng, 24, base=t_imgs)
            pool[3] = t_imgs[5]                                   # a memorized copy
            _set(L.pool(o, n), [f"gen-{n:03d}-{i:07d}" for i in range(24)], pool, f"gen-{n:03d}", so,
                 L.model(o, n))
            i = 0 if o == SHARED else STRATEGIES.index(o)
            m = {"strategy": o, "generation": n, "spaces": {"pixel": _metrics(i, n)}, "real_share": 1.0 / n - 0.1 * i,
                 "quality": _quality(i, n), "train_count": 24, "pool_count": 24, "scored_count": 24, "holdout_count": 8, "stage_seconds": {}}
            storage.write_bytes(L.metrics(o, n), json.dumps(m).encode(), so)
            rows += [dict(m, strategy=s, shared=o == SHARED) for s in (STRATEGIES if o == SHARED else [o])]
            stages += [f"{o}/gen-{n:03d}/{x}" for x in ("train", "sample", "featurize", "score")]
        if n < generations:
            for s in STRATEGIES:
                mf.write_manifest(L.selection(s, n), {"kind": "selection", "strategy": s, "kept": []}, so)
                stages.append(f"{s}/gen-{n:03d}/select")
                train_keys[s] = [f"gen-{n:03d}-{i:07d}" for i in range(24)]
            train_imgs = pool
    for k in stages:
        mf.write_manifest(L.stage_record(k), {"kind": "stage", "key": k, "config_hash": "x", "wall_s": 1.25}, so)
    storage.write_bytes(L.metrics_log, "".join(json.dumps(r) + "\n" for r in rows).encode(), so)
    return L


# -- reading the page

class Page(HTMLParser):
    """The <img> sources, <a> targets, figures (their data-* attributes) and <body> attributes of a page."""

    def __init__(self, text: str):
        super().__init__()
        self.images, self.links, self.figures, self.body = [], [], [], {}
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a["src"])
        elif tag == "a":
            self.links.append(a["href"])
        elif tag == "figure" and "data-plot" in a:
            self.figures.append({k[5:]: (v if k in ("data-plot", "data-kind", "data-ylabel") else json.loads(v))
                                 for k, v in a.items() if k.startswith("data-")})
        elif tag == "body":
            self.body = a


def chromium(*args, timeout=60) -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("chromium is missing: the report test opens the page in headless Chromium. Install it with: "
                    "bash infra/install-system.sh (Debian package chromium)", pytrace=False)
    out = subprocess.run([exe, *CHROMIUM_FLAGS, *args], capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def colour_pixels(png: Path, box: list[int], colour: str) -> int:
    """How many pixels inside the axes box (left, top, right, bottom) have exactly ``colour``."""
    a = np.asarray(Image.open(png).convert("RGB"))[box[1]:box[3], box[0]:box[2]]
    return int((a == np.array(hex_to_rgb(colour), dtype=np.uint8)).all(axis=-1).sum())


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs") / "tiny"
    L = build_run(str(root))
    index = render_report([str(root)])
    return L, Path(index)


# -- tests

def test_the_report_of_a_finished_run_opens_in_chromium_with_every_image_and_line(finished, tmp_path):
    L, index = finished
    assert index == Path(L.report) / "index.html"
    page = Page(index.read_text())
    dom = Page(chromium(f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", index.as_uri()))
    assert dom.body.get("data-ready") == "yes", "the page's image check never ran"
    assert json.loads(dom.body["data-broken"]) == [] and int(dom.body["data-images"]) == len(page.images) > 20

    lines = [f for f in page.figures if f["kind"] == "line"]
    assert {f["plot"] for f in lines} == ({f"pixel-{m.key}" for m in METRICS} | {"real_share"}
                                          | {m.key for m in QUALITY_METRICS})
    for f in page.figures:
        strategies = [s["strategy"] for s in f["series"]]
        want = [*STRATEGIES] if f["kind"] == "line" else [SHARED, *STRATEGIES]
        assert strategies == want, f["plot"]
        for s in f["series"]:
            if f["kind"] == "line":
                assert s["generations"] == [1, 2] and all(math.isfinite(v) for v in s["values"])
            assert colour_pixels(index.parent / f"plots/{f['plot']}.png", f["axes-box"], s["colour"]) >= 8, \
                f"{f['plot']}: no line of {s['strategy']} ({s['colour']}) inside the axes"

    shot = tmp_path / "report.png"
    chromium(f"--user-data-dir={tmp_path / 'profile2'}", f"--screenshot={shot}", index.as_uri())
    img = np.asarray(Image.open(shot).convert("L"))
    assert img.shape[1] == 1280 and (img < 200).mean() > 0.02, "the screenshot is blank"


def test_the_page_shows_the_central_figure_the_evidence_the_config_and_relative_links(finished):
    L, index = finished
    text = index.read_text()
    page = Page(text)
    scatter = next(f for f in page.figures if f["kind"] == "scatter")
    assert scatter["plot"] == "pixel-gs-entropy" and -1 <= scatter["pearson-r"] <= 1
    assert sum(s["points"] for s in scatter["series"]) == 3          # shared generation 1 counted once
    assert "copy?" in text and "H(D_n) [nats], pixel space" in text and "pixel values 0-255" in text
    # the warning names exactly the generations the classifier does not recognize (vanilla's 2nd)
    warning = re.search(r"<div class='warning'>(.*?)</div>", text, re.S).group(1)
    assert re.findall(r"<li>(\w+), generation (\d+)", warning) == [("vanilla", "2")]
    assert "0.3 against 0.8" in warning and text.count("not recognizable</span>") == 1
    assert cf.config_hash(json.loads(Path(L.config + ".json").read_text())) in text
    for name in ("train", "sample", "featurize", "score", "select"):
        assert f"<th>{name}</th>" in text
    assert page.links and all(not re.match(r"^(/|[a-z]+:)", h) for h in page.links), "links must be relative"
    for h in page.links:
        assert (index.parent / h).exists(), f"broken artefact link {h}"
    for want in ("model/", "shard-000000.tar", "selection/manifest.json", "metrics.json", "config.yaml"):
        assert any(h.endswith(want) for h in page.links), want


def test_a_partial_run_renders_what_is_done(tmp_path):
    root = tmp_path / "run"
    L = build_run(str(root), generations=3)
    for path in (Path(L.metrics("greedy", 3)), Path(L.pool("greedy", 3)) / "manifest.json"):
        path.unlink()
    for stage in ("sample", "featurize", "score"):
        shutil.rmtree(Path(L.stage_record(f"greedy/gen-003/{stage}")))
    index = Path(render_report([str(root)], str(tmp_path / "out")))
    text = index.read_text()
    page = Page(text)
    entropy = next(f for f in page.figures if f["plot"] == "pixel-entropy")
    assert {s["strategy"]: s["generations"] for s in entropy["series"]} == {"vanilla": [1, 2, 3], "greedy": [1, 2]}
    assert "<span class='partial'>greedy 2/3</span>" in text and "vanilla 3/3" in text
    assert "run1-greedy-gen-003-samples.png" not in text and "run1-vanilla-gen-003-samples.png" in text
    assert all(h.startswith("file://") for h in page.links), "a report outside the run links absolutely"


def test_the_forecast_section_holds_each_generation_forecast_from_the_ones_before(tmp_path):
    root = tmp_path / "run"
    build_run(str(root), generations=3)
    text = Path(render_report([str(root)], str(tmp_path / "out"))).read_text()
    section = text[text.index("<h2>Forecast: GS from H(D_n)</h2>"):text.index("<h2>Metrics against generation</h2>")]
    # generation 3 of each strategy is forecast from the 3 scored generations before it (shared 1, both 2s)
    from collapse.report.read import read_run
    bt = backtest(read_run(str(root)).rows, "pixel")
    assert [(r["strategy"], r["generation"], r["points"]) for r in bt] == \
        [("greedy", 2, 1), ("vanilla", 2, 1), ("greedy", 3, 3), ("vanilla", 3, 3)], bt
    assert "run, pixel space: 2 generations forecast" in section and "of 2 inside their interval" in section
    cells = [re.findall(r"<td[^>]*>([^<]*)</td>", tr) for tr in section.split("<tr>")[2:]]
    for r, row in zip(bt, cells):
        fc = r["forecast"]
        assert row[:4] == [r["strategy"], str(r["generation"]), str(r["points"]), H.num(r["h"])], row
        assert row[4:6] == ([H.num(fc["gs"]), f"[{H.num(fc['low'])}, {H.num(fc['high'])}]"] if fc else ["-", "-"]), row
        assert row[8] == H.num(r["gs"]) and row[10] == ("-" if fc is None else "yes" if r["inside"] else "no"), row
    # the plot: each forecast generation at (measured GS, forecast GS), in the strategy's colour
    plot = next(f for f in Page(text).figures if f["plot"] == "pixel-forecast")
    assert plot["points"] == 2 and plot["runs"] == ["run"]
    _assert_colours_drawn(tmp_path / "out" / "plots" / "pixel-forecast.png", plot["axes-box"], ("vanilla", "greedy"))


def _assert_colours_drawn(png: Path, box: list[int], strategies) -> None:
    """Pixels of each strategy's colour inside the axes box (the legend lies outside it)."""
    from collapse.report.plots import assign_colours
    colours = assign_colours(list(strategies))
    for st in strategies:
        assert colour_pixels(png, box, colours[st]) >= 8, st


def test_the_forecast_plot_holds_every_run_given_and_a_stopped_chain_says_why(tmp_path):
    """`collapse report A B`: one forecast plot per space with the forecast generations of both runs; a
    chain ended by run.stop_chain_below_rho (its selection manifest's "stop") is named with its reason."""
    for name in ("a", "b"):
        build_run(str(tmp_path / name), generations=3)
    L = RunLayout(str(tmp_path / "b"))
    rec = json.loads(Path(L.selection("greedy", 2), "manifest.json").read_text())
    rec["stop"] = {"generation": 3, "why": "greedy stops before training M_3: because a test says so"}
    Path(L.selection("greedy", 2), "manifest.json").write_text(json.dumps(rec))
    index = Path(render_report([str(tmp_path / "a"), str(tmp_path / "b")], str(tmp_path / "both")))
    text = index.read_text()
    plot = next(f for f in Page(text).figures if f["plot"] == "pixel-forecast")
    assert plot["points"] == 4 and plot["runs"] == ["a", "b"]
    _assert_colours_drawn(index.parent / "plots" / "pixel-forecast.png", plot["axes-box"], ("vanilla", "greedy"))
    assert "b: greedy stops before training M_3: because a test says so; the chain ends at generation 2." in text
    assert text.count("the chain ends at generation") == 1


def test_a_run_with_nothing_scored_yet_renders(tmp_path):
    L = RunLayout(str(tmp_path / "run"))
    cfg = load_config("tiny", [f"run.run_dir={L.root}"])
    storage.write_bytes(L.config + ".json", json.dumps(cf.to_dict(cfg)).encode())
    text = Path(render_report([L.root])).read_text()
    assert "No generation is scored yet" in text and "vanilla 0/2" in text


def test_several_runs_give_one_line_per_strategy_and_run(tmp_path):
    for name in ("a", "b"):
        build_run(str(tmp_path / name))
    index = render_report([str(tmp_path / "a"), str(tmp_path / "b")], str(tmp_path / "both"))
    gs = next(f for f in Page(Path(index).read_text()).figures if f["plot"] == "pixel-gs")
    assert [s["label"] for s in gs["series"]] == ["a / vanilla", "a / greedy", "b / vanilla", "b / greedy"]


def test_the_report_is_written_through_storage_on_s3(moto_bucket):
    endpoint, bucket = moto_bucket
    so, root = endpoint.storage_options, f"{bucket}/run"
    build_run(root, so)
    index = render_report([root], storage_options=so)
    assert index == f"{root}/report/index.html"
    page = Page(storage.read_bytes(index, so).decode())
    for src in page.images:
        assert storage.exists(f"{root}/report/{src}", so), src
    assert all(not h.startswith("s3:") for h in page.links)


def test_the_cli_renders_a_report(tmp_path, capsys):
    from jobs.cli import main
    build_run(str(tmp_path / "run"))
    assert main(["report", str(tmp_path / "run"), "--out", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "out" / "index.html")


def test_pearson_r_closed_forms():
    x = np.arange(10.0)
    assert pearson_r(x, 3 * x + 1) == pytest.approx(1.0)
    assert pearson_r(x, -x) == pytest.approx(-1.0)
    assert pearson_r([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert math.isnan(pearson_r([1.0], [2.0])) and math.isnan(pearson_r([1, 2], [5, 5]))


def test_nearest_training_finds_an_exact_copy():
    rng = np.random.default_rng(1)
    train = rng.integers(0, 256, (20, 8, 8), dtype=np.uint8)
    gen = rng.integers(0, 256, (30, 8, 8), dtype=np.uint8)
    gen[7] = train[4]
    ev = nearest_training(gen, train)
    assert ev.rows[0] == 7 and ev.labels[0] == "closest" and ev.copies[0] and ev.distances[0, 0] == 0
    assert ev.neighbours[0, 0] == 4 and len(ev.rows) == 4 and np.all(np.diff(ev.distances, axis=1) >= 0)


def test_links_are_relative_only_inside_the_run():
    assert href("s3://b/run/x/model/", "s3://b/run/report", "s3://b/run") == "../x/model/"
    assert href("/r/run/config.yaml", "/r/out", "/r/run") == "file:///r/run/config.yaml"
    assert href("s3://b/run/config.yaml", "s3://b/out", "s3://b/run") == "s3://b/run/config.yaml"


@pytest.mark.parametrize("kind", ["line", "forecast"])
def test_the_axes_box_given_with_a_plot_lies_just_inside_that_png_s_spines(kind):
    """The box (which the page uses to place its hover targets and the tests to find the drawn lines)
    is read from the layout that drew the PNG: each of the four spines, a dark line of 1 px, lies in the
    3 px just outside the box along its whole side (the box rounds inwards), and no such line is inside it."""
    from collapse.report.plots import Series, forecast_plot, line_plot
    if kind == "line":
        png, box = line_plot([Series("vanilla", "r", "vanilla", "#0072B2", "-", (1, 2, 3), (1.0, 2.0, 1.5))],
                             "entropy", "H [nats]", references=[("real", 1.2)])
    else:
        png, box, _ = forecast_plot([{"run": "r", "strategy": "vanilla", "generation": 2, "gs": 180.0,
                                      "forecast": 150.0, "low": 90.0, "high": 260.0}],
                                    {"vanilla": "#0072B2"}, ["r"], "forecast", "pixel")
    import io
    dark = np.asarray(Image.open(io.BytesIO(png)).convert("L")) < 100
    left, top, right, bottom = box
    inner = dark[top:bottom, left:right]
    sides = {"left": dark[top:bottom, left - 3:left].all(axis=0), "right": dark[top:bottom, right:right + 3].all(axis=0),
             "top": dark[top - 3:top, left:right].all(axis=1), "bottom": dark[bottom:bottom + 3, left:right].all(axis=1)}
    assert all(found.any() for found in sides.values()), (box, {k: v.tolist() for k, v in sides.items()})
    assert not inner.all(axis=0).any() and not inner.all(axis=1).any(), box
