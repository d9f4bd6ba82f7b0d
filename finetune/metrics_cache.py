"""Compact, incrementally updated metric columns per run, for charts.

A poll reads only the events after the cursor it stopped at, and keeps the
numbers in flat ``array('d')`` columns (8 bytes a value), so a chart refresh
costs the same at step 100 and at step 1,000,000 (apart from the numpy work on
the arrays), and memory holds numbers, not a dict per event.
"""

from __future__ import annotations

import threading
from array import array
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from finetune.charts import MetricSeries
from finetune.events import EventLog

NAN = float("nan")


def _num(value: object) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return NAN


@dataclass
class _Columns:
    cursor: int = 0
    step: array = field(default_factory=lambda: array("d"))
    loss: array = field(default_factory=lambda: array("d"))
    lr: array = field(default_factory=lambda: array("d"))
    eval_step: array = field(default_factory=lambda: array("d"))
    eval_loss: array = field(default_factory=lambda: array("d"))

    def extend(self, events: list[dict]) -> None:
        for ev in events:
            if ev.get("level") != "METRIC":
                continue
            if "loss" in ev:
                self.step.append(_num(ev.get("step")))
                self.loss.append(_num(ev["loss"]))
                self.lr.append(_num(ev.get("learning_rate")))
            if "eval_loss" in ev:
                self.eval_step.append(_num(ev.get("step")))
                self.eval_loss.append(_num(ev["eval_loss"]))

    def series(self) -> MetricSeries:
        # Copies: the arrays keep growing on other threads; a buffer view would not be stable.
        return MetricSeries(
            step=np.array(self.step, dtype=np.float64),
            loss=np.array(self.loss, dtype=np.float64),
            learning_rate=np.array(self.lr, dtype=np.float64),
            eval_step=np.array(self.eval_step, dtype=np.float64),
            eval_loss=np.array(self.eval_loss, dtype=np.float64),
        )


class MetricsCache:
    """Metric columns for the most recently viewed runs (LRU, bounded)."""

    def __init__(self, max_runs: int = 8, chunk: int = 20000) -> None:
        self.max_runs = max_runs
        self.chunk = chunk
        self._runs: OrderedDict[str, _Columns] = OrderedDict()
        self._lock = threading.Lock()

    def series(self, run_id: str, events: EventLog) -> MetricSeries:
        with self._lock:
            cols = self._runs.get(run_id) or _Columns()
            self._runs[run_id] = cols
            self._runs.move_to_end(run_id)
            while len(self._runs) > self.max_runs:
                self._runs.popitem(last=False)
            # Read in chunks so a first look at a huge run never holds it all as dicts.
            while True:
                batch = events.read(cols.cursor, self.chunk)
                if not batch:
                    break
                cols.extend(batch)
                cols.cursor = batch[-1]["seq"]
            return cols.series()

    def forget(self, run_id: str) -> None:
        with self._lock:
            self._runs.pop(run_id, None)
