"""The report's figures as PNG bytes: metric-against-generation lines, the ln GS against H(D_n)
scatter (the paper's central figure), nearest-training-image panels, sample mosaics and, for
class-conditional runs, grids of one row of samples per class.

Pure: arrays and plain numbers in, bytes out. Matplotlib's object API with the Agg canvas (no
pyplot, no global state), so figures can be drawn from any thread and never open a window.

Checkable plots. Each line figure returns, beside its PNG, the pixel box of its axes: the legend
lies outside that box, so a pixel of a series' colour inside the box is a drawn line or marker.
Series that coincide (every strategy shares generation 1; two strategies may both keep no real
image) stay visible: earlier series are drawn wider under later ones, and each series is shifted
by a few hundredths of a generation.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator
from PIL import Image, ImageDraw, ImageFont

# Okabe-Ito colours (distinguishable with colour-blindness), yellow left out (unreadable on white).
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
SHARED_COLOUR = "#7F7F7F"
LINESTYLES = ("-", "--", ":", "-.")     # one per run
MARKERS = ("o", "s", "^", "D")          # one per run in the scatter
DPI = 100


@dataclass(frozen=True)
class Series:
    """One line: ``y`` against generation ``x`` for one strategy of one run."""
    label: str
    run: str
    strategy: str
    colour: str
    linestyle: str
    x: tuple[int, ...]
    y: tuple[float, ...]


def assign_colours(strategies: list[str]) -> dict[str, str]:
    """A fixed colour per strategy name, in order of first appearance (the same in every plot)."""
    names = list(dict.fromkeys(strategies))
    return {s: PALETTE[i % len(PALETTE)] for i, s in enumerate(names)}


def hex_to_rgb(colour: str) -> tuple[int, int, int]:
    c = colour.lstrip("#")
    return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16)


def pearson_r(x, y) -> float:
    """Pearson's correlation of two equal-length 1-D sequences; NaN when undefined (n < 2 or no spread)."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"pearson_r needs two 1-D sequences of equal length, got {a.shape} and {b.shape}")
    if a.size < 2:
        return math.nan
    ac, bc = a - a.mean(), b - b.mean()
    den = math.sqrt(float((ac * ac).sum()) * float((bc * bc).sum()))
    return float((ac * bc).sum()) / den if den > 0 else math.nan


def _new_figure(width: float, height: float, layout: str | None = "constrained") -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _png_and_box(fig: Figure, ax) -> tuple[bytes, list[int]]:
    """The PNG, and [left, top, right, bottom] of the axes in its pixels (origin top left), inside the
    spines: read from the layout that saving the PNG drew (at the figure's own dpi), not from a second
    draw (drawing and laying out a figure is most of a report's time)."""
    png = _png(fig)
    bb = ax.get_window_extent()
    height = fig.bbox.height
    return png, [math.ceil(bb.x0) + 1, math.ceil(height - bb.y1) + 1, math.floor(bb.x1) - 1,
                 math.floor(height - bb.y0) - 1]


def _nested_styles(count: int) -> list[tuple[float, float]]:
    """(line width, marker size) per series: earlier series wider, so coinciding lines all show."""
    step = min(1.5, 4.5 / max(1, count - 1))
    return [(1.5 + step * (count - 1 - i), 4.0 + step * (count - 1 - i)) for i in range(count)]


def line_plot(series: list[Series], title: str, ylabel: str, xlabel: str = "generation n",
              references: list[tuple[str, float]] = ()) -> tuple[bytes, list[int]]:
    """One metric against generation, one line per series, and a dotted horizontal line per
    ``(label, y)`` reference. Returns (PNG bytes, axes pixel box)."""
    fig = _new_figure(3.9, 3.1)
    ax = fig.add_subplot()
    for label, y in references:
        ax.axhline(y, color="#444444", linestyle=":", linewidth=1.2, label=label)
    dx = min(0.06, 0.25 / max(1, len(series)))
    for i, (s, (lw, ms)) in enumerate(zip(series, _nested_styles(len(series)))):
        x = np.asarray(s.x, dtype=float) + (i - (len(series) - 1) / 2) * dx
        ax.plot(x, s.y, linestyle=s.linestyle, color=s.colour, linewidth=lw, marker="o", markersize=ms,
                label=s.label, solid_capstyle="butt")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    xs = [x for s in series for x in s.x]
    if xs and max(xs) - min(xs) < 1:   # one generation: its tick alone, centred (was 0.968 ... 1.032)
        ax.set_xlim(min(xs) - 0.5, max(xs) + 0.5)
    ax.grid(alpha=0.3)
    if series or references:
        fig.legend(loc="outside lower center", ncol=min(3, len(series) + len(references)), fontsize=7, frameon=False)
    return _png_and_box(fig, ax)


