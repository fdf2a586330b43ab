"""``render_report``: one HTML page (and the PNGs it shows) from one or more run directories alone.

Sections, top to bottom: status and legend; ln GS against H(D_n) with Pearson's r (the paper's
central figure); one plot per metric against generation (a line per strategy and run); the last
generation of each strategy; for class-conditional runs only, the per-class view (class balance
of D_n, agreement with the conditioning label, per-class figures, a row of samples per class);
samples per generation with their nearest training images; the time of each stage; the config and
its hash; links to every artefact.

Written through :mod:`collapse.data.storage` (``file://``, ``s3://``, ``memory://``, ...): the PNGs
first, ``index.html`` last, so a reader never sees a page that points at missing images. A run
still going renders what it holds so far; render again to follow it.
"""
from __future__ import annotations

import datetime as dt

from collapse.classifier import RECOGNIZABLE_SHARE
from collapse.data import storage
from collapse.data.samples import SampleSet
from collapse.errors import NotFinishedError
from collapse.forecast import LEVEL, backtest
from collapse.plan import SHARED, STAGES
from collapse.report import figures as F
from collapse.report import html as H
from collapse.report.plots import (LINESTYLES, SHARED_COLOUR, assign_colours, class_grid, forecast_plot, gs_entropy_plot, line_plot,
                                   mosaic, neighbours_plot)
from collapse.report.read import Generation, Run, normalise_root, read_run, train_set_of

GRID_SAMPLES = 64        # generated samples shown per generation and strategy
NEIGHBOUR_QUERY = 1000   # the first (scored) samples searched for the closest and typical ones
SHOWN_SHARDS = 6
CLASS_SAMPLES = 8        # samples shown per class in a per-class grid
CLASS_SCAN = 4000        # a per-class grid looks for them among this many first samples of a set
LINESTYLE_NAMES = {"-": "solid", "--": "dashed", ":": "dotted", "-.": "dash-dot"}


def render_report(run_dirs: list[str], out_url: str | None = None, storage_options: dict | None = None) -> str:
    """Render the report of ``run_dirs`` into ``out_url`` (default ``<first run>/report``); return the
    URL of its ``index.html``. ``storage_options`` apply to every URL (None: from the environment)."""
    if isinstance(run_dirs, str):
        run_dirs = [run_dirs]
    if not run_dirs:
        raise ValueError("render_report needs at least one run directory")
    runs = read_runs(run_dirs, storage_options)
    out = normalise_root(out_url) if out_url else runs[0].layout.report
    files: dict[str, bytes] = {}
    colours = assign_colours([s for r in runs for s in r.strategies])
    body = "\n".join([header(runs, colours), quality_warnings(runs), central(runs, colours, files),
                      forecasts(runs, colours, files), metric_plots(runs, colours, files), final_table(runs), per_class(runs, colours, files),
                      samples(runs, files), stage_times(runs), configs(runs, out), artefacts(runs, out)])
    so = storage_options if storage_options is not None else storage.storage_options_for(out)
    for name, data in files.items():
        storage.write_bytes(storage.join(out, name), data, so)
    index = storage.join(out, "index.html")
    storage.write_bytes(index, H.page("collapse report: " + ", ".join(r.label for r in runs), body).encode(), so)
    return index


def read_runs(run_dirs: list[str], storage_options: dict | None) -> list[Run]:
    runs = []
    for i, url in enumerate(run_dirs):
        run = read_run(url, storage_options)
        if any(r.label == run.label for r in runs):
            run.label = f"{run.label}#{i + 1}"
        runs.append(run)
    return runs


# -- status and legend

def header(runs: list[Run], colours: dict[str, str]) -> str:
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    rows = [[H.esc(r.label), H.esc(r.root), f"<code>{H.esc(r.config_hash or '-')}</code>", progress(r),
             str(len(r.stages))] for r in runs]
    legend = "".join(f'<span class="swatch" style="background:{c}"></span>{H.esc(s)}' for s, c in colours.items())
    legend += f'<span class="swatch" style="background:{SHARED_COLOUR}"></span>shared generation 1 (scatter)'
    if len(runs) > 1:
        legend += "<br>runs: " + ", ".join(f"{H.esc(r.label)} {LINESTYLE_NAMES[LINESTYLES[i % 4]]}"
                                           for i, r in enumerate(runs))
    return (f"<h1>Model collapse in the self-consuming loop</h1><p class='muted'>rendered {now} from the run "
            f"director{'y' if len(runs) == 1 else 'ies'} alone (render again to follow a run that is going)</p>"
            + H.table(["run", "directory", "config hash", "generations scored per strategy", "stages done"], rows, 4)
            + f"<p>strategies: {legend}</p>")


