"""REST routes under /api (JSON). The UI calls the same service functions.

Errors are ``{"detail": "<what is wrong and how to fix it>"}`` with a 4xx
status; a user's mistake never produces a 500.
"""

from __future__ import annotations

import hmac
import logging
import os
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse, Response
from starlette.background import BackgroundTask

from finetune import charts
from finetune.config import TrainConfig
from finetune.data import DataError
from finetune.dataset_store import DatasetNotFound, DatasetStore, UploadTooLarge
from finetune.runs import Job, JobNotFound, JobStateError, RunManager
from finetune.service import Studio

log = logging.getLogger(__name__)


# The polled routes and their dependencies are ``async def``: FastAPI runs a
# plain ``def`` in a worker thread, and for a dict lookup those thread hops
# (one per dependency, endpoint and response serialisation) cost more than the
# work, and contend for the GIL with the training thread. Async code here must
# never block: in-memory reads and small reads of local files only.
async def get_studio(request: Request) -> Studio:
    return request.app.state.studio


StudioDep = Annotated[Studio, Depends(get_studio)]


def require_token(request: Request) -> None:
    """With FINETUNE_API_TOKEN set, every /api route needs the bearer token."""
    token = request.app.state.studio.settings.api_token
    if token is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    # compare_digest: the time taken does not reveal how much of it matched.
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.get_secret_value().encode()):
        raise HTTPException(
            status_code=401,
            detail="Missing or wrong API token. Send the header 'Authorization: Bearer <FINETUNE_API_TOKEN>'.",
            headers={"WWW-Authenticate": "Bearer"},
        )


async def _token_dependency(request: Request) -> None:
    require_token(request)


router = APIRouter(prefix="/api", dependencies=[Depends(_token_dependency)])


def _job(studio: Studio, job_id: str) -> Job:
    try:
        return studio.runs.get(job_id)
    except JobNotFound:
        raise HTTPException(404, f"No job with id '{job_id}'. List jobs with GET /api/jobs.") from None


def _dashboard_url(request: Request) -> str:
    return str(request.base_url).rstrip("/") + "/dashboard"


@router.get("/status", summary="Current (or named) job's progress")
async def get_status(request: Request, studio: StudioDep, job_id: str | None = None) -> dict[str, Any]:
    job = _job(studio, job_id) if job_id else studio.runs.current()
    view = RunManager.status_view(job)
    view["dashboard_url"] = _dashboard_url(request)
    return view


@router.get("/logs", summary="Events after a cursor")
async def get_logs(
    studio: StudioDep,
    job_id: str | None = None,
    since: Annotated[int, Query(ge=0, description="Return events with seq greater than this.")] = 0,
    limit: Annotated[int, Query(ge=1, le=5000)] = 500,
) -> dict[str, Any]:
    job = _job(studio, job_id) if job_id else studio.runs.current()
    if job is None:
        return {"job_id": None, "logs": [], "next_since": since}
    logs = job.events.read(since, limit)
    return {"job_id": job.job_id, "logs": logs, "next_since": logs[-1]["seq"] if logs else since}


# -- datasets --------------------------------------------------------------
@router.post("/datasets", status_code=201, summary="Upload a dataset (multipart field 'file')")
def upload_dataset(studio: StudioDep, file: Annotated[UploadFile, File(description="csv, tsv, json, jsonl, parquet or txt")]) -> dict[str, Any]:
    try:
        return studio.add_dataset(file.file, file.filename or "")
    except UploadTooLarge as exc:
        raise HTTPException(413, str(exc)) from None
    except DataError as exc:
        raise HTTPException(422, str(exc)) from None


@router.post("/datasets/demo", status_code=201, summary="Create (or return) the bundled demo dataset")
def demo_dataset(studio: StudioDep) -> dict[str, Any]:
    return studio.datasets.ensure_demo()


@router.get("/datasets", summary="List datasets")
def list_datasets(studio: StudioDep) -> list[dict[str, Any]]:
    return studio.datasets.list()


@router.get("/datasets/{dataset_id}", summary="One dataset's metadata and preview")
def get_dataset(
    studio: StudioDep,
    dataset_id: str,
    formatted: Annotated[bool, Query(description="Include the first examples as formatted for training (loads the bundled tokenizer).")] = True,
) -> dict[str, Any]:
    try:
        meta = studio.datasets.get(dataset_id)
    except DatasetNotFound:
        raise HTTPException(404, f"No dataset with id '{dataset_id}'. List datasets with GET /api/datasets.") from None
    if formatted:
        # As the model sees it, with the bundled tokenizer and the guessed columns.
        from finetune.modeling import ModelLoadError

        try:
            meta["formatted"] = studio.formatted_preview(dataset_id)
        except (DataError, ModelLoadError) as exc:
            meta["formatted"] = {"error": str(exc)}
    return meta


@router.get("/datasets/{dataset_id}/preview", summary="The first examples exactly as the model will see them")
def preview_dataset(
    studio: StudioDep,
    dataset_id: str,
    base_model: str | None = None,
    text_column: str | None = None,
    prompt_column: str | None = None,
    completion_column: str | None = None,
    max_seq_length: Annotated[int, Query(ge=8, le=32768)] = 256,
    completion_only_loss: bool = True,
    n: Annotated[int, Query(ge=1, le=20)] = 3,
) -> dict[str, Any]:
    """Each example is a list of segments ``{text, trained}``: ``trained`` parts carry the loss.

    Also returns token-length statistics (min, median, max, and how many
    examples exceed max_seq_length and will be truncated).
    """
    from finetune.modeling import ModelLoadError

    try:
        return studio.formatted_preview(
            dataset_id, base_model, text_column or None, prompt_column or None, completion_column or None,
            max_seq_length, completion_only_loss, n,
        )
    except DatasetNotFound:
        raise HTTPException(404, f"No dataset with id '{dataset_id}'. List datasets with GET /api/datasets.") from None
    except DataError as exc:
        raise HTTPException(422, str(exc)) from None
    except ModelLoadError as exc:
        raise HTTPException(422, f"base_model: {exc}") from None


