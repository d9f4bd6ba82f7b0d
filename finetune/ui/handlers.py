"""Train-tab event handlers: widgets in, Studio calls, rendered widgets out."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import gradio as gr
from pydantic import ValidationError

from finetune.charts import loss_figure, lr_figure, series_from_events
from finetune.config import TrainConfig
from finetune.data import DataError
from finetune.dataset_store import DEMO_DATASET_ID, DatasetNotFound, UploadTooLarge
from finetune.errors import describe_validation_error
from finetune.runs import ACTIVE, RunManager
from finetune.service import Studio
from finetune.ui import render

log = logging.getLogger(__name__)

LOG_LINES = 200  # the log view shows the latest lines only: bounded however long the run

COLUMN_FIELDS = ("text_column", "prompt_column", "completion_column")
# tick() returns: status, loss plot, lr plot, logs, seen marker, timer, start button, stop button.
MONITOR_OUTPUTS = 8
# select_dataset() returns: info, raw preview, text, prompt and completion column dropdowns.
SELECT_OUTPUTS = 5


class Handlers:
    def __init__(self, studio: Studio, form_fields: list[str]) -> None:
        self.studio = studio
        self.form_fields = form_fields
        # Fields the page-load refill sets directly (the column dropdowns follow the dataset).
        self.refill_fields = [f for f in form_fields if f not in COLUMN_FIELDS]

    # -- datasets ----------------------------------------------------------
    def dataset_choices(self) -> list[tuple[str, str]]:
        return [(f"{d.get('filename')} · {d.get('num_rows')} rows · {d['dataset_id']}", d["dataset_id"]) for d in self.studio.datasets.list()]

    def eval_choices(self) -> list[tuple[str, str]]:
        return [("(none)", ""), *self.dataset_choices()]

    def upload(self, filepath: str | None):
        """Returns the dataset and eval dropdowns, the message, then select_dataset's outputs."""
        unchanged = (gr.skip(),) * (2 + SELECT_OUTPUTS)
        if not filepath:
            return gr.skip(), gr.skip(), render.message_html(""), *unchanged[2:]
        try:
            with open(filepath, "rb") as fh:
                meta = self.studio.add_dataset(fh, Path(filepath).name)
        except (DataError, UploadTooLarge) as exc:
            return gr.skip(), gr.skip(), render.message_html(str(exc)), *unchanged[2:]
        return (
            gr.Dropdown(choices=self.dataset_choices(), value=meta["dataset_id"]),
            gr.Dropdown(choices=self.eval_choices()),
            render.message_html(f"Uploaded {meta['filename']}: {meta['num_rows']} rows.", "ok"),
            *self.select_dataset(meta["dataset_id"]),
        )

    def use_demo(self):
        meta = self.studio.datasets.ensure_demo()
        return (
            gr.Dropdown(choices=self.dataset_choices(), value=meta["dataset_id"]),
            gr.Dropdown(choices=self.eval_choices()),
            render.message_html(""),
            *self.select_dataset(meta["dataset_id"]),
        )

    def select_dataset(self, dataset_id: str | None, columns_from: dict[str, Any] | None = None):
        """Dataset info, raw preview and the column choices (the guess, or ``columns_from``'s)."""
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
        names = list(meta.get("text_columns") or columns)
        if guess.get("format") in ("chat", "sharegpt") and guess.get("text_column") and guess["text_column"] not in names:
            # A conversation column is a list, not text, but training takes it as the text column (chat template).
            names.insert(0, guess["text_column"])
        choices = [("(none)", "")] + [(c, c) for c in names]
        if columns_from and columns_from.get("dataset_id") == dataset_id:
            values = [columns_from.get(f) or "" for f in COLUMN_FIELDS]
        else:
            is_pc = guess.get("format") in ("prompt_completion", "alpaca")
            values = ["" if is_pc else (guess.get("text_column") or ""),
                      (guess.get("prompt_column") or "") if is_pc else "",
                      (guess.get("completion_column") or "") if is_pc else ""]
        return (
            render.dataset_html(meta),
            # Equal shares for a few columns; many columns keep their natural width and scroll.
            gr.Dataframe(value=rows, headers=headers,
                         column_widths=[f"{100 / len(headers):g}%"] * len(headers) if len(headers) <= 4 else None),
            *(gr.Dropdown(choices=choices, value=v if v in names else "") for v in values),
        )

    def formatted_preview(self, dataset_id: str | None, base_model: str | None, text_column: str | None,
                          prompt_column: str | None, completion_column: str | None, max_seq_length: float | None,
                          completion_only: bool) -> str:
        """The first examples exactly as trained (Studio.formatted_preview), as HTML; errors as a message."""
        if not dataset_id:
            return render.formatted_html(None)
        from finetune.modeling import ModelLoadError

        limits = TrainConfig.model_fields["max_seq_length"]
        seq = int(max_seq_length) if max_seq_length else limits.default
        if not 8 <= seq <= 32768:
            return render.formatted_html(None, "max_seq_length must be between 8 and 32768.")
        try:
            out = self.studio.formatted_preview(
                dataset_id, (base_model or "").strip() or None, text_column or None, prompt_column or None,
                completion_column or None, seq, bool(completion_only),
            )
        except DatasetNotFound:
            return render.formatted_html(None, f"No dataset with id '{dataset_id}'.")
        except (DataError, ModelLoadError) as exc:
            return render.formatted_html(None, f"Cannot show the formatted examples: {exc}")
        except Exception as exc:  # noqa: BLE001 - a preview must never break the page
            log.exception("formatted preview failed")
            return render.formatted_html(None, f"Cannot show the formatted examples: {type(exc).__name__}: {exc}")
        return render.formatted_html(out)

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
        """Status and logs always, charts only when events arrived."""
        return self._tick(smoothing, log_y, seen, force)[0]

    def _tick(self, smoothing: float, log_y: bool, seen: str, force: bool = False) -> tuple[tuple[Any, ...], bool]:
        job = self.studio.runs.current()
        view = RunManager.status_view(job)
        active = view["status"] in ACTIVE
        marker = f"{job.job_id}:{job.events.last_seq}" if job else ""
        if job is None:
            events: list[dict[str, Any]] = []
        else:
            events = job.events.read(max(0, job.events.last_seq - LOG_LINES), LOG_LINES)
        if force or marker != seen:
            series = self.studio.series(job) if job else series_from_events([])
            loss = loss_figure(series, smoothing=smoothing, log_y=log_y)
            lr = lr_figure(series)
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
        ), active

    def timer_tick(self, smoothing: float, log_y: bool, seen: str):
        """The timer's tick: tick(), plus clearing the start/stop message once the run has ended."""
        out, active = self._tick(smoothing, log_y, seen)
        return *out, gr.skip() if active else render.message_html("")

    def redraw(self, smoothing: float, log_y: bool, seen: str):
        return self.tick(smoothing, log_y, seen, force=True)

    def on_load(self, smoothing: float, log_y: bool):
        """Datasets, the form refilled from an active run's config, and the monitor.

        Returns the dataset and eval dropdowns, the refill state (the active
        run's config, for select_dataset's columns), the refill fields, then
        the monitor outputs.
        """
        choices = self.dataset_choices()
        ids = [c[1] for c in choices]
        job = self.studio.runs.current()
        config = job.config.model_dump() if job is not None and job.snapshot()["status"] in ACTIVE else None
        if config and config["dataset_id"] in ids:
            default = config["dataset_id"]
            fields = [_form_value(config.get(name)) for name in self.refill_fields]
            eval_dd = gr.Dropdown(choices=self.eval_choices(), value=config.get("eval_dataset_id") or "")
        else:
            # The bundled demo is the default dataset: one click from a first run.
            config = None
            default = DEMO_DATASET_ID if DEMO_DATASET_ID in ids else (ids[0] if ids else None)
            fields = [gr.skip()] * len(self.refill_fields)
            eval_dd = gr.Dropdown(choices=self.eval_choices(), value="")
        return (gr.Dropdown(choices=choices, value=default), eval_dd, config, *fields,
                *self.tick(smoothing, log_y, "", force=True))


def _form_value(value: Any) -> Any:
    return "" if value is None else value
