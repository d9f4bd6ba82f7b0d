"""Training faults end cleanly: the job fails with its reason, the server keeps serving,
and the next queued job still starts and completes.

Faults are injected in-process (monkeypatch) into a real Trainer run on the bundled
tiny model, through the live worker of a TestClient app: an exception in data
collation, a NaN loss, an out-of-memory error, base models that cannot be loaded,
and a dataset deleted from disk between submit and run. Each bad job is followed
by a short demo job queued behind it, which must complete.

Every fault here is a one-shot: it hits the first run that meets it and never the
follow-up job.
"""

from __future__ import annotations

import gc
import json
import shutil
import sys
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import all_logs, idle_app, wait_for
from fastapi.testclient import TestClient

from finetune import modeling, training
from finetune.runs import RunManager
from finetune.server import create_app
from finetune.settings import Settings

pytestmark = pytest.mark.slow

FOLLOW_UP = {"dataset_id": "demo", "max_steps": 3, "logging_steps": 1, "save_steps": 1000}
BAD_RUN = {"dataset_id": "demo", "max_steps": 8, "logging_steps": 1, "save_steps": 1000}
CSV = b"prompt,completion\n" + b"".join(f"What is {i} plus 1?,{i} plus 1 is {i + 1}.\n".encode() for i in range(12))


def submit(client: TestClient, **config: Any) -> str:
    resp = client.post("/api/jobs", json=config)
    assert resp.status_code == 201, resp.text
    return resp.json()["job_id"]


