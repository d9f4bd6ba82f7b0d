"""End to end over REST with real training on the bundled tiny model (offline).

Each run is kept short (tens of steps, a few seconds on a CPU). Marked
``slow``; deselect with ``-m "not slow"`` for a quick pass.
"""

from __future__ import annotations

import importlib.util
import io
import json
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest
from conftest import TERMINAL, all_logs, idle_app, wait_for
from fastapi.testclient import TestClient

from finetune.prep import format_prompt
from finetune.server import create_app
from finetune.settings import Settings

GOLDEN_DIR = Path(__file__).parent / "golden"


def submit(client: TestClient, **config: Any) -> str:
    resp = client.post("/api/jobs", json={"dataset_id": "demo", **config})
    assert resp.status_code == 201, resp.text
    return resp.json()["job_id"]


def losses_of(events: list[dict[str, Any]]) -> list[float]:
    return [e["loss"] for e in events if e["level"] == "METRIC" and e.get("loss") is not None]


def follow(client: TestClient, job_id: str, timeout: float = 120.0, limit: int = 3) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Poll logs with a cursor (small pages) and status until the job ends.

    Returns every event collected through the cursor and every status seen.
    """
    events: list[dict[str, Any]] = []
    statuses: list[dict[str, Any]] = []
    since = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get("/api/status", params={"job_id": job_id}).json()
        statuses.append(status)
        # Drain everything after the cursor (several small pages per poll).
        while True:
            body = client.get("/api/logs", params={"job_id": job_id, "since": since, "limit": limit}).json()
            assert body["job_id"] == job_id
            events.extend(body["logs"])
            if not body["logs"]:
                assert body["next_since"] == since
                break
            assert body["next_since"] == body["logs"][-1]["seq"]
            since = body["next_since"]
        if status["status"] in TERMINAL:
            return events, statuses  # the drain above ran after the terminal status was seen
        time.sleep(0.1)  # leave the CPU to the training thread
    pytest.fail(f"job {job_id} did not finish in {timeout}s; last status {statuses[-1] if statuses else None}")


def download_artifacts(client: TestClient, job_id: str, dest: Path) -> Path:
    resp = client.get(f"/api/jobs/{job_id}/artifacts")
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(resp.content)) as zf:
        zf.extractall(dest)
    return dest


def generate_new_tokens(model: Any, tokenizer: Any, prompt: str = "What is 2 plus 3?") -> int:
    import torch

    inputs = tokenizer(format_prompt(prompt), return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(
            **inputs, max_new_tokens=8, min_new_tokens=2, do_sample=False, pad_token_id=tokenizer.pad_token_id,
        )
    return out.shape[1] - inputs["input_ids"].shape[1]


# ---------------------------------------------------------------- full runs over REST


@pytest.mark.slow
def test_lora_run_to_completion_with_cursor_polling(client: TestClient, settings: Settings, tmp_path: Path):
    job_id = submit(client, max_steps=40, logging_steps=4, learning_rate=2e-3)
    events, statuses = follow(client, job_id)

    # The cursor saw every event exactly once, in order.
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(1, len(seqs) + 1))
    assert [e["seq"] for e in all_logs(client, job_id)] == seqs  # nothing appeared after the end either

    final = statuses[-1]
    assert final["status"] == "completed", final
    assert final["progress"] == 1.0
    assert final["step"] == final["max_steps"] == 40
    assert final["error"] is None and final["loss"] is not None
    assert final["elapsed_seconds"] is not None and final["elapsed_seconds"] > 0
    assert "running" in {s["status"] for s in statuses}
    progress = [s["progress"] for s in statuses]
    assert progress == sorted(progress)  # never goes backwards

    losses = losses_of(events)
    assert len(losses) >= 8
    first, last3 = losses[0], sum(losses[-3:]) / 3
    assert last3 < first - 0.75, losses  # it learnt something
    levels = {e["level"] for e in events}
    assert {"INFO", "METRIC"} <= levels and "ERROR" not in levels
    assert events[-1]["message"] == "done"

    run_dir = settings.runs_dir / job_id
    for name in ("config.json", "status.json", "events.jsonl"):
        assert (run_dir / name).is_file(), name
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
    assert json.loads((run_dir / "config.json").read_text())["max_steps"] == 40
    assert (run_dir / "model" / "adapter_config.json").is_file()

    metrics = client.get(f"/api/jobs/{job_id}/metrics").json()
    assert metrics["step"] == sorted(metrics["step"]) and metrics["step"][-1] == 40
    assert metrics["loss"] == pytest.approx(losses)
    csv_text = client.get(f"/api/jobs/{job_id}/metrics.csv").text
    assert csv_text.splitlines()[0].startswith("step") and len(csv_text.splitlines()) > len(losses)

    job = client.get(f"/api/jobs/{job_id}").json()
    assert job["status"] == "completed" and job["metrics"]["global_step"] == 40
    cancel = client.post(f"/api/jobs/{job_id}/cancel")
    assert cancel.status_code == 409 and "completed" in cancel.json()["detail"]

    # The downloaded adapter loads offline on its base and generates.
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    out = download_artifacts(client, job_id, tmp_path / "adapter")
    assert (out / "adapter_model.safetensors").is_file()
    assert json.loads((out / "studio_config.json").read_text())["dataset_id"] == "demo"
    model = AutoPeftModelForCausalLM.from_pretrained(str(out))
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert generate_new_tokens(model, tokenizer) >= 2


@pytest.mark.slow
def test_full_finetune_artifacts_load_as_a_plain_model(client: TestClient, settings: Settings, tiny_model_dir: Path, tmp_path: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    job_id = submit(client, method="full", max_steps=15, logging_steps=5, learning_rate=5e-4)
    final = wait_for(client, job_id, "completed", timeout=120)
    assert final["progress"] == 1.0
    assert (settings.runs_dir / job_id / "model" / "model.safetensors").is_file()

    out = download_artifacts(client, job_id, tmp_path / "model")
    model = AutoModelForCausalLM.from_pretrained(str(out))
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert generate_new_tokens(model, tokenizer) >= 2

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    name = "model.layers.0.self_attn.q_proj.weight"
    trained = dict(model.named_parameters())[name]
    assert not torch.equal(trained, dict(base.named_parameters())[name])  # every weight was trainable


@pytest.mark.slow
def test_cancel_mid_run_saves_the_model(client: TestClient, settings: Settings):
    job_id = submit(client, max_steps=100_000, logging_steps=10, save_steps=100_000)
    running = wait_for(client, job_id, "running", timeout=120, until=lambda s: s["step"] > 0)
    assert running["eta_seconds"] is not None

    resp = client.post(f"/api/jobs/{job_id}/cancel")
    assert resp.status_code == 200
    assert resp.json()["stop_requested"] is True

    final = wait_for(client, job_id, "cancelled", timeout=60)
    assert 0 < final["step"] < 100_000
    assert final["error"] is None
    run_dir = settings.runs_dir / job_id
    assert any((run_dir / "model").iterdir())
    assert list((run_dir / "checkpoints").glob("checkpoint-*"))  # saved at the step it stopped

    messages = [e["message"] for e in all_logs(client, job_id)]
    assert any(m.startswith("stop requested") for m in messages)
    assert any(m.startswith("cancelled: model saved") for m in messages)
    assert client.get(f"/api/jobs/{job_id}/artifacts").status_code == 200
    assert client.post(f"/api/jobs/{job_id}/cancel").status_code == 409


@pytest.mark.slow
def test_failed_model_load_then_next_queued_job_completes(client: TestClient):
    bad = submit(client, base_model="no-such-org/no-such-model-xyz", max_steps=5)
    good = submit(client, max_steps=8, logging_steps=4)

    failed = wait_for(client, bad, "failed", timeout=120)
    assert "no-such-org/no-such-model-xyz" in failed["error"]
    assert "could not load" in failed["error"].lower()
    errors = [e for e in all_logs(client, bad) if e["level"] == "ERROR"]
    assert errors and "no-such-org/no-such-model-xyz" in errors[-1]["message"]
    assert client.get(f"/api/jobs/{bad}/artifacts").status_code == 409

    done = wait_for(client, good, "completed", timeout=120)  # FIFO: it ran after the failure
    assert done["step"] == 8
    assert client.get("/healthz").status_code == 200
    jobs = {j["job_id"]: j["status"] for j in client.get("/api/jobs").json()}
    assert jobs == {bad: "failed", good: "completed"}


# ---------------------------------------------------------------- restarts


@pytest.mark.slow
def test_history_survives_a_restart(settings: Settings):
    with TestClient(create_app(settings, with_ui=False)) as a:
        job_id = submit(a, max_steps=10, logging_steps=5)
        wait_for(a, job_id, "completed", timeout=120)
        events_a = all_logs(a, job_id)
        summary_a = a.get(f"/api/jobs/{job_id}").json()
    assert events_a and events_a[-1]["message"] == "done"

    with TestClient(create_app(settings, with_ui=False)) as b:
        listed = b.get("/api/jobs").json()
        assert [(j["job_id"], j["status"]) for j in listed] == [(job_id, "completed")]
        assert all_logs(b, job_id) == events_a
        summary_b = b.get(f"/api/jobs/{job_id}").json()
        assert summary_b["config"] == summary_a["config"]
        assert summary_b["step"] == 10 and summary_b["metrics"] == summary_a["metrics"]
        status = b.get("/api/status").json()  # nothing running: the most recent job
        assert status["job_id"] == job_id and status["status"] == "completed" and status["progress"] == 1.0
        assert b.get(f"/api/jobs/{job_id}/artifacts").status_code == 200


@pytest.mark.slow
def test_running_on_disk_becomes_interrupted_and_queued_is_resumed(settings: Settings):
    app = idle_app(settings)
    with TestClient(app) as a:
        crashed = submit(a, max_steps=5)
        waiting = submit(a, max_steps=5, logging_steps=5)
    app.state.studio.close()

    # Simulate a process that died mid-training: the record still says running.
    status_file = settings.runs_dir / crashed / "status.json"
    record = json.loads(status_file.read_text())
    record.update(status="running", started_at=time.time() - 5, step=3, max_steps=5)
    status_file.write_text(json.dumps(record))

    with TestClient(create_app(settings, with_ui=False)) as b:
        interrupted = b.get("/api/status", params={"job_id": crashed}).json()
        assert interrupted["status"] == "interrupted"
        assert interrupted["error"]
        assert json.loads(status_file.read_text())["status"] == "interrupted"  # persisted, not just in memory
        last = all_logs(b, crashed)[-1]
        assert last["level"] == "ERROR" and "interrupted" in last["message"]
        assert b.post(f"/api/jobs/{crashed}/cancel").status_code == 409

        # The job still queued when the server stopped runs after the restart.
        wait_for(b, waiting, "completed", timeout=120)
        assert b.get("/api/status", params={"job_id": crashed}).json()["status"] == "interrupted"


# ---------------------------------------------------------------- golden trajectory


def _load_make_golden() -> Any:
    spec = importlib.util.spec_from_file_location("make_golden", GOLDEN_DIR / "make_golden.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_golden_loss_trajectory(tmp_path: Path, tiny_model_dir: Path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("the reference losses are for CPU float32")
    golden = _load_make_golden()
    reference = json.loads((GOLDEN_DIR / "lora_demo_losses.json").read_text())
    assert reference["config"] == golden.GOLDEN_CONFIG, "golden file is stale: rerun tests/golden/make_golden.py"

    first = golden.golden_losses(tmp_path / "a", tiny_model_dir.parent)
    second = golden.golden_losses(tmp_path / "b", tiny_model_dir.parent)
    assert first == second  # same seed, same numbers, bit for bit
    assert len(first) == len(reference["losses"]) == 5  # steps 1, 5, 10, 15, 20
    assert first == pytest.approx(reference["losses"], rel=5e-3)
    assert first[-1] < first[0]
