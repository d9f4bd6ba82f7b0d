"""EventLog's in-memory tail: reads served from memory equal reads from the file."""

from __future__ import annotations

import numpy as np

from finetune.events import TAIL_EVENTS, EventLog


def test_tail_reads_match_file_reads(tmp_path) -> None:
    path = tmp_path / "events.jsonl"
    log = EventLog(path)
    total = TAIL_EVENTS + 700  # the oldest events have left the tail
    for i in range(total):
        log.append("METRIC" if i % 3 else "INFO", f"e{i}", step=i, loss=np.float64(1.0) / (i + 1), note=(i, "x"))
    cold = EventLog(path)  # a fresh reader: everything from the file
    for since in (0, 1, 650, 699, 700, 701, total - 100, total - 1, total):
        for limit in (1, 100, 5000):
            assert log.read(since, limit) == cold.read(since, limit), (since, limit)
    # Readers get copies: changing one does not change what the next reader sees.
    first = log.read(total - 1)[0]
    first["message"] = "changed"
    assert log.read(total - 1)[0]["message"] == f"e{total - 1}"
    # Values come back as the file has them (numpy float -> float, tuple -> list).
    event = log.read(total - 1)[0]
    assert type(event["loss"]) is float and event["note"] == [total - 1, "x"]
