"""Resolve, load and adapt the base model (runs on the training thread).

torch/transformers/peft are imported inside the functions so that importing
the studio (and starting the server) stays fast.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune.config import TrainConfig
from finetune.settings import Settings
from finetune.tinymodel import BUNDLED_MODEL_ID, ensure_tiny_model

log = logging.getLogger(__name__)


_IMPORT_LOCK = threading.Lock()


def import_training_stack() -> None:
    """Import torch/transformers/peft once, under a lock.

    The first import of transformers from two threads at once (a training run
    and a preview or playground request) can fail half-way through its lazy
    module set-up; serialising the first import avoids it. Cheap afterwards.
    """
    with _IMPORT_LOCK:
        import peft  # noqa: F401
        import torch  # noqa: F401
        import transformers  # noqa: F401
        from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer  # noqa: F401


class ModelLoadError(RuntimeError):
    """The base model could not be loaded; the message is for the user."""


@dataclass
class DevicePlan:
    device: str  # "cuda" | "cpu"
    bf16: bool
    fp16: bool

    def describe(self) -> str:
        if self.device == "cpu":
            return "CPU (float32)"
        return f"CUDA ({'bf16' if self.bf16 else 'fp16' if self.fp16 else 'float32'})"


def pick_device() -> DevicePlan:
    import_training_stack()
    import torch

    if torch.cuda.is_available():
        bf16 = torch.cuda.is_bf16_supported()
        return DevicePlan("cuda", bf16=bf16, fp16=not bf16)
    return DevicePlan("cpu", bf16=False, fp16=False)


def check_model_source(base_model: str, settings: Settings) -> None:
    """Refuse local folders outside the allowed roots (raises ModelLoadError).

    transformers treats any existing folder as a local model, so without this
    an API caller could make the server read arbitrary directories.
    """
    if base_model == BUNDLED_MODEL_ID:
        return
    path = Path(base_model).expanduser()
    looks_local = path.is_absolute() or base_model.startswith((".", "~")) or path.exists()
    if not looks_local:
        return  # a Hub id
    # abspath normalises "..", but keeps links: a link the operator put in an
    # allowed folder is the operator's choice.
    resolved = Path(os.path.abspath(path))
    if not any(resolved == root or root in resolved.parents for root in settings.allowed_model_roots):
        roots = ", ".join(str(r) for r in settings.allowed_model_roots)
        raise ModelLoadError(
            f"Local model folder '{base_model}' is outside the allowed model folders ({roots}). "
            "Move the model there, or have the operator add its folder to FINETUNE_MODEL_ROOTS."
        )


def resolve_model_path(base_model: str, settings: Settings) -> str:
    """Map the bundled id to its (built on first use) folder; check and pass others through."""
    if base_model == BUNDLED_MODEL_ID:
        return str(ensure_tiny_model(settings.models_dir))
    check_model_source(base_model, settings)
    return base_model


def load_tokenizer(path: str, settings: Settings) -> Any:
    import_training_stack()
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=settings.trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - any loader failure is the user's model choice
        raise ModelLoadError(_load_hint(path, exc)) from exc
    if tok.pad_token is None:
        # Causal LMs often ship without a pad token; padding positions are
        # masked by the attention mask and labels, so eos serves.
        tok.pad_token = tok.eos_token
    return tok


def load_model(path: str, config: TrainConfig, plan: DevicePlan, settings: Settings) -> Any:
    import_training_stack()
    import torch
    from transformers import AutoModelForCausalLM

    # LoRA freezes the base, so it can sit in bf16; full fine-tuning keeps
    # fp32 master weights and lets autocast do the mixed precision.
    dtype = torch.bfloat16 if (plan.bf16 and config.method == "lora") else torch.float32
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path,
            dtype=dtype,
            trust_remote_code=settings.trust_remote_code,
            use_safetensors=True,
        )
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(_load_hint(path, exc)) from exc
    if config.method == "lora":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=config.target_modules(),
            task_type="CAUSAL_LM",
        )
        try:
            model = get_peft_model(model, lora)
        except ValueError as exc:
            raise ModelLoadError(
                f"LoRA could not be applied: {exc}. Check lora_target_modules "
                "(use 'all-linear' or module names that exist in this model)."
            ) from exc
    return model


def count_parameters(model: Any) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


def _load_hint(path: str, exc: Exception) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if Path(path).exists():
        return f"Could not load the model in folder '{path}': {first}"
    return (
        f"Could not load base model '{path}': {first}. It is not a local folder, so it must be "
        "a Hugging Face Hub id reachable from this machine (and safetensors weights). "
        f"Offline, use the bundled model '{BUNDLED_MODEL_ID}' or a local model folder."
    )
