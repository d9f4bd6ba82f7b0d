"""Shared fixtures: an isolated studio home per test, one tiny model per session.

Everything runs offline. The bundled tiny model is built once per session (a
few seconds) and linked into each test's ``home/models/``, so a test gets a
fresh data folder without paying for the build again.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# Before anything imports huggingface_hub / transformers: no network, ever.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The operator's own settings must not leak into the tests (a token would 401 everything).
for _name in ("FINETUNE_HOME", "FINETUNE_API_TOKEN", "FINETUNE_MAX_UPLOAD_MB", "FINETUNE_TORCH_THREADS"):
    os.environ.pop(_name, None)

import pytest  # noqa: E402
from fastapi import FastAPI  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from finetune.server import create_app  # noqa: E402
from finetune.service import Studio  # noqa: E402
from finetune.settings import Settings  # noqa: E402
from finetune.tinymodel import ensure_tiny_model  # noqa: E402

TERMINAL = ("completed", "failed", "cancelled", "interrupted")


# -------------------------------------------------------------------- model + settings


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled model, built once for the whole session."""
    return ensure_tiny_model(tmp_path_factory.mktemp("shared") / "models")


def link_tiny_model(home: Path, built: Path) -> None:
    """Make ``home/models/<name>`` point at an already built tiny model."""
    models = home / "models"
    models.mkdir(parents=True, exist_ok=True)
    link = models / built.name  # the versioned name ensure_tiny_model looks for
    if not link.exists():
        link.symlink_to(built, target_is_directory=True)


@pytest.fixture
def make_settings(tmp_path: Path, tiny_model_dir: Path) -> Callable[..., Settings]:
    """Settings on a fresh home under tmp_path (one home per test; extra kwargs override)."""

    def make(**overrides: Any) -> Settings:
        overrides.setdefault("home", tmp_path / "home")
        # One torch thread: on a busy 2-core box two OpenMP threads were 2-4x
        # slower than one (they spin waiting for a core another process holds).
        overrides.setdefault("torch_threads", 1)
        settings = Settings(**overrides)
        link_tiny_model(settings.home, tiny_model_dir)
        return settings

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


# -------------------------------------------------------------------- apps and clients


def idle_app(settings: Settings, with_ui: bool = False) -> FastAPI:
    """An app whose RunManager has no worker: submitted jobs stay queued.

    For fast API tests that need jobs but no training. create_app always starts
    a worker, so its Studio is closed and replaced by one without.
    """
    app = create_app(settings, with_ui=with_ui)
    app.state.studio.close()
    app.state.studio = Studio(settings, start_worker=False)
    return app


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """API only (no Gradio), with a live worker: jobs really train."""
    with TestClient(create_app(settings, with_ui=False)) as c:
        yield c


@pytest.fixture
def idle_client(settings: Settings) -> Iterator[TestClient]:
    """API only, no worker: jobs stay queued until cancelled."""
    app = idle_app(settings)
    with TestClient(app) as c:
        yield c
    app.state.studio.close()


@pytest.fixture
def ui_client(settings: Settings) -> Iterator[TestClient]:
    """The full app: REST routes plus the Gradio UI mounted at "/"."""
    with TestClient(create_app(settings, with_ui=True)) as c:
        yield c


# -------------------------------------------------------------------- helpers


def wait_for(
    client: TestClient,
    job_id: str,
    statuses: str | tuple[str, ...] | list[str] = TERMINAL,
    timeout: float = 120.0,
    until: Callable[[dict[str, Any]], bool] | None = None,
    interval: float = 0.1,
) -> dict[str, Any]:
    """Poll ``/api/status?job_id=`` until the status is one of ``statuses``
    (and ``until(status)`` holds, if given); return the last status.

    Fails the test with the last status seen when the time runs out, and early
    when the job ends in a state that was not asked for.
    """
    wanted = (statuses,) if isinstance(statuses, str) else tuple(statuses)
    deadline = time.monotonic() + timeout
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        resp = client.get("/api/status", params={"job_id": job_id})
        assert resp.status_code == 200, resp.text
        status = resp.json()
        if status["status"] in wanted and (until is None or until(status)):
            return status
        if status["status"] in TERMINAL and status["status"] not in wanted:
            pytest.fail(f"job {job_id} ended {status['status']!r}, waiting for {wanted}: {status}")
        time.sleep(interval)
    pytest.fail(f"job {job_id} not in {wanted} after {timeout}s; last status: {status}")


def all_logs(client: TestClient, job_id: str, limit: int = 5000) -> list[dict[str, Any]]:
    """Every event of a job, paging with the cursor."""
    out: list[dict[str, Any]] = []
    since = 0
    while True:
        body = client.get("/api/logs", params={"job_id": job_id, "since": since, "limit": limit}).json()
        if not body["logs"]:
            return out
        out.extend(body["logs"])
        since = body["next_since"]