@dataclass(frozen=True)
class Point:
    """One generation of one strategy (or the shared generation 1) in the central figure."""
    run: str
    strategy: str            # a strategy, or "shared"
    generation: int
    entropy: float
    gs: float


def gs_entropy_plot(points: list[Point], colours: dict[str, str], runs: list[str], title: str,
                    xlabel: str, ylabel: str) -> tuple[bytes, list[int], float, int]:
    """ln GS against H(D_n), every point once, with a least-squares line and Pearson's r.

    Returns (PNG bytes, axes pixel box, r, number of points with GS > 0)."""
    pts = [p for p in points if p.gs > 0 and math.isfinite(p.gs) and math.isfinite(p.entropy)]
    x = np.array([p.entropy for p in pts])
    y = np.log(np.array([p.gs for p in pts]))
    r = pearson_r(x, y) if pts else math.nan
    fig = _new_figure(5.6, 4.2)
    ax = fig.add_subplot()
    if len(pts) >= 2 and np.ptp(x) > 0:
        slope, icept = np.polyfit(x, y, 1)
        xs = np.array([x.min(), x.max()])
        ax.plot(xs, slope * xs + icept, color="#BBBBBB", linestyle="--", linewidth=1.2, zorder=1)
    seen = set()
    for p, px, py in zip(pts, x, y):
        colour = colours.get(p.strategy, SHARED_COLOUR)
        label = p.strategy if len(runs) == 1 else f"{p.run} / {p.strategy}"
        ax.scatter([px], [py], s=60, color=colour, marker=MARKERS[runs.index(p.run) % len(MARKERS)],
                   label=None if label in seen else label, zorder=2)
        seen.add(label)
        ax.annotate(str(p.generation), (px, py), xytext=(5, 4), textcoords="offset points", fontsize=7)
    shown = "undefined" if math.isnan(r) else f"{r:+.3f}"
    ax.set_title(f"{title}\nPearson r = {shown} over {len(pts)} points", fontsize=9)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    if seen:
        fig.legend(loc="outside lower center", ncol=min(4, len(seen)), fontsize=7, frameon=False)
    png, box = _png_and_box(fig, ax)
    return png, box, r, len(pts)


def forecast_plot(points: list[dict], colours: dict[str, str], runs: list[str], title: str,
                  label: str) -> tuple[bytes, list[int], int]:
    """Each forecast generation of every run: the GS forecast before M_n trained (its prediction interval
    as a bar) against the GS measured, on log axes, with the diagonal of a perfect forecast. ``points``:
    {"run", "strategy", "generation", "gs", "forecast", "low", "high"}. Returns (PNG, axes box, points drawn)."""
    pts = [p for p in points if all(p.get(k) and p[k] > 0 and math.isfinite(p[k]) for k in ("gs", "forecast"))]
    fig = _new_figure(5.6, 4.2)
    ax = fig.add_subplot()
    seen = set()
    if pts:
        values = [v for p in pts for v in (p["gs"], p["forecast"])]
        lo, hi = min(values) / 1.3, max(values) * 1.3
        ax.plot([lo, hi], [lo, hi], color="#BBBBBB", linestyle="--", linewidth=1.2, zorder=1)
    for p in pts:
        colour = colours.get(p["strategy"], SHARED_COLOUR)
        name = p["strategy"] if len(runs) == 1 else f"{p['run']} / {p['strategy']}"
        err = [[p["forecast"] - p["low"]], [p["high"] - p["forecast"]]] if p.get("low") and p.get("high") else None
        ax.errorbar([p["gs"]], [p["forecast"]], yerr=err, fmt=MARKERS[runs.index(p["run"]) % len(MARKERS)],
                    color=colour, markersize=7, capsize=3, elinewidth=1, label=None if name in seen else name, zorder=2)
        seen.add(name)
        ax.annotate(str(p["generation"]), (p["gs"], p["forecast"]), xytext=(5, 4), textcoords="offset points",
                    fontsize=7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis, (lo_, hi_) in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):   # 180, not 1.8 x 10^2
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        # minor ticks labelled within a decade only: across decades their labels run into each other
        axis.set_minor_formatter(FuncFormatter((lambda v, _: f"{v:g}") if hi_ < 10 * lo_ else (lambda v, _: "")))
    ax.set_title(f"{title}\n{len(pts)} forecast generations of {len(runs)} run(s)", fontsize=9)
    ax.set_xlabel(f"GS measured [{label}]", fontsize=8)
    ax.set_ylabel(f"GS forecast from H(D_n) [{label}]", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3, which="both")
    if seen:
        fig.legend(loc="outside lower center", ncol=min(4, len(seen)), fontsize=7, frameon=False)
    png, box = _png_and_box(fig, ax)
    return png, box, len(pts)


