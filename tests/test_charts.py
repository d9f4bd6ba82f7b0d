"""Tests for finetune.charts: smoothing, downsampling, event parsing, figures, CSV."""

from __future__ import annotations

import csv
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest

# Let `pytest tests/test_charts.py` import the package without an install or a
# conftest (tests/ is not a package, so pytest only puts tests/ on sys.path).
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from finetune.charts import (
    MetricSeries,
    downsample_minmax,
    ema,
    loss_figure,
    lr_figure,
    metrics_csv,
    series_from_events,
)


def ema_reference(x: np.ndarray, a: float) -> np.ndarray:
    """Straightforward loop implementation of the documented EMA semantics."""
    out = np.full(len(x), np.nan)
    s, t = 0.0, 0
    for i, v in enumerate(x):
        if np.isfinite(v):
            s = a * s + (1 - a) * v
            t += 1
        if t:
            out[i] = s / (1 - a**t)
    return out


def synthetic_series(n: int, eval_every: int = 500, seed: int = 0) -> MetricSeries:
    rng = np.random.default_rng(seed)
    step = np.arange(1, n + 1, dtype=np.float64)
    loss = 3.0 * np.exp(-step / (n / 5)) + 0.5 + rng.normal(0, 0.1, n)
    lr = 1e-4 * (1 - step / n)
    eval_step = step[eval_every - 1 :: eval_every].copy()
    eval_loss = 3.0 * np.exp(-eval_step / (n / 5)) + 0.6
    return MetricSeries(step, loss, lr, eval_step, eval_loss)


def n_points(trace: go.Scatter) -> int:
    return len(trace.x)


# ---------------------------------------------------------------- ema


def test_ema_zero_smoothing_is_float_copy() -> None:
    x = np.array([3, 1, 4, 1, 5], dtype=np.int64)
    out = ema(x, 0.0)
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, x.astype(float))
    out[0] = 99.0
    assert x[0] == 3  # a copy, not a view


def test_ema_debias_first_value_equals_first_input() -> None:
    x = np.array([2.5, 0.0, 10.0])
    for a in (0.3, 0.6, 0.99):
        assert ema(x, a)[0] == pytest.approx(2.5, rel=1e-12)
    # Second value: (a*(1-a)*x0 + (1-a)*x1) / (1-a^2) = (a*x0 + x1) / (1+a).
    assert ema(x, 0.6)[1] == pytest.approx((0.6 * 2.5 + 0.0) / 1.6)


def test_ema_constant_input_stays_constant() -> None:
    x = np.full(10_000, 1.7)
    for a in (0.1, 0.6, 0.9, 0.99):
        np.testing.assert_allclose(ema(x, a), 1.7, rtol=1e-12)


def test_ema_skips_non_finite_values() -> None:
    x = np.array([np.nan, 1.0, np.nan, np.inf, 3.0, -np.inf])
    out = ema(x, 0.5)
    assert np.isnan(out[0])  # nothing finite seen yet
    assert out[1] == pytest.approx(1.0)
    assert out[2] == out[1] and out[3] == out[1]  # carried over the gap
    # Second finite value is debiased with t=2, as if the NaNs were absent.
    assert out[4] == pytest.approx(ema(np.array([1.0, 3.0]), 0.5)[1])
    assert out[5] == out[4]
    assert np.isfinite(out[1:]).all()


def test_ema_all_nan_and_empty() -> None:
    assert np.isnan(ema(np.full(5, np.nan), 0.6)).all()
    assert ema(np.array([]), 0.6).size == 0


@pytest.mark.parametrize("a", [1e-200, 1e-6, 0.01, 0.3, 0.6, 0.9, 0.99])
def test_ema_matches_reference_loop(a: float) -> None:
    # Long enough to exercise the blocked scan's recursion (blocks of 1024).
    rng = np.random.default_rng(42)
    x = rng.normal(2.0, 1.0, 5_000)
    x[rng.random(x.size) < 0.05] = np.nan
    x[:3] = np.nan
    out = ema(x, a)
    ref = ema_reference(x, a)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
    np.testing.assert_allclose(out, ref, rtol=1e-10, atol=1e-12, equal_nan=True)


def test_ema_rejects_bad_smoothing() -> None:
    with pytest.raises(ValueError):
        ema(np.ones(3), 1.0)
    with pytest.raises(ValueError):
        ema(np.ones(3), -0.1)


def test_ema_one_million_points_is_fast() -> None:
    x = np.random.default_rng(0).normal(size=1_000_000)
    ema(x, 0.6)  # warm-up
    start = time.perf_counter()
    out = ema(x, 0.99)
    assert time.perf_counter() - start < 0.5  # measured ~30 ms; a Python loop is ~0.3-1 s
    assert out.shape == x.shape and np.isfinite(out).all()


# ---------------------------------------------------------------- downsample


