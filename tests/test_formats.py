"""Every common SFT format, as users export them: upload, preview as trained, train.

Upload tests are fast; the training test per format is marked slow (a few
real steps on the bundled model).
"""

from __future__ import annotations

import json

import pytest
from conftest import all_logs, wait_for
from fastapi.testclient import TestClient

from finetune import prep
from finetune.data import Examples
from finetune.tinymodel import ensure_tiny_model

ALPACA = json.dumps([
    {"instruction": f"Add {i} and {i + 1}.", "input": "" if i % 2 else "Show the sum.", "output": str(2 * i + 1)}
    for i in range(12)
]).encode()
OPENAI = "\n".join(json.dumps({"messages": [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": f"What is {i} times 2?"},
    {"role": "assistant", "content": f"{i * 2}"},
]}) for i in range(12)).encode()
SHAREGPT = json.dumps([{"conversations": [
    {"from": "human", "value": f"Echo {w}"}, {"from": "gpt", "value": w},
]} for w in ["red", "green", "blue", "cyan"] * 3]).encode()
PROMPT_COMPLETION_JSONL = "\n".join(
    json.dumps({"prompt": f"Capital of country {i}?", "completion": f"City {i}."}) for i in range(12)
).encode()
# A spreadsheet export: BOM, CRLF, semicolons, quoted newlines and doubled quotes.
SPREADSHEET = (
    "\ufeffquestion;answer\r\n"
    + "".join(f'"Line one {i}\nline ""two""";Answer {i}\r\n' for i in range(12))
).encode("utf-8")
TEXT = "\n".join(f"Sentence number {i} about cats." for i in range(12)).encode()
CP1252 = ("prompt,completion\n" + "".join(f"Café {i}?,Crème {i}.\n" for i in range(12))).encode("cp1252")

FORMATS = [
    # name, bytes, guessed format, rows, kind of examples
    ("alpaca.json", ALPACA, "alpaca", 12, "prompt_completion"),
    ("openai.jsonl", OPENAI, "chat", 12, "chat"),
    ("sharegpt.json", SHAREGPT, "sharegpt", 12, "chat"),
    ("pc.jsonl", PROMPT_COMPLETION_JSONL, "prompt_completion", 12, "prompt_completion"),
    ("EXPORT.CSV", SPREADSHEET, "prompt_completion", 12, "prompt_completion"),
    ("lines.txt", TEXT, "text", 12, "text"),
    ("legacy.csv", CP1252, "prompt_completion", 12, "prompt_completion"),
]


def upload(client: TestClient, name: str, content: bytes):
    return client.post("/api/datasets", files={"file": (name, content, "application/octet-stream")})


@pytest.mark.parametrize(("name", "content", "fmt", "rows", "kind"), FORMATS, ids=[f[0] for f in FORMATS])
def test_format_uploads_and_previews_as_trained(idle_client: TestClient, name, content, fmt, rows, kind):
    resp = upload(idle_client, name, content)
    assert resp.status_code == 201, resp.text
    meta = resp.json()
    assert meta["num_rows"] == rows
    assert meta["guess"]["format"] == fmt
    got = idle_client.get(f"/api/datasets/{meta['dataset_id']}").json()
    formatted = got["formatted"]
    assert formatted["kind"] == kind
    assert formatted["num_examples"] == rows
    first = formatted["examples"][0]
    trained = "".join(s["text"] for s in first if s["trained"])
    masked = "".join(s["text"] for s in first if not s["trained"])
    if kind == "text":
        assert masked == "" and "Sentence number 0" in trained
    else:
        # The prompt is shown but carries no loss; the answer does.
        assert masked and trained
    lengths = formatted["token_lengths"]
    assert 0 < lengths["min"] <= lengths["median"] <= lengths["max"]
    assert lengths["over_max_seq_length"] == 0
    if name == "legacy.csv":
        assert any("cp1252" in w for w in got["warnings"])


def test_alpaca_input_joins_the_prompt(idle_client: TestClient):
    did = upload(idle_client, "alpaca.json", ALPACA).json()["dataset_id"]
    first = idle_client.get(f"/api/datasets/{did}").json()["formatted"]["examples"][0]
    masked = "".join(s["text"] for s in first if not s["trained"])
    assert "Add 0 and 1." in masked and "Show the sum." in masked


def test_chat_preview_masks_everything_but_assistant_turns(idle_client: TestClient):
    did = upload(idle_client, "openai.jsonl", OPENAI).json()["dataset_id"]
    first = idle_client.get(f"/api/datasets/{did}").json()["formatted"]["examples"][0]
    trained = [s["text"] for s in first if s["trained"]]
    assert trained == ["0<|im_end|>\n"]
    masked = "".join(s["text"] for s in first if not s["trained"])
    assert "You answer briefly." in masked and "What is 0 times 2?" in masked


def test_truncation_is_counted_in_the_preview(idle_client: TestClient):
    did = upload(idle_client, "lines.txt", TEXT).json()["dataset_id"]
    got = idle_client.get(f"/api/datasets/{did}/preview", params={"max_seq_length": 8}).json()
    assert got["token_lengths"]["over_max_seq_length"] == 12
    assert got["token_lengths"]["max_seq_length"] == 8