def progress(run: Run) -> str:
    planned, parts = run.planned_generations, []
    for s in run.strategies:
        gens = sorted({r["generation"] for r in run.rows if r["strategy"] == s})
        done = max(gens) if gens else 0
        text = f"{H.esc(s)} {done}/{planned if planned else '?'}"
        parts.append(f"<span class='partial'>{text}</span>" if planned and done < planned else text)
    return ", ".join(parts) or "<span class='partial'>nothing scored yet</span>"


def quality_warnings(runs: list[Run]) -> str:
    """A visible warning for every generation whose samples the classifier does not recognize."""
    items = []
    for run in runs:
        for r in F.unrecognizable(run):
            q = r["quality"]
            who = "shared generation" if r["strategy"] == SHARED else f"{r['strategy']}, generation"
            items.append(f"<li>{H.esc(run.label + ': ' if len(runs) > 1 else '')}{H.esc(who)} {r['generation']}: "
                         f"classifier confidence {H.num(q['confidence'], 3)} against {H.num(q['real_confidence'], 3)} "
                         f"on held-out real images (ratio {H.num(q['confidence_ratio'], 2)} &lt; "
                         f"{RECOGNIZABLE_SHARE:g}), {H.num(100 * q['rejected'], 3)}% classified as no class</li>")
    if not items:
        return ""
    return ("<div class='warning'><b>Warning: samples not recognizable.</b> The run's classifier of the real "
            "classes does not recognize these generations' samples, so their entropy, GS and memorization "
            "describe images that are not of the data (noise scores as novel):<ul>" + "".join(items)
            + "</ul></div>")


# -- plots

def central(runs: list[Run], colours: dict[str, str], files: dict) -> str:
    out = ["<h2>ln GS against training-set entropy</h2>"]
    for space in F.feature_spaces(runs):
        points = F.gs_entropy_points(runs, space)
        png, box, r, n = gs_entropy_plot(points, colours, [x.label for x in runs],
                                         f"ln GS against H(D_n), {space} space", f"H(D_n) [nats], {space} space",
                                         f"ln GS [GS: L2 distance, {F.space_scale(space)}]")
        series = {}
        for p in points:
            label = p.strategy if len(runs) == 1 else f"{p.run} / {p.strategy}"
            s = series.setdefault(label, {"label": label, "run": p.run, "strategy": p.strategy, "points": 0,
                                          "colour": colours.get(p.strategy, SHARED_COLOUR)})
            s["points"] += 1
        name = f"plots/{space}-gs-entropy.png"
        files[name] = png
        caption = (f"Every scored generation of every strategy is one point, labelled with its generation n "
                   f"(generation 1 trains on real data for all strategies: one grey point). Pearson r = "
                   f"{H.num(r, 3)} between H(D_n) and ln GS over {n} points; dashed: least squares.")
        out.append(H.figure(name, f"ln GS against entropy, {space}", caption,
                            {"plot": f"{space}-gs-entropy", "kind": "scatter", "series": list(series.values()),
                             "axes-box": box, "pearson-r": None if r != r else r}))
    if len(out) == 1:
        out.append("<p class='partial'>No generation is scored yet.</p>")
    return "\n".join(out)