def test_downsample_passes_small_inputs_through() -> None:
    x = np.arange(10.0)
    y = x**2
    dx, dy = downsample_minmax(x, y, max_points=10)
    np.testing.assert_array_equal(dx, x)
    np.testing.assert_array_equal(dy, y)


def test_downsample_keeps_extremes_and_endpoints() -> None:
    rng = np.random.default_rng(1)
    n = 50_001
    x = np.arange(n, dtype=np.float64)
    y = rng.normal(size=n)
    y[12_345] = 100.0  # spike that striding would likely miss
    y[33_333] = -100.0
    dx, dy = downsample_minmax(x, y, max_points=200)
    assert len(dx) == len(dy) <= 202
    assert dx[0] == 0 and dx[-1] == n - 1
    assert 12_345 in dx and 33_333 in dx
    assert dy.max() == 100.0 and dy.min() == -100.0
    assert np.all(np.diff(dx) > 0)  # index order, no duplicates
    np.testing.assert_array_equal(dy, y[dx.astype(int)])  # pairs stay aligned


def test_downsample_ignores_nan_buckets() -> None:
    n = 1_000
    y = np.arange(n, dtype=np.float64)
    y[100:900] = np.nan
    dx, dy = downsample_minmax(np.arange(n), y, max_points=10)  # buckets of 200
    # Buckets [200,400),[400,600),[600,800) are all NaN and contribute nothing.
    assert not np.any((dx >= 200) & (dx < 800))
    assert np.isfinite(dy).all()
    assert {0, 99, 900, 999} <= set(dx.tolist())


def test_downsample_one_million_points() -> None:
    n = 1_000_000
    x = np.arange(n, dtype=np.float64)
    y = np.random.default_rng(2).normal(size=n)
    downsample_minmax(x, y)  # warm-up
    start = time.perf_counter()
    dx, dy = downsample_minmax(x, y)
    elapsed = time.perf_counter() - start
    assert len(dx) <= 2002
    assert dy.max() == y.max() and dy.min() == y.min()
    assert dx[0] == 0 and dx[-1] == n - 1
    assert elapsed < 0.2  # measured ~3-7 ms; generous for loaded CI machines


def test_downsample_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError):
        downsample_minmax(np.arange(5), np.arange(4))


# ---------------------------------------------------------------- events


def test_series_from_events_separates_train_and_eval() -> None:
    events = [
        {"seq": 1, "level": "INFO", "message": "starting", "step": 0, "loss": 9.9},
        {"seq": 2, "level": "METRIC", "message": "step 10 loss 2.31", "step": 10,
         "loss": 2.31, "learning_rate": 1e-4, "grad_norm": 0.9, "epoch": 0.2},
        {"seq": 3, "level": "METRIC", "step": 20, "loss": 2.2},  # no learning_rate
        {"seq": 4, "level": "METRIC", "step": 20, "eval_loss": 2.1},
        {"seq": 5, "level": "METRIC", "train_runtime": 12.0, "train_loss": 2.2},
    ]
    s = series_from_events(events)
    np.testing.assert_array_equal(s.step, [10.0, 20.0])
    np.testing.assert_array_equal(s.loss, [2.31, 2.2])
    assert s.learning_rate[0] == 1e-4 and np.isnan(s.learning_rate[1])
    np.testing.assert_array_equal(s.eval_step, [20.0])
    np.testing.assert_array_equal(s.eval_loss, [2.1])
    for arr in (s.step, s.loss, s.learning_rate, s.eval_step, s.eval_loss):
        assert arr.dtype == np.float64


def test_series_from_no_events_is_empty() -> None:
    s = series_from_events(iter([]))
    assert s.step.shape == (0,) and s.eval_loss.shape == (0,)


# ---------------------------------------------------------------- figures


def test_loss_figure_traces_and_bounds() -> None:
    s = synthetic_series(100_000)
    fig = loss_figure(s, smoothing=0.6, max_points=2000)
    names = [t.name for t in fig.data]
    assert names == ["loss (raw)", "loss (smoothed)", "eval loss", "best eval loss"]
    for trace in fig.data:
        assert isinstance(trace, go.Scatter)
        assert isinstance(trace.x, np.ndarray)  # compact typed arrays, not lists
        assert n_points(trace) <= 2002
    assert fig.data[0].opacity == pytest.approx(0.3)
    assert fig.layout.uirevision == "loss"
    assert fig.layout.xaxis.title.text == "step"
    assert fig.layout.yaxis.title.text == "loss"
    assert fig.layout.yaxis.type != "log"
    best = fig.data[3]
    assert best.y[0] == pytest.approx(s.eval_loss.min(), rel=1e-6)
    assert best.x[0] == s.eval_step[np.argmin(s.eval_loss)]
    assert "best eval loss" in best.hovertemplate


