"""EventLog: seq order, cursors, concurrency, crash recovery (no model needed)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from finetune.events import INDEX_EVERY, EventLog


def fill(log: EventLog, n: int) -> None:
    for i in range(n):
        log.append("INFO", f"event {i}", i=i)


def test_seq_starts_at_one_and_increases(tmp_path: Path):
    log = EventLog(tmp_path / "events.jsonl")
    assert log.last_seq == 0
    assert log.read(0) == []
    seqs = [log.append("INFO", f"m{i}")["seq"] for i in range(5)]
    assert seqs == [1, 2, 3, 4, 5]
    assert log.last_seq == 5
    first = log.read(0)[0]
    assert first["level"] == "INFO" and first["message"] == "m0" and isinstance(first["time"], float)


def test_metric_fields_are_kept_and_none_fields_dropped(tmp_path: Path):
    log = EventLog(tmp_path / "events.jsonl")
    log.append("METRIC", "step 3", step=3, loss=1.25, learning_rate=None)
    [event] = log.read(0)
    assert event["step"] == 3 and event["loss"] == 1.25
    assert "learning_rate" not in event


def test_unknown_level_refused(tmp_path: Path):
    log = EventLog(tmp_path / "events.jsonl")
    with pytest.raises(ValueError, match="level"):
        log.append("DEBUG", "nope")
    assert log.last_seq == 0


def test_read_since_returns_only_newer_and_honours_limit(tmp_path: Path):
    log = EventLog(tmp_path / "events.jsonl")
    fill(log, 20)
    assert [e["seq"] for e in log.read(15)] == [16, 17, 18, 19, 20]
    assert [e["seq"] for e in log.read(3, limit=4)] == [4, 5, 6, 7]
    assert log.read(20) == []
    assert log.read(1000) == []
    assert log.read(0, limit=0) == []
    assert len(log.read(0, limit=1000)) == 20


def test_cursor_loop_with_concurrent_writer_sees_every_event_once(tmp_path: Path):
    log = EventLog(tmp_path / "events.jsonl")
    total = 3000
    done = threading.Event()

    def writer() -> None:
        try:
            for i in range(total):
                log.append("METRIC", f"step {i}", step=i, loss=float(i))
        finally:
            done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    seen: list[int] = []
    since = 0
    while True:
        finished = done.is_set()  # read the flag before the batch: a last read after it drains everything
        batch = log.read(since, limit=37)
        for event in batch:
            seen.append(event["seq"])
            assert event["step"] == event["seq"] - 1  # the body belongs to that seq
        if batch:
            since = batch[-1]["seq"]
        elif finished:
            break
    thread.join()
    assert seen == list(range(1, total + 1))  # in order, no duplicate, none missing


def test_concurrent_writers_never_share_a_seq(tmp_path: Path):
    log = EventLog(tmp_path / "events.jsonl")
    threads = [threading.Thread(target=fill, args=(log, 300)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seqs = [e["seq"] for e in log.iter_all()]
    assert seqs == list(range(1, 1201))
    # And the file itself is one valid JSON object per line.
    lines = (tmp_path / "events.jsonl").read_bytes().splitlines()
    assert [json.loads(line)["seq"] for line in lines] == seqs


def test_torn_last_line_is_skipped_and_next_append_starts_clean(tmp_path: Path):
    path = tmp_path / "events.jsonl"
    log = EventLog(path)
    fill(log, 3)
    with path.open("ab") as fh:  # a crash in the middle of writing event 4
        fh.write(b'{"seq":4,"time":1.0,"level":"INFO","mess')

    reopened = EventLog(path)
    assert reopened.last_seq == 3
    assert [e["seq"] for e in reopened.read(0)] == [1, 2, 3]

    event = reopened.append("INFO", "after the crash")
    assert event["seq"] == 4
    assert [e["message"] for e in reopened.read(3)] == ["after the crash"]
    # The new line is a line of its own, not glued to the torn bytes.
    last_line = path.read_bytes().splitlines()[-1]
    assert json.loads(last_line)["message"] == "after the crash"

    again = EventLog(path)  # the torn fragment is now a whole (invalid) line: still skipped
    assert again.last_seq == 4
    assert [e["seq"] for e in again.read(0)] == [1, 2, 3, 4]


def test_garbage_lines_in_the_middle_are_skipped(tmp_path: Path):
    path = tmp_path / "events.jsonl"
    fill(EventLog(path), 2)
    with path.open("ab") as fh:
        fh.write(b"not json at all\n[1, 2]\n{\"no_seq\": true}\n")
    log = EventLog(path)
    log.append("INFO", "third")
    assert [e["seq"] for e in log.read(0)] == [1, 2, 3]


def test_reopening_rebuilds_index_and_last_seq(tmp_path: Path):
    path = tmp_path / "events.jsonl"
    n = INDEX_EVERY * 3 + 10
    fill(EventLog(path), n)

    log = EventLog(path)
    assert log.last_seq == n
    for since in (0, 1, INDEX_EVERY - 1, INDEX_EVERY, INDEX_EVERY + 1, 2 * INDEX_EVERY, n - 1):
        got = log.read(since, limit=5)
        assert [e["seq"] for e in got] == list(range(since + 1, min(since + 6, n + 1))), since
        assert all(e["i"] == e["seq"] - 1 for e in got)
    assert log.append("INFO", "next")["seq"] == n + 1
    assert [e["seq"] for e in log.read(n - 1)] == [n, n + 1]


def test_missing_file_reads_empty(tmp_path: Path):
    log = EventLog(tmp_path / "sub" / "events.jsonl")
    assert log.read(0) == [] and log.last_seq == 0
    log.append("WARNING", "creates the folder")
    assert (tmp_path / "sub" / "events.jsonl").exists()


def test_nan_and_inf_are_written_as_null(tmp_path: Path):
    path = tmp_path / "events.jsonl"
    log = EventLog(path)
    log.append("METRIC", "diverged", step=7, loss=float("nan"), grad_norm=float("inf"), learning_rate=-float("inf"))
    raw = path.read_text()
    assert "NaN" not in raw and "Infinity" not in raw
    line = json.loads(raw.splitlines()[0])  # strict JSON parses
    assert line["loss"] is None and line["grad_norm"] is None and line["learning_rate"] is None
    assert line["step"] == 7


def test_late_cursor_on_a_100k_event_log(tmp_path: Path):
    path = tmp_path / "events.jsonl"
    n = 100_000
    # Written directly (the format EventLog writes) to keep the test fast.
    with path.open("w") as fh:
        for seq in range(1, n + 1):
            fh.write(json.dumps({"seq": seq, "time": 0.0, "level": "METRIC", "message": "m", "step": seq}) + "\n")
    log = EventLog(path)
    assert log.last_seq == n
    cursors = [0, 1, 254, 255, 256, 257, 511, 512, 513, 50_000, 65_535, 65_536, 99_743, 99_744, 99_998, 99_999]
    for since in cursors:
        got = log.read(since, limit=3)
        assert [e["seq"] for e in got] == list(range(since + 1, min(since + 4, n + 1))), since
        assert all(e["step"] == e["seq"] for e in got)
    assert log.read(n) == []
    assert [e["seq"] for e in log.read(99_990, limit=1000)] == list(range(99_991, n + 1))
    assert log.append("INFO", "tail")["seq"] == n + 1
    assert [e["seq"] for e in log.read(99_999)] == [n, n + 1]


def test_torn_complete_json_is_cut_not_duplicated(tmp_path):
    """A crash that loses only the final newline must not revive that event."""
    path = tmp_path / "events.jsonl"
    log = EventLog(path)
    log.append("INFO", "one")
    log.append("INFO", "two")
    data = path.read_bytes()
    path.write_bytes(data[:-1])  # "two" is complete JSON but lost its newline
    reopened = EventLog(path)
    assert reopened.last_seq == 1
    reopened.append("INFO", "three")
    events = reopened.read(0)
    assert [e["seq"] for e in events] == [1, 2]
    assert [e["message"] for e in events] == ["one", "three"]
