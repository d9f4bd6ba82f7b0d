"""Playground: POST /api/jobs/{id}/generate answers with the tuned model and its base.

Fast tests cover prompt formatting, device choice and the 4xx paths; the slow
ones train one short real demo run (shared with test_export.py through
``trained_lora``) and compare the tuned and base answers over REST.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import link_tiny_model, wait_for
from fastapi.testclient import TestClient

from finetune.config import TrainConfig
from finetune.demo import demo_rows
from finetune.playground import (
    CPU_NOTE,
    MAX_LOADED,
    Playground,
    choose_device,
    format_for_generation,
    prompt_kind,
    stop_token_ids,
)
from finetune.runs import Job
from finetune.server import create_app
from finetune.settings import Settings

DEMO_STEPS = 60
_TRAINED: dict[str, tuple[Settings, str]] = {}


def trained_lora(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> tuple[Settings, str]:
    """A completed 60-step LoRA demo run, trained once per session; returns (settings, job_id)."""
    if "lora" not in _TRAINED:
        # One torch thread, as conftest's settings: faster on a busy 2-core box.
        settings = Settings(home=tmp_path_factory.mktemp("trained") / "home", torch_threads=1)
        link_tiny_model(settings.home, tiny_model_dir)
        with TestClient(create_app(settings, with_ui=False)) as client:
            resp = client.post("/api/jobs", json={"dataset_id": "demo", "max_steps": DEMO_STEPS, "logging_steps": 20, "save_steps": 1000})
            assert resp.status_code == 201, resp.text
            job_id = resp.json()["job_id"]
            wait_for(client, job_id, "completed", timeout=900, interval=0.5)
        _TRAINED["lora"] = (settings, job_id)
    return _TRAINED["lora"]


@pytest.fixture
def lora_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[tuple[TestClient, Settings, str]]:
    settings, job_id = trained_lora(tmp_path_factory, tiny_model_dir)
    with TestClient(create_app(settings, with_ui=False)) as client:
        yield client, settings, job_id


def demo_word_share(text: str) -> float:
    """Share of the words in ``text`` that occur in the demo completions (0 for no words)."""
    vocab = {w for row in demo_rows() for w in re.findall(r"[a-z]+", row["completion"].lower())}
    words = re.findall(r"[a-z]+", text.lower())
    return sum(w in vocab for w in words) / len(words) if words else 0.0


def fake_job(tmp_path: Path, **config: Any) -> Job:
    return Job("j1", tmp_path, TrainConfig(dataset_id="demo", **config), {"status": "completed"}, events=None)  # type: ignore[arg-type]


# ------------------------------------------------------------------ pure parts


def test_prompt_kind_follows_the_dataset_layout(tmp_path: Path):
    chat_meta = {"guess": {"format": "chat", "text_column": "messages"}}
    sharegpt_meta = {"guess": {"format": "sharegpt", "text_column": "conversations"}}
    pc_meta = {"guess": {"format": "prompt_completion", "prompt_column": "prompt", "completion_column": "completion"}}
    text_meta = {"guess": {"format": "text", "text_column": "text"}}
    assert prompt_kind(fake_job(tmp_path), chat_meta) == "chat"
    assert prompt_kind(fake_job(tmp_path), sharegpt_meta) == "chat"
    assert prompt_kind(fake_job(tmp_path, text_column="messages"), chat_meta) == "chat"
    assert prompt_kind(fake_job(tmp_path, text_column="other"), chat_meta) == "text"
    assert prompt_kind(fake_job(tmp_path), pc_meta) == "prompt_completion"
    assert prompt_kind(fake_job(tmp_path, prompt_column="q", completion_column="a"), text_meta) == "prompt_completion"
    assert prompt_kind(fake_job(tmp_path), text_meta) == "text"
    assert prompt_kind(fake_job(tmp_path), None) == "prompt_completion"  # dataset gone: the common case


def test_prompts_are_formatted_as_in_training(tiny_model_dir: Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    assert format_for_generation("prompt_completion", "What is 1 plus 1?", tok) == "What is 1 plus 1?\n"
    assert format_for_generation("text", "Once upon", tok) == "Once upon"
    chat = format_for_generation("chat", "Hello there", tok)
    assert chat == "<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n"
    # Chat answers stop at the end-of-turn marker as well as at eos.
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert stop_token_ids(tok, "chat") == [tok.eos_token_id, im_end]
    assert stop_token_ids(tok, "prompt_completion") == [tok.eos_token_id]


def test_model_cache_is_bounded_lru():
    playground = Playground(studio=None)  # type: ignore[arg-type]
    built: list[str] = []

    def load(*key: str) -> object:
        return playground._load(key, lambda: built.append(key[1]) or key[1])

    load("tokenizer", "a")
    load("tuned", "a", "cpu")
    load("base", "x", "cpu")
    load("tuned", "a", "cpu")  # cached: moves to the end
    load("tuned", "b", "cpu")  # evicts the least recently used model: base x
    models = [k for k in playground._models if k[0] != "tokenizer"]
    assert models == [("tuned", "a", "cpu"), ("tuned", "b", "cpu")]
    assert built == ["a", "a", "x", "b"]
    assert ("tokenizer", "a") in playground._models  # tokenizers do not count against MAX_LOADED
    assert len(models) == MAX_LOADED


def test_generation_moves_to_cpu_while_training_uses_cuda():
    assert choose_device(cuda_available=False, training_running=True) == ("cpu", None)
    assert choose_device(cuda_available=True, training_running=False) == ("cuda", None)
    assert choose_device(cuda_available=True, training_running=True) == ("cpu", CPU_NOTE)


# ------------------------------------------------------------------ REST errors (no training)


def test_generate_needs_a_saved_model_and_valid_options(idle_client: TestClient):
    job_id = idle_client.post("/api/jobs", json={"dataset_id": "demo", "max_steps": 5}).json()["job_id"]
    resp = idle_client.post(f"/api/jobs/{job_id}/generate", json={"prompt": "hi"})
    assert resp.status_code == 409
    assert "no saved model" in resp.json()["detail"] and "queued" in resp.json()["detail"]

    assert idle_client.post("/api/jobs/nope/generate", json={"prompt": "hi"}).status_code == 404
    for bad, field in (
        ({"prompt": ""}, "prompt"),
        ({"prompt": "hi", "max_new_tokens": 513}, "max_new_tokens"),
        ({"prompt": "hi", "temperature": 2.5}, "temperature"),
        ({"prompt": "hi", "top_p": 0}, "top_p"),
        ({"prompt": "hi", "seed": -1}, "seed"),
        ({"prompt": "hi", "temprature": 1}, "temprature"),
        ({}, "prompt"),
    ):
        resp = idle_client.post(f"/api/jobs/{job_id}/generate", json=bad)
        assert resp.status_code == 422, bad
        assert field in resp.json()["detail"], resp.json()


def test_chat_dataset_is_detected_from_its_metadata(idle_client: TestClient):
    rows = [
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}',
        '{"messages": [{"role": "user", "content": "bye"}, {"role": "assistant", "content": "ciao"}]}',
    ]
    meta = idle_client.post("/api/datasets", files={"file": ("chat.jsonl", io.BytesIO("\n".join(rows).encode()))}).json()
    job_id = idle_client.post("/api/jobs", json={"dataset_id": meta["dataset_id"], "max_steps": 5}).json()["job_id"]
    studio = idle_client.app.state.studio
    job = studio.runs.get(job_id)
    assert prompt_kind(job, studio.datasets.get(meta["dataset_id"])) == "chat"


# ------------------------------------------------------------------ real run


@pytest.mark.slow
def test_tuned_answers_like_the_training_data_and_base_does_not(lora_run):
    client, _, job_id = lora_run
    body = {"prompt": "What is 3 plus 4?", "temperature": 0, "max_new_tokens": 24}
    resp = client.post(f"/api/jobs/{job_id}/generate", json=body)
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert set(out) >= {"job_id", "prompt_as_formatted", "tuned", "base", "device", "note"}
    assert out["job_id"] == job_id and out["kind"] == "prompt_completion"
    assert out["prompt_as_formatted"] == "What is 3 plus 4?\n"
    assert out["device"] in ("cpu", "cuda")
    tuned, base = out["tuned"], out["base"]
    assert tuned and base and tuned != base
    # The tuned model speaks the demo's language ("3 plus 4 is 7."); the random base does not.
    assert re.search(r"\b(plus|is)\b", tuned), tuned
    assert demo_word_share(tuned) >= 0.5, tuned
    assert demo_word_share(tuned) > demo_word_share(base), (tuned, base)

    # Greedy is deterministic; sampling is reproducible by seed.
    assert client.post(f"/api/jobs/{job_id}/generate", json=body).json()["tuned"] == tuned
    sample = {"prompt": "What colour is the sky?", "temperature": 1.0, "seed": 7, "compare_base": False}
    first = client.post(f"/api/jobs/{job_id}/generate", json=sample).json()
    assert first["base"] is None and first["tuned"]
    assert client.post(f"/api/jobs/{job_id}/generate", json=sample).json()["tuned"] == first["tuned"]


@pytest.mark.slow
def test_long_prompts_and_token_budget(lora_run):
    client, _, job_id = lora_run
    too_long = client.post(f"/api/jobs/{job_id}/generate", json={"prompt": "plus " * 600, "compare_base": False})
    assert too_long.status_code == 409 and "Shorten the prompt" in too_long.json()["detail"]

    near = client.post(f"/api/jobs/{job_id}/generate", json={"prompt": "plus " * 480, "max_new_tokens": 512, "compare_base": False})
    assert near.status_code == 200, near.text
    assert "max_new_tokens was lowered" in near.json()["note"]


@pytest.mark.slow
def test_chat_full_finetune_uses_the_chat_template_and_a_separate_base(client: TestClient):
    rows = [
        f'{{"messages": [{{"role": "user", "content": "Say {w}"}}, {{"role": "assistant", "content": "{w}"}}]}}'
        for w in ("red", "green", "blue", "cat", "dog", "tree")
    ]
    meta = client.post("/api/datasets", files={"file": ("chat.jsonl", io.BytesIO("\n".join(rows).encode()))}).json()
    resp = client.post("/api/jobs", json={"dataset_id": meta["dataset_id"], "method": "full", "max_steps": 3, "learning_rate": 5e-4})
    job_id = resp.json()["job_id"]
    wait_for(client, job_id, "completed", timeout=300)

    out = client.post(f"/api/jobs/{job_id}/generate", json={"prompt": "Say red", "temperature": 0, "max_new_tokens": 8})
    assert out.status_code == 200, out.text
    body = out.json()
    assert body["kind"] == "chat"
    assert body["prompt_as_formatted"] == "<|im_start|>user\nSay red<|im_end|>\n<|im_start|>assistant\n"
    assert isinstance(body["tuned"], str) and isinstance(body["base"], str)
    assert "<|im_end|>" not in body["tuned"]  # a stop token, never shown
