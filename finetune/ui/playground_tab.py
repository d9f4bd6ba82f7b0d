"""The Playground tab: ask a finished run and its base model the same prompt, side by side.

Also the run's reproduce commands (export.cli_commands), the LoRA merge
(export.start_merge, polled by a timer) and download links to the REST zips.
Generation goes through the same Playground (model cache) as
``POST /api/jobs/{id}/generate`` and the same request schema.
"""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr
from pydantic import ValidationError

from finetune import export
from finetune.api_models import GenerateRequest, playground_for
from finetune.dataset_store import DatasetNotFound
from finetune.errors import describe_validation_error
from finetune.playground import GenerateOptions, PlaygroundError
from finetune.service import Studio
from finetune.ui import render

log = logging.getLogger(__name__)

PRIVATE = {"api_visibility": "private"}
# show_job() returns: merge status, downloads, merge button, merge timer, yaml, cli, curl.
JOB_OUTPUTS = 7


def _field(name: str) -> Any:
    return GenerateRequest.model_fields[name]


class PlaygroundHandlers:
    def __init__(self, studio: Studio) -> None:
        self.studio = studio

    def _job(self, job_id: str | None):
        return self.studio.find_job(job_id)

    def refresh(self, selected: str | None, request: gr.Request):
        """Runs with a saved model (newest first), then the chosen run's details."""
        jobs = [j for j in self.studio.runs.list() if export.has_model(j)]
        choices = [(render.run_label(self.studio.job_summary(j)), j.job_id) for j in jobs]
        ids = [j.job_id for j in jobs]
        selected = selected if selected in ids else (ids[0] if ids else None)
        return gr.Dropdown(choices=choices, value=selected), *self.show_job(selected, request)

    def show_job(self, job_id: str | None, request: gr.Request):
        job = self._job(job_id)
        auth = self.studio.settings.api_token is not None
        if job is None:
            return (render.task_html("merge", None), render.downloads_html(None, False, False, auth),
                    gr.Button(interactive=False), gr.Timer(active=False), "", "", "")
        merge = export.read_task(job.run_dir, "merge")
        merging = bool(merge and merge.get("status") in export.ACTIVE_TASK)
        commands = export.cli_commands(job, _base_url(request), auth=auth)
        return (
            render.task_html("merge", merge) if job.config.method == "lora"
            else '<div class="ft-muted">A full fine-tune already has full weights: nothing to merge.</div>',
            render.downloads_html(job.job_id, export.has_model(job), export.merge_ready(job), auth),
            gr.Button(interactive=job.config.method == "lora" and not merging),
            gr.Timer(active=merging),
            commands["config_yaml"],
            commands["cli"],
            commands["curl"],
        )

    def generate(self, job_id: str | None, prompt: str, max_new_tokens: float, temperature: float, top_p: float, seed: float):
        """Returns the base answer, the tuned answer, and the info line (device, format, notes or the error)."""
        job = self._job(job_id)
        if job is None:
            return "", "", render.message_html("Choose a finished run first.")
        try:
            body = GenerateRequest(prompt=prompt or "", max_new_tokens=int(max_new_tokens or 0), temperature=float(temperature),
                                   top_p=float(top_p), seed=int(seed or 0))
        except ValidationError as exc:
            return "", "", render.message_html(describe_validation_error(exc))
        if not export.has_model(job):
            return "", "", render.message_html(f"Run {job.job_id} has no saved model yet.")
        try:
            result = playground_for(self.studio).generate(job, GenerateOptions(**body.model_dump()))
        except PlaygroundError as exc:
            return "", "", render.message_html(str(exc))
        except Exception as exc:  # noqa: BLE001 - a failed generation must not break the page
            log.exception("playground generation failed")
            return "", "", render.message_html(f"Generation failed: {type(exc).__name__}: {exc}")
        return result.get("base") or "", result.get("tuned") or "", render.playground_info_html(result)

    def merge(self, job_id: str | None, request: gr.Request):
        job = self._job(job_id)
        if job is None:
            return render.message_html("Choose a finished run first."), *(gr.skip(),) * JOB_OUTPUTS
        if job.config.method != "lora":
            return render.message_html("This run is a full fine-tune: its model already has full weights."), *(gr.skip(),) * JOB_OUTPUTS
        try:
            meta = self.studio.datasets.get(job.config.dataset_id)
        except DatasetNotFound:
            meta = None
        try:
            export.start_merge(job, self.studio.settings, meta)
        except export.TaskBusy as exc:
            return render.message_html(str(exc)), *self.show_job(job_id, request)
        return render.message_html(""), *self.show_job(job_id, request)