def forecasts(runs: list[Run], colours: dict[str, str], files: dict) -> str:
    """Each generation's GS as the line over the generations before it forecast it from H(D_n)
    (collapse.forecast.backtest, per run and space), beside what was measured: one plot per space
    holding every run given (the relation across datasets and sizes, as the paper's Fig. 4a), then a
    table per run and space."""
    out = [f"<h2>Forecast: GS from H(D_n)</h2><p class='small muted'>For generation n, the line ln GS = a + b H "
           f"fitted over every strategy's scored generations before n, evaluated at H(D_n): the GS that H(D_n) "
           f"forecast before M_n was trained, with its {LEVEL:.0%} prediction interval, beside the GS measured. "
           "Below rho (the copy radius) the forecast is the memorization regime. No forecast before 3 scored "
           "generations (docs/SCIENCE.md, \"Forecast\").</p>"]
    for space in F.feature_spaces(runs):
        points = [{"run": run.label, "strategy": r["strategy"], "generation": r["generation"], "gs": r["gs"],
                   "forecast": r["forecast"]["gs"], "low": r["forecast"]["low"], "high": r["forecast"]["high"]}
                  for run in runs for r in backtest(run.rows, space) if r["forecast"]]
        if not points:
            continue
        png, box, drawn = forecast_plot(points, colours, [x.label for x in runs], f"GS forecast against measured, "
                                        f"{space} space", F.space_scale(space))
        name = f"plots/{space}-forecast.png"
        files[name] = png
        out.append(H.figure(name, f"GS forecast against measured, {space}", f"One point per forecast generation "
                            f"of every run given (marker: run; colour: strategy), labelled n; bar: the "
                            f"{LEVEL:.0%} prediction interval; dashed: a perfect forecast.",
                            {"plot": f"{space}-forecast", "kind": "scatter", "points": drawn, "axes-box": box,
                             "runs": [x.label for x in runs]}))
    for run in runs:
        for g in run.generations:   # chains ended by run.stop_chain_below_rho (cluster/stages/select.py)
            stop = (g.selection or {}).get("stop")
            if stop:
                out.append(f"<p class='partial'>{H.esc(run.label)}: {H.esc(stop['why'])}; the chain ends at "
                           f"generation {g.generation}.</p>")
        for space in F.feature_spaces([run]):
            rows = backtest(run.rows, space)
            if not rows:
                continue
            table, errors, inside = [], [], []
            for r in rows:
                fc = r["forecast"] or {}
                regime = "-" if not fc or fc.get("rho") is None else ("memorize" if fc["memorizes"] else "generalize")
                table.append([H.esc(r["strategy"]), str(r["generation"]), str(r["points"]), H.num(r["h"]),
                              H.num(fc.get("gs")), f"[{H.num(fc.get('low'))}, {H.num(fc.get('high'))}]" if fc else "-",
                              H.num(fc.get("rho")), regime, H.num(r["gs"]), H.num(r["log_error"], 3),
                              "-" if r["inside"] is None else ("yes" if r["inside"] else "no")])
                if r["log_error"] is not None:
                    errors.append(abs(r["log_error"]))
                    inside.append(r["inside"])
            summary = (f"{len(errors)} generations forecast; mean |ln error| {H.num(sum(errors) / len(errors), 3)}, "
                       f"{sum(inside)} of {len(inside)} inside their interval" if errors else
                       "no generation forecast yet (fewer than 3 scored generations before each)")
            out.append(f"<h3>{H.esc(run.label)}, {H.esc(space)} space: {summary}</h3>" + H.table(
                ["strategy", "generation", "points before", "H(D_n)", "forecast GS", "interval", "rho", "regime",
                 "measured GS", "ln error", "inside"], table, 1))
    if len(out) == 1:
        out.append("<p class='partial'>No generation is scored yet.</p>")
    return "\n".join(out)


def metric_plots(runs: list[Run], colours: dict[str, str], files: dict) -> str:
    out = ["<h2>Metrics against generation</h2><p class='small muted'>One line per strategy"
           f"{' and run' if len(runs) > 1 else ''}. Lines that coincide are drawn nested (earlier strategies "
           "wider) and shifted by a few hundredths of a generation, so every strategy stays visible.</p>"]
    for space in F.feature_spaces(runs):
        figs = [_metric_figure(runs, colours, m, space, files) for m in F.METRICS]
        out.append(f"<h3>{H.esc(space)} space</h3><div class='grid'>{''.join(figs)}</div>")
    figs = [_metric_figure(runs, colours, m, None, files) for m in F.QUALITY_METRICS]
    if any(figs):
        out.append("<h3>Sample quality (the run's classifier of real classes)</h3><div class='grid'>"
                   f"{''.join(figs)}</div>")
    figs = [_metric_figure(runs, colours, m, None, files) for m in F.RUN_METRICS]
    out.append(f"<h3>Training sets</h3><div class='grid'>{''.join(figs)}</div>")
    return "\n".join(out)


