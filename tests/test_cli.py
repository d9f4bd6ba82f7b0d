"""Headless CLI: ``python -m finetune train CONFIG`` on the studio's TrainConfig schema.

Config errors are checked in-process (fast); real runs go through a
subprocess with FINETUNE_HOME pointing at a fresh folder, exactly as a user
would run them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml
from conftest import link_tiny_model

from finetune import cli
from finetune.config import TrainConfig
from finetune.service import Studio
from finetune.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def cli_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FINETUNE_")}
    # One torch thread, as conftest's settings: faster on a busy 2-core box.
    env.update(FINETUNE_HOME=str(home), FINETUNE_TORCH_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(ROOT))
    return env


def run_cli(*args: str, home: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "finetune", *args], cwd=ROOT, env=cli_env(home),
                          capture_output=True, text=True, timeout=timeout)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ------------------------------------------------------------------ help and template


def test_help_documents_the_commands(tmp_path: Path):
    proc = run_cli("--help", home=tmp_path / "home", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "train" in proc.stdout and "config-template" in proc.stdout and "FINETUNE_HOME" in proc.stdout
    train_help = run_cli("train", "--help", home=tmp_path / "home", timeout=120)
    assert train_help.returncode == 0 and "Exit codes" in train_help.stdout and "--dataset" in train_help.stdout


def test_config_template_is_valid_and_commented(capsys: pytest.CaptureFixture[str]):
    assert cli.main(["config-template"]) == 0
    text = capsys.readouterr().out
    assert TrainConfig.model_validate(yaml.safe_load(text)) == TrainConfig(dataset_id="demo")
    assert "# Peak learning rate" in text and "(required)" in text
    assert set(yaml.safe_load(text)) == set(TrainConfig.model_fields)


# ------------------------------------------------------------------ bad configs (exit 2)


@pytest.mark.parametrize(
    ("content", "name", "expected"),
    [
        ("dataset_id: demo\nlearning_rate: -1\n", "cfg.yaml", "learning_rate"),
        ("dataset_id: demo\nlearnig_rate: 0.1\n", "cfg.yaml", "learnig_rate: is not a known setting"),
        ("max_steps: 5\n", "cfg.yaml", "dataset_id: is required"),
        ("dataset_id: demo\nmax_steps: [5\n", "cfg.yaml", "not valid YAML"),
        ('{"dataset_id": "demo", "method": "qlora"}', "cfg.json", "method"),
        ("- a\n- b\n", "cfg.yaml", "must hold a mapping"),
        ("dataset_id: nope\n", "cfg.yaml", "no dataset 'nope'"),
        ("dataset_id: demo\ntext_column: missing\n", "cfg.yaml", "text_column: column 'missing' is not in dataset demo"),
    ],
)
def test_bad_config_exits_2_naming_the_problem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                               content: str, name: str, expected: str):
    monkeypatch.setenv("FINETUNE_HOME", str(tmp_path / "home"))
    assert cli.main(["train", str(write(tmp_path / name, content))]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err, err
    runs = tmp_path / "home" / "runs"
    assert [p.name for p in runs.iterdir()] == []  # no run and no staging folder left behind


def test_missing_config_file_exits_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    monkeypatch.setenv("FINETUNE_HOME", str(tmp_path / "home"))
    assert cli.main(["train", str(tmp_path / "absent.yaml")]) == 2
    assert "cannot read config file" in capsys.readouterr().err


def test_bad_config_in_a_subprocess(tmp_path: Path):
    proc = run_cli("train", str(write(tmp_path / "cfg.yaml", "dataset_id: demo\nmax_steps: 0\n")), home=tmp_path / "home", timeout=120)
    assert proc.returncode == 2
    assert "max_steps" in proc.stderr and "Traceback" not in proc.stderr


# ------------------------------------------------------------------ real runs


@pytest.mark.slow
def test_train_writes_a_run_the_studio_lists(tmp_path: Path, tiny_model_dir: Path):
    home = tmp_path / "home"
    link_tiny_model(home, tiny_model_dir)
    # A server's live run on the same home must survive the CLI's start-up untouched.
    live = home / "runs" / "20200101-000000-live00"
    live.mkdir(parents=True)
    (live / "config.json").write_text(TrainConfig(dataset_id="demo").model_dump_json())
    (live / "status.json").write_text(json.dumps({"job_id": live.name, "status": "running", "created_at": 1.0}))

    cfg = write(tmp_path / "cfg.yaml", "dataset_id: demo\nmax_steps: 5\nlogging_steps: 1\n")
    proc = run_cli("train", str(cfg), home=home)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metric_lines = [line for line in proc.stdout.splitlines() if line.startswith("METRIC ")]
    assert len(metric_lines) == 5 and "loss=" in metric_lines[0]
    assert "completed: job " in proc.stdout

    assert json.loads((live / "status.json").read_text())["status"] == "running"
    runs = sorted(p.name for p in (home / "runs").iterdir())
    assert len(runs) == 2 and not any(name.startswith(".") for name in runs)
    job_id = next(name for name in runs if name != live.name)
    run_dir = home / "runs" / job_id
    for name in ("config.json", "status.json", "events.jsonl", "model/adapter_config.json"):
        assert (run_dir / name).is_file(), name
    assert json.loads((run_dir / "config.json").read_text())["max_steps"] == 5

    studio = Studio(Settings(home=home), start_worker=False)
    try:
        job = studio.runs.get(job_id)
        assert job.record["status"] == "completed" and job.record["step"] == 5
        assert job.record["metrics"]["global_step"] == 5
        assert job.events.read(0, 10_000)[-1]["message"] == "done"
    finally:
        studio.close()


@pytest.mark.slow
def test_ctrl_c_cancels_cooperatively_and_exits_130(tmp_path: Path, tiny_model_dir: Path):
    home = tmp_path / "home"
    link_tiny_model(home, tiny_model_dir)
    cfg = write(tmp_path / "cfg.yaml", "dataset_id: demo\nmax_steps: 100000\nlogging_steps: 1\nsave_steps: 100000\n")
    proc = subprocess.Popen([sys.executable, "-m", "finetune", "train", str(cfg), "--quiet"], cwd=ROOT, env=cli_env(home),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    started = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("METRIC "):
                started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert started.wait(300), "".join(lines)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(120)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(10)
    assert proc.stderr is not None
    stderr = proc.stderr.read()
    assert code == 130, stderr[-3000:]
    assert "cancelled: job" in stderr
    (run_dir,) = [p for p in (home / "runs").iterdir()]
    record = json.loads((run_dir / "status.json").read_text())
    assert record["status"] == "cancelled" and 0 < record["step"] < 100000
    assert (run_dir / "model" / "adapter_model.safetensors").is_file()  # saved at the step it stopped
