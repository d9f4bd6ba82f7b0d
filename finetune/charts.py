"""Training-metric charts: smoothing, downsampling and Plotly figures.

Pure functions (numpy + plotly only, no Gradio, no torch) so they are cheap to
test and can run on every UI timer tick. ``gr.Plot`` re-sends the whole figure
JSON on each update, so figures are kept small: lines are min/max downsampled
to a few thousand points and arrays are handed to Plotly as compact numpy
dtypes (serialised as base64 typed arrays instead of JSON number lists).
Only ``Scatter`` traces and common layout attributes are used, because Gradio
bundles plotly.js 3.x while plotly.py 7 targets 4.x.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import plotly.graph_objects as go

# Rescaled prefix sums in _linear_scan multiply values by up to this factor;
# 1e100 leaves ~200 orders of magnitude of headroom before float64 overflows.
_SCALE_LIMIT = 1e100
_MAX_BLOCK = 1024

_LOSS_COLOR = "#1f77b4"
_EVAL_COLOR = "#d62728"
_BEST_COLOR = "#2ca02c"
_LR_COLOR = "#9467bd"


def _linear_scan(u: np.ndarray, a: float) -> np.ndarray:
    """Return s with s[t] = a * s[t-1] + u[t] (s[-1] = 0), vectorised by blocks.

    numpy has no linear-recurrence ufunc (and scipy is not a dependency), so
    the series is cut into blocks of length L. Inside a block the recurrence is
    a rescaled prefix sum: s_j = a**j * cumsum(u_k * a**-k). L is chosen so
    a**-(L-1) stays below _SCALE_LIMIT (no overflow); rounding error is the
    same order as the plain loop's. The carry between blocks is again a linear
    recurrence (factor a**L) over n/L values, solved recursively.
    """
    n = u.size
    if n == 0 or a == 0.0:
        return u.copy()
    block = int(math.log(_SCALE_LIMIT) / -math.log(a)) + 1
    block = min(block, _MAX_BLOCK, n)
    if block < 2:
        # Factor so small that rescaling would overflow: a plain loop is
        # exact. Only reached for tiny n (deep recursion) or absurd a.
        out = np.empty(n)
        s = 0.0
        for i, v in enumerate(u.tolist()):
            s = a * s + v
            out[i] = s
        return out
    n_blocks = -(-n // block)
    padded = np.zeros(n_blocks * block)
    padded[:n] = u
    k = np.arange(block)
    up = a**k
    local = np.cumsum(padded.reshape(n_blocks, block) * a ** (-k), axis=1) * up
    if n_blocks > 1:
        # carry[b] is the true s at the end of block b.
        carry = _linear_scan(local[:, -1].copy(), a**block)
        local[1:] += np.outer(carry[:-1], up * a)
    return local.ravel()[:n]


def ema(values: np.ndarray, smoothing: float) -> np.ndarray:
    """Debiased exponential moving average, as in TensorBoard / W&B.

    s_t = smoothing * s_{t-1} + (1 - smoothing) * x_t with s_0 = 0, divided by
    1 - smoothing**(t+1) so early values are not pulled towards zero. Non-finite
    inputs are skipped (t counts finite values only) and the previous smoothed
    value is carried over them, so one NaN loss does not poison the curve;
    positions before the first finite value are NaN. smoothing == 0 returns a
    plain float copy.
    """
    return ema_extend(values, smoothing)[0]


@dataclass
class EmaState:
    """Where an EMA stopped: the raw (not debiased) value, finite inputs seen, last output."""

    raw: float = 0.0
    count: int = 0
    last: float = math.nan


def ema_extend(values: np.ndarray, smoothing: float, state: EmaState | None = None) -> tuple[np.ndarray, EmaState]:
    """``ema`` continued chunk by chunk, for a series that only grows.

    ``ema_extend(b, a, state)`` with the state returned for the values before
    ``b`` gives the tail of ``ema(before + b, a)`` (equal to rounding), so a
    refresh smooths only the new points. smoothing == 0 returns a plain copy.
    """
    x = np.array(values, dtype=np.float64)  # always a copy
    if x.ndim != 1:
        raise ValueError("ema expects a 1-D array")
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing!r}")
    state = state or EmaState()
    if smoothing == 0.0 or x.size == 0:
        return x, state
    return _ema_core(x, smoothing, state)


def _ema_core(x: np.ndarray, a: float, state: EmaState) -> tuple[np.ndarray, EmaState]:
    finite = np.isfinite(x)
    f = x[finite]
    m = f.size
    # a**t drops below float64 resolution after a few thousand steps at most,
    # so only that prefix needs the carry and debias terms (np.power over 1M is ~80 ms).
    limit = int(math.log(1e-18) / math.log(a)) + 1
    raw_last = state.raw
    s = f
    if m:
        u = (1.0 - a) * f
        # Huge magnitudes could overflow the rescaled prefix sums: normalise them.
        scale = float(np.abs(u).max())
        s = _linear_scan(u / scale, a) * scale if scale > 1e150 else _linear_scan(u, a)
        if state.raw != 0.0:
            k = min(m, limit)
            s[:k] += state.raw * a ** np.arange(1, k + 1, dtype=np.float64)
        raw_last = float(s[-1])
        # Debias: the j-th new finite value is the (count + j + 1)-th overall.
        k = min(m, max(0, limit - state.count))
        if k:
            s[:k] /= 1.0 - a ** np.arange(state.count + 1, state.count + k + 1, dtype=np.float64)
    # Index of the last finite value seen at each position (-1: none yet in this chunk).
    last = np.cumsum(finite) - 1
    out = np.full(x.size, state.last)
    seen = last >= 0
    out[seen] = s[last[seen]]
    return out, EmaState(raw=raw_last, count=state.count + m, last=float(out[-1]) if x.size else state.last)


def downsample_minmax(
    x: np.ndarray, y: np.ndarray, max_points: int = 2000
) -> tuple[np.ndarray, np.ndarray]:
    """Reduce a line to <= max_points + 2 points while keeping its spikes.

    The index range is cut into max_points // 2 contiguous buckets; each keeps
    its lowest and highest point (plain striding would drop loss spikes).
    Points stay in index order (x order for monotonic steps); the first and last
    points are always kept. Non-finite y is ignored when picking min/max, so an
    all-NaN bucket contributes nothing. Fully vectorised: argmin/argmax over a
    NaN-padded (buckets, size) view.
    """
    x = np.asarray(x)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError("x and y must be 1-D arrays of equal length")
    n = y.size
    if n <= max_points:
        return x, y
    if max_points < 2:
        raise ValueError("max_points must be >= 2")
    size = -(-n // (max_points // 2))  # ceil, so rows <= max_points // 2
    rows = -(-n // size)
    padded = np.full(rows * size, np.nan)
    padded[:n] = y
    finite = np.isfinite(padded)
    lo = np.where(finite, padded, np.inf).reshape(rows, size).argmin(axis=1)
    hi = np.where(finite, padded, -np.inf).reshape(rows, size).argmax(axis=1)
    valid = finite.reshape(rows, size).any(axis=1)
    base = np.arange(rows) * size
    keep = np.unique(
        np.concatenate(([0], (base + lo)[valid], (base + hi)[valid], [n - 1]))
    )
    return x[keep], y[keep]


@dataclass
class MetricSeries:
    """Metric columns (float64, NaN where missing); train and eval lengths differ."""

    step: np.ndarray
    loss: np.ndarray
    learning_rate: np.ndarray
    eval_step: np.ndarray
    eval_loss: np.ndarray
    # Optional source of ready downsampled chart lines (finetune.metrics_cache
    # keeps them up to date incrementally); None: computed here from the arrays.
    lines: Any = field(default=None, repr=False, compare=False)


def _num(value: object) -> float:
    """Coerce an event field to float; anything unusable becomes NaN."""
    if value is None or isinstance(value, bool):
        return math.nan
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def series_from_events(events: Iterable[dict]) -> MetricSeries:
    """Extract train and eval columns from METRIC events, in event order."""
    train: list[tuple[float, float, float]] = []
    evals: list[tuple[float, float]] = []
    for ev in events:
        if ev.get("level") != "METRIC":
            continue
        if "loss" in ev:
            train.append((_num(ev.get("step")), _num(ev["loss"]), _num(ev.get("learning_rate"))))
        if "eval_loss" in ev:
            evals.append((_num(ev.get("step")), _num(ev["eval_loss"])))
    t = np.array(train, dtype=np.float64).reshape(-1, 3)
    e = np.array(evals, dtype=np.float64).reshape(-1, 2)
    return MetricSeries(
        step=t[:, 0].copy(),
        loss=t[:, 1].copy(),
        learning_rate=t[:, 2].copy(),
        eval_step=e[:, 0].copy(),
        eval_loss=e[:, 1].copy(),
    )


def _compact_x(x: np.ndarray) -> np.ndarray:
    """Integral steps as int32 (4 bytes, exact); anything else stays float64."""
    if x.size and np.isfinite(x).all() and (x == np.round(x)).all() and np.abs(x).max() < 2**31:
        return x.astype(np.int32)
    return x.astype(np.float64)


def _compact_y(y: np.ndarray) -> np.ndarray:
    # float32 keeps ~7 significant digits, far more than a chart or a 4-decimal
    # hover shows, and halves the JSON sent on every refresh.
    return np.asarray(y, dtype=np.float32)


def _line(x: np.ndarray, y: np.ndarray, max_points: int, **kwargs: object) -> go.Scatter:
    dx, dy = downsample_minmax(x, y, max_points)
    return go.Scatter(x=_compact_x(dx), y=_compact_y(dy), **kwargs)


def _base_figure(y_title: str, uirevision: str, empty: bool) -> go.Figure:
    fig = go.Figure()
    fig.update_layout(
        template="none",  # the default template alone adds ~10 KB per update
        uirevision=uirevision,  # constant: user zoom/pan survives refreshes
        height=320,
        margin={"l": 55, "r": 15, "t": 30, "b": 40},
        hovermode="closest",
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "xanchor": "left", "x": 0},
        xaxis={"title": {"text": "step"}, "showgrid": True, "gridcolor": "#eee", "zeroline": False},
        yaxis={"title": {"text": y_title}, "showgrid": True, "gridcolor": "#eee", "zeroline": False},
    )
    if empty:
        # Hide the axes: with nothing to range over, Plotly draws a made-up -1..6 / -1..4 scale.
        fig.update_xaxes(visible=False)
        fig.update_yaxes(visible=False)
        fig.add_annotation(
            text="No metrics yet", xref="paper", yref="paper", x=0.5, y=0.5,
            showarrow=False, font={"size": 14, "color": "#888"},
        )
    return fig


def series_line(
    series: MetricSeries, which: str, max_points: int = 2000, smoothing: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """One chart line, downsampled: ``which`` is "loss" (EMA-smoothed when
    smoothing > 0), "lr" or "eval". Points without a step are dropped (and lr
    points without a value). Taken ready-made from ``series.lines`` when the
    series has one (the metrics cache keeps its lines up to date incrementally,
    so a refresh of a 1M-step run does not redo 1M points of work).
    """
    if series.lines is not None:
        return series.lines.line(which, max_points, smoothing)
    if which == "eval":
        ok = np.isfinite(series.eval_step) & np.isfinite(series.eval_loss)
        x, y = series.eval_step[ok], series.eval_loss[ok]
    elif which == "lr":
        ok = np.isfinite(series.step) & np.isfinite(series.learning_rate)
        x, y = series.step[ok], series.learning_rate[ok]
    elif which == "loss":
        ok = np.isfinite(series.step)
        x, y = series.step[ok], series.loss[ok]
        if smoothing:
            # Smooth the full-resolution series first: smoothing after
            # downsampling would average min/max extremes, not neighbouring steps.
            y = ema(y, smoothing)
    else:
        raise ValueError(f"unknown line {which!r}")
    return downsample_minmax(x, y, max_points)


def _trace(xy: tuple[np.ndarray, np.ndarray], **kwargs: object) -> go.Scatter:
    return go.Scatter(x=_compact_x(xy[0]), y=_compact_y(xy[1]), **kwargs)


def loss_figure(
    series: MetricSeries, smoothing: float = 0.6, log_y: bool = False, max_points: int = 2000
) -> go.Figure:
    """Raw (faint) + EMA-smoothed training loss, eval loss markers, best eval starred."""
    raw = series_line(series, "loss", max_points)
    ev_step, ev_loss = series_line(series, "eval", max_points)
    # Min/max downsampling keeps every bucket's finite extremes, so the
    # downsampled line has a finite value exactly when the full one does.
    has_loss = bool(np.isfinite(raw[1]).any())
    empty = not has_loss and ev_loss.size == 0
    fig = _base_figure("loss", "loss", empty)
    # Per-axis uirevision keyed on the scale: toggling log/linear resets the y
    # range (a linear range is meaningless on a log axis) but keeps x zoom.
    fig.update_yaxes(type="log" if log_y else "linear", uirevision="log" if log_y else "linear")
    if empty:
        return fig
    if has_loss:
        fig.add_trace(_trace(
            raw, name="loss (raw)", mode="lines", opacity=0.3,
            line={"color": _LOSS_COLOR, "width": 1},
            hovertemplate="step %{x}<br>loss %{y:.4f}<extra>raw</extra>",
        ))
        fig.add_trace(_trace(
            series_line(series, "loss", max_points, smoothing), name="loss (smoothed)", mode="lines",
            line={"color": _LOSS_COLOR, "width": 2},
            hovertemplate="step %{x}<br>smoothed loss %{y:.4f}<extra>smoothed</extra>",
        ))
    if ev_loss.size:
        fig.add_trace(_trace(
            (ev_step, ev_loss), name="eval loss", mode="markers",
            marker={"color": _EVAL_COLOR, "size": 7},
            hovertemplate="step %{x}<br>eval loss %{y:.4f}<extra>eval</extra>",
        ))
        # The downsampled points keep the first occurrence of the global minimum.
        best = int(np.argmin(ev_loss))
        fig.add_trace(_trace(
            (ev_step[best:best + 1], ev_loss[best:best + 1]),
            name="best eval loss", mode="markers",
            marker={"color": _BEST_COLOR, "size": 14, "symbol": "star",
                        "line": {"color": "#fff", "width": 1}},
            hovertemplate="step %{x}<br>best eval loss %{y:.4f}<extra>best</extra>",
        ))
    return fig


def lr_figure(series: MetricSeries, max_points: int = 2000) -> go.Figure:
    """Learning-rate schedule; steps without a logged LR are dropped, not gaps."""
    line = series_line(series, "lr", max_points)
    fig = _base_figure("learning rate", "lr", line[0].size == 0)
    fig.update_yaxes(tickformat=".1e")
    if line[0].size:
        fig.add_trace(_trace(
            line, name="learning rate",
            mode="lines", line={"color": _LR_COLOR, "width": 2},
            hovertemplate="step %{x}<br>lr %{y:.3e}<extra></extra>",
        ))
    return fig


def _cell(v: float, as_int: bool = False) -> str:
    if not math.isfinite(v):
        return ""
    if as_int and v == int(v):
        return str(int(v))
    return repr(float(v))  # shortest round-trip text


def metrics_csv(series: MetricSeries) -> str:
    """CSV (step,loss,learning_rate,eval_loss) with train/eval rows merged by step.

    A later log for the same step (e.g. after resuming) overrides an earlier one.
    Rows without a step cannot be merged or sorted; they are appended at the end.
    """
    rows: dict[float, list[float]] = {}
    stepless: list[list[float]] = []
    for s, loss, lr in zip(series.step, series.loss, series.learning_rate):
        if not math.isfinite(s):
            stepless.append([s, loss, lr, math.nan])
            continue
        row = rows.setdefault(float(s), [float(s), math.nan, math.nan, math.nan])
        row[1], row[2] = loss, lr
    for s, ev in zip(series.eval_step, series.eval_loss):
        if not math.isfinite(s):
            stepless.append([s, math.nan, math.nan, ev])
            continue
        rows.setdefault(float(s), [float(s), math.nan, math.nan, math.nan])[3] = ev
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["step", "loss", "learning_rate", "eval_loss"])
    for row in [rows[k] for k in sorted(rows)] + stepless:
        writer.writerow([_cell(row[0], as_int=True)] + [_cell(v) for v in row[1:]])
    return buf.getvalue()


# Distinct line colours for overlaid runs (Plotly's qualitative "D3" palette).
_OVERLAY_COLORS = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)


def overlay_figure(
    named_series: dict[str, MetricSeries], smoothing: float = 0.6, log_y: bool = False, max_points: int = 2000
) -> go.Figure:
    """Several runs' training loss on one chart: one colour per run, in dict order.

    Each run draws its EMA-smoothed loss (the raw loss when smoothing is 0) as
    a line and its eval loss, if any, as markers of the same colour. Runs with
    no finite loss are listed in the legend only through their eval points, or
    not at all; with nothing to draw the figure says so.
    """
    drawable = {}
    for name, s in named_series.items():
        ok = np.isfinite(s.step)
        ev_ok = np.isfinite(s.eval_step) & np.isfinite(s.eval_loss)
        if np.isfinite(s.loss[ok]).any() or ev_ok.any():
            drawable[name] = (s.step[ok], s.loss[ok], s.eval_step[ev_ok], s.eval_loss[ev_ok])
    fig = _base_figure("loss", "overlay", not drawable)
    fig.update_yaxes(type="log" if log_y else "linear", uirevision="log" if log_y else "linear")
    if not drawable:
        fig.layout.annotations[0].text = "Select runs to compare"
        return fig
    for i, (name, (step, loss, ev_step, ev_loss)) in enumerate(drawable.items()):
        color = _OVERLAY_COLORS[i % len(_OVERLAY_COLORS)]
        if np.isfinite(loss).any():
            fig.add_trace(_line(
                step, ema(loss, smoothing), max_points, name=name, legendgroup=name, mode="lines",
                line={"color": color, "width": 2},
                hovertemplate=f"step %{{x}}<br>loss %{{y:.4f}}<extra>{_hover_name(name)}</extra>",
            ))
        if ev_loss.size:
            fig.add_trace(_line(
                ev_step, ev_loss, max_points, name=f"{name} (eval)", legendgroup=name, mode="markers",
                marker={"color": color, "size": 7, "symbol": "diamond"},
                hovertemplate=f"step %{{x}}<br>eval loss %{{y:.4f}}<extra>{_hover_name(name)}</extra>",
            ))
    return fig


def _hover_name(name: str) -> str:
    # Plotly renders a small HTML subset in hover labels: keep a run name literal.
    return name.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