def _references(runs, m: F.Metric) -> list[tuple[str, float]]:
    """The dotted reference line of a run-level figure (figures.reference), one per run."""
    out = []
    for run in runs if m.run_level else ():
        ref = F.reference(run, m.key)
        if ref is not None:
            out.append((ref[0] + ("" if len(runs) == 1 else " " + run.label), ref[1]))
    return out


def _metric_figure(runs, colours, m: F.Metric, space: str | None, files: dict) -> str:
    series = F.metric_series(runs, colours, m, space)
    if not series:
        return ""
    png, box = line_plot(series, m.title, F.axis_label(m, space), references=_references(runs, m))
    key = f"{space}-{m.key}" if space else m.key
    files[f"plots/{key}.png"] = png
    data = [{"label": s.label, "run": s.run, "strategy": s.strategy, "colour": s.colour, "generations": list(s.x),
             "values": list(s.y)} for s in series]
    ylabel = F.axis_label(m, space)
    return H.figure(f"plots/{key}.png", f"{m.title}, {space or 'run'}",
                    f"{H.esc(m.about)} <span class='muted'>y: {H.esc(ylabel)}</span>",
                    {"plot": key, "kind": "line", "ylabel": ylabel, "series": data, "axes-box": box})


# -- tables

def final_table(runs: list[Run]) -> str:
    spaces = F.feature_spaces(runs)
    heads = ["run", "strategy", "generation"] + [f"{k}<br><span class='muted'>{H.esc(s)}</span>"
                                                for s in spaces for k in F.TABLE_KEYS] + [
        "confidence<br><span class='muted'>classifier</span>", "real confidence<br><span class='muted'>held-out"
        "</span>", "class entropy", "real share", "|D_n|"]
    rows = []
    for run in runs:
        for r in F.last_rows(run):
            sp = r.get("spaces") or {}
            gen = f"{r['generation']} of {run.planned_generations or '?'}"
            rows.append([H.esc(run.label), H.esc(r["strategy"]), gen]
                        + [H.num((sp.get(s) or {}).get(k)) for s in spaces for k in F.TABLE_KEYS]
                        + [H.num((r.get("quality") or {}).get(k)) for k in
                           ("confidence", "real_confidence", "class_entropy")]
                        + [H.num(r.get("real_share")), H.num(r.get("train_count"))])
    note = ("<p class='small muted'>Entropy in nats; GS in L2 distance and FD in squared L2 of the feature space "
            "(pixel: values 0-255); manifold_ratio = GS / GS of held-out real images; confidence: the run's "
            "classifier's mean top-class probability; the rest fractions.</p>")
    return "<h2>Last generation per strategy</h2>" + (H.table(heads, rows, 2) + note if rows else
                                                      "<p class='partial'>No generation is scored yet.</p>")


def stage_times(runs: list[Run]) -> str:
    out = ["<h2>Time per stage</h2><p class='small muted'>Wall time of each finished stage, from its record "
           "<code>stages/&lt;key&gt;/manifest.json</code>; an empty cell is a stage not run (yet).</p>"]
    for run in runs:
        by_row: dict[tuple, dict] = {}
        for key, wall in run.stages.items():
            parts = key.split("/")
            owner, gen, name = ("run", "-", key) if len(parts) != 3 else parts
            by_row.setdefault((owner, gen), {})[name] = wall
        names = [s for s in STAGES if any(s in d for d in by_row.values())]
        rows = [[H.esc(o), H.esc(g)] + [H.seconds(d.get(s)) for s in names]
                + [H.seconds(sum(v for v in d.values() if v))] for (o, g), d in by_row.items()]
        total = sum(v for v in run.stages.values() if v)
        out.append(f"<h3>{H.esc(run.label)}: {len(run.stages)} stages, {H.seconds(total)} in all</h3>"
                   + H.table(["owner", "generation", *names, "sum"], rows, 2))
    return "\n".join(out)


# -- per class (class-conditional runs only)

