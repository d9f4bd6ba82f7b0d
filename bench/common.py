"""Shared helpers for the benchmark scripts."""

from __future__ import annotations

import platform
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def machine() -> str:
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{platform.processor() or platform.machine()}, {cores} cores, Python {platform.python_version()}"


def write_table(name: str, title: str, headers: list[str], rows: list[list[object]], notes: str = "") -> str:
    lines = [f"### {title}", "", f"{time.strftime('%Y-%m-%d')} · {machine()}", ""]
    lines.append("| " + " | ".join(headers) + " |")
    lines.append("|" + "---|" * len(headers))
    for row in rows:
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    if notes:
        lines += ["", notes]
    text = "\n".join(lines) + "\n"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.md").write_text(text)
    print(text)
    return text
