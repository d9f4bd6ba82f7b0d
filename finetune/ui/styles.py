"""The UI's CSS (passed to mount_gradio_app: Blocks(css=) is dropped when mounted)."""

from __future__ import annotations

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
#dataset-msg:has(.html-container > div:empty), #run-msg:has(.html-container > div:empty),
#runs-msg:has(.html-container > div:empty), #pg-msg:has(.html-container > div:empty) {display:none;}
#ft-zoom-keeper {display:none;}
/* The Soft theme draws "stop" like a plain button: make an active Stop read as one. */
#stop-btn:not(:disabled), #runs-delete:not(:disabled) {background:#fef2f2; color:#b91c1c; border-color:#fca5a5;}
#stop-btn:not(:disabled):hover, #runs-delete:not(:disabled):hover {background:#fee2e2;}
/* Gradio floats each plot's label over its top-left corner: start the figure below it. */
#loss-plot [data-testid=plotly], #lr-plot [data-testid=plotly], #runs-loss-plot [data-testid=plotly],
#runs-lr-plot [data-testid=plotly], #runs-overlay [data-testid=plotly] {margin-top:30px;}
/* The log boxes: light text on dark. The ids keep these rules above Gradio's own text colours. */
:is(#run-logs, #runs-logs) .ft-logs {margin-top:30px; min-height:60px; max-height:300px; overflow-y:auto;
          display:flex; flex-direction:column-reverse;
          font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size:12px; line-height:1.45;
          background:#0f172a; color:#e2e8f0; border-radius:6px; padding:8px 10px;}
:is(#run-logs, #runs-logs) :is(.ft-log, .ft-text) {color:#e2e8f0; white-space:pre-wrap; word-break:break-word; margin:0;}
:is(#run-logs, #runs-logs) .ft-ts {color:#94a3b8;}
:is(#run-logs, #runs-logs) .ft-lvl {font-weight:700; display:inline-block; min-width:4.5em;}
:is(#run-logs, #runs-logs) .ft-lvl-info .ft-lvl {color:#93c5fd;}
:is(#run-logs, #runs-logs) .ft-lvl-metric .ft-lvl {color:#86efac;}
:is(#run-logs, #runs-logs) .ft-lvl-metric .ft-text {color:#cbd5e1;}
:is(#run-logs, #runs-logs) .ft-lvl-warning :is(.ft-lvl, .ft-text) {color:#fcd34d;}
:is(#run-logs, #runs-logs) .ft-lvl-error :is(.ft-lvl, .ft-text) {color:#fca5a5;}
:is(#run-logs, #runs-logs) .ft-log.ft-muted {color:#94a3b8;}
:is(#run-logs, #runs-logs) .ft-lvl-info .ft-text {color:#cbd5e1;}
/* "As the model sees it": trained text on green, masked text greyed, newlines kept. */
#formatted-preview .ft-fmt-legend {display:flex; flex-wrap:wrap; gap:6px 14px; align-items:center; font-size:0.9em; margin-bottom:6px;}
#formatted-preview .ft-fmt-ex {margin:6px 0;}
#formatted-preview .ft-fmt-n {font-size:0.8em; color:#6b7280; margin-bottom:2px;}
#formatted-preview .ft-fmt-text {white-space:pre-wrap; word-break:break-word; margin:0; padding:6px 8px; border:1px solid #e5e7eb;
          border-radius:6px; background:#fff; font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size:12px; line-height:1.5;
          max-height:220px; overflow-y:auto;}
#formatted-preview .ft-seg-trained {background:#dcfce7; color:#14532d; border-radius:2px;}
#formatted-preview .ft-seg-masked {background:#f3f4f6; color:#9ca3af; border-radius:2px;}
#formatted-preview .ft-fmt-legend .ft-seg {padding:0 6px; border:1px solid #d1d5db;}
#formatted-preview .ft-fmt-stats {font-size:0.9em; margin-top:4px;}
/* Playground answers: monospace would hide nothing, but keep them readable side by side. */
#pg-info .ft-pg-info {font-size:0.9em;}
#pg-downloads .ft-links {display:flex; flex-wrap:wrap; gap:8px 18px; align-items:center;}
#pg-downloads a {font-weight:600;}
"""
