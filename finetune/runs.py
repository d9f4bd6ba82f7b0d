"""Runs on disk and the manager that queues and executes them.

Each run is a folder ``runs/<id>/``: ``config.json`` (the config used),
``status.json`` (the job record, written atomically), ``events.jsonl``,
``checkpoints/`` and ``model/``. The manager keeps a FIFO queue served by one
worker thread; the server's request threads only read.
"""

from __future__ import annotations

import json
import logging
import secrets
import shutil
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune.config import TrainConfig
from finetune.dataset_store import DatasetNotFound, DatasetStore, atomic_write_json
from finetune.events import EventLog
from finetune.settings import Settings

log = logging.getLogger(__name__)

ACTIVE = ("queued", "running")
FINISHED = ("completed", "failed", "cancelled", "interrupted")
# Live fields change every step; writing status.json that often would cost
# more than the step. Persist at most this often (and at every state change).
_PERSIST_EVERY_S = 2.0


class JobNotFound(KeyError):
    pass


class JobStateError(ValueError):
    """The job exists but cannot do that now (e.g. artifacts of a queued job)."""


@dataclass
class Job:
    job_id: str
    run_dir: Path
    config: TrainConfig
    record: dict[str, Any]
    events: EventLog
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    last_persist: float = 0.0

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            rec = dict(self.record)
        return rec


def new_job_id() -> str:
    # Sortable by creation time, unique without coordination.
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


