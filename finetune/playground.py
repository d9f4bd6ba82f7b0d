"""Try a trained run: generate from its model and, side by side, from its base.

The prompt is formatted exactly as the run trained (``prep.format_prompt`` for
prompt/completion runs, the chat template for chat runs, raw text for text
runs), so what the playground shows is what the model learnt.

Loaded models are cached (LRU, at most ``MAX_LOADED`` at once: one tuned model
and its base). For a LoRA run the base answer comes from the same model with
the adapter disabled, so it costs no second copy. One lock serialises loading
and generating: two requests never load the same weights twice, and the
adapter switch is never seen half-way by another request.

Hazard: generation runs on server threads while training runs on the worker
thread. On CUDA, when a run is training, generation moves to the CPU (and
drops its GPU copies) so it never competes with training for GPU memory.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune import prep
from finetune.dataset_store import DatasetNotFound
from finetune.runs import Job
from finetune.service import Studio

log = logging.getLogger(__name__)

MAX_LOADED = 2
CHAT_END = "<|im_end|>"
CPU_NOTE = "A training run is using the GPU, so this was generated on the CPU (slower) to leave the GPU to training."


class PlaygroundError(RuntimeError):
    """The request cannot be served in the job's current state; the message is for the user."""


@dataclass
class GenerateOptions:
    prompt: str
    max_new_tokens: int = 64
    temperature: float = 0.7
    top_p: float = 0.95
    seed: int = 0
    compare_base: bool = True


def prompt_kind(job: Job, dataset_meta: dict[str, Any] | None) -> str:
    """'chat', 'text' or 'prompt_completion': how the run's examples were shaped."""
    cfg = job.config
    guess = (dataset_meta or {}).get("guess") or {}
    is_chat = guess.get("format") in ("chat", "sharegpt")
    if cfg.prompt_column:
        return "prompt_completion"
    if cfg.text_column:
        # A conversation column picked as the text column trains as chat (data.build_examples).
        return "chat" if is_chat and cfg.text_column == guess.get("text_column") else "text"
    if is_chat:
        return "chat"
    return "text" if guess.get("format") == "text" else "prompt_completion"


def format_for_generation(kind: str, prompt: str, tokenizer: Any) -> str:
    if kind == "chat":
        prep.ensure_chat_template(tokenizer)  # training used the same fallback
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    if kind == "text":
        return prompt
    return prep.format_prompt(prompt)


def choose_device(cuda_available: bool, training_running: bool) -> tuple[str, str | None]:
    """Where to generate, and a note for the user when it is not where they'd expect."""
    if not cuda_available:
        return "cpu", None
    if training_running:
        return "cpu", CPU_NOTE
    return "cuda", None


def stop_token_ids(tokenizer: Any, kind: str) -> list[int]:
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if kind == "chat":
        end = tokenizer.convert_tokens_to_ids(CHAT_END)
        if isinstance(end, int) and end != tokenizer.unk_token_id and end not in ids:
            ids.append(end)
    return ids


