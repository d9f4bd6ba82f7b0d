"""Export: model card, artifacts and merged zips, LoRA merge, push to the Hub, reproduce.

The slow test reuses the session's trained demo run (``trained_lora`` from
test_playground) and proves both zips load and generate in a fresh Python
process that imports only torch, transformers and peft, fully offline.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shlex
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from test_playground import trained_lora

from finetune import hub
from finetune.config import TrainConfig
from finetune.export import cli_commands, model_card
from finetune.runs import Job
from finetune.server import create_app
from finetune.settings import Settings

TOKEN = "hf_studioTestToken0123456789abcdef"
DEMO_META = {"filename": "demo_qa.csv", "num_rows": 302, "format": "csv", "guess": {"format": "prompt_completion"}}


def make_job(run_dir: Path, **config: Any) -> Job:
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = TrainConfig(dataset_id="demo", **config)
    (run_dir / "config.json").write_text(cfg.model_dump_json(indent=2))
    record = {"job_id": run_dir.name, "status": "completed", "step": 60, "dataset_filename": "demo_qa.csv",
              "metrics": {"train_loss": 2.5, "global_step": 60, "eval_loss": None}}
    return Job(run_dir.name, run_dir, cfg, record, events=None)  # type: ignore[arg-type]


def front_matter(card: str) -> dict[str, Any]:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def wait_task(client: TestClient, url: str, timeout: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(url).json()
        if body["status"] not in ("queued", "running"):
            return body
        time.sleep(0.2)
    pytest.fail(f"{url} still running after {timeout}s")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------ model card


def test_model_card_for_an_adapter_on_the_bundled_base(tmp_path: Path):
    card = model_card(make_job(tmp_path / "run-a"), DEMO_META)
    meta = front_matter(card)
    assert meta["library_name"] == "peft" and "lora" in meta["tags"]
    assert "base_model" not in meta  # a local folder is no Hub reference
    assert "demo_qa.csv" in card and "302" in card and "csv file, prompt_completion layout" in card
    assert "| train_loss | 2.5 |" in card and "| global_step | 60 |" in card and "eval_loss" not in card
    assert "| `learning_rate` | `0.002` |" in card
    # How to get the base anywhere: rebuild it, then load the adapter on it.
    assert "python -m finetune.tinymodel ./tiny-llama" in card
    assert 'PeftModel.from_pretrained(base, "adapter_dir")' in card and "base_model_name_or_path" in card
    assert 'prompt + "\\n"' in card


def test_model_card_for_full_weights_and_hub_bases(tmp_path: Path):
    full = model_card(make_job(tmp_path / "run-f", method="full"), None)
    assert front_matter(full)["library_name"] == "transformers"
    assert "AutoModelForCausalLM.from_pretrained(\"model_dir\")" in full and "tinymodel" not in full
    assert "demo_qa.csv" in full and "rows: unknown" in full  # dataset deleted: named from the job record

    hub_lora = model_card(make_job(tmp_path / "run-h", base_model="org/some-model"), DEMO_META)
    assert front_matter(hub_lora)["base_model"] == "org/some-model"
    assert "AutoModelForCausalLM.from_pretrained('org/some-model')" in hub_lora

    merged = model_card(make_job(tmp_path / "run-m"), DEMO_META, merged=True)
    assert front_matter(merged)["library_name"] == "transformers" and "merged" in front_matter(merged)["tags"]

    chat = model_card(make_job(tmp_path / "run-c"), {**DEMO_META, "guess": {"format": "chat"}})
    assert "apply_chat_template" in chat and "<|im_end|>" in chat


# ------------------------------------------------------------------ reproduce


def test_cli_commands_reproduce_the_config(tmp_path: Path):
    job = make_job(tmp_path / "home" / "runs" / "20260101-000000-abcdef", max_steps=77, learning_rate=1e-3, prompt_column="prompt",
                   completion_column="completion")
    out = cli_commands(job, "http://studio:7860/", auth=True)
    assert TrainConfig.model_validate(yaml.safe_load(out["config_yaml"])) == job.config
    assert "# Peak learning rate" in out["config_yaml"]  # commented from the schema
    assert out["cli"] == f"FINETUNE_HOME={tmp_path / 'home'} python -m finetune train 20260101-000000-abcdef.yaml"
    argv = shlex.split(out["curl"])
    assert argv[:5] == ["curl", "-s", "-X", "POST", "http://studio:7860/api/jobs"]
    assert "Authorization: Bearer $FINETUNE_API_TOKEN" in argv
    assert TrainConfig.model_validate_json(argv[argv.index("-d") + 1]) == job.config
    assert "Authorization" not in cli_commands(job)["curl"]


def test_reproduce_route(idle_client: TestClient):
    job_id = idle_client.post("/api/jobs", json={"dataset_id": "demo", "max_steps": 9}).json()["job_id"]
    out = idle_client.get(f"/api/jobs/{job_id}/reproduce").json()
    assert yaml.safe_load(out["config_yaml"])["max_steps"] == 9
    assert out["curl"].startswith("curl -s -X POST http://testserver/api/jobs")
    assert "python -m finetune train" in out["cli"]
    assert idle_client.get("/api/jobs/nope/reproduce").status_code == 404


# ------------------------------------------------------------------ merge rules (no training)


def test_merge_refuses_full_runs_and_runs_without_a_model(idle_client: TestClient):
    full = idle_client.post("/api/jobs", json={"dataset_id": "demo", "method": "full", "max_steps": 5}).json()["job_id"]
    resp = idle_client.post(f"/api/jobs/{full}/merge")
    assert resp.status_code == 409 and "already full weights" in resp.json()["detail"]

    lora = idle_client.post("/api/jobs", json={"dataset_id": "demo", "max_steps": 5}).json()["job_id"]
    assert idle_client.get(f"/api/jobs/{lora}/merge").json()["status"] == "not_started"
    resp = idle_client.post(f"/api/jobs/{lora}/merge")
    assert resp.status_code == 409 and "no saved model" in resp.json()["detail"]
    resp = idle_client.get(f"/api/jobs/{lora}/merged")
    assert resp.status_code == 409 and "not_started" in resp.json()["detail"]
    assert idle_client.post("/api/jobs/nope/merge").status_code == 404


# ------------------------------------------------------------------ push


def test_upload_plan_lists_model_files_config_and_card(tmp_path: Path):
    job = make_job(tmp_path / "run-p")
    model = job.run_dir / "model"
    (model / "sub").mkdir(parents=True)
    (model / "adapter_model.safetensors").write_bytes(b"x" * 10)
    (model / "sub" / "extra.json").write_text("{}")
    (model / "README.md").write_text("peft's stub card")
    plan = hub.upload_plan(job, DEMO_META)
    assert [p["path"] for p in plan] == ["adapter_model.safetensors", "sub/extra.json", "studio_config.json", "README.md"]
    assert plan[0]["size_bytes"] == 10 and plan[0]["source"] == str(model / "adapter_model.safetensors")
    card = plan[-1]
    assert card["source"] == "generated" and card["content"] == model_card(job, DEMO_META)
    assert card["size_bytes"] == len(card["content"].encode())


def test_hub_errors_read_clearly():
    from huggingface_hub.errors import OfflineModeIsEnabled

    offline = hub.describe_hub_error(OfflineModeIsEnabled("Cannot reach https://huggingface.co: offline mode is enabled."))
    assert offline.startswith("cannot reach the Hugging Face Hub: ") and ".." not in offline

    class ConnectError(Exception):  # what httpx raises without DNS
        pass

    assert hub.describe_hub_error(ConnectError("Name or service not known")).startswith("cannot reach the Hugging Face Hub")
    refused = Exception("401 Client Error: Unauthorized")
    refused.response = SimpleNamespace(status_code=401)  # type: ignore[attr-defined]
    assert hub.describe_hub_error(refused).startswith("unauthorised: the Hub refused the token (401)")


def test_push_offline_fails_clearly_and_never_stores_the_token(idle_client: TestClient, settings: Settings):
    job_id = idle_client.post("/api/jobs", json={"dataset_id": "demo", "max_steps": 5}).json()["job_id"]
    run_dir = settings.runs_dir / job_id
    url = f"/api/jobs/{job_id}/push"
    assert idle_client.post(url, json={"repo_id": "me/tiny", "token": TOKEN}).status_code == 409  # no model yet
    (run_dir / "model").mkdir()
    (run_dir / "model" / "adapter_model.safetensors").write_bytes(b"weights")

    assert idle_client.get(url).json()["status"] == "not_started"
    assert idle_client.post(url, json={"repo_id": "not a repo!", "token": TOKEN}).status_code == 422
    resp = idle_client.post(url, json={"repo_id": "me/tiny", "token": TOKEN})
    assert resp.status_code == 202, resp.text
    assert resp.json()["private"] is True and "README.md" in resp.json()["files"]
    done = wait_task(idle_client, url, timeout=60)
    assert done["status"] == "failed"
    assert done["error"].startswith("cannot reach the Hugging Face Hub: "), done  # HF_HUB_OFFLINE=1 in tests
    assert (run_dir / "push.json").is_file()

    plan = idle_client.get(f"{url}/plan").json()["files"]
    assert [p["path"] for p in plan][-2:] == ["studio_config.json", "README.md"]

    leaked = [p for p in settings.home.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]
    assert leaked == []
    assert not list(settings.cache_dir.glob("push-*"))  # staging removed


def test_push_without_any_token_is_refused(idle_client: TestClient, settings: Settings, monkeypatch: pytest.MonkeyPatch):
    import huggingface_hub

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    job_id = idle_client.post("/api/jobs", json={"dataset_id": "demo", "max_steps": 5}).json()["job_id"]
    (settings.runs_dir / job_id / "model").mkdir()
    (settings.runs_dir / job_id / "model" / "adapter_model.safetensors").write_bytes(b"weights")
    resp = idle_client.post(f"/api/jobs/{job_id}/push", json={"repo_id": "me/tiny"})
    assert resp.status_code == 422 and "HF_TOKEN" in resp.json()["detail"]
    assert idle_client.get(f"/api/jobs/{job_id}/push").json()["status"] == "not_started"


# ------------------------------------------------------------------ real zips in a fresh process

FRESH_SCRIPT = """
import json, sys
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

