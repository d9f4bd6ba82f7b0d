"""The Runs tab: history table, one run's charts/logs/config, an overlay of several runs, delete, resume.

Every action calls the Studio / RunManager method its REST route calls
(runs.list, job_summary, series, delete_job, runs.resume).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import gradio as gr

from finetune import charts
from finetune.export import config_yaml
from finetune.runs import FINISHED, JobNotFound, JobStateError, RunManager
from finetune.service import Studio
from finetune.ui import render
from finetune.ui.handlers import LOG_LINES

log = logging.getLogger(__name__)

PRIVATE = {"api_visibility": "private"}
RESUMABLE = ("cancelled", "interrupted", "failed")
# show_run() returns: status, loss plot, lr plot, logs, config, CSV download, delete button, resume button.
DETAIL_OUTPUTS = 8
# Shares of the table's width (render.RUN_COLUMNS order): long ids and model names wrap instead of pushing columns out.
RUN_COLUMN_WIDTHS = ["15%", "8%", "16%", "12%", "6%", "8%", "7%", "7%", "7%", "14%"]


class RunsHandlers:
    def __init__(self, studio: Studio) -> None:
        self.studio = studio
        self._csv_dir = Path(tempfile.mkdtemp(prefix="finetune-ui-csv-"))

    def _job(self, job_id: str | None):
        return self.studio.find_job(job_id)

    def refresh(self, selected: str | None, compare: list[str] | None, smoothing: float, log_y: bool):
        """The table, both run pickers, the selected run's details and the overlay."""
        summaries = [self.studio.job_summary(job) for job in self.studio.runs.list()]
        ids = [s["job_id"] for s in summaries]
        choices = [(render.run_label(s), s["job_id"]) for s in summaries]
        selected = selected if selected in ids else (ids[0] if ids else None)
        compare = [c for c in compare or [] if c in ids]
        return (
            gr.Dataframe(value=[render.run_row(s) for s in summaries] or None, headers=render.RUN_COLUMNS,
                         column_widths=RUN_COLUMN_WIDTHS),
            gr.Dropdown(choices=choices, value=selected),
            gr.Dropdown(choices=choices, value=compare),
            *self.show_run(selected, smoothing, log_y),
            self.overlay(compare, smoothing, log_y),
        )

    def pick_row(self, evt: gr.SelectData):
        row = evt.row_value or []
        return gr.Dropdown(value=row[0]) if row and row[0] else gr.skip()

    def show_run(self, job_id: str | None, smoothing: float, log_y: bool):
        job = self._job(job_id)
        if job is None:
            empty = charts.series_from_events([])
            return (
                render.status_html(RunManager.status_view(None)),
                charts.loss_figure(empty),
                charts.lr_figure(empty),
                render.logs_html([]),
                "",
                gr.DownloadButton(value=None, interactive=False),
                gr.Button(interactive=False),
                gr.Button(interactive=False),
            )
        series = self.studio.series(job)
        loss = charts.loss_figure(series, smoothing=smoothing, log_y=log_y)
        loss.update_layout(uirevision=f"runs-loss:{job.job_id}")
        lr = charts.lr_figure(series)
        lr.update_layout(uirevision=f"runs-lr:{job.job_id}")
        events = job.events.read(max(0, job.events.last_seq - LOG_LINES), LOG_LINES)
        csv_path = self._csv_dir / f"{job.job_id}-metrics.csv"
        csv_path.write_text(charts.metrics_csv(series), encoding="utf-8")
        status = job.snapshot()["status"]
        return (
            render.status_html(RunManager.status_view(job)),
            loss,
            lr,
            render.logs_html(events),
            config_yaml(job.config.model_dump(), comments=False),
            gr.DownloadButton(value=str(csv_path), interactive=True),
            gr.Button(interactive=status in FINISHED),
            gr.Button(interactive=status in RESUMABLE),
        )

    def overlay(self, compare: list[str] | None, smoothing: float, log_y: bool):
        named = {}
        for job_id in compare or []:
            job = self._job(job_id)
            if job is not None:
                named[job_id] = self.studio.series(job)
        return charts.overlay_figure(named, smoothing=smoothing, log_y=log_y)

    def delete(self, job_id: str | None, sure: bool, compare: list[str] | None, smoothing: float, log_y: bool):
        """Returns the message, the 'I am sure' box, then refresh()'s outputs."""
        unchanged = (gr.skip(),) * (4 + DETAIL_OUTPUTS)
        if not job_id:
            return render.message_html("Choose a run first."), gr.skip(), *unchanged
        if not sure:
            return render.message_html(f"Tick 'I am sure' to delete run {job_id} and all its files."), gr.skip(), *unchanged
        try:
            self.studio.delete_job(job_id)
        except JobNotFound:
            message = render.message_html(f"Run {job_id} no longer exists.")
        except JobStateError as exc:
            return render.message_html(str(exc)), gr.Checkbox(value=False), *unchanged
        else:
            message = render.message_html(f"Deleted run {job_id} and its files.", "ok")
            (self._csv_dir / f"{job_id}-metrics.csv").unlink(missing_ok=True)
        return message, gr.Checkbox(value=False), *self.refresh(None, compare, smoothing, log_y)

    def resume(self, job_id: str | None, compare: list[str] | None, smoothing: float, log_y: bool):
        """Returns the message, the monitor's timer (re-activated), then refresh()'s outputs."""
        unchanged = (gr.skip(),) * (4 + DETAIL_OUTPUTS)
        if not job_id:
            return render.message_html("Choose a run first."), gr.skip(), *unchanged
        try:
            job = self.studio.runs.resume(job_id)
        except JobNotFound:
            return render.message_html(f"Run {job_id} no longer exists."), gr.skip(), *unchanged
        except JobStateError as exc:
            return render.message_html(str(exc)), gr.skip(), *unchanged
        return (
            render.message_html(f"Resumed run {job.job_id}: it is {job.snapshot()['status']}. Follow it on the Train tab.", "ok"),
            gr.Timer(active=True),
            *self.refresh(job_id, compare, smoothing, log_y),
        )