def per_class(runs: list[Run], colours: dict[str, str], files: dict) -> str:
    """Class balance of D_n and agreement with the conditioning label against generation, a table of
    the per-class figures and a grid of one row of samples per class; "" when no row has ``classes``."""
    if not F.has_classes(runs):
        return ""
    figs = [_metric_figure(runs, colours, m, None, files) for m in F.CLASS_METRICS]
    out = ["<h2 id='per-class'>Per class</h2><p class='small muted'>The run is class-conditional: every sample is "
           "generated for a class (its conditioning label) and every image of D_n carries one. Agreement: the share "
           "of the samples generated for a class that the run's classifier of the real classes puts in it.</p>",
           f"<div class='grid'>{''.join(figs)}</div>"]
    for i, run in enumerate(runs):
        if F.num_classes(run) >= 2:
            out += [f"<h3>{H.esc(run.label)}: {F.num_classes(run)} classes</h3>", _scales(run), _class_table(run),
                    _class_grids(run, f"grids/run{i + 1}-", files)]
    return "\n".join(out)


def _scales(run: Run) -> str:
    parts = [f"{H.esc(name)} {H.num(scale)}" + (" (its own generation 1)" if own else "")
             + (", per-class selection" if per_class else "") for name, scale, own, per_class in F.strategy_scales(run)]
    return f"<p>guidance scale per strategy: {'; '.join(parts)}</p>" if parts else ""


def _class_table(run: Run) -> str:
    """Per scored generation (the shared generation 1 once) one line per figure, one column per class."""
    k, found = F.num_classes(run), [s for _, r in F.class_rows(run) for s in (r["classes"].get("spaces") or {})]
    space = "pixel" if "pixel" in found else (found[0] if found else "pixel")
    at = lambda v, c: v[c] if isinstance(v, list) and c < len(v) else None        # noqa: E731
    total = lambda v: sum(v) if isinstance(v, list) and None not in v else None   # noqa: E731
    rows = []
    for owner, r in F.class_rows(run):
        c, whole = r["classes"], (r.get("spaces") or {}).get(space) or {}
        sp = (c.get("spaces") or {}).get(space) or {}
        lines = [("count in D_n", c.get("train_counts"), total(c.get("train_counts"))),
                 ("generated", c.get("generated_counts"), total(c.get("generated_counts"))),
                 ("agreement", c.get("agreement"), c.get("agreement_mean")),
                 (f"H(D_n^c) [nats], {space}", sp.get("entropy"), whole.get("entropy")),
                 (f"memorized (rho), {space}", sp.get("memorization_real_scale"), whole.get("memorization_real_scale"))]
        for j, (name, per, overall) in enumerate(lines):
            head = [H.esc(owner), str(r["generation"]), H.num(c.get("guidance_scale"))] if j == 0 else ["", "", ""]
            rows.append(head + [H.esc(name)] + [H.num(at(per, x), 3) for x in range(k)] + [H.num(overall, 3)])
    heads = ["owner", "gen", "guidance scale", "figure"] + [f"class {x}" for x in range(k)] + ["all"]
    real = next((r["classes"].get("real_agreement") for _, r in F.class_rows(run)
                 if r["classes"].get("real_agreement") is not None), None)
    note = (f"<p class='small muted'>all: the whole generation (agreement over every scored sample; H and "
            f"memorized over all of D_n and the samples). The classifier's accuracy on held-out real images: "
            f"{H.num(real, 3)}.</p>")
    return "<div class='small'>" + H.table(heads, rows, 4) + "</div>" + note


