"""Pure HTML rendering for the UI. Every untrusted string goes through escape().

gr.HTML is not sanitised, so file names, dataset cells and log lines must be
escaped here, the one place that turns data into markup.
"""

from __future__ import annotations

import time
from html import escape
from typing import Any

_STATUS_COLOURS = {
    "idle": "#6b7280", "queued": "#a16207", "running": "#2563eb", "completed": "#15803d",
    "failed": "#b91c1c", "cancelled": "#6b7280", "interrupted": "#c2410c",
}


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def fmt_number(value: Any, spec: str = ".4g") -> str:
    if value is None:
        return "–"
    try:
        return format(float(value), spec)
    except (TypeError, ValueError):
        return escape(str(value))


def status_html(view: dict[str, Any]) -> str:
    status = str(view.get("status") or "idle")
    colour = _STATUS_COLOURS.get(status, "#6b7280")
    pct = float(view.get("progress") or 0.0) * 100
    step, max_steps = view.get("step") or 0, view.get("max_steps")
    job = escape(str(view.get("job_id") or "no run yet"))
    steps = f"{step} / {max_steps}" if max_steps else f"{step}"
    error = view.get("error")
    error_html = f'<div class="ft-error">{escape(str(error))}</div>' if error else ""
    return (
        f'<div class="ft-status" data-status="{escape(status)}">'
        f'<div class="ft-status-top"><span class="ft-badge" style="background:{colour}">{escape(status)}</span>'
        f'<span class="ft-job">{job}</span></div>'
        f'<div class="ft-bar"><div class="ft-bar-fill" style="width:{pct:.1f}%"></div></div>'
        f'<div class="ft-stats">'
        f'<span>step <b id="ft-steps">{escape(steps)}</b></span>'
        f'<span><b>{pct:.1f}%</b></span>'
        f'<span>ETA <b>{fmt_duration(view.get("eta_seconds"))}</b></span>'
        f'<span>elapsed <b>{fmt_duration(view.get("elapsed_seconds"))}</b></span>'
        f'<span>loss <b>{fmt_number(view.get("loss"))}</b></span>'
        f'<span>lr <b>{fmt_number(view.get("learning_rate"), ".2e")}</b></span>'
        f"{_throughput_html(view)}</div>{error_html}</div>"
    )


def _rate(value: Any) -> str:
    try:
        return fmt_number(value, ",.0f" if abs(float(value)) >= 100 else ".3g")
    except (TypeError, ValueError):
        return fmt_number(value)


def _throughput_html(view: dict[str, Any]) -> str:
    """Live speed and memory, shown only once the run reports them."""
    parts = []
    if view.get("samples_per_second") is not None:
        parts.append(f'<span><b>{_rate(view["samples_per_second"])}</b> samples/s</span>')
    if view.get("tokens_per_second") is not None:
        parts.append(f'<span><b>{_rate(view["tokens_per_second"])}</b> tokens/s</span>')
    if view.get("gpu_memory_mb") is not None:
        parts.append(f'<span>GPU memory <b>{fmt_number(view["gpu_memory_mb"], ",.0f")} MB</b></span>')
    return "".join(parts)


def logs_html(events: list[dict[str, Any]]) -> str:
    if not events:
        return '<div class="ft-logs"><div class="ft-log ft-muted">No log lines yet.</div></div>'
    lines = []
    for ev in events:
        level = str(ev.get("level", "INFO"))
        stamp = time.strftime("%H:%M:%S", time.localtime(float(ev.get("time") or 0)))
        # ft-lvl-<level>, not ft-<level>: "ft-error" is the status box's error style.
        lines.append(
            f'<div class="ft-log ft-lvl-{escape(level.lower())}"><span class="ft-ts">{stamp}</span> '
            f'<span class="ft-lvl">{escape(level)}</span> <span class="ft-text">{escape(str(ev.get("message", "")))}</span></div>'
        )
    # column-reverse keeps the newest line in view without any script.
    return '<div class="ft-logs"><div class="ft-logs-inner">' + "".join(lines) + "</div></div>"


