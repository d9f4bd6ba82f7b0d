"""Widget layout. Labels and help text come from the TrainConfig schema."""

from __future__ import annotations

import gradio as gr

from finetune.config import SCHEDULERS, TrainConfig, field_help
from finetune.data import SUPPORTED_EXTENSIONS
from finetune.service import Studio
from finetune.ui.handlers import MONITOR_OUTPUTS, Handlers
from finetune.ui.zoom import ZOOM_KEEPER_JS

CSS = """
.ft-status {padding: 8px 4px;}
.ft-status-top {display:flex; flex-wrap:wrap; gap:10px; align-items:center; margin-bottom:6px;}
.ft-badge {color:#fff; border-radius:10px; padding:1px 10px; font-weight:600; font-size:0.9em;}
.ft-job {font-family: ui-monospace, monospace; color:#555; word-break:break-all;}
.ft-bar {height:10px; background:#e5e7eb; border-radius:5px; overflow:hidden;}
.ft-bar-fill {height:100%; background:#2563eb; transition: width .5s;}
.ft-status[data-status=completed] .ft-bar-fill {background:#15803d;}
.ft-status[data-status=failed] .ft-bar-fill, .ft-status[data-status=interrupted] .ft-bar-fill {background:#b91c1c;}
.ft-status[data-status=cancelled] .ft-bar-fill {background:#9ca3af;}
.ft-stats {display:flex; flex-wrap:wrap; gap:4px 14px; margin-top:6px; font-size:0.92em;}
.ft-error, .ft-msg-error {color:#b91c1c; margin-top:6px; white-space:pre-wrap;}
.ft-msg-ok {color:#15803d;}
.ft-warn {color:#a16207;}
.ft-muted {color:#6b7280;}
/* Empty message boxes would leave a gap in the column: hide them until they say something. */
#dataset-msg:has(.html-container > div:empty), #run-msg:has(.html-container > div:empty) {display:none;}
#ft-zoom-keeper {display:none;}
/* The Soft theme draws "stop" like a plain button: make an active Stop read as one. */
#stop-btn:not(:disabled) {background:#fef2f2; color:#b91c1c; border-color:#fca5a5;}
#stop-btn:not(:disabled):hover {background:#fee2e2;}
/* Gradio floats each plot's label over its top-left corner: start the figure below it. */
#loss-plot [data-testid=plotly], #lr-plot [data-testid=plotly] {margin-top:30px;}
/* The log box: light text on dark. The id keeps these rules above Gradio's own text colours. */
#run-logs .ft-logs {margin-top:30px; min-height:60px; max-height:300px; overflow-y:auto; display:flex; flex-direction:column-reverse;
          font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size:12px; line-height:1.45;
          background:#0f172a; color:#e2e8f0; border-radius:6px; padding:8px 10px;}
#run-logs .ft-log, #run-logs .ft-text {color:#e2e8f0; white-space:pre-wrap; word-break:break-word; margin:0;}
#run-logs .ft-ts {color:#94a3b8;}
#run-logs .ft-lvl {font-weight:700; display:inline-block; min-width:4.5em;}
#run-logs .ft-lvl-info .ft-lvl {color:#93c5fd;}
#run-logs .ft-lvl-metric .ft-lvl {color:#86efac;}
#run-logs .ft-lvl-metric .ft-text {color:#cbd5e1;}
#run-logs .ft-lvl-warning .ft-lvl, #run-logs .ft-lvl-warning .ft-text {color:#fcd34d;}
#run-logs .ft-lvl-error .ft-lvl, #run-logs .ft-lvl-error .ft-text {color:#fca5a5;}
#run-logs .ft-log.ft-muted {color:#94a3b8;}
#run-logs .ft-lvl-info .ft-text {color:#cbd5e1;}
"""

# Hyperparameters shown in the form, in order (each is a TrainConfig field).
FORM_FIELDS = [
    "base_model", "method", "text_column", "prompt_column", "completion_column",
    "num_train_epochs", "max_steps", "learning_rate", "per_device_train_batch_size",
    "gradient_accumulation_steps", "max_seq_length", "warmup_steps", "lr_scheduler_type",
    "weight_decay", "logging_steps", "save_steps", "seed", "completion_only_loss",
    "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules",
]
_INT_FIELDS = {"max_steps", "per_device_train_batch_size", "gradient_accumulation_steps", "max_seq_length",
               "logging_steps", "save_steps", "seed", "lora_r", "lora_alpha"}


def _default(name: str):
    return TrainConfig.model_fields[name].default


