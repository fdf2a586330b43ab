"""The forecast of GS_{n+1} from H(D_{n+1}) (collapse.forecast) against closed forms."""
import math

import numpy as np
import pytest
from scipy import stats

from collapse.forecast import backtest, fit_line, forecast, forecast_line, predict, stops


def test_points_on_a_line_give_the_line_and_an_interval_of_zero_width():
    h = np.array([900.0, 1000.0, 1100.0, 1200.0])
    line = fit_line(h, np.exp(2.0 + 0.003 * h))
    assert line.a == pytest.approx(2.0) and line.b == pytest.approx(0.003) and line.s == pytest.approx(0.0, abs=1e-9)
    assert line.r == pytest.approx(1.0)
    fc = predict(line, 1300.0)
    assert fc.gs == pytest.approx(math.exp(2.0 + 0.003 * 1300)) and fc.low == pytest.approx(fc.gs) == fc.high


def test_a_three_point_line_and_its_interval_by_hand():
    # H = 0, 1, 2; ln GS = 0, 1, 1: b = 1/2, a = 1/6, residuals -1/6, 1/3, -1/6, s^2 = (1/6) / 1
    line = fit_line([0.0, 1.0, 2.0], np.exp([0.0, 1.0, 1.0]))
    assert (line.a, line.b, line.s**2) == pytest.approx((1 / 6, 0.5, 1 / 6))
    fc = predict(line, 1.0)
    half = 12.706204736 * math.sqrt(1 / 6) * math.sqrt(1 + 1 / 3)   # t_{0.975, 1}
    assert math.log(fc.gs) == pytest.approx(2 / 3)
    assert (math.log(fc.low), math.log(fc.high)) == pytest.approx((2 / 3 - half, 2 / 3 + half))
    # farther from the mean entropy the interval widens by (h - mean)^2 / S_HH = 4 / 2
    wide = predict(line, 3.0)
    assert math.log(wide.high) - math.log(wide.gs) == pytest.approx(half * math.sqrt(1 + 1 / 3 + 2) / math.sqrt(1 + 1 / 3))


def test_the_line_is_scipys_least_squares_fit():
    rng = np.random.default_rng(0)
    h = rng.uniform(800, 1300, 9)
    gs = np.exp(-1.0 + 0.004 * h + rng.normal(0, 0.2, 9))
    line, ref = fit_line(h, gs), stats.linregress(h, np.log(gs))
    assert (line.a, line.b, line.r) == pytest.approx((ref.intercept, ref.slope, ref.rvalue))


def test_the_interval_covers_a_new_generation_as_often_as_its_level():
    """Gaussian residuals around a known line: the 95% interval of a new point's GS holds it in
    95% of 4000 simulated runs of 6 scored generations (binomial sd 0.34%)."""
    rng = np.random.default_rng(1)
    h = np.array([1300.0, 1250.0, 1180.0, 1120.0, 1210.0, 1100.0])
    covered = 0
    for _ in range(4000):
        gs = np.exp(0.5 + 0.003 * h + rng.normal(0, 0.15, h.size))
        fc = predict(fit_line(h, gs), 1050.0)
        new = math.exp(0.5 + 0.003 * 1050.0 + rng.normal(0, 0.15))
        covered += fc.low <= new <= fc.high
    assert 0.935 <= covered / 4000 <= 0.965, covered / 4000


def test_below_rho_is_the_memorization_regime_and_the_line_says_so():
    points = [(1300.0, 400.0), (1200.0, 300.0), (1100.0, 200.0), (1000.0, 150.0)]
    fc = forecast(points, 900.0, rho=120.0)
    assert fc is not None and fc.gs < 120.0 and fc.memorizes
    text = forecast_line("vanilla/gen-004", 4, fc)
    assert text.startswith("vanilla/gen-004: H(D_4) = 900 -> predicted GS ") and text.endswith(
        "below rho = 120: the next model is forecast to memorize"), text
    above = forecast(points, 1250.0, rho=120.0)
    assert not above.memorizes and above.as_dict()["memorizes"] is False
    assert forecast_line("greedy/gen-003", 3, above).endswith("above rho = 120: the next model is forecast to generalize")


def test_a_chain_stops_when_the_forecast_is_below_its_multiple_of_rho():
    points = [(1300.0, 400.0), (1200.0, 300.0), (1100.0, 200.0), (1000.0, 150.0)]
    fc = forecast(points, 900.0, rho=120.0)
    assert stops(fc, 1.0) and fc.memorizes                       # the memorization regime, asked at 1 x rho
    assert not stops(fc, 0.0)                                    # 0: never (the default)
    assert stops(fc, 1.01 * fc.gs / 120.0) and not stops(fc, 0.99 * fc.gs / 120.0)
    above = forecast(points, 1250.0, rho=120.0)
    assert not stops(above, 1.0) and stops(above, 2 * above.gs / 120.0)
    assert not stops(None, 1.0) and not stops(forecast(points, 900.0, rho=None), 1e9)


def test_no_forecast_before_three_scored_generations_or_with_one_entropy():
    assert forecast([(1300.0, 400.0), (1200.0, 300.0)], 1100.0) is None
    assert forecast([(1300.0, 400.0), (1200.0, None), (1100.0, float("nan")), (1000.0, 0.0)], 900.0) is None
    assert forecast([(1000.0, 400.0)] * 3, 900.0) is None
    with pytest.raises(ValueError, match="at least 3"):
        fit_line([1.0, 2.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="GS > 0"):
        fit_line([1.0, 2.0, 3.0], [1.0, 0.0, 2.0])


def _row(strategy, n, h, gs, shared=False, rho=100.0):
    return {"strategy": strategy, "generation": n, "shared": shared,
            "spaces": {"pixel": {"entropy": h, "gs": gs, "copy_radius": rho}}}


def test_the_backtest_forecasts_each_generation_from_the_generations_before_it():
    line = lambda h: math.exp(0.5 + 0.004 * h)  # noqa: E731
    wobble = {("a", 2): 1.05, ("b", 2): 0.95, ("a", 3): 1.1, ("b", 3): 0.9, ("a", 4): 1.0, ("b", 4): 1.02}
    hs = {("a", 2): 1180.0, ("b", 2): 1250.0, ("a", 3): 1100.0, ("b", 3): 1210.0, ("a", 4): 1050.0, ("b", 4): 1190.0}
    rows = [_row(s, 1, 1300.0, line(1300.0), shared=True) for s in "ab"]
    rows += [_row(s, n, hs[s, n], line(hs[s, n]) * wobble[s, n]) for n in (2, 3, 4) for s in "ab"]
    bt = backtest(rows, "pixel")
    assert [(r["strategy"], r["generation"], r["points"]) for r in bt] == \
        [("a", 2, 1), ("b", 2, 1), ("a", 3, 3), ("b", 3, 3), ("a", 4, 5), ("b", 4, 5)]
    assert bt[0]["forecast"] is None and bt[0]["log_error"] is None           # one point before generation 2
    before = [(1300.0, line(1300.0)), (1180.0, line(1180.0) * 1.05), (1250.0, line(1250.0) * 0.95)]
    want = forecast(before, 1100.0, rho=100.0)
    got = bt[2]
    assert got["forecast"]["gs"] == pytest.approx(want.gs) and got["forecast"]["low"] == pytest.approx(want.low)
    assert got["log_error"] == pytest.approx(math.log(line(1100.0) * 1.1) - math.log(want.gs))
    assert got["inside"] == (want.low <= line(1100.0) * 1.1 <= want.high)
    assert got["forecast"]["memorizes"] == (want.gs < 100.0)