def mosaic(images: np.ndarray, columns: int = 8, tile: int = 32, gap: int = 2) -> bytes:
    """A grid of images (B, H, W[, 3]) uint8 as PNG bytes, each scaled up by an integer factor (nearest)."""
    if images.ndim not in (3, 4) or images.shape[0] == 0:
        raise ValueError(f"mosaic needs a non-empty (B, H, W[, 3]) batch, got shape {images.shape}")
    b, h, w = images.shape[:3]
    scale = max(1, tile // max(h, w))
    rows = math.ceil(b / columns)
    mode = "L" if images.ndim == 3 else "RGB"
    sheet = Image.new(mode, (columns * (w * scale + gap) + gap, rows * (h * scale + gap) + gap),
                      255 if mode == "L" else (255, 255, 255))
    for i, img in enumerate(images):
        tile_img = Image.fromarray(img, mode=mode).resize((w * scale, h * scale), Image.NEAREST)
        sheet.paste(tile_img, (gap + (i % columns) * (w * scale + gap), gap + (i // columns) * (h * scale + gap)))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return buf.getvalue()


def class_grid(rows: list[list[np.ndarray]], columns: int = 8, tile: int = 32, gap: int = 2,
               label_width: int = 24) -> bytes:
    """One row per class as PNG bytes, row c labelled ``c`` at its left: ``rows[c]`` holds the images
    (H, W[, 3]) uint8 of class c, the first ``columns`` of them shown (fewer leave the rest of the row
    blank, none a blank row, so a missing class shows). Scaled like :func:`mosaic` by s = max(1, tile //
    max(H, W)): the sheet is label_width + columns * (W s + gap) + gap wide and len(rows) * (H s + gap)
    + gap high."""
    shown = [img for row in rows for img in row[:columns]]
    if not shown:
        raise ValueError("class_grid needs at least one image in some row")
    h, w = shown[0].shape[:2]
    scale, mode = max(1, tile // max(h, w)), "L" if shown[0].ndim == 2 else "RGB"
    white, black, grey = (255, 0, 150) if mode == "L" else ((255, 255, 255), (0, 0, 0), (150, 150, 150))
    sheet = Image.new(mode, (label_width + columns * (w * scale + gap) + gap, len(rows) * (h * scale + gap) + gap),
                      white)
    draw, font = ImageDraw.Draw(sheet), ImageFont.load_default()
    for c, row in enumerate(rows):
        top = gap + c * (h * scale + gap)
        draw.text((label_width // 2, top + h * scale // 2), str(c), fill=black, font=font, anchor="mm")
        if not row:
            draw.text((label_width + gap + 2, top + h * scale // 2), "none", fill=grey, font=font, anchor="lm")
        for j, img in enumerate(row[:columns]):
            if img.shape[:2] != (h, w) or img.ndim != shown[0].ndim:
                raise ValueError(f"class_grid: class {c} image {j} has shape {img.shape}, expected {shown[0].shape}")
            tile_img = Image.fromarray(img, mode=mode).resize((w * scale, h * scale), Image.NEAREST)
            sheet.paste(tile_img, (label_width + gap + j * (w * scale + gap), top))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return buf.getvalue()


def neighbours_plot(samples: np.ndarray, neighbours: np.ndarray, distances: np.ndarray, row_labels: list[str],
                    copies: np.ndarray) -> bytes:
    """Each row: a generated sample (captioned with why it is shown), then its k nearest training
    images, each captioned with its distance. samples (R, H, W[, 3]) uint8, neighbours (R, k, H, W[, 3])
    uint8, distances (R, k), copies (R,) bool: the sample counts as memorized (d1/d2 < 1/3), framed red."""
    rows, k = distances.shape
    cell, height = 0.66, 0.66 * 1.42 * rows + 0.22
    fig = _new_figure(cell * 1.12 * (k + 1), height, layout=None)
    fig.subplots_adjust(left=0.02, right=0.98, top=1 - 0.2 / height, bottom=0.2 / height, hspace=0.42, wspace=0.12)
    axes = fig.subplots(rows, k + 1, squeeze=False)
    heads = ["generated"] + [f"NN {j + 1} in D_n" for j in range(k)]
    for r in range(rows):
        feet = ["copy?" if copies[r] else row_labels[r]] + [f"d={d:.4g}" for d in distances[r]]
        for c, img in enumerate([samples[r], *neighbours[r]]):
            ax = axes[r][c]
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(heads[c], fontsize=6.5, pad=3)
            red = c == 0 and copies[r]
            ax.set_xlabel(feet[c], fontsize=6.5, labelpad=1.5, color="#C00000" if red else "black")
            for spine in ax.spines.values():
                spine.set(color="#C00000" if red else "black", linewidth=2 if red else 0.6)
    return _png(fig)
