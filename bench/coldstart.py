"""Cold start: launching `python app.py` until /api/status answers 200, vs a hello-world.

Run:  .venv/bin/python -m bench.coldstart [--rounds 5]

Each studio start gets a fresh, empty FINETUNE_HOME. The baseline is the
smallest app of the same shape: FastAPI with one JSON route and a one-button
gr.Blocks mounted at "/" (ssr_mode=False), served by uvicorn, written to a
temporary file. Both are timed the same way (launch of the Python process to
the first 200 on /api/status, polled every 20 ms), alternating which goes
first each round. Target: studio ÷ baseline <= 1.3 (medians).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from bench.common import Figure, Server, new_home, print_progress, runs_list, verdict, write_table

BASELINE_APP = '''\
"""Hello-world baseline: FastAPI + a one-button Gradio Blocks, served by uvicorn."""
import os

import gradio as gr
import uvicorn
from fastapi import FastAPI

app = FastAPI()


@app.get("/api/status")
def status() -> dict:
    return {"status": "idle"}


with gr.Blocks() as demo:
    gr.Button("Hello")

app = gr.mount_gradio_app(app, demo, path="/", ssr_mode=False)

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ["GRADIO_SERVER_PORT"]))
'''


def one_start(script: str | Path | None) -> float:
    if script is None:
        server = Server(new_home("coldstart", with_model=False))
    else:
        server = Server(script=script)
    try:
        return server.start()
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    baseline_script = Path(tempfile.mkdtemp(prefix="bench-coldstart-")) / "hello_app.py"
    baseline_script.write_text(BASELINE_APP)

    print_progress("warm-up (file cache) for both")
    one_start(None)
    one_start(baseline_script)
    studio, base = [], []
    for i in range(args.rounds):
        order = ("studio", "baseline") if i % 2 == 0 else ("baseline", "studio")
        for side in order:
            t = one_start(None if side == "studio" else baseline_script)
            (studio if side == "studio" else base).append(t)
            print_progress(f"round {i + 1}/{args.rounds}: {side} {t:.2f} s")
    m_studio, m_base = statistics.median(studio), statistics.median(base)
    ratio = m_studio / m_base
    write_table(
        "coldstart", "Cold start: process launch to first 200 from /api/status",
        ["app", "seconds (median)", "runs", "target"],
        [["studio: python app.py (fresh FINETUNE_HOME)", f"{m_studio:.2f}", runs_list(studio, "{:.2f}"), ""],
         ["baseline: FastAPI + one-button gr.Blocks + uvicorn", f"{m_base:.2f}", runs_list(base, "{:.2f}"), ""],
         ["ratio studio ÷ baseline", f"{ratio:.2f}", "", f"≤ 1.3: {verdict(ratio <= 1.3)}"]],
        notes=f"{args.rounds} alternated rounds after one unmeasured start of each (warm file cache).",
        summary=[Figure("coldstart: studio ÷ hello-world FastAPI+Gradio start-up",
                        f"{ratio:.2f} ({m_studio:.2f} s vs {m_base:.2f} s)", "≤ 1.3", ratio <= 1.3)],
    )


if __name__ == "__main__":
    main()
