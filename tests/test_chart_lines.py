"""Incremental chart lines (metrics cache) against the plain chart maths."""

from __future__ import annotations

import numpy as np
import pytest

from finetune import charts
from finetune.charts import ema, ema_extend
from finetune.events import EventLog
from finetune.metrics_cache import MetricsCache, _MinMax


@pytest.mark.parametrize("a", [1e-200, 0.3, 0.6, 0.99])
def test_ema_extend_in_chunks_equals_one_pass(a: float) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(2.0, 1.0, 7_000)
    x[rng.random(x.size) < 0.05] = np.nan
    x[:5] = np.nan
    state = None
    parts = []
    for chunk in np.split(x, [3, 4, 10, 500, 2_000, 2_001, 6_999]):
        out, state = ema_extend(chunk, a, state)
        parts.append(out)
    np.testing.assert_allclose(np.concatenate(parts), ema(x, a), rtol=1e-9, atol=1e-12, equal_nan=True)


def reference_keep(y: np.ndarray, size: int) -> np.ndarray:
    keep = {i for i in (0, y.size - 1) if np.isfinite(y[i])}
    for start in range(0, y.size, size):
        block = y[start:start + size]
        ok = np.isfinite(block)
        if ok.any():
            keep.add(start + int(np.argmin(np.where(ok, block, np.inf))))
            keep.add(start + int(np.argmax(np.where(ok, block, -np.inf))))
    return np.array(sorted(keep))


def test_minmax_grown_in_chunks_matches_a_fresh_bucketing() -> None:
    rng = np.random.default_rng(2)
    y = rng.normal(size=50_000).round(1)  # rounding makes ties, which must keep the earlier point
    y[rng.random(y.size) < 0.02] = np.nan
    y[1000:1300] = np.nan  # whole buckets without a finite value
    reducer = _MinMax(max_points=200)
    n = 0
    for step in (50, 150, 1, 999, 3_000, 7, 20_000, 25_793):
        n += step
        keep = reducer.indices(y[:n])
        if n > 200:
            np.testing.assert_array_equal(keep, reference_keep(y[:n], reducer.size))
            assert keep.size <= 202
    assert n == y.size
    assert y[keep].min() == np.nanmin(y) and y[keep].max() == np.nanmax(y)


def write_metrics(log: EventLog, start: int, stop: int, every_eval: int = 50) -> None:
    for step in range(start, stop):
        loss = 3.0 + np.sin(step / 37.0) + (5.0 if step % 997 == 0 else 0.0)
        lr = None if step % 13 == 0 else 1e-3 / (1 + step)
        log.append("METRIC", "m", step=step, loss=float(loss), learning_rate=lr)
        if step % every_eval == 0:
            log.append("METRIC", "e", step=step, eval_loss=float(loss) - 0.1)


def test_cached_figures_match_plain_figures_while_a_run_grows(tmp_path) -> None:
    log = EventLog(tmp_path / "events.jsonl")
    cache = MetricsCache(chunk=5_000)
    step = 1
    for stop in (40, 1_500, 6_000, 6_001, 9_000):
        write_metrics(log, step, stop)
        step = stop
        cached = cache.series("run", log)
        plain = charts.MetricSeries(*(np.array(a) for a in (cached.step, cached.loss, cached.learning_rate,
                                                            cached.eval_step, cached.eval_loss)))
        for smoothing in (0.0, 0.6, 0.9):
            c = charts.loss_figure(cached, smoothing=smoothing, max_points=500)
            p = charts.loss_figure(plain, smoothing=smoothing, max_points=500)
            assert [t.name for t in c.data] == [t.name for t in p.data]
            raw, smooth = c.data[0], c.data[1]
            assert len(raw.x) <= 502 and len(smooth.x) <= 502
            x = np.asarray(cached.step)
            # Every drawn point is a real point of the full line, extremes included.
            idx = np.searchsorted(x, np.asarray(raw.x))
            np.testing.assert_allclose(np.asarray(raw.y), cached.loss[idx].astype(np.float32))
            assert np.asarray(raw.y).max() == np.float32(cached.loss.max())
            full = ema(cached.loss, smoothing) if smoothing else cached.loss
            idx = np.searchsorted(x, np.asarray(smooth.x))
            np.testing.assert_allclose(np.asarray(smooth.y), full[idx].astype(np.float32), rtol=1e-6)
            # Eval points and the best-eval star agree exactly.
            np.testing.assert_array_equal(np.asarray(c.data[-1].x), np.asarray(p.data[-1].x))
            np.testing.assert_array_equal(np.asarray(c.data[-1].y), np.asarray(p.data[-1].y))
        lr_c, lr_p = charts.lr_figure(cached, max_points=500), charts.lr_figure(plain, max_points=500)
        assert np.isfinite(np.asarray(lr_c.data[0].y)).all()
        assert np.asarray(lr_c.data[0].y).max() == np.asarray(lr_p.data[0].y).max()
        if stop <= 250:
            np.testing.assert_array_equal(np.asarray(lr_c.data[0].x), np.asarray(lr_p.data[0].x))


def test_points_without_a_step_are_dropped_from_cached_lines(tmp_path) -> None:
    log = EventLog(tmp_path / "events.jsonl")
    cache = MetricsCache()
    write_metrics(log, 1, 3_000)
    cache.series("r", log)
    charts.loss_figure(cache.series("r", log), smoothing=0.6, max_points=100)  # lines exist before the odd point
    log.append("METRIC", "no step", loss=100.0, learning_rate=1.0)
    write_metrics(log, 3_000, 3_100)
    s = cache.series("r", log)
    fig = charts.loss_figure(s, smoothing=0.6, max_points=100)
    for trace in fig.data[:2]:
        assert np.isfinite(np.asarray(trace.x, dtype=float)).all()
        assert np.asarray(trace.y).max() < 10
    assert np.asarray(charts.lr_figure(s, max_points=100).data[0].y).max() < 1


def test_cached_series_are_read_only_views(tmp_path) -> None:
    log = EventLog(tmp_path / "events.jsonl")
    write_metrics(log, 1, 10)
    s = MetricsCache().series("r", log)
    with pytest.raises(ValueError):
        s.loss[0] = 1.0
    assert charts.metrics_csv(s).count("\n") == 10