def build_runs_tab(h: RunsHandlers, tab: gr.Tab, monitor_timer: gr.Timer) -> None:
    with gr.Row():
        gr.Markdown("### Run history")
        refresh = gr.Button("Refresh", size="sm", elem_id="runs-refresh", scale=0, min_width=100)
    table = gr.Dataframe(headers=render.RUN_COLUMNS, interactive=False, wrap=True, max_height=320, elem_id="runs-table",
                         label="Runs (newest first; click a row to open it)", column_widths=RUN_COLUMN_WIDTHS)
    with gr.Row():
        selected = gr.Dropdown(label="Run", choices=[], elem_id="runs-select", scale=3)
        smoothing = gr.Slider(0, 0.99, value=0.6, step=0.01, label="Smoothing (EMA)", elem_id="runs-smoothing", scale=2)
        log_y = gr.Checkbox(value=False, label="Log scale (loss)", elem_id="runs-log-y", scale=1)
    status = gr.HTML(elem_id="runs-status")
    with gr.Row():
        csv = gr.DownloadButton("Download metrics CSV", size="sm", elem_id="runs-csv", interactive=False)
        resume = gr.Button("Resume", size="sm", elem_id="runs-resume", interactive=False)
        sure = gr.Checkbox(value=False, label="I am sure", elem_id="runs-sure", scale=0, min_width=120)
        delete = gr.Button("Delete run", size="sm", variant="stop", elem_id="runs-delete", interactive=False)
    msg = gr.HTML(elem_id="runs-msg")
    with gr.Row(equal_height=False):
        loss_plot = gr.Plot(label="Loss", elem_id="runs-loss-plot", min_width=400)
        lr_plot = gr.Plot(label="Learning rate", elem_id="runs-lr-plot", min_width=400)
    with gr.Row(equal_height=False):
        logs = gr.HTML(label="Last log lines", show_label=True, container=True, elem_id="runs-logs")
        config = gr.Code(label="Config used", language="yaml", interactive=False, elem_id="runs-config", max_lines=30,
                         show_line_numbers=False)
    gr.Markdown("### Compare runs")
    compare = gr.Dropdown(label="Runs to overlay", choices=[], multiselect=True, elem_id="runs-compare")
    overlay = gr.Plot(label="Training loss of the selected runs", elem_id="runs-overlay")

    detail_out = [status, loss_plot, lr_plot, logs, config, csv, delete, resume]
    assert len(detail_out) == DETAIL_OUTPUTS
    refresh_out = [table, selected, compare, *detail_out, overlay]
    view_in = [smoothing, log_y]

    for trigger in (refresh.click, tab.select):
        trigger(h.refresh, [selected, compare, *view_in], refresh_out, show_progress="hidden", **PRIVATE)
    table.select(h.pick_row, None, [selected], **PRIVATE).then(h.show_run, [selected, *view_in], detail_out, **PRIVATE)
    selected.input(h.show_run, [selected, *view_in], detail_out, **PRIVATE)
    for control in (smoothing.release, log_y.input):
        control(h.show_run, [selected, *view_in], detail_out, show_progress="hidden", **PRIVATE)
        control(h.overlay, [compare, *view_in], [overlay], show_progress="hidden", **PRIVATE)
    compare.input(h.overlay, [compare, *view_in], [overlay], show_progress="hidden", **PRIVATE)
    delete.click(h.delete, [selected, sure, compare, *view_in], [msg, sure, *refresh_out], **PRIVATE)
    resume.click(h.resume, [selected, compare, *view_in], [msg, monitor_timer, *refresh_out], **PRIVATE)
    selected.input(lambda: render.message_html(""), None, [msg], **PRIVATE)