def _class_grids(run: Run, prefix: str, files: dict) -> str:
    """Real training images, then every pool (the shared generation 1 once): one row of samples per class."""
    k, cards = F.num_classes(run), []
    try:
        sets = [("real/train", "real-train", SampleSet(run.layout.real("train"), run.storage_options), "")]
    except NotFinishedError:
        sets = []
    for g in sorted((g for g in run.generations if g.pool is not None), key=lambda g: g.generation):
        row = F.row_of(run, g.owner, g.generation)
        scale = (row.get("classes") or {}).get("guidance_scale")
        sets.append((f"{g.owner}: P_{g.generation}", f"{g.owner}-gen-{g.generation:03d}", g.pool,
                     "" if scale is None else f", guidance scale {H.num(scale)}"))
    for title, stem, sample_set, scale in sets:
        rows = F.first_by_label(sample_set.iter_samples(), k, CLASS_SAMPLES, CLASS_SCAN)
        head = f"<div class='card'><b>{H.esc(title)}</b>{scale}"
        if not any(rows):
            cards.append(head + f"<div class='partial'>no labelled sample among the first {CLASS_SCAN}</div></div>")
            continue
        name = f"{prefix}{stem}-classes.png"
        files[name] = class_grid(rows, CLASS_SAMPLES)
        cards.append(head + H.image(name, f"samples per class, {title}") + "</div>")
    return (f"<p class='small muted'>Row c: the first {CLASS_SAMPLES} images of class c (their label; for generated "
            f"samples the class they were generated for) among the first {CLASS_SCAN} of the set.</p>"
            f"<div class='grid'>{''.join(cards)}</div>")


# -- samples and nearest training images

def samples(runs: list[Run], files: dict) -> str:
    out = ["<h2>Samples and their nearest training images</h2><p class='small muted'>Per generation and strategy: "
           f"the first {GRID_SAMPLES} generated samples of P_n (the scored ones come first), and beside them the two "
           f"samples closest to a training image of D_n and two typical ones (median distance) among the first "
           f"{NEIGHBOUR_QUERY}, each with its 3 nearest images of D_n and their L2 distances in pixel space "
           "(values 0-255). <span class='copy'>copy?</span> marks d1/d2 &lt; 1/3, the memorization test; "
           "<span class='copy'>d1 &lt; rho</span> marks a sample closer to D_n than a third of the median "
           "nearest-neighbour distance between real training images (the test near-duplicates in D_n do not "
           "defeat).</p>"]
    for i, run in enumerate(runs):
        prefix = f"grids/run{i + 1}-"
        out.append(f"<h3>{H.esc(run.label)}</h3>" + _real_card(run, prefix, files))
        for n in sorted({g.generation for g in run.generations if g.pool is not None}):
            cards = [_generation_card(run, g, prefix, files) for g in run.generations
                     if g.generation == n and g.pool is not None]
            out.append(f"<h3>generation {n}</h3><div class='grid'>{''.join(cards)}</div>")
    return "\n".join(out)


def _real_card(run: Run, prefix: str, files: dict) -> str:
    try:
        real = SampleSet(run.layout.real("train"), run.storage_options)
    except NotFinishedError:
        return ""
    _, imgs = F.first_images(real, GRID_SAMPLES)
    files[prefix + "real-train.png"] = mosaic(imgs)
    return ("<div class='grid'><div class='card'><b>real/train</b> (D_1 is its first N images)"
            + H.image(prefix + "real-train.png", "real training images") + "</div></div>")


def _generation_card(run: Run, g: Generation, prefix: str, files: dict) -> str:
    scored = next((r.get("scored_count") for r in run.rows if r["generation"] == g.generation
                   and (SHARED if r.get("shared") else r["strategy"]) == g.owner), None)
    keys, imgs = F.first_images(g.pool, min(scored or g.pool.count, NEIGHBOUR_QUERY, g.pool.count))
    stem = f"{prefix}{g.owner}-gen-{g.generation:03d}"
    files[stem + "-samples.png"] = mosaic(imgs[:GRID_SAMPLES])
    who = "shared (all strategies)" if g.owner == SHARED else g.owner
    row = F.row_of(run, g.owner, g.generation)
    q, rho = row.get("quality") or {}, ((row.get("spaces") or {}).get("pixel") or {}).get("copy_radius")
    scale = f", guidance scale {H.num((row.get('classes') or {}).get('guidance_scale'))}" if row.get("classes") else ""
    html = [f"<div class='card'><b>{H.esc(who)}</b>: P_{g.generation}, {g.pool.count} generated{scale}",
            H.image(stem + "-samples.png", f"samples of {who}, generation {g.generation}")]
    if q.get("confidence") is not None:
        flag = "" if q.get("recognizable") else " <span class='copy'>not recognizable</span>"
        html.append(f"<div class='small'>classifier confidence {H.num(q['confidence'], 3)} (real held-out "
                    f"{H.num(q.get('real_confidence'), 3)}), class entropy {H.num(q.get('class_entropy'), 3)} "
                    f"nats{flag}</div>")
    train = train_set_of(run, g)     # a strategy's own generation 1: the shared D_1
    if train is not None and train.count >= 2:
        tkeys, timgs, _ = train.load()
        ev = F.nearest_training(imgs, timgs)
        files[stem + "-neighbours.png"] = neighbours_plot(imgs[list(ev.rows)], timgs[ev.neighbours], ev.distances,
                                                          list(ev.labels), ev.copies)
        rows = [[H.esc(keys[q]), H.esc(tkeys[ev.neighbours[j, 0]]), H.num(float(ev.distances[j, 0])),
                 H.num(float(ev.ratio[j]), 2) + (" <span class='copy'>copy?</span>" if ev.copies[j] else "")
                 + (" <span class='copy'>d1 &lt; rho</span>" if rho and ev.distances[j, 0] < rho else "")]
                for j, q in enumerate(ev.rows)]
        html += [H.image(stem + "-neighbours.png", f"nearest training images, {who}, generation {g.generation}"),
                 "<div class='small'>" + H.table(["sample", "nearest in D_n", "d1", "d1/d2"], rows, 2) + "</div>"]
    return "".join(html) + "</div>"


