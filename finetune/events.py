"""Append-only event log for a run: ``runs/<id>/events.jsonl``.

One JSON object per line with a monotonically increasing ``seq``. Readers ask
for events after a cursor (``since``); a sparse index from seq to byte offset
lets them seek straight there, so a poll costs the same at event 10 and at
event 1,000,000. The newest events are also kept in memory, so readers that
keep up with a live run (every poller) never touch the file. A torn last line
(a crash mid-write) is skipped, never fatal.

Hazard: ``append`` runs on the training thread while readers run on server
threads. Lines are written whole and flushed; a reader that meets a line with
no trailing newline treats it as not yet written.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import re
import threading
import time
from collections import deque
from itertools import islice
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

LEVELS = ("INFO", "WARNING", "ERROR", "METRIC")
# One index entry per this many events: 1M events -> ~4k entries in memory.
INDEX_EVERY = 256
# Every line ``append`` writes starts with its seq: reading it from the prefix
# spares a full JSON parse per line when scanning or skipping (8 s -> ~1 s for
# 1M events at start-up). Lines in another shape fall back to json.loads.
_SEQ_PREFIX = re.compile(rb'\{"seq":(\d+),')
# Events appended by this process kept in memory (~0.5 KB each), newest last.
TAIL_EVENTS = 2048

try:  # a gradio dependency; parses event lines ~2x faster than json
    from orjson import loads as json_loads
except ImportError:  # pragma: no cover
    json_loads = json.loads


def _clean(value: Any) -> Any:
    # JSON has no NaN/inf; a diverged loss must still be written as valid JSON.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class EventLog:
    """Thread-safe writer and cursor reader over one ``events.jsonl`` file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._index_seqs: list[int] = []  # seq of every INDEX_EVERY-th event
        self._index_offsets: list[int] = []  # byte offset of that event's line
        self._last_seq = 0
        self._size = 0
        self._count = 0
        # Appended events as a reader parses them from the file; seqs are contiguous.
        self._tail: deque[dict[str, Any]] = deque(maxlen=TAIL_EVENTS)
        self._scan()

    @property
    def last_seq(self) -> int:
        return self._last_seq

    def _scan(self) -> None:
        """Rebuild the index from disk (once, when a run is opened)."""
        if not self.path.exists():
            return
        offset = 0
        count = 0
        with self.path.open("rb") as fh:
            for raw in fh:
                if not raw.endswith(b"\n"):
                    log.warning("%s: skipping torn last line", self.path)
                    break
                seq = _seq_of(raw)
                if seq is not None:
                    if count % INDEX_EVERY == 0:
                        self._index_seqs.append(seq)
                        self._index_offsets.append(offset)
                    count += 1
                    self._last_seq = max(self._last_seq, seq)
                offset += len(raw)
        self._size = offset
        self._count = count

    def append(self, level: str, message: str, **fields: Any) -> dict[str, Any]:
        """Write one event and return it (with its ``seq`` and ``time``)."""
        if level not in LEVELS:
            raise ValueError(f"unknown level {level!r}")
        with self._lock:
            seq = self._last_seq + 1
            event = {"seq": seq, "time": round(time.time(), 3), "level": level, "message": str(message)}
            event.update({k: _clean(v) for k, v in fields.items() if v is not None})
            line = (json.dumps(event, separators=(",", ":"), allow_nan=False) + "\n").encode()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("ab") as fh:
                if fh.tell() != self._size:
                    # Bytes past the last whole line: a line torn by a crash.
                    # Readers never saw it (no newline), so cut it off rather
                    # than let it merge into, or duplicate, the next event.
                    fh.truncate(self._size)
                    fh.seek(self._size)
                fh.write(line)
            if self._count % INDEX_EVERY == 0:
                self._index_seqs.append(seq)
                self._index_offsets.append(self._size)
            self._count += 1
            self._size += len(line)
            self._tail.append(json_loads(line))  # exactly what the file now says
            self._last_seq = seq
            return event

    def read(self, since: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        """Events with ``seq > since``, oldest first, at most ``limit``."""
        if limit <= 0 or since >= self._last_seq or not self.path.exists():
            return []
        with self._lock:
            if self._tail and since + 1 >= self._tail[0]["seq"]:
                # Every event after the cursor is in memory: no file read.
                start = since + 1 - self._tail[0]["seq"]
                return [dict(event) for event in islice(self._tail, start, start + limit)]
        # Seek to the last indexed event at or before since+1.
        pos = bisect.bisect_right(self._index_seqs, since + 1) - 1
        offset = self._index_offsets[pos] if pos >= 0 else 0
        out: list[dict[str, Any]] = []
        with self.path.open("rb") as fh:
            fh.seek(offset)
            for raw in fh:
                if not raw.endswith(b"\n"):
                    break  # being written right now, or torn
                m = _SEQ_PREFIX.match(raw)
                if m is not None and int(m.group(1)) <= since:
                    continue  # before the cursor: no need to parse it
                event = _parse(raw)
                if event is None or event["seq"] <= since:
                    continue
                out.append(event)
                if len(out) >= limit:
                    break
        return out

    def read_lines(self, offset: int, max_bytes: int = 4 << 20) -> tuple[list[bytes], int]:
        """Whole raw lines from byte ``offset`` (a line start), and the offset after them.

        For readers that keep their own byte cursor (the metrics cache): no
        index lookup, no parsing. Stops after about ``max_bytes``.
        """
        end = self._size  # only lines the writer has finished
        if offset >= end:
            return [], offset
        with self.path.open("rb") as fh:
            fh.seek(offset)
            chunk = fh.read(min(end - offset, max_bytes))
        cut = chunk.rfind(b"\n") + 1
        if cut == 0:
            # One line longer than max_bytes: read on to its end.
            with self.path.open("rb") as fh:
                fh.seek(offset)
                chunk = fh.read(end - offset)
            cut = chunk.find(b"\n") + 1
        return chunk[:cut].splitlines(keepends=True), offset + cut

    def iter_all(self, chunk: int = 5000):
        """Yield every event in order, reading in chunks (bounded memory)."""
        since = 0
        while True:
            batch = self.read(since, chunk)
            if not batch:
                return
            yield from batch
            since = batch[-1]["seq"]


def _seq_of(raw: bytes) -> int | None:
    m = _SEQ_PREFIX.match(raw)
    if m is not None and raw.endswith(b"}\n"):
        return int(m.group(1))
    event = _parse(raw)
    return None if event is None else event["seq"]


def _parse(raw: bytes) -> dict[str, Any] | None:
    try:
        event = json_loads(raw)
    except ValueError:
        return None
    if not isinstance(event, dict) or not isinstance(event.get("seq"), int):
        return None
    return event