def _number(name: str, label: str) -> gr.Number:
    return gr.Number(
        value=_default(name), label=label, info=field_help(name),
        precision=0 if name in _INT_FIELDS else None, elem_id=f"cfg-{name}",
    )


def build_ui(studio: Studio) -> gr.Blocks:
    h = Handlers(studio, FORM_FIELDS)
    with gr.Blocks(title="Fine-tuning studio") as demo:
        gr.Markdown("# Fine-tuning studio\nUpload a dataset, pick a model and method, press **Start**, watch it train.")
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
                    text_col = gr.Dropdown(label="Text column", info=field_help("text_column"), choices=[], elem_id="cfg-text_column")
                with gr.Row():
                    prompt_col = gr.Dropdown(label="Prompt column", info=field_help("prompt_column"), choices=[], elem_id="cfg-prompt_column")
                    completion_col = gr.Dropdown(label="Completion column", info=field_help("completion_column"), choices=[], elem_id="cfg-completion_column")
            with gr.Column(scale=1, min_width=320):
                gr.Markdown("### 2 · Model and method")
                base_model = gr.Textbox(value=_default("base_model"), label="Base model", info=field_help("base_model"), elem_id="cfg-base_model")
                method = gr.Radio(["lora", "full"], value=_default("method"), label="Method", info=field_help("method"), elem_id="cfg-method")
                with gr.Row():
                    epochs = _number("num_train_epochs", "Epochs")
                    max_steps = _number("max_steps", "Max steps")
                with gr.Row():
                    lr = _number("learning_rate", "Learning rate")
                    batch = _number("per_device_train_batch_size", "Batch size")
                with gr.Accordion("More hyperparameters", open=False):
                    with gr.Row():
                        accum = _number("gradient_accumulation_steps", "Gradient accumulation")
                        seq = _number("max_seq_length", "Max sequence length")
                    with gr.Row():
                        warmup = _number("warmup_steps", "Warm-up")
                        sched = gr.Dropdown(list(SCHEDULERS), value=_default("lr_scheduler_type"), label="LR schedule",
                                            info=field_help("lr_scheduler_type"), elem_id="cfg-lr_scheduler_type")
                    with gr.Row():
                        wd = _number("weight_decay", "Weight decay")
                        log_steps = _number("logging_steps", "Logging steps")
                    with gr.Row():
                        save_steps = _number("save_steps", "Save steps")
                        seed = _number("seed", "Seed")
                    completion_only = gr.Checkbox(value=_default("completion_only_loss"), label="Loss on completions only",
                                                  info=field_help("completion_only_loss"), elem_id="cfg-completion_only_loss")
                with gr.Accordion("LoRA", open=False):
                    with gr.Row():
                        lora_r = _number("lora_r", "Rank r")
                        lora_alpha = _number("lora_alpha", "Alpha")
                    with gr.Row():
                        lora_dropout = _number("lora_dropout", "Dropout")
                        lora_targets = gr.Textbox(value=_default("lora_target_modules"), label="Target modules",
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
        timer = gr.Timer(2.0, active=False)

        form = [base_model, method, text_col, prompt_col, completion_col, epochs, max_steps, lr, batch, accum, seq,
                warmup, sched, wd, log_steps, save_steps, seed, completion_only, lora_r, lora_alpha, lora_dropout, lora_targets]
        assert len(form) == len(FORM_FIELDS)
        monitor_out = [status, loss_plot, lr_plot, logs, seen, timer, start, stop]
        assert len(monitor_out) == MONITOR_OUTPUTS
        private = {"api_visibility": "private"}

        upload.upload(h.upload, [upload], [dataset, data_msg], **private)
        demo_btn.click(h.use_demo, None, [dataset, data_msg], **private)
        dataset.change(h.select_dataset, [dataset], [data_info, preview, text_col, prompt_col, completion_col], **private)
        start.click(h.start, [dataset, smoothing, log_y, seen, *form], [run_msg, *monitor_out],
                    show_progress="minimal", **private)
        stop.click(h.stop, None, [run_msg], **private)
        # The tick is cheap and read-only: let every open tab run it at once.
        timer.tick(h.tick, [smoothing, log_y, seen], monitor_out, concurrency_limit=None, show_progress="hidden", **private)
        smoothing.release(h.redraw, [smoothing, log_y, seen], monitor_out, show_progress="hidden", **private)
        log_y.change(h.redraw, [smoothing, log_y, seen], monitor_out, show_progress="hidden", **private)
        demo.load(h.on_load, [smoothing, log_y], [dataset, *monitor_out], **private)
    return demo
