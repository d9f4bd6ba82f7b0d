"""The page: a Train tab (dataset, form, live monitor), a Runs tab and a Playground tab."""

from __future__ import annotations

import gradio as gr

from finetune.service import Studio
from finetune.ui.handlers import Handlers
from finetune.ui.playground_tab import PlaygroundHandlers, build_playground_tab
from finetune.ui.runs_tab import RunsHandlers, build_runs_tab
from finetune.ui.styles import CSS
from finetune.ui.train_tab import FORM_FIELDS, build_train_tab

__all__ = ["CSS", "FORM_FIELDS", "build_ui"]


def build_ui(studio: Studio) -> gr.Blocks:
    with gr.Blocks(title="Fine-tuning studio") as demo:
        gr.Markdown("# Fine-tuning studio\nUpload a dataset, pick a model and method, press **Start**, watch it train.")
        with gr.Tabs(elem_id="ft-tabs"):
            with gr.Tab("Train", id="train", elem_id="tab-train"):
                train = build_train_tab(Handlers(studio, FORM_FIELDS), demo)
            with gr.Tab("Runs", id="runs", elem_id="tab-runs") as runs_tab:
                build_runs_tab(RunsHandlers(studio), runs_tab, train.timer)
            with gr.Tab("Playground", id="playground", elem_id="tab-playground") as playground_tab:
                build_playground_tab(PlaygroundHandlers(studio), playground_tab)
    return demo