class RunManager:
    """Owns every job: creation, the queue, the worker thread, recovery."""

    def __init__(self, settings: Settings, datasets: DatasetStore, start_worker: bool = True) -> None:
        self.settings = settings
        self.datasets = datasets
        self.root = settings.runs_dir
        self.root.mkdir(parents=True, exist_ok=True)
        self._jobs: dict[str, Job] = {}
        self._queue: deque[str] = deque()
        self._cond = threading.Condition()
        self._current: str | None = None
        self._closed = False
        self._recover()
        self._worker: threading.Thread | None = None
        if start_worker:
            self._worker = threading.Thread(target=self._work, name="finetune-worker", daemon=True)
            self._worker.start()

    # -- recovery --------------------------------------------------------
    def _recover(self) -> None:
        for leftover in self.root.glob(".deleted-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        requeue: list[Job] = []
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            try:
                config = TrainConfig.model_validate_json((folder / "config.json").read_text(encoding="utf-8"))
                record = json.loads((folder / "status.json").read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                log.warning("skipping unreadable run folder %s: %s", folder, exc)
                continue
            job = Job(folder.name, folder, config, record, EventLog(folder / "events.jsonl"))
            self._jobs[job.job_id] = job
            if record.get("status") == "running":
                # Nothing runs at start-up: a run that says "running" died with
                # the previous process.
                job.events.append("ERROR", "the server stopped while this run was training; marked interrupted")
                self._set(job, status="interrupted", error="The server stopped during training.", finished_at=time.time())
            elif record.get("status") == "queued":
                requeue.append(job)
        for job in sorted(requeue, key=lambda j: j.record.get("created_at") or 0):
            self._queue.append(job.job_id)

    # -- public API ------------------------------------------------------
    def submit(self, config: TrainConfig) -> Job:
        try:
            meta = self.datasets.get(config.dataset_id)
        except DatasetNotFound:
            raise
        job_id = new_job_id()
        run_dir = self.root / job_id
        run_dir.mkdir(parents=True)
        (run_dir / "config.json").write_text(config.model_dump_json(indent=2), encoding="utf-8")
        record = {
            "job_id": job_id,
            "status": "queued",
            "created_at": time.time(),
            "started_at": None,
            "finished_at": None,
            "train_started_at": None,
            "step": 0,
            "max_steps": None,
            "epoch": None,
            "loss": None,
            "learning_rate": None,
            "error": None,
            "metrics": {},
            "dataset_id": config.dataset_id,
            "dataset_filename": meta.get("filename"),
            "base_model": config.base_model,
            "method": config.method,
        }
        job = Job(job_id, run_dir, config, record, EventLog(run_dir / "events.jsonl"))
        atomic_write_json(run_dir / "status.json", record)
        job.events.append("INFO", f"queued: {config.method} on {config.base_model} with dataset {config.dataset_id}")
        with self._cond:
            self._jobs[job_id] = job
            self._queue.append(job_id)
            self._cond.notify_all()
        return job

    def get(self, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise JobNotFound(job_id)
        return job

    def list(self) -> list[Job]:
        return sorted(self._jobs.values(), key=lambda j: j.record.get("created_at") or 0, reverse=True)

    def current(self) -> Job | None:
        """The running job, else the next queued, else the most recent."""
        if self._current and self._current in self._jobs:
            return self._jobs[self._current]
        with self._cond:
            if self._queue:
                return self._jobs[self._queue[0]]
        jobs = self.list()
        return jobs[0] if jobs else None

    def cancel(self, job_id: str) -> Job:
        job = self.get(job_id)
        with self._cond:
            if job_id in self._queue:
                self._queue.remove(job_id)
                job.events.append("INFO", "cancelled before it started")
                self._set(job, status="cancelled", finished_at=time.time())
                return job
        if job.record["status"] == "running":
            job.stop.set()
            job.events.append("INFO", "stop requested: finishing the current step, then saving")
            return job
        raise JobStateError(f"Job {job_id} is already {job.record['status']}; only queued or running jobs can be cancelled.")

    def resume(self, job_id: str) -> Job:
        """Queue a cancelled, interrupted or failed run again in its own folder.

        Training continues from the newest checkpoint (a cancelled run saved
        one when it stopped); events keep their sequence, so readers' cursors
        stay valid.
        """
        from finetune.training import newest_checkpoint

        job = self.get(job_id)
        with self._cond:
            status = job.record["status"]
            if status not in ("cancelled", "interrupted", "failed"):
                raise JobStateError(f"Job {job_id} is {status}; only cancelled, interrupted or failed runs can be resumed.")
            # The same choice run_training makes: newest by step number, complete only.
            checkpoint = newest_checkpoint(job.run_dir)
            job.stop.clear()
            where = f"from {checkpoint.name}" if checkpoint else "from the start (no checkpoint was saved)"
            job.events.append("INFO", f"resume requested: continuing {where}")
            self._set(job, status="queued", resumed=True, error=None, finished_at=None)
            self._queue.append(job_id)
            self._cond.notify_all()
        return job

    def delete(self, job_id: str) -> None:
        """Remove a finished run and its folder (checkpoints, model, events)."""
        job = self.get(job_id)
        with self._cond:
            if job.record["status"] in ACTIVE:
                raise JobStateError(f"Job {job_id} is {job.record['status']}; cancel it before deleting it.")
            self._jobs.pop(job_id, None)
        # Rename first so a half-deleted folder is never reloaded as a run.
        trash = self.root / f".deleted-{job_id}"
        job.run_dir.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)

    def close(self, timeout: float = 30.0) -> None:
        """Stop the worker: cancel the running job cooperatively and wait."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._current:
            self._jobs[self._current].stop.set()
        if self._worker is not None:
            self._worker.join(timeout)

    def wait_idle(self, timeout: float) -> bool:
        deadline = time.time() + timeout
        while time.time() < deadline:
            with self._cond:
                if not self._queue and self._current is None:
                    return True
            time.sleep(0.05)
        return False

    # -- status view -----------------------------------------------------
    @staticmethod
    def status_view(job: Job | None) -> dict[str, Any]:
        if job is None:
            return {
                "job_id": None, "status": "idle", "step": 0, "max_steps": None, "epoch": None,
                "progress": 0.0, "loss": None, "learning_rate": None, "eta_seconds": None,
                "elapsed_seconds": None, "error": None,
                "samples_per_second": None, "tokens_per_second": None, "gpu_memory_mb": None,
            }
        rec = job.snapshot()
        step, max_steps = rec.get("step") or 0, rec.get("max_steps")
        progress = min(1.0, step / max_steps) if max_steps else 0.0
        if rec["status"] == "completed":
            progress = 1.0
        now = time.time()
        started = rec.get("started_at")
        end = rec.get("finished_at") or now
        elapsed = (end - started) if started else None
        eta = None
        t0 = rec.get("train_started_at")
        done = step - (rec.get("train_start_step") or 0)
        if rec["status"] == "running" and t0 and done > 0 and max_steps:
            eta = max(0.0, (now - t0) / done * (max_steps - step))
        return {
            "job_id": rec["job_id"],
            "status": rec["status"],
            "step": step,
            "max_steps": max_steps,
            "epoch": rec.get("epoch"),
            "progress": round(progress, 4),
            "loss": rec.get("loss"),
            "learning_rate": rec.get("learning_rate"),
            "eta_seconds": None if eta is None else round(eta, 1),
            "elapsed_seconds": None if elapsed is None else round(elapsed, 1),
            "error": rec.get("error"),
            "samples_per_second": rec.get("samples_per_second"),
            "tokens_per_second": rec.get("tokens_per_second"),
            "gpu_memory_mb": rec.get("gpu_memory_mb"),
        }

    # -- worker ----------------------------------------------------------
    def _set(self, job: Job, persist: bool = True, **fields: Any) -> None:
        with job.lock:
            job.record.update(fields)
            rec = dict(job.record)
        if persist:
            job.last_persist = time.time()
            atomic_write_json(job.run_dir / "status.json", rec)

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                job_id = self._queue.popleft()
                self._current = job_id
            try:
                self._run(self._jobs[job_id])
            except Exception:  # noqa: BLE001 - the worker must survive anything
                log.exception("worker error on job %s", job_id)
            finally:
                with self._cond:
                    self._current = None

    def _run(self, job: Job) -> None:
        from finetune.training import RunContext, TrainingFailed, run_training

        self._set(job, status="running", started_at=time.time(), error=None)

        def on_progress(fields: dict[str, Any]) -> None:
            due = time.time() - job.last_persist >= _PERSIST_EVERY_S
            self._set(job, persist=due, **fields)

        ctx = RunContext(job.run_dir, job.events, job.stop.is_set, on_progress)
        try:
            path = self.datasets.file_path(job.config.dataset_id)
            filename = self.datasets.get(job.config.dataset_id).get("filename", path.name)
            eval_dataset = None
            if job.config.eval_dataset_id:
                eval_dataset = (
                    self.datasets.file_path(job.config.eval_dataset_id),
                    self.datasets.get(job.config.eval_dataset_id).get("filename", ""),
                )
            result = run_training(
                job.config, path, filename, ctx, self.settings,
                resume=bool(job.record.get("resumed")), eval_dataset=eval_dataset,
            )
        except DatasetNotFound:
            msg = "The dataset of this job no longer exists. Upload it again and start a new job."
            job.events.append("ERROR", msg)
            self._set(job, status="failed", error=msg, finished_at=time.time())
        except TrainingFailed as exc:
            job.events.append("ERROR", str(exc))
            self._set(job, status="failed", error=str(exc), finished_at=time.time())
        except BaseException as exc:  # noqa: BLE001
            log.exception("unexpected failure in job %s", job.job_id)
            msg = f"Unexpected error: {type(exc).__name__}: {exc}"
            job.events.append("ERROR", msg)
            self._set(job, status="failed", error=msg, finished_at=time.time())
        else:
            status = "cancelled" if result.cancelled else "completed"
            self._set(job, status=status, metrics=result.metrics, finished_at=time.time())
