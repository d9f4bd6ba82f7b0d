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
from finetune.dataset_store import DatasetNotFound, DatasetStore
from finetune.metrics_cache import MetricsCache
from finetune.runs import Job, JobNotFound, RunManager
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
        self._metrics = MetricsCache(max_runs=_MAX_CACHED_RUNS)
        self._cache_lock = threading.Lock()
        self._tokenizers: dict[str, Any] = {}  # bounded: at most two loaded at once

    def close(self) -> None:
        self.runs.close()

    # -- datasets ----------------------------------------------------------
    def add_dataset(self, stream: BinaryIO, filename: str) -> dict[str, Any]:
        return self.datasets.add(stream, filename, self.settings.max_upload_bytes)

    # -- jobs --------------------------------------------------------------
    def start_job(self, config: TrainConfig) -> Job:
        """Check the columns against the dataset now, so a typo fails the request, not the run."""
        meta = self.datasets.get(config.dataset_id)
        from finetune.modeling import ModelLoadError, check_model_source

        try:
            check_model_source(config.base_model, self.settings)
        except ModelLoadError as exc:
            raise data.DataError(f"base_model: {exc}") from None
        if config.eval_dataset_id:
            try:
                self.datasets.get(config.eval_dataset_id)
            except DatasetNotFound:
                raise data.DataError(
                    f"eval_dataset_id: no dataset with id '{config.eval_dataset_id}'. Upload it first with POST /api/datasets."
                ) from None
        columns = meta.get("columns") or []
        for name in ("text_column", "prompt_column", "completion_column"):
            value = getattr(config, name)
            if value is not None and value not in columns:
                raise data.DataError(
                    f"{name}: column '{value}' is not in dataset {config.dataset_id}. Columns: {', '.join(columns)}."
                )
        return self.runs.submit(config)

    def find_job(self, job_id: str | None) -> Job | None:
        """The job with this id, or None (for UI pickers that may hold a stale id)."""
        if not job_id:
            return None
        try:
            return self.runs.get(job_id)
        except JobNotFound:
            return None

    def delete_job(self, job_id: str) -> None:
        self.runs.delete(job_id)
        self._metrics.forget(job_id)

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
        return self._metrics.series(job.job_id, job.events)

    # -- "as the model sees it" ------------------------------------------------
    def formatted_preview(
        self,
        dataset_id: str,
        base_model: str | None = None,
        text_column: str | None = None,
        prompt_column: str | None = None,
        completion_column: str | None = None,
        max_seq_length: int = 256,
        completion_only_loss: bool = True,
        n: int = 3,
    ) -> dict[str, Any]:
        """First examples exactly as trained (masked parts marked) and token-length stats.

        Loads the base model's tokenizer (the bundled one by default); hub ids
        need network. Raises DataError / ModelLoadError with a user message.
        """
        from finetune import prep
        from finetune.tinymodel import BUNDLED_MODEL_ID

        table = self.datasets.load(dataset_id)
        examples = data.build_examples(table, text_column, prompt_column, completion_column)
        tokenizer = self._tokenizer(base_model or BUNDLED_MODEL_ID)
        out = prep.preview(examples, tokenizer, max_seq_length, completion_only_loss, n=n)
        out.update({
            "dataset_id": dataset_id,
            "base_model": base_model or BUNDLED_MODEL_ID,
            "num_examples": len(examples),
            "dropped_rows": examples.dropped,
            "kind": "chat" if examples.messages is not None else "text" if examples.texts is not None else "prompt_completion",
        })
        return out

    def _tokenizer(self, base_model: str) -> Any:
        with self._cache_lock:
            tok = self._tokenizers.get(base_model)
        if tok is None:
            from finetune import modeling

            tok = modeling.load_tokenizer(modeling.resolve_model_path(base_model, self.settings), self.settings)
            with self._cache_lock:
                if len(self._tokenizers) >= 2:
                    self._tokenizers.pop(next(iter(self._tokenizers)))
                self._tokenizers[base_model] = tok
        return tok