def test_loss_figure_smooths_before_downsampling() -> None:
    # Alternating 0/1 loss: the EMA of the full series hovers near 0.5, while
    # min/max downsampling keeps the raw extremes 0 and 1.
    n = 20_000
    s = MetricSeries(np.arange(n, dtype=float), np.tile([0.0, 1.0], n // 2),
                     np.full(n, 1e-4), np.array([]), np.array([]))
    raw, smooth = loss_figure(s, smoothing=0.9, max_points=500).data
    assert raw.y.min() == 0.0 and raw.y.max() == 1.0
    assert np.all(np.abs(np.asarray(smooth.y[10:]) - 0.5) < 0.1)


def test_loss_figure_log_axis() -> None:
    s = synthetic_series(1_000, eval_every=100)
    assert loss_figure(s, log_y=True).layout.yaxis.type == "log"
    assert loss_figure(s, log_y=False).layout.yaxis.type == "linear"


def test_empty_figures_have_annotation_only() -> None:
    empty = series_from_events([{"level": "INFO", "message": "loading"}])
    for fig in (loss_figure(empty), lr_figure(empty)):
        assert len(fig.data) == 0
        assert [a.text for a in fig.layout.annotations] == ["No metrics yet"]
        json.loads(fig.to_json())  # still a valid, serialisable figure


def test_lr_figure() -> None:
    s = synthetic_series(100_000)
    s.learning_rate[::7] = np.nan  # steps that did not log an LR are dropped
    fig = lr_figure(s)
    assert len(fig.data) == 1 and fig.data[0].name == "learning rate"
    assert n_points(fig.data[0]) <= 2002
    assert np.isfinite(np.asarray(fig.data[0].y)).all()
    assert fig.layout.uirevision == "lr"
    assert fig.layout.yaxis.tickformat == ".1e"


def test_figure_json_is_small() -> None:
    s = synthetic_series(100_000, eval_every=100)  # 1,000 eval points too
    loss_json = loss_figure(s).to_json()
    assert len(loss_json.encode()) < 150_000
    assert len(lr_figure(s).to_json().encode()) < 150_000
    assert '"bdata"' in loss_json  # numpy arrays were sent as typed arrays


# ---------------------------------------------------------------- csv


def test_metrics_csv_merges_by_step() -> None:
    events = [
        {"level": "METRIC", "step": 20, "loss": 2.0, "learning_rate": 5e-05},
        {"level": "METRIC", "step": 10, "loss": 2.5, "learning_rate": 0.0001},
        {"level": "METRIC", "step": 20, "eval_loss": 1.9},
        {"level": "METRIC", "step": 25, "eval_loss": 1.8},
    ]
    text = metrics_csv(series_from_events(events))
    assert text.splitlines()[0] == "step,loss,learning_rate,eval_loss"
    rows = list(csv.reader(io.StringIO(text)))[1:]
    assert rows == [
        ["10", "2.5", "0.0001", ""],
        ["20", "2.0", "5e-05", "1.9"],
        ["25", "", "", "1.8"],
    ]


def test_metrics_csv_empty() -> None:
    assert metrics_csv(series_from_events([])) == "step,loss,learning_rate,eval_loss\n"


def test_overlay_figure_one_colour_per_run() -> None:
    from finetune.charts import overlay_figure

    steps = np.arange(1, 11, dtype=np.float64)
    a = MetricSeries(step=steps, loss=np.linspace(3, 1, 10), learning_rate=np.full(10, 1e-3),
                     eval_step=np.array([5.0, 10.0]), eval_loss=np.array([2.5, 1.5]))
    b = MetricSeries(step=steps, loss=np.linspace(4, 2, 10), learning_rate=np.full(10, 1e-3),
                     eval_step=np.array([]), eval_loss=np.array([]))
    empty = series_from_events([])
    fig = overlay_figure({"run-a": a, "run-b": b, "run-empty": empty}, smoothing=0.0, log_y=True)
    names = [t.name for t in fig.data]
    assert names == ["run-a", "run-a (eval)", "run-b"]  # a run without metrics draws nothing
    assert fig.data[0].line.color == fig.data[1].marker.color != fig.data[2].line.color
    np.testing.assert_allclose(np.asarray(fig.data[2].y, dtype=np.float64), np.linspace(4, 2, 10), rtol=1e-6)
    assert fig.layout.yaxis.type == "log"
    smoothed = overlay_figure({"run-a": a}, smoothing=0.9)
    np.testing.assert_allclose(np.asarray(smoothed.data[0].y, dtype=np.float64), ema(a.loss, 0.9), rtol=1e-6)


def test_overlay_figure_empty_says_what_to_do() -> None:
    from finetune.charts import overlay_figure

    fig = overlay_figure({})
    assert len(fig.data) == 0
    assert fig.layout.annotations[0].text == "Select runs to compare"
    assert overlay_figure({"x": series_from_events([])}).layout.annotations[0].text == "Select runs to compare"
