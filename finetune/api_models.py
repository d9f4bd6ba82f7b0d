"""REST routes that act on a run's trained model: playground, merge, push, reproduce.

Included by ``server.create_app`` next to ``api.router`` (before the UI mount,
which would otherwise shadow them) and guarded by the same bearer token.

- ``POST /api/jobs/{id}/generate``: tuned (and base) answers to a prompt.
- ``POST|GET /api/jobs/{id}/merge``, ``GET /api/jobs/{id}/merged``: merge a LoRA adapter.
- ``POST|GET /api/jobs/{id}/push``, ``GET /api/jobs/{id}/push/plan``: upload to the Hub.
- ``GET /api/jobs/{id}/reproduce``: the config as YAML, CLI and curl commands.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.background import BackgroundTask

from finetune import export, hub
from finetune.api import StudioDep, require_token
from finetune.dataset_store import DatasetNotFound
from finetune.playground import GenerateOptions, Playground, PlaygroundError
from finetune.runs import Job, JobNotFound
from finetune.service import Studio

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api", dependencies=[Depends(require_token)], tags=["models"])

# One playground (model cache) per studio; tests swap studios on a live app.
_playgrounds: weakref.WeakKeyDictionary[Studio, Playground] = weakref.WeakKeyDictionary()
_playgrounds_lock = threading.Lock()  # two first requests must not create two caches (and two locks)


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(..., min_length=1, max_length=20_000, description="What to ask; formatted the way the run trained.")
    max_new_tokens: int = Field(64, ge=1, le=512, description="Most tokens to generate.")
    temperature: float = Field(0.7, ge=0, le=2, description="Sampling temperature; 0 is greedy (deterministic).")
    top_p: float = Field(0.95, gt=0, le=1, description="Nucleus sampling: keep the smallest token set with this probability.")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Random seed: the same seed gives the same answer.")
    compare_base: bool = Field(True, description="Also answer with the base model the run started from.")


class PushRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    repo_id: str = Field(..., min_length=1, max_length=200, pattern=r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$",
                         description="'name' (your namespace) or 'owner/name'.")
    private: bool = Field(True, description="Create the repository as private.")
    token: str | None = Field(None, min_length=1, max_length=512,
                              description="A Hub token with write access; defaults to the server's HF_TOKEN. Never stored.")


def playground_for(studio: Studio) -> Playground:
    with _playgrounds_lock:
        playground = _playgrounds.get(studio)
        if playground is None:
            playground = _playgrounds[studio] = Playground(studio)
        return playground


def _job(studio: Studio, job_id: str) -> Job:
    try:
        return studio.runs.get(job_id)
    except JobNotFound:
        raise HTTPException(404, f"No job with id '{job_id}'. List jobs with GET /api/jobs.") from None


def _dataset_meta(studio: Studio, job: Job) -> dict[str, Any] | None:
    try:
        return studio.datasets.get(job.config.dataset_id)
    except DatasetNotFound:
        return None


def _require_model(job: Job) -> None:
    if not export.has_model(job):
        raise HTTPException(
            409, f"Job {job.job_id} has no saved model yet (status: {job.snapshot()['status']}). "
                 "It has one once the run completes or is cancelled."
        )


def _zip_response(path: str, filename: str) -> FileResponse:
    return FileResponse(path, media_type="application/zip", filename=filename, background=BackgroundTask(os.unlink, path))


# -- playground ----------------------------------------------------------------
@router.post("/jobs/{job_id}/generate", summary="Answer a prompt with the tuned model (and its base)")
def generate(studio: StudioDep, job_id: str, body: GenerateRequest) -> dict[str, Any]:
    job = _job(studio, job_id)
    _require_model(job)
    try:
        return playground_for(studio).generate(job, GenerateOptions(**body.model_dump()))
    except PlaygroundError as exc:
        raise HTTPException(409, str(exc)) from None


# -- merge -------------------------------------------------------------------
@router.post("/jobs/{job_id}/merge", status_code=202, summary="Merge the LoRA adapter into full weights (background)")
def start_merge(studio: StudioDep, job_id: str) -> dict[str, Any]:
    job = _job(studio, job_id)
    if job.config.method == "full":
        raise HTTPException(409, f"Job {job_id} is a full fine-tune: its model is already full weights. "
                                 "Download them with GET /api/jobs/{id}/artifacts.")
    _require_model(job)
    try:
        return export.start_merge(job, studio.settings, _dataset_meta(studio, job))
    except export.TaskBusy as exc:
        raise HTTPException(409, str(exc)) from None


@router.get("/jobs/{job_id}/merge", summary="Status of the LoRA merge")
def merge_status(studio: StudioDep, job_id: str) -> dict[str, Any]:
    job = _job(studio, job_id)
    return export.read_task(job.run_dir, "merge") or {"job_id": job_id, "status": "not_started", "error": None}


@router.get("/jobs/{job_id}/merged", summary="Zip of the merged model (after a completed merge)")
def merged_zip(studio: StudioDep, job_id: str) -> FileResponse:
    job = _job(studio, job_id)
    if not export.merge_ready(job):
        status = (export.read_task(job.run_dir, "merge") or {}).get("status", "not_started")
        raise HTTPException(409, f"No merged model for job {job_id} (merge status: {status}). "
                                 "Start one with POST /api/jobs/{id}/merge and wait until it is completed.")
    return _zip_response(export.zip_folder(job.run_dir / "merged", studio.settings.cache_dir), f"{job_id}-merged.zip")


# -- push --------------------------------------------------------------------
@router.get("/jobs/{job_id}/push/plan", summary="What a push would upload (files and the model card)")
def push_plan(studio: StudioDep, job_id: str) -> dict[str, Any]:
    job = _job(studio, job_id)
    _require_model(job)
    return {"job_id": job_id, "files": hub.upload_plan(job, _dataset_meta(studio, job))}


@router.post("/jobs/{job_id}/push", status_code=202, summary="Upload the model to the Hugging Face Hub (background)")
def start_push(studio: StudioDep, job_id: str, body: PushRequest) -> dict[str, Any]:
    job = _job(studio, job_id)
    _require_model(job)
    try:
        return hub.start_push(job, studio.settings, _dataset_meta(studio, job), body.repo_id, body.private, body.token)
    except export.TaskFailed as exc:
        raise HTTPException(422, str(exc)) from None
    except export.TaskBusy as exc:
        raise HTTPException(409, str(exc)) from None


@router.get("/jobs/{job_id}/push", summary="Status of the push to the Hub")
def push_status(studio: StudioDep, job_id: str) -> dict[str, Any]:
    job = _job(studio, job_id)
    return export.read_task(job.run_dir, "push") or {"job_id": job_id, "status": "not_started", "error": None}


# -- reproduce ---------------------------------------------------------------
@router.get("/jobs/{job_id}/reproduce", summary="The run's config as YAML, the CLI command and a curl command")
def reproduce(request: Request, studio: StudioDep, job_id: str) -> dict[str, Any]:
    job = _job(studio, job_id)
    return export.cli_commands(job, str(request.base_url), auth=studio.settings.api_token is not None)

