"""The Train tab: dataset, "as the model sees it", the training form and the live monitor.

Labels and help text come from the TrainConfig schema (field_help).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from finetune.config import SCHEDULERS, TrainConfig, field_help
from finetune.data import SUPPORTED_EXTENSIONS
from finetune.ui.handlers import MONITOR_OUTPUTS, SELECT_OUTPUTS, Handlers
from finetune.ui.zoom import ZOOM_KEEPER_JS

# Hyperparameters in the form, in the order handlers receive them (each is a TrainConfig field).
FORM_FIELDS = [
    "base_model", "method", "text_column", "prompt_column", "completion_column",
    "num_train_epochs", "max_steps", "learning_rate", "per_device_train_batch_size",
    "gradient_accumulation_steps", "max_seq_length", "warmup_steps", "lr_scheduler_type",
    "weight_decay", "logging_steps", "save_steps", "seed", "completion_only_loss", "packing",
    "eval_fraction", "eval_dataset_id", "eval_steps",
    "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules",
]
_INT_FIELDS = {"max_steps", "per_device_train_batch_size", "gradient_accumulation_steps", "max_seq_length",
               "logging_steps", "save_steps", "seed", "lora_r", "lora_alpha", "eval_steps"}
PRIVATE = {"api_visibility": "private"}


def _default(name: str) -> Any:
    return TrainConfig.model_fields[name].default


def _number(name: str, label: str) -> gr.Number:
    return gr.Number(
        value=_default(name), label=label, info=field_help(name),
        precision=0 if name in _INT_FIELDS else None, elem_id=f"cfg-{name}",
    )


def _check(name: str, label: str) -> gr.Checkbox:
    return gr.Checkbox(value=_default(name), label=label, info=field_help(name), elem_id=f"cfg-{name}")


@dataclass
class TrainTab:
    """The components other tabs and the page load need."""

    timer: gr.Timer
    smoothing: gr.Slider
    log_y: gr.Checkbox
    seen: gr.State
    monitor_out: list[Any]


def build_train_tab(h: Handlers, demo: gr.Blocks) -> TrainTab:
    f: dict[str, Any] = {}
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=320):
            gr.Markdown("### 1 · Dataset")
            upload = gr.File(
                label="Upload (" + ", ".join(SUPPORTED_EXTENSIONS) + ")", file_types=list(SUPPORTED_EXTENSIONS),
                type="filepath", elem_id="dataset-file", height=110,
            )
            with gr.Row():
                demo_btn = gr.Button("Use demo dataset", size="sm", elem_id="demo-btn")
            dataset = gr.Dropdown(label="Dataset", choices=[], elem_id="dataset-select", interactive=True)
            data_msg = gr.HTML(elem_id="dataset-msg")
            data_info = gr.HTML(elem_id="dataset-info")
            # max_chars: one long cell must not squeeze the other columns to a letter wide.
            preview = gr.Dataframe(label="Preview (first rows)", interactive=False, max_height=260, wrap=True, max_chars=120,
                                   elem_id="dataset-preview")
            with gr.Row():
                f["text_column"] = gr.Dropdown(label="Text column", info=field_help("text_column") + " For chat data, the conversation column.",
                                               choices=[], elem_id="cfg-text_column")
            with gr.Row():
                f["prompt_column"] = gr.Dropdown(label="Prompt column", info=field_help("prompt_column"), choices=[],
                                                 elem_id="cfg-prompt_column")
                f["completion_column"] = gr.Dropdown(label="Completion column", info=field_help("completion_column"), choices=[],
                                                     elem_id="cfg-completion_column")
            formatted = gr.HTML(elem_id="formatted-preview")
        with gr.Column(scale=1, min_width=320):
            gr.Markdown("### 2 · Model and method")
            f["base_model"] = gr.Textbox(value=_default("base_model"), label="Base model", info=field_help("base_model"),
                                         elem_id="cfg-base_model")
            f["method"] = gr.Radio(["lora", "full"], value=_default("method"), label="Method", info=field_help("method"),
                                   elem_id="cfg-method")
            with gr.Row():
                f["num_train_epochs"] = _number("num_train_epochs", "Epochs")
                f["max_steps"] = _number("max_steps", "Max steps")
            with gr.Row():
                f["learning_rate"] = _number("learning_rate", "Learning rate")
                f["per_device_train_batch_size"] = _number("per_device_train_batch_size", "Batch size")
            with gr.Accordion("More hyperparameters", open=False):
                with gr.Row():
                    f["gradient_accumulation_steps"] = _number("gradient_accumulation_steps", "Gradient accumulation")
                    f["max_seq_length"] = _number("max_seq_length", "Max sequence length")
                with gr.Row():
                    f["warmup_steps"] = _number("warmup_steps", "Warm-up")
                    f["lr_scheduler_type"] = gr.Dropdown(list(SCHEDULERS), value=_default("lr_scheduler_type"), label="LR schedule",
                                                         info=field_help("lr_scheduler_type"), elem_id="cfg-lr_scheduler_type")
                with gr.Row():
                    f["weight_decay"] = _number("weight_decay", "Weight decay")
                    f["logging_steps"] = _number("logging_steps", "Logging steps")
                with gr.Row():
                    f["save_steps"] = _number("save_steps", "Save steps")
                    f["seed"] = _number("seed", "Seed")
                with gr.Row():
                    f["completion_only_loss"] = _check("completion_only_loss", "Loss on completions only")
                    f["packing"] = _check("packing", "Packing")
            with gr.Accordion("Evaluation", open=False):
                with gr.Row():
                    f["eval_fraction"] = gr.Number(value=_default("eval_fraction"), label="Eval fraction", info=field_help("eval_fraction"),
                                                   minimum=0, maximum=0.5, step=0.05, elem_id="cfg-eval_fraction")
                    f["eval_steps"] = _number("eval_steps", "Eval every N steps")
                f["eval_dataset_id"] = gr.Dropdown(label="Eval dataset", info=field_help("eval_dataset_id"), choices=[("(none)", "")],
                                                   value="", elem_id="cfg-eval_dataset_id")
            with gr.Accordion("LoRA", open=False):
                with gr.Row():
                    f["lora_r"] = _number("lora_r", "Rank r")
                    f["lora_alpha"] = _number("lora_alpha", "Alpha")
                with gr.Row():
                    f["lora_dropout"] = _number("lora_dropout", "Dropout")
                    f["lora_target_modules"] = gr.Textbox(value=_default("lora_target_modules"), label="Target modules",
                                                          info=field_help("lora_target_modules"), elem_id="cfg-lora_target_modules")
            with gr.Row():
                start = gr.Button("Start training", variant="primary", elem_id="start-btn")
                stop = gr.Button("Stop", variant="stop", elem_id="stop-btn", interactive=False)
            run_msg = gr.HTML(elem_id="run-msg")

    gr.Markdown("### 3 · Monitor")
    status = gr.HTML(elem_id="run-status")
    with gr.Row():
        smoothing = gr.Slider(0, 0.99, value=0.6, step=0.01, label="Smoothing (EMA)", elem_id="smoothing")
        log_y = gr.Checkbox(value=False, label="Log scale (loss)", elem_id="log-y")
    with gr.Row(equal_height=False):
        # min_width: side by side on a wide screen, stacked on a phone.
        loss_plot = gr.Plot(label="Loss", elem_id="loss-plot", min_width=400)
        lr_plot = gr.Plot(label="Learning rate", elem_id="lr-plot", min_width=400)
    logs = gr.HTML(label="Logs", show_label=True, container=True, elem_id="run-logs")
    # No content: only its script, which keeps chart zoom across updates (see zoom.py).
    gr.HTML("", elem_id="ft-zoom-keeper", js_on_load=ZOOM_KEEPER_JS)
    seen = gr.State("")
    refill = gr.State(None)  # the active run's config on page load (its columns, once the dataset is shown)
    timer = gr.Timer(2.0, active=False)

    assert set(f) == set(FORM_FIELDS)
    form = [f[name] for name in FORM_FIELDS]
    monitor_out = [status, loss_plot, lr_plot, logs, seen, timer, start, stop]
    assert len(monitor_out) == MONITOR_OUTPUTS
    select_out = [data_info, preview, f["text_column"], f["prompt_column"], f["completion_column"]]
    assert len(select_out) == SELECT_OUTPUTS
    preview_in = [dataset, f["base_model"], f["text_column"], f["prompt_column"], f["completion_column"],
                  f["max_seq_length"], f["completion_only_loss"]]
    show_formatted = {"fn": h.formatted_preview, "inputs": preview_in, "outputs": [formatted], "show_progress": "hidden", **PRIVATE}

    upload.upload(h.upload, [upload], [dataset, f["eval_dataset_id"], data_msg, *select_out], **PRIVATE).then(**show_formatted)
    demo_btn.click(h.use_demo, None, [dataset, f["eval_dataset_id"], data_msg, *select_out], **PRIVATE).then(**show_formatted)
    # .input: a user's choice. Handlers that set the dataset chain select_dataset themselves.
    dataset.input(h.select_dataset, [dataset], select_out, **PRIVATE).then(**show_formatted)
    for column in (f["text_column"], f["prompt_column"], f["completion_column"], f["completion_only_loss"]):
        column.input(**show_formatted)
    # Enter then leaving the box fires both: always_last runs the newest once the
    # current one ends, instead of dropping or aborting one of them.
    for box in (f["max_seq_length"], f["base_model"]):
        box.submit(**show_formatted, trigger_mode="always_last")
        box.blur(**show_formatted, trigger_mode="always_last")

    start.click(h.start, [dataset, smoothing, log_y, seen, *form], [run_msg, *monitor_out], show_progress="minimal", **PRIVATE)
    stop.click(h.stop, None, [run_msg], **PRIVATE)
    # The tick is cheap and read-only: let every open tab run it at once.
    timer.tick(h.timer_tick, [smoothing, log_y, seen], [*monitor_out, run_msg], concurrency_limit=None,
               show_progress="hidden", **PRIVATE)
    smoothing.release(h.redraw, [smoothing, log_y, seen], monitor_out, show_progress="hidden", **PRIVATE)
    log_y.change(h.redraw, [smoothing, log_y, seen], monitor_out, show_progress="hidden", **PRIVATE)

    refill_out = [f[name] for name in h.refill_fields]
    # Page load: datasets, the active run's settings (a reload shows what is training), the monitor.
    load = demo.load(h.on_load, [smoothing, log_y], [dataset, f["eval_dataset_id"], refill, *refill_out, *monitor_out], **PRIVATE)
    load.then(h.select_dataset, [dataset, refill], select_out, **PRIVATE).then(**show_formatted)
    return TrainTab(timer=timer, smoothing=smoothing, log_y=log_y, seen=seen, monitor_out=monitor_out)