def test_full_text_loss_option_trains_on_the_prompt_too(idle_client: TestClient):
    got = idle_client.get("/api/datasets/demo/preview", params={"completion_only_loss": "false"}).json()
    assert all(seg["trained"] for seg in got["examples"][0])


def test_chat_masking_labels(tmp_path):
    """Token level: system/user turns and headers are -100, the assistant reply is not."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ensure_tiny_model(tmp_path / "models"))
    conv = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Bye?"}, {"role": "assistant", "content": "Bye."}]
    ex = Examples(prompts=None, completions=None, texts=None, dropped=0, messages=[conv, conv])
    enc = prep.tokenize_examples(ex, tok, max_length=512)
    ids, labels = enc["input_ids"][0], enc["labels"][0]
    trained_text = tok.decode([i for i, lab in zip(ids, labels) if lab != prep.IGNORE_INDEX])
    masked_text = tok.decode([i for i, lab in zip(ids, labels) if lab == prep.IGNORE_INDEX])
    assert trained_text.replace("<|im_end|>", "").split() == ["Hello.", "Bye."]
    assert "Hi?" in masked_text and "Bye?" in masked_text and "user" in masked_text
    # Full-text mode: nothing masked.
    full = prep.tokenize_examples(ex, tok, max_length=512, completion_only=False)
    assert prep.IGNORE_INDEX not in full["labels"][0]


def test_template_less_tokenizer_gets_the_fallback(tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ensure_tiny_model(tmp_path / "models"))
    tok.chat_template = None
    assert prep.ensure_chat_template(tok) is True
    assert tok.chat_template == prep.FALLBACK_CHAT_TEMPLATE


REFUSALS = [
    ("roles.jsonl", b'{"messages": [{"role": "wizard", "content": "hi"}, {"role": "assistant", "content": "x"}]}\n' * 3,
     "role 'wizard' is not recognised"),
    ("one.csv", b"prompt,completion\nonly one,row\n", "at least 2"),
    ("nums.csv", b"a,b\n1,2\n3,4\n", "No column holds text"),
    ("empty.jsonl", b"", "empty"),
    ("header.csv", b"text\n", "header"),
    ("broken.jsonl", b'{"text": "a"}\n{"text": "b"}\n{"text": \n', "line 3"),
    ("noassistant.jsonl", b'{"messages": [{"role": "user", "content": "hi"}]}\n' * 3, "assistant"),
]


@pytest.mark.parametrize(("name", "content", "expected"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refusals_name_the_problem(idle_client: TestClient, settings, name, content, expected):
    before = sorted(p.name for p in settings.datasets_dir.iterdir())
    resp = upload(idle_client, name, content)
    assert resp.status_code == 422, resp.text
    assert expected.lower() in resp.json()["detail"].lower()
    assert sorted(p.name for p in settings.datasets_dir.iterdir()) == before  # nothing left behind


def test_empty_rows_are_dropped_with_a_counted_warning(idle_client: TestClient):
    content = b"prompt,completion\n" + b"".join(b"q%d,a%d\n" % (i, i) for i in range(6)) + b"q,\n,a\n"
    meta = upload(idle_client, "gaps.csv", content).json()
    assert meta["usable_rows"] == 6 and meta["dropped_rows"] == 2


@pytest.mark.slow
@pytest.mark.parametrize(("name", "content"), [(f[0], f[1]) for f in FORMATS if f[0] in ("alpaca.json", "openai.jsonl", "sharegpt.json", "lines.txt")])
def test_each_format_trains(client: TestClient, name, content):
    did = upload(client, name, content).json()["dataset_id"]
    job = client.post("/api/jobs", json={"dataset_id": did, "max_steps": 4, "logging_steps": 1,
                                         "per_device_train_batch_size": 4}).json()["job_id"]
    status = wait_for(client, job, "completed", timeout=180)
    assert status["step"] == 4
    losses = [e["loss"] for e in all_logs(client, job) if e["level"] == "METRIC" and "loss" in e]
    assert len(losses) >= 3 and all(v > 0 for v in losses)


@pytest.mark.slow
def test_eval_fraction_reports_eval_loss_and_best(client: TestClient):
    job = client.post("/api/jobs", json={"dataset_id": "demo", "max_steps": 10, "eval_fraction": 0.1,
                                         "eval_steps": 5, "logging_steps": 5}).json()["job_id"]
    wait_for(client, job, "completed", timeout=180)
    evals = [e for e in all_logs(client, job) if e["level"] == "METRIC" and "eval_loss" in e]
    assert [e["step"] for e in evals] == [5, 10]
    metrics = client.get(f"/api/jobs/{job}").json()["metrics"]
    assert metrics["eval_loss"] == pytest.approx(evals[-1]["eval_loss"])
    assert metrics["best_eval_loss"] == pytest.approx(min(e["eval_loss"] for e in evals))
    assert metrics["perplexity"] > 1
    assert client.get(f"/api/jobs/{job}/metrics").json()["eval_step"] == [5, 10]


@pytest.mark.slow
def test_packing_trains_and_says_so(client: TestClient):
    job = client.post("/api/jobs", json={"dataset_id": "demo", "max_steps": 5, "packing": True}).json()["job_id"]
    wait_for(client, job, "completed", timeout=180)
    assert any("packed 302 examples" in e["message"] for e in all_logs(client, job))
