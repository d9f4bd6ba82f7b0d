"""Incremental metric columns: every METRIC event counted once, across polls."""

from __future__ import annotations

import math

from finetune.events import EventLog
from finetune.metrics_cache import MetricsCache


def test_incremental_reads_match_a_full_read(tmp_path):
    log = EventLog(tmp_path / "events.jsonl")
    cache = MetricsCache(chunk=7)  # small chunks: cross chunk boundaries on purpose
    log.append("INFO", "start")
    for step in range(1, 51):
        log.append("METRIC", "m", step=step, loss=1.0 / step, learning_rate=1e-3)
        if step % 10 == 0:
            log.append("METRIC", "e", step=step, eval_loss=2.0 / step)
        if step == 25:
            first = cache.series("run", log)
            assert list(first.step) == list(range(1, 26))
    s = cache.series("run", log)
    assert list(s.step) == list(range(1, 51))
    assert math.isclose(s.loss[-1], 1 / 50)
    assert list(s.eval_step) == [10, 20, 30, 40, 50]
    # A poll with nothing new returns the same series, nothing doubled.
    assert len(cache.series("run", log).step) == 50


def test_non_finite_and_missing_values_become_nan(tmp_path):
    log = EventLog(tmp_path / "events.jsonl")
    log.append("METRIC", "m", step=1, loss=float("nan"))
    log.append("METRIC", "m", step=2, loss=0.5)
    s = MetricsCache().series("r", log)
    assert math.isnan(s.loss[0]) and math.isnan(s.learning_rate[1]) and s.loss[1] == 0.5


def test_cache_is_bounded(tmp_path):
    cache = MetricsCache(max_runs=2)
    for i in range(5):
        log = EventLog(tmp_path / f"{i}.jsonl")
        log.append("METRIC", "m", step=1, loss=1.0)
        cache.series(str(i), log)
    assert len(cache._runs) == 2


def test_lines_written_with_spaces_are_charted(tmp_path):
    """An events file written by another tool (json.dumps default spacing) still charts."""
    import json

    path = tmp_path / "events.jsonl"
    with path.open("w") as fh:
        for i in range(1, 6):
            fh.write(json.dumps({"seq": i, "time": 0, "level": "METRIC", "message": "m", "step": i, "loss": 1.0}) + "\n")
    s = MetricsCache().series("r", EventLog(path))
    assert list(s.step) == [1, 2, 3, 4, 5]
