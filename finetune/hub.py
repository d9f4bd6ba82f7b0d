"""Push a run's model to the Hugging Face Hub (background task, status in ``runs/<id>/push.json``).

What is uploaded is decided by the pure function ``upload_plan``: the files of
``model/`` (adapter or full weights, tokenizer), ``studio_config.json`` and a
generated ``README.md`` model card. ``start_push`` stages those files in a
temporary folder and calls ``HfApi.create_repo`` + ``upload_folder`` on a
daemon thread.

The token is held in memory only: it is never written to ``push.json``, the
run's events, logs or config, and any error text is scrubbed of it.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from finetune.export import TaskFailed, model_card, start_task
from finetune.runs import Job
from finetune.settings import Settings

log = logging.getLogger(__name__)

# Transport-level failures (no DNS, refused, timeouts) from httpx or requests,
# whatever the HTTP library huggingface_hub uses in this version.
_NETWORK_ERRORS = {"ConnectError", "ConnectTimeout", "NetworkError", "TimeoutException", "TransportError", "ConnectionError"}


def upload_plan(job: Job, dataset_meta: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The files a push would upload: ``{path, size_bytes, source}`` (source: a file, or 'generated')."""
    model_dir = job.run_dir / "model"
    generated = {"README.md", "studio_config.json"}
    plan: list[dict[str, Any]] = []
    if model_dir.is_dir():
        for item in sorted(model_dir.rglob("*")):
            name = item.relative_to(model_dir).as_posix()
            if item.is_file() and name not in generated:  # peft's own stub README is replaced by ours
                plan.append({"path": name, "size_bytes": item.stat().st_size, "source": str(item)})
    config = job.run_dir / "config.json"
    plan.append({"path": "studio_config.json", "size_bytes": config.stat().st_size, "source": str(config)})
    card = model_card(job, dataset_meta)
    plan.append({"path": "README.md", "size_bytes": len(card.encode()), "source": "generated", "content": card})
    return plan


def resolve_token(token: str | None) -> str | None:
    """The request's token, else HF_TOKEN, else the token saved by ``hf auth login``."""
    if token:
        return token
    if os.environ.get("HF_TOKEN"):
        return os.environ["HF_TOKEN"]
    from huggingface_hub import get_token

    return get_token()


def describe_hub_error(exc: BaseException) -> str:
    """One sentence for the user: offline, unauthorised, or what the Hub said."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    names = {cls.__name__ for cls in type(exc).__mro__}
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip(".")
    if isinstance(exc, (OfflineModeIsEnabled, ConnectionError, TimeoutError)) or names & _NETWORK_ERRORS:
        return f"cannot reach the Hugging Face Hub: {first}. Check the network (and unset HF_HUB_OFFLINE), then push again."
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status in (401, 403):
        return (f"unauthorised: the Hub refused the token ({status}). Use a token with write access "
                "(https://huggingface.co/settings/tokens) for that namespace.")
    if isinstance(exc, HfHubHTTPError):
        return f"the Hugging Face Hub refused the upload: {first}"
    return f"push failed: {type(exc).__name__}: {first}"


def start_push(job: Job, settings: Settings, dataset_meta: dict[str, Any] | None, repo_id: str,
               private: bool = True, token: str | None = None) -> dict[str, Any]:
    """Start the upload on a background thread; raises TaskFailed when no token is available."""
    resolved = resolve_token(token)
    if not resolved:
        raise TaskFailed("no Hugging Face token: pass 'token' in the request or set HF_TOKEN on the server.")
    plan = upload_plan(job, dataset_meta)
    fields = {"job_id": job.job_id, "repo_id": repo_id, "private": private, "url": None,
              "files": [p["path"] for p in plan]}
    secrets = tuple(t for t in (resolved, token) if t)

    return start_task(job.run_dir, "push", lambda: _push(plan, settings, repo_id, private, resolved), fields, secrets=secrets)


def _push(plan: list[dict[str, Any]], settings: Settings, repo_id: str, private: bool, token: str) -> dict[str, Any]:
    from huggingface_hub import HfApi

    settings.cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="push-", dir=settings.cache_dir))
    try:
        for item in plan:
            dest = staging / item["path"]
            dest.parent.mkdir(parents=True, exist_ok=True)
            if item["source"] == "generated":
                dest.write_text(item["content"], encoding="utf-8")
            else:
                _link_or_copy(Path(item["source"]), dest)
        api = HfApi(token=token)
        try:
            repo = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            api.upload_folder(repo_id=repo.repo_id, folder_path=staging, repo_type="model",
                              commit_message="Upload from the fine-tuning studio")
        except Exception as exc:  # noqa: BLE001 - every Hub failure becomes one readable sentence
            raise TaskFailed(describe_hub_error(exc)) from exc
        log.info("pushed %d files to %s", len(plan), repo.repo_id)
        return {"url": str(repo), "repo_id": repo.repo_id}
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _link_or_copy(src: Path, dest: Path) -> None:
    # A hard link costs no disk for multi-GB weights; copy across filesystems.
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)
