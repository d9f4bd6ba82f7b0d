"""Everything that leaves a run folder: model card, zips, LoRA merge, reproduce commands.

- ``model_card``: a README.md written from the run's config, dataset summary and
  final metrics, with usage code (peft or transformers).
- ``zip_folder``: the artifacts / merged zips (stored, not deflated).
- ``start_merge``: merge a LoRA adapter into its base on a background thread,
  into ``runs/<id>/merged/``, with its status in ``runs/<id>/merge.json``.
- ``cli_commands``: the run's config as YAML, the equivalent CLI command and a
  curl command for ``POST /api/jobs``.

Background tasks (merge here, push in ``hub.py``) share ``start_task``: a
daemon thread plus a status file written atomically, so a reload or a second
client sees the same state, and a task that was running when the process died
reads as failed instead of running forever.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import tempfile
import textwrap
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from finetune.config import TrainConfig
from finetune.dataset_store import atomic_write_json
from finetune.runs import Job
from finetune.settings import Settings
from finetune.tinymodel import BUNDLED_MODEL_ID

log = logging.getLogger(__name__)

ACTIVE_TASK = ("queued", "running")


class TaskFailed(RuntimeError):
    """A background task failed; the message is what the user sees."""


class TaskBusy(RuntimeError):
    """The same task is already queued or running for this run."""


# -- background tasks with a status file ------------------------------------
_threads: dict[Path, threading.Thread] = {}
_threads_lock = threading.Lock()


def read_task(run_dir: Path, name: str) -> dict[str, Any] | None:
    """The task's status record, or None if it never ran."""
    path = run_dir / f"{name}.json"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"status": "failed", "error": f"The status file {path.name} is unreadable; start the task again."}
    if record.get("status") in ACTIVE_TASK:
        with _threads_lock:
            thread = _threads.get(path)
        if thread is None or not thread.is_alive():
            # No live thread in this process: it died with a previous server.
            record.update(status="failed", error="The server stopped before this task finished; start it again.")
    return record


