"""The studio's operations, shared by the REST routes and the UI handlers.

Both skins call these methods, so a button in the browser and a curl command
do exactly the same thing.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, BinaryIO

from finetune import charts, data
from finetune.config import TrainConfig
from finetune.dataset_store import DatasetStore
from finetune.runs import Job, RunManager
from finetune.settings import Settings

log = logging.getLogger(__name__)

# Bound on METRIC rows cached per run for charts; older runs beyond the cache
# are re-read from disk on demand.
_MAX_CACHED_RUNS = 8


class Studio:
    def __init__(self, settings: Settings, start_worker: bool = True) -> None:
        self.settings = settings
        settings.home.mkdir(parents=True, exist_ok=True)
        self.datasets = DatasetStore(settings.datasets_dir)
        self.datasets.ensure_demo()
        self.runs = RunManager(settings, self.datasets, start_worker=start_worker)
        self._metric_cache: dict[str, tuple[int, list[dict[str, Any]]]] = {}
        self._cache_lock = threading.Lock()

    def close(self) -> None:
        self.runs.close()

    # -- datasets ----------------------------------------------------------
    def add_dataset(self, stream: BinaryIO, filename: str) -> dict[str, Any]:
        return self.datasets.add(stream, filename, self.settings.max_upload_bytes)

    # -- jobs --------------------------------------------------------------
    def start_job(self, config: TrainConfig) -> Job:
        """Check the columns against the dataset now, so a typo fails the request, not the run."""
        meta = self.datasets.get(config.dataset_id)
        columns = meta.get("columns") or []
        for name in ("text_column", "prompt_column", "completion_column"):
            value = getattr(config, name)
            if value is not None and value not in columns:
                raise data.DataError(
                    f"{name}: column '{value}' is not in dataset {config.dataset_id}. Columns: {', '.join(columns)}."
                )
        guess = meta.get("guess") or {}
        if not (config.text_column or config.prompt_column) and guess.get("format") in ("chat", "sharegpt"):
            raise data.DataError(
                "This dataset is in a chat format, which needs text_column or prompt_column + completion_column set."
            )
        return self.runs.submit(config)

    @staticmethod
    def job_summary(job: Job) -> dict[str, Any]:
        rec = job.snapshot()
        keys = (
            "job_id", "status", "created_at", "started_at", "finished_at", "step", "max_steps",
            "loss", "error", "dataset_id", "dataset_filename", "base_model", "method", "metrics",
        )
        return {k: rec.get(k) for k in keys}

    def series(self, job: Job) -> charts.MetricSeries:
        """Metric series for charts, read incrementally from the event log."""
        with self._cache_lock:
            cursor, rows = self._metric_cache.get(job.job_id, (0, []))
            new = job.events.read(cursor, limit=1_000_000_000)
            if new:
                rows = rows + [e for e in new if e.get("level") == "METRIC"]
                cursor = new[-1]["seq"]
            self._metric_cache[job.job_id] = (cursor, rows)
            while len(self._metric_cache) > _MAX_CACHED_RUNS:
                self._metric_cache.pop(next(iter(self._metric_cache)))
        return charts.series_from_events(rows)