# -- config and artefacts

def configs(runs: list[Run], out: str) -> str:
    parts = ["<h2>Config</h2>"]
    for run in runs:
        cfg = H.link(run.layout.config, out, run.root, "config.yaml")
        parts.append(f"<h3>{H.esc(run.label)}: config_hash <code>{H.esc(run.config_hash or '-')}</code> ({cfg})</h3>"
                     f"<pre>{H.esc(run.config_yaml or 'no config.yaml yet')}</pre>")
    return "\n".join(parts)


def artefacts(runs: list[Run], out: str) -> str:
    parts = ["<h2>Artefacts</h2>"]
    for run in runs:
        L, ln = run.layout, (lambda url, text, r=run: H.link(url, out, r.root, text))
        top = [ln(L.config, "config.yaml"), ln(L.config + ".json", "config.yaml.json"),
               ln(L.metrics_log, "metrics.jsonl"),
               ln(storage.join(L.real("train"), "manifest.json"), "real/train manifest"),
               ln(storage.join(L.real("holdout"), "manifest.json"), "real/holdout manifest"),
               ln(storage.join(L.root, "stages") + "/", "stage records")]
        rows = [_artefact_row(run, g, ln) for g in sorted(run.generations, key=lambda g: (g.generation,
                                                                                          g.owner != SHARED))]
        parts.append(f"<h3>{H.esc(run.label)}</h3><p>{' · '.join(top)}</p>"
                     + H.table(["owner", "gen", "training set D_n", "model M_n", "pool P_n", "selection", "metrics"],
                               rows, 7))
    return "\n".join(parts)


def _artefact_row(run: Run, g: Generation, ln) -> list[str]:
    L, n = run.layout, g.generation
    selection = ln(storage.join(L.selection(g.owner, n), "manifest.json"), "selection") if g.selection else ""
    model, url = "", L.model(g.owner, n)
    if g.model is not None:
        model = ln(url + "/", "model/") + " · " + ln(storage.join(url, "manifest.json"), "manifest")
    train = _set_links(g.train, ln)
    if g.pool is not None and g.train is None and train_set_of(run, g) is not None:   # its own generation 1
        train, model = f"<span class='muted'>the shared D_{n}</span>", f"<span class='muted'>the shared M_{n}</span>"
    return [H.esc(g.owner), str(n), train, model, _set_links(g.pool, ln), selection,
            ln(L.metrics(g.owner, n), "metrics.json") if g.has_metrics else ""]


def _set_links(sample_set, ln) -> str:
    if sample_set is None:
        return ""
    shards = [ln(u, u.rsplit("/", 1)[-1]) for u in sample_set.shard_urls[:SHOWN_SHARDS]]
    more = len(sample_set.shard_urls) - SHOWN_SHARDS
    return (ln(storage.join(sample_set.url, "manifest.json"), f"manifest ({sample_set.count})") + "<br>"
            + " ".join(shards) + (f" … {more} more" if more > 0 else ""))