def start_task(
    run_dir: Path, name: str, work: Callable[[], dict[str, Any]], fields: dict[str, Any], secrets: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Run ``work`` on a daemon thread, recording its progress in ``run_dir/<name>.json``.

    ``work`` returns extra fields for the completed record or raises
    TaskFailed with a user message. ``secrets`` are scrubbed from any error
    text before it is written (a token must never reach the disk).
    """
    path = run_dir / f"{name}.json"
    record: dict[str, Any] = {"status": "queued", "created_at": time.time(), "started_at": None, "finished_at": None, "error": None, **fields}

    def update(**changes: Any) -> None:
        record.update(changes)
        atomic_write_json(path, record)

    def body() -> None:
        update(status="running", started_at=time.time())
        try:
            result = work()
        except TaskFailed as exc:
            update(status="failed", error=_scrub(str(exc), secrets), finished_at=time.time())
        except BaseException as exc:  # noqa: BLE001 - a task thread must record every failure
            log.error("%s task for %s failed: %s", name, run_dir.name, _scrub(repr(exc), secrets))
            first = (str(exc).strip().splitlines() or [""])[0]
            update(status="failed", error=_scrub(f"{type(exc).__name__}: {first}", secrets), finished_at=time.time())
        else:
            update(status="completed", finished_at=time.time(), **result)

    with _threads_lock:
        running = _threads.get(path)
        if running is not None and running.is_alive():
            raise TaskBusy(f"A {name} of this run is already in progress; follow it with GET until it ends.")
        update()
        snapshot = dict(record)  # before the thread starts changing it
        thread = threading.Thread(target=body, name=f"finetune-{name}-{run_dir.name}", daemon=True)
        _threads[path] = thread
        thread.start()
    return snapshot


def _scrub(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


# -- model card --------------------------------------------------------------
def model_card(job: Job, dataset_meta: dict[str, Any] | None, merged: bool = False) -> str:
    """README.md for the adapter (LoRA), full weights, or merged weights of a run."""
    cfg, rec, meta = job.config, job.snapshot(), dataset_meta or {}
    name = meta.get("filename") or rec.get("dataset_filename") or cfg.dataset_id
    rows_count = meta.get("num_rows", "unknown")
    layout = (meta.get("guess") or {}).get("format") or "unknown"
    is_adapter = cfg.method == "lora" and not merged
    bundled = cfg.base_model == BUNDLED_MODEL_ID
    kind = "merged LoRA (full weights)" if merged else ("LoRA adapter" if is_adapter else "fully fine-tuned model")
    front = {
        "library_name": "peft" if is_adapter else "transformers",
        "pipeline_tag": "text-generation",
        "tags": ["finetune-studio", "lora" if cfg.method == "lora" else "full-finetune", *(["merged"] if merged else [])],
    }
    if not bundled and not Path(cfg.base_model).exists():
        front["base_model"] = cfg.base_model  # only Hub ids: a local path means nothing on the Hub
    rows = "\n".join(f"| `{k}` | `{v}` |" for k, v in cfg.model_dump().items())
    metrics = rec.get("metrics") or {}
    metric_rows = "\n".join(f"| {k} | {_fmt(v)} |" for k, v in metrics.items() if v is not None) or "| (none recorded) | |"
    parts = [
        "---\n" + yaml.safe_dump(front, sort_keys=False) + "---\n",
        f"# {job.job_id}: {kind} of `{cfg.base_model}`\n",
        f"Trained with the fine-tuning studio ({cfg.method}, status **{rec.get('status')}**, "
        f"{rec.get('step')} steps).\n",
        "## Dataset\n",
        f"- name: `{name}` (id `{cfg.dataset_id}`)\n- rows: {rows_count}\n- format: {meta.get('format', 'unknown')} file, {layout} layout\n",
        "## Prompt format\n",
        _prompt_format(layout, cfg),
        "## Final metrics\n",
        "| metric | value |\n| --- | --- |\n" + metric_rows + "\n",
        "## Training config\n",
        "The exact config is in `studio_config.json`; rerun it with `python -m finetune train studio_config.json`.\n",
        "| field | value |\n| --- | --- |\n" + rows + "\n",
        "## Usage\n",
        _usage(is_adapter, bundled, cfg.base_model, layout),
    ]
    return "\n".join(parts)


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _prompt_format(layout: str, cfg: TrainConfig) -> str:
    if layout in ("chat", "sharegpt"):
        return "Chat: apply the tokenizer's chat template with `add_generation_prompt=True`; replies end with `<|im_end|>` (ChatML) or eos.\n"
    if cfg.text_column or layout == "text":
        return "Plain text: the model continues raw text.\n"
    return "Prompt/completion: send the prompt followed by a newline (`prompt + \"\\n\"`); the answer ends with eos.\n"


def _usage(is_adapter: bool, bundled: bool, base_model: str, layout: str) -> str:
    if layout in ("chat", "sharegpt"):
        prompt = 'tok.apply_chat_template([{"role": "user", "content": "Hello!"}], tokenize=False, add_generation_prompt=True)'
    else:
        prompt = '"What is 3 plus 4?\\n"'
    gen = (
        f'inputs = tok({prompt}, return_tensors="pt", add_special_tokens=False)\n'
        "out = model.generate(**inputs, max_new_tokens=32, do_sample=False)\n"
        'print(tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))\n'
    )
    if not is_adapter:
        return (
            "Full weights: no base model needed.\n\n```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
            'model = AutoModelForCausalLM.from_pretrained("model_dir")\ntok = AutoTokenizer.from_pretrained("model_dir")\n' + gen + "```\n"
        )
    text = "A LoRA adapter: it loads on top of its base model.\n\n"
    if bundled:
        text += (
            f"The base is the studio's bundled `{BUNDLED_MODEL_ID}`, built offline and deterministically (same weights on "
            "every machine). Build it, then point the adapter at it (or edit `base_model_name_or_path` in "
            "`adapter_config.json`, which names the folder it was trained from):\n\n"
            "```bash\npython -m finetune.tinymodel ./tiny-llama\n```\n\n```python\n"
            "from peft import PeftModel\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
            'base = AutoModelForCausalLM.from_pretrained("./tiny-llama")\n'
        )
    else:
        text += "```python\nfrom peft import PeftModel\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
        text += f"base = AutoModelForCausalLM.from_pretrained({base_model!r})\n"
    return text + 'model = PeftModel.from_pretrained(base, "adapter_dir")\ntok = AutoTokenizer.from_pretrained("adapter_dir")\n' + gen + "```\n"


# -- zips --------------------------------------------------------------------
def zip_folder(src: Path, tmp_root: Path, extras: dict[str, str | bytes | Path] | None = None) -> str:
    """Zip ``src`` plus extra files (name -> text, bytes or a file); extras win over same-named files."""
    extras = extras or {}
    tmp_root.mkdir(parents=True, exist_ok=True)
    fd, path = tempfile.mkstemp(prefix="artifact-", suffix=".zip", dir=tmp_root)
    os.close(fd)
    # Stored, not deflated: safetensors barely compress and zipping is then I/O bound.
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for item in sorted(src.rglob("*")):
            name = item.relative_to(src).as_posix()
            if item.is_file() and name not in extras:
                zf.write(item, name)
        for name, content in extras.items():
            if isinstance(content, Path):
                zf.write(content, name)
            else:
                zf.writestr(name, content)
    return path


def has_model(job: Job) -> bool:
    model_dir = job.run_dir / "model"
    return model_dir.is_dir() and any(model_dir.iterdir())


# -- merge -------------------------------------------------------------------
def start_merge(job: Job, settings: Settings, dataset_meta: dict[str, Any] | None) -> dict[str, Any]:
    """Merge the run's LoRA adapter into its base on a background thread (CPU, never the GPU)."""
    return start_task(job.run_dir, "merge", lambda: _merge(job, settings, dataset_meta), {"job_id": job.job_id})


def _merge(job: Job, settings: Settings, dataset_meta: dict[str, Any] | None) -> dict[str, Any]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune import modeling

    model_dir = job.run_dir / "model"
    try:
        base_path = modeling.resolve_model_path(job.config.base_model, settings)
        # dtype="auto": keep the checkpoint's precision so a bf16 base is not doubled in size.
        base = AutoModelForCausalLM.from_pretrained(
            base_path, dtype="auto", use_safetensors=True, trust_remote_code=settings.trust_remote_code
        )
    except Exception as exc:  # noqa: BLE001 - any loader failure is about the base model
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise TaskFailed(f"Could not load the base model '{job.config.base_model}' to merge into: {first}") from exc
    merged = PeftModel.from_pretrained(base, str(model_dir)).merge_and_unload()
    tmp = Path(tempfile.mkdtemp(prefix=".merged-", dir=job.run_dir))
    try:
        merged.save_pretrained(tmp, safe_serialization=True)
        AutoTokenizer.from_pretrained(str(model_dir)).save_pretrained(tmp)
        shutil.copyfile(job.run_dir / "config.json", tmp / "studio_config.json")
        (tmp / "README.md").write_text(model_card(job, dataset_meta, merged=True), encoding="utf-8")
        target = job.run_dir / "merged"
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)  # readers never see a half-written folder
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    size = sum(p.stat().st_size for p in (job.run_dir / "merged").rglob("*") if p.is_file())
    return {"path": "merged", "size_bytes": size}