def assert_failed_then_next_completes(client: TestClient, bad: str, follow: str, *needles: str) -> dict[str, Any]:
    """The bad job fails naming its reason; the server answers; the job behind it completes."""
    failed = wait_for(client, bad, "failed", timeout=120)
    error = failed["error"]
    assert error, failed
    for needle in needles:
        assert needle.lower() in error.lower(), (needle, error)
    # The reason is also the last ERROR event, and nothing was left "running".
    errors = [e for e in all_logs(client, bad) if e["level"] == "ERROR"]
    assert errors and errors[-1]["message"] == error
    job = client.get(f"/api/jobs/{bad}").json()
    assert job["status"] == "failed" and job["error"] == error and job["finished_at"]
    assert client.get(f"/api/jobs/{bad}/artifacts").status_code == 409  # no half-saved model

    # The server still serves: liveness, status, the job list.
    health = client.get("/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    status = client.get("/api/status")
    assert status.status_code == 200 and status.json()["status"] in ("queued", "running", "completed")
    assert client.get("/api/jobs").status_code == 200

    done = wait_for(client, follow, "completed", timeout=120)
    assert done["step"] == 3 and done["error"] is None and done["progress"] == 1.0
    assert [e for e in all_logs(client, follow) if e["level"] == "ERROR"] == []
    return failed


def one_shot(fire_on: int, fault: Callable[[], BaseException]) -> Callable[[], None]:
    """A hook that raises ``fault()`` on its ``fire_on``-th call, once; it never fires again."""
    calls = 0
    lock = threading.Lock()

    def hook() -> None:
        nonlocal calls
        with lock:
            calls += 1
            fire = calls == fire_on
        if fire:
            raise fault()

    return hook


def patch_collator(monkeypatch: pytest.MonkeyPatch, hook: Callable[[], None]) -> None:
    original = training._CountingCollator.__call__

    def call(self: Any, features: list[dict[str, Any]]) -> dict[str, Any]:
        hook()
        return original(self, features)

    monkeypatch.setattr(training._CountingCollator, "__call__", call)


# ---------------------------------------------------------------- faults during training


def test_exception_in_data_collation(client: TestClient, monkeypatch: pytest.MonkeyPatch):
    patch_collator(monkeypatch, one_shot(3, lambda: RuntimeError("injected collation fault")))
    bad = submit(client, **BAD_RUN)
    follow = submit(client, **FOLLOW_UP)

    failed = assert_failed_then_next_completes(client, bad, follow, "RuntimeError", "injected collation fault")
    assert 1 <= failed["step"] < BAD_RUN["max_steps"]  # it failed mid-run, after real steps
    events = all_logs(client, bad)
    assert any(e["level"] == "METRIC" for e in events)
    assert not any(e["message"] == "done" for e in events)


def test_nan_loss_fails_as_diverged(client: TestClient, monkeypatch: pytest.MonkeyPatch):
    """A real Trainer whose loss turns NaN from step 3 on (only for the first run)."""
    from transformers import Trainer

    original = Trainer.compute_loss
    poisoned: list[weakref.ref] = []

    def compute_loss(self: Any, model: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        out = original(self, model, inputs, *args, **kwargs)
        if not poisoned:
            poisoned.append(weakref.ref(self))  # the first trainer seen is the bad job's
        if poisoned[0]() is self and self.state.global_step >= 2:
            if isinstance(out, tuple):
                return (out[0] * float("nan"), *out[1:])
            return out * float("nan")
        return out

    monkeypatch.setattr(Trainer, "compute_loss", compute_loss)
    bad = submit(client, **BAD_RUN)
    follow = submit(client, **FOLLOW_UP)

    failed = assert_failed_then_next_completes(client, bad, follow, "diverged at step 3", "learning_rate")
    assert failed["step"] == 3  # stopped at once, not trained on to max_steps with NaN weights
    metrics = [e for e in all_logs(client, bad) if e["level"] == "METRIC"]
    assert metrics[-1]["step"] == 3
    assert "loss" not in metrics[-1] or metrics[-1]["loss"] is None  # NaN is written as JSON null
    assert all(e["loss"] is not None for e in metrics[:-1])


def test_out_of_memory_gives_a_hint_and_frees_the_model(client: TestClient, monkeypatch: pytest.MonkeyPatch):
    import torch

    patch_collator(monkeypatch, one_shot(2, lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")))
    # Keep only a weak reference to each model the run loads.
    models: list[weakref.ref] = []
    load_model = modeling.load_model

    def tracked_load_model(*args: Any, **kwargs: Any) -> Any:
        model = load_model(*args, **kwargs)
        models.append(weakref.ref(model))
        return model

    monkeypatch.setattr(modeling, "load_model", tracked_load_model)
    # Is the model still alive at the moment the job is marked failed? Sampled inside the
    # worker, so the answer does not depend on when the test polls.
    # And did the run's clean-up call gc.collect() before that?
    alive_when_failed: list[bool] = []
    collects_when_failed: list[int] = []
    collects = 0
    real_collect = gc.collect

    def counting_collect(*args: Any) -> int:
        nonlocal collects
        if sys._getframe(1).f_code is training.run_training.__code__:  # only the run's own clean-up
            collects += 1
        return real_collect(*args)

    monkeypatch.setattr(training.gc, "collect", counting_collect)  # training's module global is gc
    set_fields = RunManager._set

    def spy_set(self: RunManager, job: Any, persist: bool = True, **fields: Any) -> None:
        if fields.get("status") == "failed":
            alive_when_failed.append(bool(models) and models[0]() is not None)
            collects_when_failed.append(collects)
        set_fields(self, job, persist, **fields)

    monkeypatch.setattr(RunManager, "_set", spy_set)

    bad = submit(client, **BAD_RUN)
    follow = submit(client, **FOLLOW_UP)
    wait_for(client, bad, "failed", timeout=120)
    # Freed before the failure is reported, so on a GPU the memory is back before the next
    # job loads its model: the exception's frames must not keep the Trainer alive through
    # the clean-up (the PyTorch FAQ on recovering from out-of-memory errors).
    assert alive_when_failed == [False], "the failed run's model was still alive when the job was marked failed"
    assert collects_when_failed and collects_when_failed[0] >= 1
    assert_failed_then_next_completes(
        client, bad, follow,
        "out of memory", "per_device_train_batch_size", "max_seq_length", "lora", "gradient_accumulation_steps",
    )


# ---------------------------------------------------------------- faults before training


def test_models_that_cannot_be_loaded(client: TestClient, settings: Settings, tiny_model_dir: Path):
    # A folder under FINETUNE_HOME/models with a config but no weights (a half-copied model),
    # once bare and once with a working tokenizer, so the failure is at the weights.
    bare = settings.models_dir / "config-only"
    bare.mkdir(parents=True)
    shutil.copy(tiny_model_dir / "config.json", bare / "config.json")
    no_weights = settings.models_dir / "no-weights"
    shutil.copytree(tiny_model_dir, no_weights, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    assert (no_weights / "config.json").is_file() and not list(no_weights.glob("*.safetensors"))

    cases = [
        ("no-such-org/model", ("no-such-org/model", "could not load")),
        (str(bare), ("could not load the model in folder", str(bare))),
        (str(no_weights), ("could not load the model in folder", str(no_weights))),
    ]
    jobs = []
    for base_model, needles in cases:
        bad = submit(client, **{**BAD_RUN, "base_model": base_model})
        jobs.append((bad, submit(client, **FOLLOW_UP), needles))
    for bad, follow, needles in jobs:
        failed = assert_failed_then_next_completes(client, bad, follow, *needles)
        assert failed["step"] == 0


def test_dataset_deleted_between_submit_and_run(make_settings: Callable[..., Settings]):
    settings = make_settings()
    app = idle_app(settings)  # no worker: the jobs stay queued while their files go
    with TestClient(app) as a:
        gone, half = (a.post("/api/datasets", files={"file": ("qa.csv", CSV, "text/csv")}).json()["dataset_id"] for _ in range(2))
        whole_folder = submit(a, **{**BAD_RUN, "dataset_id": gone})
        data_file = submit(a, **{**BAD_RUN, "dataset_id": half})
        follow = submit(a, **FOLLOW_UP)
    app.state.studio.close()
    shutil.rmtree(settings.datasets_dir / gone)  # the whole dataset folder
    (settings.datasets_dir / half / "data.csv").unlink()  # only the data file; meta.json is left

    # A new server on the same home re-queues them in order; the worker finds the files gone.
    with TestClient(create_app(settings, with_ui=False)) as b:
        assert_failed_then_next_completes(b, data_file, follow, "dataset", "no longer exists")
        failed = wait_for(b, whole_folder, "failed", timeout=10)
        assert "no longer exists" in failed["error"] and "Upload it again" in failed["error"]
        record = json.loads((settings.runs_dir / whole_folder / "status.json").read_text())
        assert record["status"] == "failed" and record["error"] == failed["error"]
