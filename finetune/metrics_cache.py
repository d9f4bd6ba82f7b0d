"""Compact, incrementally updated metric columns and chart lines per run.

A poll reads only the bytes appended after the cursor it stopped at, and
keeps the numbers in growing float64 buffers (8 bytes a value), so memory
holds numbers, not a dict per event. Series handed out are read-only views of
those buffers (values before the current length never change), not copies.

Chart lines (raw and EMA-smoothed loss, learning rate, eval loss) are also
kept up to date incrementally: the EMA continues from its last state and the
min/max downsampling keeps finished buckets, so a chart refresh of a
1,000,000-step run costs about what one of a 100-step run does.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

from finetune.charts import EmaState, MetricSeries, ema_extend
from finetune.events import EventLog, json_loads

NAN = float("nan")
# Loose on purpose: any spacing of the JSON matches; the parse below filters exactly.
_METRIC = b'"METRIC"'
# Smoothing values whose EMA is kept per run (the UI slider moves between a few).
_MAX_SMOOTHINGS = 4


def _num(value: object) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            return NAN
    return NAN


_PLAIN = {float, int, type(None)}


def _column(values: list[object]) -> np.ndarray:
    """Event field values as float64; None, and anything not a number, become NaN."""
    if {type(v) for v in values} <= _PLAIN:
        try:
            return np.array(values, dtype=np.float64)  # fast path: None -> NaN
        except OverflowError:
            pass
    return np.array([_num(v) for v in values], dtype=np.float64)


class _Buffer:
    """A float64 column that only grows (capacity doubles)."""

    def __init__(self) -> None:
        self.data = np.empty(256)
        self.n = 0

    def extend(self, values: list[float] | np.ndarray) -> None:
        need = self.n + len(values)
        if need > self.data.size:
            # A new array: views handed out earlier keep the old one, unchanged.
            grown = np.empty(max(need + need // 2, 2 * self.data.size))
            grown[: self.n] = self.data[: self.n]
            self.data = grown
        self.data[self.n:need] = values
        self.n = need

    def view(self) -> np.ndarray:
        out = self.data[: self.n]
        out.flags.writeable = False
        return out


class _MinMax:
    """Min/max bucket downsampling of a growing line, updated with new points only.

    Like ``charts.downsample_minmax`` (each bucket keeps its lowest and highest
    finite point, plus the first and last points), but buckets are aligned
    runs of ``size`` points, ``size`` a power of two that doubles (merging
    neighbours) when more than ``max_points // 2`` buckets would be needed. A
    finished bucket never changes, so an update costs O(new points + size).
    """

    def __init__(self, max_points: int) -> None:
        self.half = max(1, max_points // 2)
        self.size = 1
        self.done = 0  # points covered by finished buckets
        self.lo = np.empty(0, dtype=np.int64)  # per finished bucket: index of its min (-1: none finite)
        self.hi = np.empty(0, dtype=np.int64)

    @staticmethod
    def _extremes(y: np.ndarray, offset: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        rows = y.reshape(-1, size)
        finite = np.isfinite(rows)
        lo = np.where(finite, rows, np.inf).argmin(axis=1)
        hi = np.where(finite, rows, -np.inf).argmax(axis=1)
        base = offset + np.arange(rows.shape[0]) * size
        valid = finite.any(axis=1)
        return np.where(valid, base + lo, -1), np.where(valid, base + hi, -1)

    def _double(self, y: np.ndarray) -> None:
        if self.lo.size % 2:
            # An odd bucket out would straddle the new alignment: redo it as tail.
            self.lo, self.hi = self.lo[:-1], self.hi[:-1]
            self.done -= self.size
        lo, hi = self.lo.reshape(-1, 2), self.hi.reshape(-1, 2)
        ylo = np.where(lo >= 0, y[np.maximum(lo, 0)], np.inf)
        yhi = np.where(hi >= 0, y[np.maximum(hi, 0)], -np.inf)
        # Ties keep the earlier point, as argmin/argmax do.
        self.lo = np.where(ylo[:, 1] < ylo[:, 0], lo[:, 1], lo[:, 0])
        self.hi = np.where(yhi[:, 1] > yhi[:, 0], hi[:, 1], hi[:, 0])
        self.size *= 2

    def indices(self, y: np.ndarray) -> np.ndarray:
        """Sorted indices of the points to draw; ``y`` is the whole line so far."""
        n = y.size
        if n <= 2 * self.half:
            return np.flatnonzero(np.isfinite(y))  # few enough: draw every point
        while -(-n // self.size) > self.half:
            self._double(y)
        whole = (n - self.done) // self.size
        if whole:
            lo, hi = self._extremes(y[self.done:self.done + whole * self.size], self.done, self.size)
            self.lo, self.hi = np.concatenate((self.lo, lo)), np.concatenate((self.hi, hi))
            self.done += whole * self.size
        parts = [self.lo, self.hi]
        if self.done < n:
            parts += list(self._extremes(y[self.done:], self.done, n - self.done))
        ends = [i for i in (0, n - 1) if np.isfinite(y[i])]
        keep = np.unique(np.concatenate(parts + [np.array(ends, dtype=np.int64)]))
        return keep[keep >= 0]


class _Ema:
    """The debiased EMA of a growing column, extended with new points only."""

    def __init__(self, smoothing: float) -> None:
        self.smoothing = smoothing
        self.state = EmaState()
        self.out = _Buffer()

    def update(self, values: np.ndarray) -> np.ndarray:
        if values.size > self.out.n:
            new, self.state = ema_extend(values[self.out.n:], self.smoothing, self.state)
            self.out.extend(new)
        return self.out.view()


class _Columns:
    def __init__(self) -> None:
        self.offset = 0  # byte cursor into events.jsonl
        self.step, self.loss, self.lr = _Buffer(), _Buffer(), _Buffer()
        self.eval_step, self.eval_loss = _Buffer(), _Buffer()
        self.lock = threading.Lock()
        self._masked: dict[str, _Buffer] = {}  # y with NaN where x is missing (rare)
        self._checked: dict[str, int] = {}  # points whose x is known to be finite
        self._emas: OrderedDict[float, _Ema] = OrderedDict()
        self._reducers: dict[tuple[str, int, float], _MinMax] = {}

    def extend(self, lines: list[bytes]) -> None:
        events = []
        for raw in lines:
            if _METRIC in raw:  # other levels are not charted: skip their parse
                try:
                    events.append(json_loads(raw))
                except ValueError:
                    continue  # a damaged line: skipped, as EventLog.read does
        train = [ev for ev in events if isinstance(ev, dict) and ev.get("level") == "METRIC" and "loss" in ev]
        evals = [ev for ev in events if isinstance(ev, dict) and ev.get("level") == "METRIC" and "eval_loss" in ev]
        if train:
            self.step.extend(_column([ev.get("step") for ev in train]))
            self.loss.extend(_column([ev["loss"] for ev in train]))
            self.lr.extend(_column([ev.get("learning_rate") for ev in train]))
        if evals:
            self.eval_step.extend(_column([ev.get("step") for ev in evals]))
            self.eval_loss.extend(_column([ev["eval_loss"] for ev in evals]))

    def series(self) -> MetricSeries:
        return MetricSeries(
            step=self.step.view(), loss=self.loss.view(), learning_rate=self.lr.view(),
            eval_step=self.eval_step.view(), eval_loss=self.eval_loss.view(), lines=_Lines(self),
        )

    def _xy(self, which: str, smoothing: float) -> tuple[np.ndarray, np.ndarray]:
        """Whole x and y of a line; y is NaN where x is missing (those points are dropped)."""
        x_buf, y_buf = {"loss": (self.step, self.loss), "lr": (self.step, self.lr),
                        "eval": (self.eval_step, self.eval_loss)}[which]
        x, y = x_buf.view(), y_buf.view()
        masked = self._masked.get(which)
        if masked is None and not np.isfinite(x[self._checked.get(which, 0):]).all():
            # A point without a step (the studio always logs one): keep a masked copy from now on.
            masked = self._masked[which] = _Buffer()
        if masked is None:
            self._checked[which] = x.size
        else:
            masked.extend(np.where(np.isfinite(x[masked.n:]), y[masked.n:], NAN))
            y = masked.view()
        if which == "loss" and smoothing:
            ema = self._emas.get(smoothing)
            if ema is None:
                ema = self._emas[smoothing] = _Ema(smoothing)
                while len(self._emas) > _MAX_SMOOTHINGS:
                    old, _ = self._emas.popitem(last=False)
                    for key in [k for k in self._reducers if k[0] == "loss" and k[2] == old]:
                        del self._reducers[key]
            self._emas.move_to_end(smoothing)
            smoothed = ema.update(y)
            # EMA values carried over points without a step must stay dropped.
            y = smoothed if masked is None else np.where(np.isfinite(x), smoothed, NAN)
        return x, y

    def line(self, which: str, max_points: int, smoothing: float) -> tuple[np.ndarray, np.ndarray]:
        with self.lock:
            x, y = self._xy(which, smoothing if which == "loss" else 0.0)
            key = (which, max_points, smoothing if which == "loss" else 0.0)
            reducer = self._reducers.get(key)
            if reducer is None:
                reducer = self._reducers[key] = _MinMax(max_points)
            keep = reducer.indices(y)
            return x[keep], y[keep]


class _Lines:
    """The ``MetricSeries.lines`` source handed to charts."""

    def __init__(self, cols: _Columns) -> None:
        self._cols = cols

    def line(self, which: str, max_points: int, smoothing: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        if which not in ("loss", "lr", "eval"):
            raise ValueError(f"unknown line {which!r}")
        return self._cols.line(which, max_points, smoothing)


class MetricsCache:
    """Metric columns for the most recently viewed runs (LRU, bounded)."""

    def __init__(self, max_runs: int = 8, chunk: int = 4 << 20) -> None:
        self.max_runs = max_runs
        self.chunk = chunk  # bytes of events.jsonl parsed at a time
        self._runs: OrderedDict[str, _Columns] = OrderedDict()
        self._lock = threading.Lock()

    def series(self, run_id: str, events: EventLog) -> MetricSeries:
        with self._lock:
            cols = self._runs.get(run_id) or _Columns()
            self._runs[run_id] = cols
            self._runs.move_to_end(run_id)
            while len(self._runs) > self.max_runs:
                self._runs.popitem(last=False)
        with cols.lock:
            # Read in chunks so a first look at a huge run never holds it all as dicts.
            while True:
                lines, offset = events.read_lines(cols.offset, self.chunk)
                if not lines:
                    break
                cols.extend(lines)
                cols.offset = offset
            return cols.series()

    def forget(self, run_id: str) -> None:
        with self._lock:
            self._runs.pop(run_id, None)