def dataset_html(meta: dict[str, Any] | None) -> str:
    if not meta:
        return '<div class="ft-muted">No dataset selected. Upload a file or use the demo dataset.</div>'
    guess = meta.get("guess") or {}
    warnings = "".join(f'<div class="ft-warn">{escape(str(w))}</div>' for w in meta.get("warnings") or [])
    cols = ", ".join(escape(str(c)) for c in meta.get("columns") or [])
    return (
        f'<div class="ft-dataset"><b>{escape(str(meta.get("filename", "")))}</b> '
        f'<span class="ft-muted">({escape(str(meta.get("dataset_id", "")))})</span><br>'
        f'{int(meta.get("num_rows") or 0):,} rows · format {escape(str(meta.get("format", "?")))} · '
        f'looks like <b>{escape(str(guess.get("format", "?")))}</b><br>'
        f'<span class="ft-muted">columns: {cols}</span>{warnings}</div>'
    )


def message_html(text: str, kind: str = "error") -> str:
    if not text:
        return ""
    return f'<div class="ft-msg ft-msg-{escape(kind)}">{escape(text)}</div>'


# -- "as the model sees it" --------------------------------------------------------
_KIND_NAMES = {"chat": "chat (template)", "text": "plain text", "prompt_completion": "prompt / completion"}


def formatted_html(preview: dict[str, Any] | None, note: str = "") -> str:
    """The first examples as trained: trained segments green, masked ones grey, then length stats."""
    if not preview:
        text = note or "Choose a dataset to see its examples as the model will see them."
        return f'<div class="ft-fmt"><div class="ft-muted">{escape(text)}</div></div>'
    legend = (
        '<div class="ft-fmt-legend"><b>As the model sees it</b>'
        '<span class="ft-seg ft-seg-trained">trained: carries the loss</span>'
        '<span class="ft-seg ft-seg-masked">masked: context only</span>'
        f'<span class="ft-muted">{escape(_KIND_NAMES.get(str(preview.get("kind")), str(preview.get("kind") or "")))}'
        f' · tokenizer of {escape(str(preview.get("base_model") or ""))}</span></div>'
    )
    blocks = []
    for i, segments in enumerate(preview.get("examples") or [], start=1):
        spans = "".join(
            f'<span class="ft-seg ft-seg-{"trained" if seg.get("trained") else "masked"}">{escape(str(seg.get("text", "")))}</span>'
            for seg in segments
        )
        blocks.append(f'<div class="ft-fmt-ex"><div class="ft-fmt-n">Example {i}</div><pre class="ft-fmt-text">{spans}</pre></div>')
    return f'<div class="ft-fmt">{legend}{"".join(blocks)}{_length_stats_html(preview)}</div>'


def _length_stats_html(preview: dict[str, Any]) -> str:
    stats = preview.get("token_lengths") or {}
    total = int(preview.get("num_examples") or 0)
    limit = stats.get("max_seq_length")
    over = int(stats.get("over_max_seq_length") or 0)
    lengths = (f'Token lengths: min <b>{fmt_number(stats.get("min"), "g")}</b> · median <b>{fmt_number(stats.get("median"), "g")}</b>'
               f' · max <b>{fmt_number(stats.get("max"), "g")}</b> over {total:,} examples.')
    if over:
        fit = (f'<span class="ft-warn"><b>{over:,} of {total:,}</b> examples exceed max_seq_length ({escape(str(limit))})'
               " and will be truncated.</span>")
    else:
        fit = f'<span class="ft-msg-ok">All fit in max_seq_length ({escape(str(limit))}).</span>'
    dropped = int(preview.get("dropped_rows") or 0)
    drop = f' <span class="ft-warn">{dropped:,} rows are dropped (an empty or missing cell).</span>' if dropped else ""
    return f'<div class="ft-fmt-stats">{lengths} {fit}{drop}</div>'