def merge_ready(job: Job) -> bool:
    record = read_task(job.run_dir, "merge")
    return bool(record and record.get("status") == "completed" and (job.run_dir / "merged").is_dir())


# -- reproduce ---------------------------------------------------------------
def config_yaml(values: dict[str, Any], comments: bool = True) -> str:
    """A TrainConfig as YAML, each field preceded by its description from the schema."""
    lines: list[str] = []
    for name, field in TrainConfig.model_fields.items():
        if name not in values:
            continue
        if comments and field.description:
            required = " (required)" if field.is_required() else ""
            for line in textwrap.wrap(field.description + required, 96):
                lines.append(f"# {line}")
        lines.append(yaml.safe_dump({name: values[name]}, sort_keys=False, allow_unicode=True, width=1000).rstrip())
    return "\n".join(lines) + "\n"


def cli_commands(job: Job, base_url: str = "http://127.0.0.1:7860", auth: bool = False) -> dict[str, Any]:
    """The run's config as YAML, the CLI command that reruns it, and the same as curl."""
    values = job.config.model_dump()
    filename = f"{job.job_id}.yaml"
    home = job.run_dir.parent.parent  # runs/<id> lives in FINETUNE_HOME/runs
    body = json.dumps(values, separators=(",", ":"))
    header = ' -H "Authorization: Bearer $FINETUNE_API_TOKEN"' if auth else ""
    return {
        "job_id": job.job_id,
        "filename": filename,
        "config_yaml": config_yaml(values),
        "cli": f"FINETUNE_HOME={shlex.quote(str(home))} python -m finetune train {shlex.quote(filename)}",
        "curl": f"curl -s -X POST {base_url.rstrip('/')}/api/jobs -H 'Content-Type: application/json'{header} -d {shlex.quote(body)}",
    }
