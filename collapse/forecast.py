"""Forecast the next model's GS from its training set's entropy, before it is trained
(docs/SCIENCE.md, "Forecast").

The paper's finding (Pearson r = 0.91 between H(D_n) and ln GS_n) as a regression: over the run's
scored generations, pooled across strategies, in one feature space,

    ln GS = a + b H                                         ordinary least squares, m points
    s^2   = sum of squared residuals / (m - 2)
    S_HH  = sum (H_i - mean H)^2
    ln GS_{n+1} ~ a + b H(D_{n+1})  +-  t_{1 - alpha/2, m - 2} s sqrt(1 + 1/m + (H(D_{n+1}) - mean H)^2 / S_HH)

the textbook prediction interval of a new observation under Gaussian residuals. GS and its bounds
are the exponentials: a median forecast of GS, not a mean. A forecast GS below the copy radius
rho (collapse.novelty.real_copy_radius: the radius the memorization figure counts copies within)
is called the memorization regime: the next model is forecast to memorize.

Pure numpy and scipy: the driver (cluster/stages/select.py) and the report call it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: The prediction interval's level.
LEVEL = 0.95
#: Points a line needs: 2 to fit it, 1 more for its residuals' spread.
MIN_POINTS = 3


@dataclass(frozen=True)
class Line:
    """ln GS = a + b H over ``m`` points; ``s`` the residuals' standard deviation, ``h_mean`` and
    ``s_hh`` the spread of the entropies, ``r`` Pearson's r of (H, ln GS)."""
    a: float
    b: float
    s: float
    m: int
    h_mean: float
    s_hh: float
    r: float


@dataclass(frozen=True)
class Forecast:
    """GS forecast from the entropy ``h`` of the next training set, with its interval at ``level``."""
    h: float
    gs: float
    low: float
    high: float
    level: float
    rho: float | None = None

    @property
    def memorizes(self) -> bool:
        """The forecast GS lies below the copy radius rho."""
        return self.rho is not None and self.gs < self.rho

    def as_dict(self) -> dict:
        return {"h": self.h, "gs": self.gs, "low": self.low, "high": self.high, "level": self.level,
                "rho": self.rho, "memorizes": self.memorizes}


def fit_line(h, gs) -> Line:
    """The least-squares line of ln GS on H over the points (H_i, GS_i). Needs at least
    :data:`MIN_POINTS` points, finite, GS > 0, and two different entropies."""
    h, gs = np.asarray(h, dtype=np.float64).ravel(), np.asarray(gs, dtype=np.float64).ravel()
    if h.shape != gs.shape:
        raise ValueError(f"fit_line needs as many entropies as GS values, got {h.size} and {gs.size}")
    if h.size < MIN_POINTS:
        raise ValueError(f"fit_line needs at least {MIN_POINTS} scored generations, got {h.size}")
    if not (np.isfinite(h).all() and np.isfinite(gs).all() and (gs > 0).all()):
        raise ValueError("fit_line needs finite entropies and finite GS > 0")
    y = np.log(gs)
    h_mean = float(h.mean())
    s_hh = float(((h - h_mean) ** 2).sum())
    if s_hh <= 0:
        raise ValueError("fit_line needs at least two different entropies")
    b = float(((h - h_mean) * (y - y.mean())).sum() / s_hh)
    a = float(y.mean() - b * h_mean)
    resid = y - (a + b * h)
    s = float(math.sqrt((resid ** 2).sum() / (h.size - 2)))
    s_yy = float(((y - y.mean()) ** 2).sum())
    r = float(b * math.sqrt(s_hh / s_yy)) if s_yy > 0 else float("nan")
    return Line(a, b, s, int(h.size), h_mean, s_hh, r)


def predict(line: Line, h: float, rho: float | None = None, level: float = LEVEL) -> Forecast:
    """The forecast GS at entropy ``h`` and its prediction interval (module docstring)."""
    from scipy.stats import t as student_t
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    h = float(h)
    y = line.a + line.b * h
    half = float(student_t.ppf(0.5 + level / 2, line.m - 2)) * line.s * \
        math.sqrt(1 + 1 / line.m + (h - line.h_mean) ** 2 / line.s_hh)
    return Forecast(h, math.exp(y), math.exp(y - half), math.exp(y + half), level, rho)


def forecast(points, h: float, rho: float | None = None, level: float = LEVEL) -> Forecast | None:
    """The forecast at ``h`` from the points [(H_i, GS_i), ...], or None while there are fewer than
    :data:`MIN_POINTS` usable ones (GS known, finite, > 0) or only one entropy."""
    usable = [(float(x), float(g)) for x, g in points
              if x is not None and g is not None and math.isfinite(x) and math.isfinite(g) and g > 0]
    if len(usable) < MIN_POINTS or len({x for x, _ in usable}) < 2:
        return None
    hs, gss = zip(*usable)
    return predict(fit_line(hs, gss), h, rho, level)


def stops(fc: Forecast | None, factor: float) -> bool:
    """A chain ends before its next model (config run.stop_chain_below_rho = ``factor``): the forecast GS is
    below ``factor`` x rho. Never with ``factor`` 0, without a forecast (fewer than MIN_POINTS scored
    generations) or without rho."""
    return factor > 0 and fc is not None and fc.rho is not None and fc.gs < factor * fc.rho


def forecast_line(key: str, n: int, fc: Forecast) -> str:
    """``vanilla/gen-004: H(D_4) = 1081 -> predicted GS 47 [38, 58], below rho = 57: the next model is
    forecast to memorize``."""
    text = f"{key}: H(D_{n}) = {fc.h:.4g} -> predicted GS {fc.gs:.3g} [{fc.low:.3g}, {fc.high:.3g}]"
    if fc.rho is None:
        return text
    if fc.memorizes:
        return text + f", below rho = {fc.rho:.3g}: the next model is forecast to memorize"
    return text + f", above rho = {fc.rho:.3g}: the next model is forecast to generalize"


def backtest(rows, space: str, level: float = LEVEL) -> list[dict]:
    """What the forecast said of each scored generation n >= 2, against what was measured: for every
    metric row (the shape of ``metrics.jsonl``: strategy, generation, spaces; generation 1 repeated
    per strategy with ``shared``), the line fitted over the generations before n (all strategies,
    each scored generation once), evaluated at that row's H(D_n), and its measured GS. Rows:
    strategy, generation, h, forecast (Forecast.as_dict() or None: fewer than MIN_POINTS before n),
    gs (measured), log_error (ln measured - ln forecast), inside (measured within the interval)."""
    points: dict[tuple, tuple] = {}    # (owner, generation) -> (H, GS, rho): the shared generation 1 once
    for r in rows:
        fig = (r.get("spaces") or {}).get(space)
        if fig and fig.get("entropy") is not None and fig.get("gs") is not None:
            owner = "shared" if r.get("shared") else r["strategy"]
            points[(owner, int(r["generation"]))] = (float(fig["entropy"]), float(fig["gs"]), fig.get("copy_radius"))
    out = []
    for (owner, n), (h, gs, rho) in sorted(points.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        if n < 2:
            continue
        before = [(x, g) for (o, m), (x, g, _) in points.items() if m < n]
        fc = forecast(before, h, rho, level)
        row = {"strategy": owner, "generation": n, "h": h, "gs": gs, "points": len(before),
               "forecast": fc.as_dict() if fc else None, "log_error": None, "inside": None}
        if fc is not None and gs > 0:
            row["log_error"] = math.log(gs) - math.log(fc.gs)
            row["inside"] = fc.low <= gs <= fc.high
        out.append(row)
    return out
