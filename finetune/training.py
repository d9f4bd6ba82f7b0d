"""Build and run a Trainer for one run; report through events (training thread).

The boundary is narrow on purpose: ``run_training`` takes a config, a run
folder, the dataset file and a context with an event log and a stop flag. It
never touches the UI or the server, so the same function can later run in a
child process while the server keeps reading the same ``events.jsonl``.
"""

from __future__ import annotations

import gc
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune import data, modeling, prep
from finetune.config import TrainConfig
from finetune.events import EventLog
from finetune.settings import Settings

log = logging.getLogger(__name__)


class TrainingFailed(RuntimeError):
    """A run ended in error; the message is what the user sees."""


@dataclass
class RunContext:
    run_dir: Path
    events: EventLog
    should_stop: Callable[[], bool]
    # Called with live fields (step, max_steps, epoch, loss, ...) to update status.
    on_progress: Callable[[dict[str, Any]], None]
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunResult:
    cancelled: bool
    metrics: dict[str, Any]


def _make_callback(ctx: RunContext) -> Any:
    from transformers import TrainerCallback

    class StudioCallback(TrainerCallback):
        """Turns Trainer hooks into events. Runs on the training thread."""

        diverged_at: int | None = None

        def on_train_begin(self, args, state, control, **kwargs):
            ctx.on_progress({"step": 0, "max_steps": state.max_steps, "epoch": 0.0, "train_started_at": time.time()})

        def on_step_end(self, args, state, control, **kwargs):
            ctx.on_progress({"step": state.global_step, "max_steps": state.max_steps, "epoch": state.epoch})
            if ctx.should_stop():
                # Cooperative stop: the Trainer finishes this step, then saves.
                control.should_training_stop = True
                control.should_save = True

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = dict(logs or {})
            step = state.global_step
            if "loss" in logs:
                loss = float(logs["loss"])
                fields = {
                    "step": step,
                    "loss": loss,
                    "learning_rate": logs.get("learning_rate"),
                    "grad_norm": logs.get("grad_norm"),
                    "epoch": logs.get("epoch"),
                }
                lr = logs.get("learning_rate")
                ctx.events.append("METRIC", f"step {step} loss {loss:.4f} lr {lr if lr is None else f'{lr:.3g}'}", **fields)
                ctx.on_progress({"loss": loss, "learning_rate": logs.get("learning_rate")})
                if not math.isfinite(loss):
                    self.diverged_at = step
                    control.should_training_stop = True
            elif "eval_loss" in logs:
                eval_loss = float(logs["eval_loss"])
                ctx.events.append("METRIC", f"step {step} eval_loss {eval_loss:.4f}", step=step, eval_loss=eval_loss, epoch=logs.get("epoch"))
            elif "train_runtime" in logs:
                ctx.events.append(
                    "INFO",
                    f"training finished in {logs['train_runtime']:.1f}s "
                    f"({logs.get('train_samples_per_second', 0):.1f} samples/s)",
                    train_runtime=logs.get("train_runtime"),
                    train_samples_per_second=logs.get("train_samples_per_second"),
                    train_loss=logs.get("train_loss"),
                )

    return StudioCallback()


