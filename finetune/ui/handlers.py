"""UI event handlers: widgets in, Studio calls, rendered widgets out."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import gradio as gr
from pydantic import ValidationError

from finetune.charts import loss_figure, lr_figure
from finetune.config import TrainConfig
from finetune.data import DataError
from finetune.dataset_store import DEMO_DATASET_ID, DatasetNotFound, UploadTooLarge
from finetune.errors import describe_validation_error
from finetune.runs import ACTIVE, RunManager
from finetune.service import Studio
from finetune.ui import render

log = logging.getLogger(__name__)

LOG_LINES = 200  # the log view shows the latest lines only: bounded however long the run

# Form fields in the order the UI lists its inputs (see layout.FORM_FIELDS).
COLUMN_FIELDS = ("text_column", "prompt_column", "completion_column")
# tick() returns: status, loss plot, lr plot, logs, seen marker, timer, start button, stop button.
MONITOR_OUTPUTS = 8


class Handlers:
    def __init__(self, studio: Studio, form_fields: list[str]) -> None:
        self.studio = studio
        self.form_fields = form_fields

    # -- datasets ----------------------------------------------------------
    def dataset_choices(self) -> list[tuple[str, str]]:
        return [(f"{d.get('filename')} · {d.get('num_rows')} rows · {d['dataset_id']}", d["dataset_id"]) for d in self.studio.datasets.list()]

    def upload(self, filepath: str | None):
        if not filepath:
            return gr.skip(), render.message_html("")
        try:
            with open(filepath, "rb") as fh:
                meta = self.studio.add_dataset(fh, Path(filepath).name)
        except (DataError, UploadTooLarge) as exc:
            return gr.skip(), render.message_html(str(exc))
        return gr.Dropdown(choices=self.dataset_choices(), value=meta["dataset_id"]), render.message_html(
            f"Uploaded {meta['filename']}: {meta['num_rows']} rows.", "ok"
        )

    def use_demo(self):
        meta = self.studio.datasets.ensure_demo()
        return gr.Dropdown(choices=self.dataset_choices(), value=meta["dataset_id"]), render.message_html("")

    def select_dataset(self, dataset_id: str | None):
        try:
            meta = self.studio.datasets.get(dataset_id) if dataset_id else None
        except DatasetNotFound:
            meta = None
        if meta is None:
            empty = gr.Dropdown(choices=[], value=None)
            return render.dataset_html(None), gr.Dataframe(value=None), empty, empty, empty
        columns = meta.get("columns") or []
        guess = meta.get("guess") or {}
        preview = meta.get("preview") or []
        headers = columns or ["(empty)"]
        rows = [[r.get(c, "") for c in columns] for r in preview]
        choices = [("(none)", "")] + [(c, c) for c in meta.get("text_columns") or columns]
        is_pc = guess.get("format") in ("prompt_completion", "alpaca")
        return (
            render.dataset_html(meta),
            # Equal shares for a few columns; many columns keep their natural width and scroll.
            gr.Dataframe(value=rows, headers=headers,
                         column_widths=[f"{100 / len(headers):g}%"] * len(headers) if len(headers) <= 4 else None),
            gr.Dropdown(choices=choices, value="" if is_pc else (guess.get("text_column") or "")),
            gr.Dropdown(choices=choices, value=(guess.get("prompt_column") or "") if is_pc else ""),
            gr.Dropdown(choices=choices, value=(guess.get("completion_column") or "") if is_pc else ""),
        )

    # -- runs --------------------------------------------------------------
    def start(self, dataset_id: str | None, smoothing: float, log_y: bool, seen: str, *values: Any):
        """Start a run and redraw the monitor in the same reply (no second round trip).

        Returns the message, then the monitor outputs (see tick). A refused
        start leaves the monitor and its timer as they were: another tab's run
        may be the one being watched.
        """
        payload: dict[str, Any] = {"dataset_id": dataset_id or ""}
        for name, value in zip(self.form_fields, values, strict=True):
            if value is None or value == "":
                continue  # the schema default applies
            payload[name] = value
        unchanged = (gr.skip(),) * MONITOR_OUTPUTS
        try:
            config = TrainConfig.model_validate(payload)
            job = self.studio.start_job(config)
        except ValidationError as exc:
            return render.message_html(describe_validation_error(exc)), *unchanged
        except DatasetNotFound:
            return render.message_html("Choose a dataset first: upload a file or click 'Use demo dataset'."), *unchanged
        except DataError as exc:
            return render.message_html(str(exc)), *unchanged
        return render.message_html(f"Started job {job.job_id}.", "ok"), *self.tick(smoothing, log_y, seen, force=True)

    def stop(self):
        job = self.studio.runs.current()
        if job is None or job.record["status"] not in ACTIVE:
            return render.message_html("No run is active.", "ok")
        self.studio.runs.cancel(job.job_id)
        return render.message_html(f"Stop requested for job {job.job_id}: it stops and saves after the current step.", "ok")

    def tick(self, smoothing: float, log_y: bool, seen: str, force: bool = False):
        """Timer tick: status and logs always, charts only when events arrived."""
        job = self.studio.runs.current()
        view = RunManager.status_view(job)
        active = view["status"] in ACTIVE
        marker = f"{job.job_id}:{job.events.last_seq}" if job else ""
        if job is None:
            events: list[dict[str, Any]] = []
        else:
            events = job.events.read(max(0, job.events.last_seq - LOG_LINES), LOG_LINES)
        if force or marker != seen:
            series = self.studio.series(job) if job else None
            loss = loss_figure(series, smoothing=smoothing, log_y=log_y) if series else loss_figure(_empty_series())
            lr = lr_figure(series) if series else lr_figure(_empty_series())
            # A zoom belongs to one run: a new run starts unzoomed (see zoom.py).
            run = job.job_id if job else ""
            loss.update_layout(uirevision=f"loss:{run}")
            lr.update_layout(uirevision=f"lr:{run}")
        else:
            loss = lr = gr.skip()
        return (
            render.status_html(view),
            loss,
            lr,
            render.logs_html(events) if (force or marker != seen) else gr.skip(),
            marker,
            gr.Timer(active=active),
            gr.Button(interactive=not active),
            gr.Button(interactive=active),
        )

    def redraw(self, smoothing: float, log_y: bool, seen: str):
        return self.tick(smoothing, log_y, seen, force=True)

    def on_load(self, smoothing: float, log_y: bool):
        # The bundled demo is the default dataset: one click from a first run.
        choices = self.dataset_choices()
        ids = [c[1] for c in choices]
        default = DEMO_DATASET_ID if DEMO_DATASET_ID in ids else (ids[0] if ids else None)
        return (gr.Dropdown(choices=choices, value=default), *self.tick(smoothing, log_y, "", force=True))


def _empty_series():
    from finetune.charts import series_from_events

    return series_from_events([])