def _base_url(request: gr.Request | None) -> str:
    try:
        return str(request.base_url) if request is not None else "http://127.0.0.1:7860"
    except AttributeError:
        return "http://127.0.0.1:7860"


def build_playground_tab(h: PlaygroundHandlers, tab: gr.Tab) -> None:
    with gr.Row():
        run = gr.Dropdown(label="Finished run", choices=[], elem_id="pg-run", scale=4,
                          info="Runs that saved a model (completed or cancelled).")
        refresh = gr.Button("Refresh", size="sm", elem_id="pg-refresh", scale=0, min_width=100)
    prompt = gr.Textbox(label="Prompt", lines=3, elem_id="pg-prompt", info=_field("prompt").description,
                        placeholder="What is 2 plus 3?")
    with gr.Row():
        max_new = gr.Slider(1, 512, value=_field("max_new_tokens").default, step=1, label="Max new tokens",
                            info=_field("max_new_tokens").description, elem_id="pg-max-new")
        temperature = gr.Slider(0, 2, value=_field("temperature").default, step=0.05, label="Temperature",
                                info=_field("temperature").description, elem_id="pg-temperature")
        top_p = gr.Slider(0.05, 1, value=_field("top_p").default, step=0.05, label="Top-p", info=_field("top_p").description,
                          elem_id="pg-top-p")
        seed = gr.Number(value=_field("seed").default, precision=0, label="Seed", info=_field("seed").description,
                         elem_id="pg-seed", minimum=0)
    go = gr.Button("Generate", variant="primary", elem_id="pg-generate")
    info = gr.HTML(elem_id="pg-info")
    with gr.Row(equal_height=True):
        base = gr.Textbox(label="Base model (before fine-tuning)", lines=6, interactive=False, elem_id="pg-base", buttons=["copy"])
        tuned = gr.Textbox(label="Fine-tuned (this run)", lines=6, interactive=False, elem_id="pg-tuned", buttons=["copy"])

    gr.Markdown("### Model files")
    downloads = gr.HTML(elem_id="pg-downloads")
    with gr.Row():
        merge = gr.Button("Merge LoRA into the base model", size="sm", elem_id="pg-merge", interactive=False, scale=0, min_width=260)
        merge_status = gr.HTML(elem_id="pg-merge-status")
    msg = gr.HTML(elem_id="pg-msg")
    merge_timer = gr.Timer(1.0, active=False)
    with gr.Accordion("Reproduce this run", open=False, elem_id="pg-reproduce"):
        yaml_box = gr.Code(label="Config (YAML)", language="yaml", interactive=False, elem_id="pg-yaml",
                           show_line_numbers=False, lines=8, max_lines=24)
        cli = gr.Code(label="Command line (the YAML above saved as the file it names)", language="shell", interactive=False,
                      elem_id="pg-cli", wrap_lines=True, show_line_numbers=False, lines=1, max_lines=4)
        curl = gr.Code(label="REST (curl)", language="shell", interactive=False, elem_id="pg-curl", wrap_lines=True,
                       show_line_numbers=False, lines=2, max_lines=8)

    job_out = [merge_status, downloads, merge, merge_timer, yaml_box, cli, curl]
    assert len(job_out) == JOB_OUTPUTS
    for trigger in (refresh.click, tab.select):
        trigger(h.refresh, [run], [run, *job_out], show_progress="hidden", **PRIVATE)
    run.input(h.show_job, [run], job_out, **PRIVATE)
    go.click(h.generate, [run, prompt, max_new, temperature, top_p, seed], [base, tuned, info], **PRIVATE)
    prompt.submit(h.generate, [run, prompt, max_new, temperature, top_p, seed], [base, tuned, info], **PRIVATE)
    merge.click(h.merge, [run], [msg, *job_out], **PRIVATE)
    merge_timer.tick(h.show_job, [run], job_out, show_progress="hidden", **PRIVATE)