class Playground:
    """Per-studio model cache and generator."""

    def __init__(self, studio: Studio) -> None:
        self.studio = studio
        self._lock = threading.Lock()
        self._models: OrderedDict[tuple[str, ...], Any] = OrderedDict()
        self._watcher: threading.Thread | None = None

    def generate(self, job: Job, opts: GenerateOptions) -> dict[str, Any]:
        model_dir = job.run_dir / "model"
        if not (model_dir.is_dir() and any(model_dir.iterdir())):
            raise PlaygroundError(
                f"Job {job.job_id} has no saved model yet (status: {job.snapshot()['status']}). "
                "The playground works once a run completes or is cancelled."
            )
        try:
            meta = self.studio.datasets.get(job.config.dataset_id)
        except DatasetNotFound:
            meta = None
        notes: list[str] = []
        if meta is None:
            notes.append("The run's dataset is gone, so the prompt format was inferred from the config.")
        kind = prompt_kind(job, meta)

        import torch

        running = self.studio.runs.current()
        training = running is not None and running.snapshot().get("status") == "running"
        device, note = choose_device(torch.cuda.is_available(), training)
        if note:
            notes.append(note)

        with self._lock:
            if device == "cpu":
                self._drop_cuda()
            tokenizer = self._load(("tokenizer", str(model_dir)), lambda: self._load_tokenizer(model_dir))
            text = format_for_generation(kind, opts.prompt, tokenizer)
            inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False)
            tuned_model = self._tuned(job, device)
            budget = _budget(inputs["input_ids"].shape[1], opts.max_new_tokens, tuned_model)
            if budget < opts.max_new_tokens:
                notes.append(f"max_new_tokens was lowered to {budget} to fit the model's context length.")
            tuned = _run(tuned_model, tokenizer, inputs, kind, opts, budget, device)
            base = None
            if opts.compare_base:
                try:
                    base = self._base_answer(job, tuned_model, tokenizer, inputs, kind, opts, budget, device)
                except PlaygroundError as exc:
                    notes.append(f"No base answer: {exc}")
        if device == "cuda":
            self._watch_gpu()
        return {
            "job_id": job.job_id,
            "prompt_as_formatted": text,
            "kind": kind,
            "tuned": tuned,
            "base": base,
            "device": device,
            "note": " ".join(notes) or None,
        }

    # -- loading -----------------------------------------------------------
    def _load(self, key: tuple[str, ...], build: Any) -> Any:
        if key in self._models:
            self._models.move_to_end(key)
            return self._models[key]
        value = build()
        self._models[key] = value
        # Tokenizers are small; only models count against the bound.
        while sum(1 for k in self._models if k[0] != "tokenizer") > MAX_LOADED:
            oldest = next(k for k in self._models if k[0] != "tokenizer")
            self._models.pop(oldest)
        while len(self._models) > 2 * MAX_LOADED:
            self._models.popitem(last=False)
        gc.collect()
        return value

    def _drop_cuda(self) -> None:
        stale = [k for k in self._models if k[-1] == "cuda"]
        for key in stale:
            self._models.pop(key)
        if stale:
            import torch

            gc.collect()
            torch.cuda.empty_cache()

    def _load_tokenizer(self, model_dir: Path) -> Any:
        from finetune import modeling

        return modeling.load_tokenizer(str(model_dir), self.studio.settings)

    def _from_pretrained(self, path: str, device: str) -> Any:
        import torch
        from transformers import AutoModelForCausalLM

        dtype = torch.float32
        if device == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        try:
            model = AutoModelForCausalLM.from_pretrained(
                path, dtype=dtype, use_safetensors=True, trust_remote_code=self.studio.settings.trust_remote_code
            )
        except Exception as exc:  # noqa: BLE001 - any loader failure is about that model
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise PlaygroundError(f"Could not load the model '{path}': {first}") from exc
        return model.to(device).eval()

    def _base_path(self, job: Job) -> str:
        from finetune import modeling

        return modeling.resolve_model_path(job.config.base_model, self.studio.settings)

    def _tuned(self, job: Job, device: str) -> Any:
        model_dir = job.run_dir / "model"
        # The newest file time: a resumed run that saved again gets reloaded.
        stamp = str(max(p.stat().st_mtime_ns for p in model_dir.iterdir()))
        key = ("tuned", job.job_id, stamp, device)
        if job.config.method == "full":
            return self._load(key, lambda: self._from_pretrained(str(model_dir), device))

        def build() -> Any:
            from peft import PeftModel

            base = self._from_pretrained(self._base_path(job), device)
            return PeftModel.from_pretrained(base, str(model_dir)).eval()

        return self._load(key, build)

    def _base_answer(self, job: Job, tuned_model: Any, tokenizer: Any, inputs: Any, kind: str,
                     opts: GenerateOptions, budget: int, device: str) -> str:
        if job.config.method == "lora":
            # Same weights minus the adapter: the base model, with no second copy.
            with tuned_model.disable_adapter():
                return _run(tuned_model, tokenizer, inputs, kind, opts, budget, device)
        path = self._base_path(job)
        base = self._load(("base", path, device), lambda: self._from_pretrained(path, device))
        return _run(base, tokenizer, inputs, kind, opts, budget, device)

    def _watch_gpu(self) -> None:
        """Free the GPU copies as soon as a training run starts (polls every 2 s while any is loaded)."""
        with self._lock:
            if self._watcher is not None and self._watcher.is_alive():
                return

            def watch() -> None:
                while True:
                    time.sleep(2.0)
                    with self._lock:
                        if not any(k[-1] == "cuda" for k in self._models):
                            return
                        job = self.studio.runs.current()
                        if job is not None and job.snapshot().get("status") == "running":
                            log.info("a run is training: releasing the playground's GPU models")
                            self._drop_cuda()
                            return

            self._watcher = threading.Thread(target=watch, name="playground-gpu-watch", daemon=True)
            self._watcher.start()


def _budget(prompt_len: int, wanted: int, model: Any) -> int:
    """Lower max_new_tokens so prompt + answer fit the model's context."""
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if not isinstance(limit, int):
        return wanted
    budget = min(wanted, limit - prompt_len)
    if budget < 1:
        raise PlaygroundError(f"The prompt is {prompt_len} tokens; the model's context is {limit}. Shorten the prompt.")
    return budget


def _run(model: Any, tokenizer: Any, inputs: Any, kind: str, opts: GenerateOptions, budget: int, device: str) -> str:
    import torch

    kwargs: dict[str, Any] = {"max_new_tokens": budget, "eos_token_id": stop_token_ids(tokenizer, kind)}
    if opts.temperature > 0:
        kwargs.update(do_sample=True, temperature=opts.temperature, top_p=opts.top_p)
    else:
        kwargs.update(do_sample=False)
    batch = {k: v.to(device) for k, v in inputs.items()}
    # fork_rng: seeding must not reset the RNG a CPU training run on the worker
    # thread draws from (dropout); the global state is restored afterwards.
    devices = [torch.cuda.current_device()] if device == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(opts.seed)  # same seed, same answer
        out = model.generate(**batch, pad_token_id=tokenizer.pad_token_id, **kwargs)
    new = out[0, batch["input_ids"].shape[1]:]
    return tokenizer.decode(new, skip_special_tokens=True).strip()