# -- jobs ------------------------------------------------------------------
@router.post("/jobs", status_code=201, summary="Start a training job (only dataset_id is required)")
def create_job(studio: StudioDep, config: TrainConfig) -> dict[str, Any]:
    try:
        job = studio.start_job(config)
    except DatasetNotFound:
        raise HTTPException(404, f"dataset_id: no dataset with id '{config.dataset_id}'. Upload one with POST /api/datasets or use 'demo'.") from None
    except DataError as exc:
        raise HTTPException(422, str(exc)) from None
    return {"job_id": job.job_id, "status": job.record["status"]}


@router.get("/jobs", summary="All jobs, newest first")
def list_jobs(studio: StudioDep) -> list[dict[str, Any]]:
    return [studio.job_summary(job) for job in studio.runs.list()]


@router.get("/jobs/{job_id}", summary="One job: record, status and the config used")
def get_job(studio: StudioDep, job_id: str) -> dict[str, Any]:
    job = _job(studio, job_id)
    out = studio.job_summary(job)
    out["config"] = job.config.model_dump()
    out["live"] = RunManager.status_view(job)
    return out


@router.post("/jobs/{job_id}/cancel", summary="Stop a queued or running job")
def cancel_job(studio: StudioDep, job_id: str) -> dict[str, Any]:
    _job(studio, job_id)
    try:
        job = studio.runs.cancel(job_id)
    except JobStateError as exc:
        raise HTTPException(409, str(exc)) from None
    return {"job_id": job.job_id, "status": job.record["status"], "stop_requested": job.stop.is_set()}


@router.post("/jobs/{job_id}/resume", summary="Resume a cancelled, interrupted or failed run from its last checkpoint")
def resume_job(studio: StudioDep, job_id: str) -> dict[str, Any]:
    _job(studio, job_id)
    try:
        job = studio.runs.resume(job_id)
    except JobStateError as exc:
        raise HTTPException(409, str(exc)) from None
    return {"job_id": job.job_id, "status": job.record["status"]}


@router.delete("/jobs/{job_id}", summary="Delete a finished run and its files")
def delete_job(studio: StudioDep, job_id: str) -> dict[str, Any]:
    _job(studio, job_id)
    try:
        studio.delete_job(job_id)
    except JobStateError as exc:
        raise HTTPException(409, str(exc)) from None
    return {"job_id": job_id, "deleted": True}


@router.get("/jobs/{job_id}/metrics", summary="Training and eval metrics as arrays")
def job_metrics(studio: StudioDep, job_id: str) -> Response:
    """``{job_id, step, loss, learning_rate, eval_step, eval_loss}``; missing values are null."""
    import numpy as np
    import orjson

    job = _job(studio, job_id)
    s = studio.series(job)

    def steps(a: np.ndarray) -> Any:
        if np.isfinite(a).all():
            return np.ascontiguousarray(a, dtype=np.int64)
        return [int(v) if v == v and abs(v) != float("inf") else None for v in a.tolist()]

    # Serialised straight from the numpy columns (NaN -> null): for a 1M-step run
    # ~0.1 s and one bytes object, instead of ~1.5 s and 5M Python floats.
    body = orjson.dumps(
        {"job_id": job.job_id, "step": steps(s.step), "loss": np.ascontiguousarray(s.loss),
         "learning_rate": np.ascontiguousarray(s.learning_rate), "eval_step": steps(s.eval_step),
         "eval_loss": np.ascontiguousarray(s.eval_loss)},
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
    return Response(body, media_type="application/json")


@router.get("/jobs/{job_id}/metrics.csv", summary="Metrics as CSV")
def job_metrics_csv(studio: StudioDep, job_id: str):
    from fastapi.responses import PlainTextResponse

    job = _job(studio, job_id)
    return PlainTextResponse(
        charts.metrics_csv(studio.series(job)),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{job.job_id}-metrics.csv"'},
    )


@router.get("/jobs/{job_id}/artifacts", summary="Zip of the trained adapter or model")
def job_artifacts(studio: StudioDep, job_id: str) -> FileResponse:
    job = _job(studio, job_id)
    model_dir = job.run_dir / "model"
    if not (model_dir.is_dir() and any(model_dir.iterdir())):
        raise HTTPException(
            409, f"Job {job_id} has no saved model yet (status: {job.record['status']}). Artifacts exist once a run completes or is cancelled."
        )
    path = _zip_model(job, studio.settings.cache_dir, studio.datasets)
    return FileResponse(
        path,
        media_type="application/zip",
        filename=f"{job.job_id}-{job.config.method}.zip",
        background=BackgroundTask(os.unlink, path),
    )


def _zip_model(job: Job, tmp_root: Path, datasets: DatasetStore | None = None) -> str:
    """The model folder plus studio_config.json and a generated README.md model card."""
    from finetune.export import model_card, zip_folder

    meta = None
    if datasets is not None:
        try:
            meta = datasets.get(job.config.dataset_id)
        except DatasetNotFound:
            pass  # the card then names the dataset from the job record
    extras = {"studio_config.json": job.run_dir / "config.json", "README.md": model_card(job, meta)}
    return zip_folder(job.run_dir / "model", tmp_root, extras)
