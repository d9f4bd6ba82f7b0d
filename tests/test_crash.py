"""Crash recovery with a real server process killed with SIGKILL (``kill -9``).

``python app.py`` runs in a subprocess on its own data folder and a free port (offline,
one torch thread). A run is killed mid-training, after a checkpoint, with an upload in
flight; the event log gets a torn last line and the newest checkpoint is left half
written, as a kill during a save leaves it. A new server on the same folder must list
every job with its status, config and events, mark the killed run ``interrupted``,
resume it from its newest complete checkpoint to completion, re-run the job that was
queued, still serve an earlier run's artifacts, and clean up what killed uploads and
deletes left behind.

``StudioServer`` is also used by test_load.py.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import TERMINAL, link_tiny_model

ROOT = Path(__file__).resolve().parent.parent
START_S = 90  # a cold start imports torch, transformers and gradio


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StudioServer:
    """``python app.py`` in a subprocess on ``home``; a fresh port per start."""

    def __init__(self, home: Path, name: str = "server") -> None:
        self.home = home
        self.name = name
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.base = ""

    @property
    def log_path(self) -> Path:
        return self.home / f"{self.name}-{self.starts}.log"

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-n:]
        except OSError:
            return ""

    def start(self) -> httpx.Client:
        assert self.proc is None, "already running"
        self.starts += 1
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FINETUNE_", "GRADIO_"))}
        env.update({
            "FINETUNE_HOME": str(self.home),
            "FINETUNE_TORCH_THREADS": "1",
            "GRADIO_SERVER_NAME": "127.0.0.1",
            "GRADIO_SERVER_PORT": str(port),
            "GRADIO_ANALYTICS_ENABLED": "False",
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONUNBUFFERED": "1",
        })
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.base = f"http://127.0.0.1:{port}"
        client = httpx.Client(base_url=self.base, timeout=30)
        deadline = time.monotonic() + START_S
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"{self.name} exited with code {self.proc.returncode} before answering:\n{self.log_tail()}")
            try:
                if client.get("/healthz").status_code == 200:
                    return client
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"{self.name}: no answer from {self.base}/healthz within {START_S}s:\n{self.log_tail()}")
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL: no lifespan shutdown, no flush, nothing saved."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.proc = None

    def stop(self) -> None:
        """SIGTERM (graceful), then SIGKILL if it hangs."""
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None


@pytest.fixture
def studio_server(tmp_path: Path, tiny_model_dir: Path):
    home = tmp_path / "home"
    link_tiny_model(home, tiny_model_dir)  # the session's built model, not a rebuild per server
    server = StudioServer(home)
    try:
        yield server
    finally:
        server.stop()


# ------------------------------------------------------------------ helpers over HTTP


def submit(client: httpx.Client, **config: Any) -> str:
    resp = client.post("/api/jobs", json=config)
    assert resp.status_code == 201, resp.text
    return resp.json()["job_id"]


def status_of(client: httpx.Client, job_id: str) -> dict[str, Any]:
    resp = client.get("/api/status", params={"job_id": job_id})
    assert resp.status_code == 200, resp.text
    return resp.json()


def wait_status(server: StudioServer, client: httpx.Client, job_id: str, wanted: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = status_of(client, job_id)
        if status["status"] == wanted:
            return status
        if status["status"] in TERMINAL:
            pytest.fail(f"job {job_id} ended {status['status']!r}, waiting for {wanted!r}: {status}\n{server.log_tail()}")
        time.sleep(0.1)
    pytest.fail(f"job {job_id} not {wanted!r} after {timeout}s: {status}\n{server.log_tail()}")


def read_logs(client: httpx.Client, job_id: str, since: int = 0, limit: int = 7) -> list[dict[str, Any]]:
    """Every event after ``since``, paging through the cursor in small pages."""
    out: list[dict[str, Any]] = []
    while True:
        body = client.get("/api/logs", params={"job_id": job_id, "since": since, "limit": limit}).json()
        assert body["job_id"] == job_id
        if not body["logs"]:
            assert body["next_since"] == since
            return out
        assert [e["seq"] for e in body["logs"]] == sorted(e["seq"] for e in body["logs"])
        assert body["logs"][0]["seq"] > since
        out.extend(body["logs"])
        since = body["next_since"]


def complete_checkpoints(run_dir: Path) -> list[int]:
    """Steps of the checkpoints the Trainer finished writing (trainer_state.json is written last)."""
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(int(p.name.split("-")[1]) for p in folder.glob("checkpoint-*") if (p / "trainer_state.json").is_file())


def start_partial_upload(base: str) -> socket.socket:
    """An upload whose body is only half sent when the server dies."""
    host, port = base.removeprefix("http://").split(":")
    boundary = "crashboundary"
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="half.csv"\r\n'
            "Content-Type: text/csv\r\n\r\nprompt,completion\r\n").encode()
    body_len = len(head) + 1_000_000
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(
        f"POST /api/datasets HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {body_len}\r\n\r\n".encode() + head + b"q,a\r\n" * 20_000
    )
    return sock


# ------------------------------------------------------------------ the test


@pytest.mark.slow
def test_kill_9_mid_training_then_restart_resumes_and_keeps_history(studio_server: StudioServer):
    from finetune.demo import demo_csv_bytes

    home = studio_server.home
    a = studio_server.start()

    upload = a.post("/api/datasets", files={"file": ("qa.csv", demo_csv_bytes(), "text/csv")})
    assert upload.status_code == 201, upload.text
    dataset_id = upload.json()["dataset_id"]

    # A run that completes before the crash: its artifacts must survive the restart.
    finished_config = {"dataset_id": dataset_id, "max_steps": 3, "logging_steps": 1}
    finished = submit(a, **finished_config)
    wait_status(studio_server, a, finished, "completed")

    # The run to kill, and a job queued behind it.
    crash_config = {"dataset_id": dataset_id, "max_steps": 40, "save_steps": 5, "logging_steps": 2, "learning_rate": 1e-3}
    crashed = submit(a, **crash_config)
    queued_config = {"dataset_id": "demo", "max_steps": 3, "logging_steps": 1, "seed": 7}
    queued = submit(a, **queued_config)
    run_dir = home / "runs" / crashed

    # A reader follows the log with its cursor until checkpoint-10 is complete on disk.
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + 120
    while 10 not in complete_checkpoints(run_dir):
        assert time.monotonic() < deadline, f"no checkpoint-10 after 120s: {status_of(a, crashed)}\n{studio_server.log_tail()}"
        seen += read_logs(a, crashed, since=seen[-1]["seq"] if seen else 0)
        time.sleep(0.02)
    # What the half-finished upload and half-finished delete of a killed server leave behind.
    left_upload = home / "datasets" / ".upload-k1ll3d"
    left_upload.mkdir()
    (left_upload / "data.csv").write_bytes(b"prompt,completion\nhalf,writ")
    (left_upload / "meta.json").write_text(json.dumps({"dataset_id": "ds-k1ll3d", "filename": "half.csv", "num_rows": 1}))
    assert {d["dataset_id"] for d in a.get("/api/datasets").json()} == {"demo", dataset_id}  # never listed
    sock = start_partial_upload(studio_server.base)
    time.sleep(0.2)

    studio_server.kill()  # mid-training, mid-upload
    sock.close()
    a.close()

    assert json.loads((run_dir / "status.json").read_text())["status"] == "running"  # as the dead process left it
    steps_done = complete_checkpoints(run_dir)
    newest = max(steps_done)
    assert newest < crash_config["max_steps"]
    # A kill during the next save: the checkpoint folder exists, its files are torn.
    torn_ckpt = run_dir / "checkpoints" / f"checkpoint-{newest + crash_config['save_steps']}"
    if not torn_ckpt.exists():
        torn_ckpt.mkdir()
        (torn_ckpt / "adapter_model.safetensors").write_bytes(b"")
    # A kill during an event write: half a line, no newline (unless the kill already left one).
    events_file = run_dir / "events.jsonl"
    written = events_file.read_bytes()
    last_whole = json.loads(written[: written.rfind(b"\n") + 1].splitlines()[-1])
    if written.endswith(b"\n"):
        with events_file.open("ab") as fh:
            fh.write(b'{"seq":%d,"time":%.3f,"level":"METRIC","message":"step 1' % (last_whole["seq"] + 1, time.time()))
    deleted_leftover = home / "runs" / ".deleted-20200101-000000-abcdef"
    deleted_leftover.mkdir()
    (deleted_leftover / "config.json").write_text(json.dumps({"dataset_id": "demo"}))

    # ---- restart on the same home
    b = studio_server.start()

    # Every job is listed, with its status and the config it ran with.
    listed = {j["job_id"]: j for j in b.get("/api/jobs").json()}
    assert set(listed) == {finished, crashed, queued}
    assert listed[finished]["status"] == "completed"
    assert listed[crashed]["status"] == "interrupted" and listed[crashed]["error"]
    assert listed[queued]["status"] in ("queued", "running", "completed")  # queued again at start-up
    for job_id, config in ((finished, finished_config), (crashed, crash_config), (queued, queued_config)):
        job = b.get(f"/api/jobs/{job_id}").json()
        assert {k: job["config"][k] for k in config} == config
    assert json.loads((run_dir / "status.json").read_text())["status"] == "interrupted"
    crashed_status = status_of(b, crashed)
    assert crashed_status["status"] == "interrupted" and crashed_status["error"] == listed[crashed]["error"]

    # The events from before the crash are all there, unchanged, and the cursor works;
    # the torn half line is gone and the interrupted notice follows with the next seq.
    after = read_logs(b, crashed)
    assert [e["seq"] for e in after] == list(range(1, len(after) + 1))
    assert len(seen) >= 5 and after[: len(seen)] == seen
    assert after[last_whole["seq"] - 1] == last_whole
    assert len(after) == last_whole["seq"] + 1, "expected exactly one new event (the interrupted notice) after the torn line"
    notice = after[-1]
    assert notice["level"] == "ERROR" and "interrupted" in notice["message"]
    assert read_logs(b, crashed, since=len(after) - 3) == after[-3:]
    assert read_logs(b, finished) and read_logs(b, finished)[-1]["message"] == "done"

    # Nothing half-uploaded or half-deleted survives the start-up, and nothing was listed.
    assert not left_upload.exists() and not deleted_leftover.exists()
    assert not [p.name for p in (home / "datasets").iterdir() if p.name.startswith(".")]
    assert {d["dataset_id"] for d in b.get("/api/datasets").json()} == {"demo", dataset_id}

    # The earlier run's artifacts still download.
    zipped = b.get(f"/api/jobs/{finished}/artifacts")
    assert zipped.status_code == 200 and zipped.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(zipped.content)) as zf:
        assert {"adapter_model.safetensors", "adapter_config.json", "studio_config.json"} <= set(zf.namelist())

    # The job that was queued when the server died runs now.
    wait_status(studio_server, b, queued, "completed")

    # Resume: from the newest complete checkpoint (not the torn one), to the end.
    cursor = after[-1]["seq"]
    resp = b.post(f"/api/jobs/{crashed}/resume")
    assert resp.status_code == 200, resp.text
    final = wait_status(studio_server, b, crashed, "completed")
    assert final["step"] == crash_config["max_steps"] and final["error"] is None
    resumed = read_logs(b, crashed, since=cursor)
    assert [e["seq"] for e in resumed] == list(range(cursor + 1, cursor + 1 + len(resumed)))  # same log, same sequence
    assert resumed[0]["level"] == "INFO" and resumed[0]["message"] == f"resume requested: continuing from checkpoint-{newest}"
    steps = [e["step"] for e in resumed if e["level"] == "METRIC" and "loss" in e]
    every = crash_config["logging_steps"]
    assert steps and steps[0] == (newest // every + 1) * every, steps  # continued from there, not restarted
    assert steps[-1] == crash_config["max_steps"] and resumed[-1]["message"] == "done"
    assert not [e for e in resumed if e["level"] == "ERROR"]
    assert b.get(f"/api/jobs/{crashed}/artifacts").status_code == 200
    assert b.get("/healthz").status_code == 200
    b.close()