# -- runs --------------------------------------------------------------------------
RUN_COLUMNS = ["id", "status", "base model", "dataset", "method", "steps", "final loss", "best eval loss", "duration", "started"]


def run_row(summary: dict[str, Any], now: float | None = None) -> list[str]:
    """One history-table row from Studio.job_summary (plain text: the table shows it as text)."""
    metrics = summary.get("metrics") or {}
    started, finished = summary.get("started_at"), summary.get("finished_at")
    duration = None
    if started:
        duration = (finished or now or time.time()) - started
    step, max_steps = summary.get("step") or 0, summary.get("max_steps")
    when = started or summary.get("created_at")
    return [
        str(summary.get("job_id") or ""),
        str(summary.get("status") or ""),
        str(summary.get("base_model") or ""),
        str(summary.get("dataset_filename") or summary.get("dataset_id") or ""),
        str(summary.get("method") or ""),
        f"{step} / {max_steps}" if max_steps else str(step),
        fmt_number(summary.get("loss")),
        fmt_number(metrics.get("best_eval_loss")) if metrics.get("best_eval_loss") is not None else "",
        fmt_duration(duration) if duration is not None else "",
        time.strftime("%Y-%m-%d %H:%M", time.localtime(when)) if when else "",
    ]


def run_label(summary: dict[str, Any]) -> str:
    name = summary.get("dataset_filename") or summary.get("dataset_id") or ""
    return f"{summary.get('job_id')} · {summary.get('status')} · {summary.get('method')} · {name}"


# -- playground --------------------------------------------------------------------
def playground_info_html(result: dict[str, Any]) -> str:
    device = str(result.get("device") or "?")
    parts = [f'Generated on <b>{escape(device.upper() if device == "cpu" else device)}</b>',
             f'prompt format: <b>{escape(_KIND_NAMES.get(str(result.get("kind")), str(result.get("kind") or "")))}</b>']
    note = result.get("note")
    note_html = f'<div class="ft-warn">{escape(str(note))}</div>' if note else ""
    return f'<div class="ft-pg-info">{" · ".join(parts)}{note_html}</div>'


def task_html(name: str, record: dict[str, Any] | None) -> str:
    """A background task's state (merge): not started, queued/running, completed or failed."""
    status = str((record or {}).get("status") or "not_started")
    if status == "not_started":
        return f'<div class="ft-muted">No {escape(name)} yet.</div>'
    colour = {"completed": "#15803d", "failed": "#b91c1c"}.get(status, "#a16207")
    extra = ""
    if status == "completed" and record and record.get("size_bytes") is not None:
        extra = f' <span class="ft-muted">({float(record["size_bytes"]) / 1e6:,.1f} MB)</span>'
    error = f'<div class="ft-error">{escape(str(record.get("error")))}</div>' if record and record.get("error") else ""
    return (f'<div class="ft-task" data-status="{escape(status)}">{escape(name.capitalize())}: '
            f'<span class="ft-badge" style="background:{colour}">{escape(status)}</span>{extra}{error}</div>')


def downloads_html(job_id: str | None, has_model: bool, merged: bool, auth: bool) -> str:
    if not job_id or not has_model:
        return '<div class="ft-muted">Choose a finished run to download its model.</div>'
    jid = escape(job_id, quote=True)
    links = [f'<a href="/api/jobs/{jid}/artifacts" download>Model zip (adapter or weights)</a>',
             f'<a href="/api/jobs/{jid}/metrics.csv" download>Metrics CSV</a>']
    if merged:
        links.append(f'<a href="/api/jobs/{jid}/merged" download>Merged model zip</a>')
    note = ""
    if auth:
        note = ('<div class="ft-muted">The REST API needs the token: download with '
                "<code>curl -H 'Authorization: Bearer $FINETUNE_API_TOKEN' -OJ &lt;link&gt;</code>.</div>")
    return f'<div class="ft-links">{"".join(links)}</div>{note}'
