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


def _make_callback(ctx: RunContext, cuda: bool = False) -> Any:
    from transformers import TrainerCallback

    class StudioCallback(TrainerCallback):
        """Turns Trainer hooks into events. Runs on the training thread."""

        diverged_at: int | None = None
        best_eval: tuple[float, int] | None = None
        last_eval: tuple[float, int] | None = None

        token_count: Callable[[], int] = staticmethod(lambda: 0)
        _t0 = 0.0
        _step0 = 0
        _tokens0 = 0

        def on_train_begin(self, args, state, control, **kwargs):
            # A resumed run starts at its checkpoint's step: rates count from here.
            self._t0, self._step0, self._tokens0 = time.time(), state.global_step, self.token_count()
            ctx.on_progress({"step": state.global_step, "max_steps": state.max_steps, "epoch": state.epoch or 0.0,
                             "train_started_at": self._t0, "train_start_step": self._step0})

        def on_step_end(self, args, state, control, **kwargs):
            elapsed = max(time.time() - self._t0, 1e-9)
            steps = state.global_step - self._step0
            per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * max(1, args.world_size)
            fields = {
                "step": state.global_step, "max_steps": state.max_steps, "epoch": state.epoch,
                "samples_per_second": round(steps * per_step / elapsed, 2),
                "tokens_per_second": round((self.token_count() - self._tokens0) / elapsed, 1),
            }
            if cuda:
                import torch

                fields["gpu_memory_mb"] = round(torch.cuda.memory_allocated() / 2**20, 1)
            ctx.on_progress(fields)
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
                self.last_eval = (eval_loss, step)
                if math.isfinite(eval_loss) and (self.best_eval is None or eval_loss < self.best_eval[0]):
                    self.best_eval = (eval_loss, step)
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
    eval_dataset: tuple[Path, str] | None = None,
) -> RunResult:
    """Train; return normally (completed or cancelled) or raise TrainingFailed."""
    import torch

    emit = ctx.events.append
    trainer = model = None
    plan = modeling.pick_device()
    try:
        torch.set_num_threads(settings.torch_threads)

        emit("INFO", "loading data")
        examples = _load_examples(config, dataset_path, dataset_filename, emit, "training")
        eval_examples = None
        if eval_dataset is not None:
            eval_examples = _load_examples(config, eval_dataset[0], eval_dataset[1], emit, "evaluation")
        elif config.eval_fraction > 0:
            examples, eval_examples = prep.split_examples(examples, config.eval_fraction, config.seed)
            emit("INFO", f"held out {len(eval_examples)} examples for evaluation (eval_fraction={config.eval_fraction})")
        emit("INFO", f"{len(examples)} training examples")

        emit("INFO", f"loading model {config.base_model} on {plan.describe()}")
        path = modeling.resolve_model_path(config.base_model, settings)
        tokenizer = modeling.load_tokenizer(path, settings)
        # Seed before the model is built: LoRA draws its adapter weights here,
        # before the Trainer seeds, so without this the same seed gives other runs.
        from transformers import set_seed

        set_seed(config.seed)
        model = modeling.load_model(path, config, plan, settings)
        trainable, total = modeling.count_parameters(model)
        emit("INFO", f"{config.method} model ready: {trainable:,} trainable of {total:,} parameters")

        emit("INFO", "tokenising")
        if examples.messages is not None and prep.ensure_chat_template(tokenizer):
            emit("WARNING", "the model has no chat template; using the ChatML fallback template")
        encoded = prep.tokenize_examples(examples, tokenizer, config.max_seq_length, config.completion_only_loss)
        if encoded["truncated"]:
            emit("WARNING", f"{encoded['truncated']} examples were longer than max_seq_length={config.max_seq_length} and were truncated")
        if encoded["dropped_all_masked"]:
            emit("WARNING", f"{encoded['dropped_all_masked']} examples had no completion tokens left after truncation and were skipped")
        if len(encoded["input_ids"]) == 0:
            raise TrainingFailed("No example has trainable tokens. Raise max_seq_length or shorten the prompts.")
        train_dataset = _to_dataset(encoded)
        if config.packing:
            from trl import pack_dataset

            before = len(train_dataset)
            train_dataset = pack_dataset(train_dataset, config.max_seq_length, strategy="bfd")
            emit("INFO", f"packed {before} examples into {len(train_dataset)} rows of up to {config.max_seq_length} tokens")
        eval_ds = None
        if eval_examples is not None:
            eval_encoded = prep.tokenize_examples(eval_examples, tokenizer, config.max_seq_length, config.completion_only_loss)
            eval_ds = _to_dataset(eval_encoded) if eval_encoded["input_ids"] else None

        trainer = _build_trainer(config, model, tokenizer, train_dataset, eval_ds, ctx, plan)
        callback = next(cb for cb in trainer.callback_handler.callbacks if type(cb).__name__ == "StudioCallback")
        collator = trainer.data_collator
        callback.token_count = lambda: collator.tokens
        span = f"{config.max_steps} steps" if config.max_steps > 0 else f"{config.num_train_epochs:g} epochs"
        emit("INFO", f"training: {span} on {plan.describe()}")
        checkpoint = newest_checkpoint(ctx.run_dir) if resume else None
        if checkpoint is not None:
            emit("INFO", f"resuming from {checkpoint.name}")
        train_output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)

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
            "train_tokens": trainer.data_collator.tokens,
            "train_tokens_per_second": (trainer.data_collator.tokens / train_output.metrics["train_runtime"])
            if train_output.metrics.get("train_runtime") else None,
            "train_runtime": train_output.metrics.get("train_runtime"),
            "train_samples_per_second": train_output.metrics.get("train_samples_per_second"),
            "global_step": train_output.global_step,
            "device": plan.describe(),
            "trainable_parameters": trainable,
        }
        if eval_ds is not None:
            if callback.last_eval and callback.last_eval[1] == trainer.state.global_step:
                eval_loss = callback.last_eval[0]  # evaluated at this very step already
            else:
                eval_loss = trainer.evaluate().get("eval_loss")
            metrics["eval_loss"] = eval_loss
            metrics["perplexity"] = math.exp(eval_loss) if eval_loss is not None and eval_loss < 50 else None
            metrics["best_eval_loss"] = callback.best_eval[0] if callback.best_eval else eval_loss
            metrics["best_eval_step"] = callback.best_eval[1] if callback.best_eval else trainer.state.global_step
            metrics["best_model_checkpoint"] = trainer.state.best_model_checkpoint
        emit("INFO", "cancelled: model saved at the last step" if cancelled else "done")
        return RunResult(cancelled=cancelled, metrics=metrics)
    except TrainingFailed:
        raise
    except (modeling.ModelLoadError, data.DataError) as exc:
        _release_frames(exc)
        raise TrainingFailed(str(exc)) from exc
    except torch.OutOfMemoryError as exc:
        _release_frames(exc)
        raise TrainingFailed(
            "Out of memory. Lower per_device_train_batch_size or max_seq_length, use method 'lora', "
            "or raise gradient_accumulation_steps to keep the effective batch."
        ) from exc
    except Exception as exc:
        log.exception("run failed")
        _release_frames(exc)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise TrainingFailed(f"{type(exc).__name__}: {first}" if first else type(exc).__name__) from exc
    finally:
        # Free accelerator memory before the next queued run starts.
        del trainer, model
        gc.collect()
        if plan.device == "cuda":
            torch.cuda.empty_cache()


