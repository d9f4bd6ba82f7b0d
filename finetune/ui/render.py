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