adapter_dir, merged_dir, base_dir = sys.argv[1:4]
tok = AutoTokenizer.from_pretrained(adapter_dir)
adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir).eval()
merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
inputs = tok("What is 3 plus 4?\\n", return_tensors="pt", add_special_tokens=False)
out = {}
with torch.no_grad():
    for name, model in (("adapter", adapter), ("merged", merged)):
        ids = model.generate(**inputs, max_new_tokens=8, min_new_tokens=2, do_sample=False, pad_token_id=tok.pad_token_id)
        out[name] = ids.shape[1] - inputs["input_ids"].shape[1]
    out["max_logit_diff"] = (adapter(**inputs).logits - merged(**inputs).logits).abs().max().item()
out["studio_modules"] = sorted(m for m in sys.modules if m.split(".")[0] == "finetune")
print(json.dumps(out))
"""


def unzip(content: bytes, dest: Path) -> list[str]:
    with zipfile.ZipFile(io.BytesIO(content)) as zf:
        zf.extractall(dest)
        return zf.namelist()


@pytest.mark.slow
def test_artifacts_and_merged_zips_load_offline_in_a_fresh_process(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, tmp_path: Path
):
    from finetune.tinymodel import build_tiny_model

    settings, job_id = trained_lora(tmp_path_factory, tiny_model_dir)
    with TestClient(create_app(settings, with_ui=False)) as client:
        art = client.get(f"/api/jobs/{job_id}/artifacts")
        assert art.status_code == 200
        names = unzip(art.content, tmp_path / "adapter")
        assert {"README.md", "studio_config.json", "adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= set(names)
        card = (tmp_path / "adapter" / "README.md").read_text()
        assert front_matter(card)["library_name"] == "peft" and "demo_qa.csv" in card and "python -m finetune.tinymodel" in card

        merge = f"/api/jobs/{job_id}/merge"
        assert client.get(merge).json()["status"] == "not_started"
        assert client.get(f"/api/jobs/{job_id}/merged").status_code == 409
        started = client.post(merge)
        assert started.status_code == 202 and started.json()["status"] == "queued"
        done = wait_task(client, merge)
        assert done["status"] == "completed" and done["error"] is None, done
        assert json.loads((settings.runs_dir / job_id / "merge.json").read_text())["status"] == "completed"
        merged = client.get(f"/api/jobs/{job_id}/merged")
        assert merged.status_code == 200 and merged.headers["content-type"] == "application/zip"
        names = unzip(merged.content, tmp_path / "merged")
        assert {"README.md", "studio_config.json", "config.json", "model.safetensors", "tokenizer.json"} <= set(names)
        assert "adapter_config.json" not in names
        assert front_matter((tmp_path / "merged" / "README.md").read_text())["library_name"] == "transformers"

    # The card's recipe for the base: rebuilding the bundled model gives the very same weights.
    base = build_tiny_model(tmp_path / "rebuilt-base")
    assert sha256(base / "model.safetensors") == sha256(tiny_model_dir / "model.safetensors")

    script = tmp_path / "load.py"
    script.write_text(FRESH_SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    # -I: isolated, so nothing from this repository is importable in the child.
    proc = subprocess.run(
        [sys.executable, "-I", str(script), str(tmp_path / "adapter"), str(tmp_path / "merged"), str(base)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["adapter"] >= 2 and out["merged"] >= 2
    assert out["max_logit_diff"] < 1e-3  # merging changed nothing but the file layout
    assert out["studio_modules"] == []
