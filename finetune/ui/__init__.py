"""The Gradio Blocks UI: a training form over a live monitor.

Handlers only translate between widgets and the Studio methods the REST
routes also call; state (which run, how far) lives on the server, so a
reload or a second tab shows the same run.
"""

from __future__ import annotations

from finetune.ui.layout import CSS, build_ui

__all__ = ["CSS", "build_ui"]