def run_training(
    config: TrainConfig,
    dataset_path: Path,
    dataset_filename: str,
    ctx: RunContext,
    settings: Settings,
    resume: bool = False,
) -> RunResult:
    """Train; return normally (completed or cancelled) or raise TrainingFailed."""
    import torch

    emit = ctx.events.append
    trainer = model = None
    plan = modeling.pick_device()
    try:
        torch.set_num_threads(settings.torch_threads)

        emit("INFO", "loading data")
        table = data.load_table(dataset_path, dataset_filename)
        for warning in table.warnings:
            emit("WARNING", warning)
        examples = data.build_examples(
            table,
            text_column=config.text_column,
            prompt_column=config.prompt_column,
            completion_column=config.completion_column,
        )
        n = len(examples.texts if examples.texts is not None else examples.prompts or [])
        if examples.dropped:
            emit("WARNING", f"dropped {examples.dropped} rows with empty or missing text")
        emit("INFO", f"{n} training examples")

        emit("INFO", f"loading model {config.base_model} on {plan.describe()}")
        path = modeling.resolve_model_path(config.base_model, settings)
        tokenizer = modeling.load_tokenizer(path, settings)
        model = modeling.load_model(path, config, plan, settings)
        trainable, total = modeling.count_parameters(model)
        emit("INFO", f"{config.method} model ready: {trainable:,} trainable of {total:,} parameters")

        emit("INFO", "tokenising")
        encoded = prep.tokenize_examples(examples, tokenizer, config.max_seq_length, config.completion_only_loss)
        if encoded["truncated"]:
            emit("WARNING", f"{encoded['truncated']} examples were longer than max_seq_length={config.max_seq_length} and were truncated")
        if encoded["dropped_all_masked"]:
            emit("WARNING", f"{encoded['dropped_all_masked']} examples had no completion tokens left after truncation and were skipped")
        if len(encoded["input_ids"]) == 0:
            raise TrainingFailed("No example has trainable tokens. Raise max_seq_length or shorten the prompts.")
        train_dataset = _to_dataset(encoded)

        trainer = _build_trainer(config, model, tokenizer, train_dataset, ctx, plan, settings)
        callback = next(cb for cb in trainer.callback_handler.callbacks if type(cb).__name__ == "StudioCallback")
        emit("INFO", f"training: {trainer.args.max_steps if trainer.args.max_steps > 0 else 'epochs'} on {plan.describe()}")
        checkpoint = resume and any((ctx.run_dir / "checkpoints").glob("checkpoint-*"))
        train_output = trainer.train(resume_from_checkpoint=True if checkpoint else None)

        if callback.diverged_at is not None:
            raise TrainingFailed(
                f"Training diverged at step {callback.diverged_at}: the loss became NaN or infinite. "
                "Lower learning_rate, or add warm-up steps."
            )
        cancelled = ctx.should_stop()
        emit("INFO", "saving")
        out = ctx.run_dir / "model"
        trainer.save_model(str(out))
        tokenizer.save_pretrained(str(out))
        metrics = {
            "train_loss": train_output.training_loss,
            "train_runtime": train_output.metrics.get("train_runtime"),
            "train_samples_per_second": train_output.metrics.get("train_samples_per_second"),
            "global_step": train_output.global_step,
            "device": plan.describe(),
            "trainable_parameters": trainable,
        }
        emit("INFO", "cancelled: model saved at the last step" if cancelled else "done")
        return RunResult(cancelled=cancelled, metrics=metrics)
    except TrainingFailed:
        raise
    except (modeling.ModelLoadError, data.DataError) as exc:
        raise TrainingFailed(str(exc)) from exc
    except torch.OutOfMemoryError as exc:
        raise TrainingFailed(
            "Out of memory. Lower per_device_train_batch_size or max_seq_length, use method 'lora', "
            "or raise gradient_accumulation_steps to keep the effective batch."
        ) from exc
    except Exception as exc:
        log.exception("run failed")
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise TrainingFailed(f"{type(exc).__name__}: {first}" if first else type(exc).__name__) from exc
    finally:
        # Free accelerator memory before the next queued run starts.
        del trainer, model
        gc.collect()
        if plan.device == "cuda":
            torch.cuda.empty_cache()


def _to_dataset(encoded: dict[str, Any]) -> Any:
    from datasets import Dataset

    return Dataset.from_dict({"input_ids": encoded["input_ids"], "labels": encoded["labels"]})


def _build_trainer(config, model, tokenizer, train_dataset, ctx, plan, settings):
    from transformers import DataCollatorForSeq2Seq, PrinterCallback, Trainer, TrainingArguments

    args = TrainingArguments(
        output_dir=str(ctx.run_dir / "checkpoints"),
        num_train_epochs=config.num_train_epochs,
        max_steps=config.max_steps,
        learning_rate=config.learning_rate,
        per_device_train_batch_size=config.per_device_train_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        warmup_steps=config.warmup_steps,
        lr_scheduler_type=config.lr_scheduler_type,
        weight_decay=config.weight_decay,
        logging_steps=config.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=2,
        seed=config.seed,
        bf16=plan.bf16,
        fp16=plan.fp16,
        use_cpu=plan.device == "cpu",
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
        remove_unused_columns=False,
    )
    # Pads input_ids with pad and labels with -100: right for causal LM too.
    collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=prep.IGNORE_INDEX)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=[_make_callback(ctx)],
    )
    # Events replace the console printer; keep the server log quiet.
    trainer.remove_callback(PrinterCallback)
    return trainer