def newest_checkpoint(run_dir: Path) -> Path | None:
    """The highest-step checkpoint the Trainer finished writing, or None.

    The Trainer writes ``trainer_state.json`` last, so a folder without it was
    torn by a crash mid-save; transformers' own choice (the highest number)
    would resume from it and fail. Steps compare as numbers, not names:
    checkpoint-100 is newer than checkpoint-90.
    """
    found: list[tuple[int, Path]] = []
    for folder in (run_dir / "checkpoints").glob("checkpoint-*"):
        step = folder.name.removeprefix("checkpoint-")
        if step.isdigit() and (folder / "trainer_state.json").is_file():
            found.append((int(step), folder))
    return max(found)[1] if found else None


def _release_frames(exc: BaseException | None) -> None:
    """Drop the tracebacks of a failure and of the exceptions chained to it.

    Their frames (Trainer.train, the data loader, ...) hold the Trainer and the
    model, and the exception is still alive while the ``finally`` clean-up
    runs: without this, ``gc.collect()``/``empty_cache()`` free nothing and a
    GPU stays full after an out-of-memory error until the exception is gone
    (see the PyTorch FAQ on OOM recovery). The message is all the user sees.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc.__traceback__ = None
        exc = exc.__cause__ or exc.__context__


def _to_dataset(encoded: dict[str, Any]) -> Any:
    from datasets import Dataset

    return Dataset.from_dict({"input_ids": encoded["input_ids"], "labels": encoded["labels"]})


class _CountingCollator:
    """Pads a batch (trl's collator) and counts the real tokens fed, for tokens/s.

    Packed rows get per-row position_ids that restart at each example and no
    attention mask: transformers then builds a block-diagonal mask, so packed
    examples never attend to each other, and attention stays per row (cheap)
    instead of over one flattened batch. Runs on the training thread.
    """

    def __init__(self, pad_token_id: int, packed: bool) -> None:
        from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

        self.packed = packed
        self.inner = DataCollatorForLanguageModeling(pad_token_id=pad_token_id, return_position_ids=packed)
        self.tokens = 0

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        self.tokens += sum(len(f["input_ids"]) for f in features)
        batch = self.inner(features)
        if self.packed:
            batch.pop("attention_mask", None)
            # The first token of each packed example must not be predicted from the one before.
            batch["labels"][batch["position_ids"] == 0] = prep.IGNORE_INDEX
        return batch


def _build_trainer(config, model, tokenizer, train_dataset, eval_dataset, ctx, plan):
    from transformers import PrinterCallback, Trainer, TrainingArguments

    has_eval = eval_dataset is not None
    args = TrainingArguments(
        output_dir=str(ctx.run_dir / "checkpoints"),
        num_train_epochs=config.num_train_epochs,
        max_steps=config.max_steps,
        learning_rate=config.learning_rate,
        per_device_train_batch_size=config.per_device_train_batch_size,
        per_device_eval_batch_size=config.per_device_train_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        warmup_steps=config.warmup_steps,
        lr_scheduler_type=config.lr_scheduler_type,
        weight_decay=config.weight_decay,
        logging_steps=config.logging_steps,
        logging_first_step=True,
        # The default filter logs a NaN/inf step loss as the running average, so
        # the callback would never see a diverged loss and the run would
        # "complete" with NaN weights. Let it through: the callback stops the run.
        logging_nan_inf_filter=False,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=config.eval_steps if has_eval else None,
        # Recorded, not restored: the final weights are the last step's.
        metric_for_best_model="eval_loss" if has_eval else None,
        greater_is_better=False if has_eval else None,
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
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=_CountingCollator(pad_id, packed=config.packing),
        processing_class=tokenizer,
        callbacks=[_make_callback(ctx, cuda=plan.device == "cuda")],
    )
    # Events replace the console printer; keep the server log quiet.
    trainer.remove_callback(PrinterCallback)
    return trainer


def _load_examples(config: TrainConfig, path: Path, filename: str, emit: Callable[..., Any], what: str) -> data.Examples:
    table = data.load_table(path, filename)
    for warning in table.warnings:
        emit("WARNING", f"{what} data: {warning}")
    examples = data.build_examples(
        table,
        text_column=config.text_column,
        prompt_column=config.prompt_column,
        completion_column=config.completion_column,
    )
    if examples.dropped:
        emit("WARNING", f"{what} data: dropped {examples.dropped} rows with empty or missing text")
    return examples
