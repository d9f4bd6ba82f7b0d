"""Polling cost against run history length: 100, 10,000 and 1,000,000 logged steps.

Run:  .venv/bin/python -m bench.polling [--sizes 100,10000,1000000] [--reps 50]

Writes finished runs straight to disk (events.jsonl in EventLog's line format,
config.json, status.json) and lets the studio recover them at start-up, then
times, in process through Starlette's TestClient over the full app (REST routes
plus the mounted Gradio UI; no sockets, so the figures are the server's own
work plus ~1 ms of client):

- GET /api/status?job_id=...
- GET /api/logs?job_id=...&since=<last seq - 100>
- the chart path the UI timer runs: Studio.series + charts.loss_figure + fig.to_json,
  first call on the run (cold: the history is read from disk) and warm refreshes
  with nothing new, and "live" refreshes after 5 new METRIC events each (what a
  running job's refresh costs).

Targets: 1M-step warm chart refresh <= 2x the 100-step one; chart payload <= 150 KB.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench.common import (  # noqa: E402
    Figure,
    kb,
    ms,
    new_home,
    print_progress,
    verdict,
    write_synthetic_run,
    write_table,
)


def interleaved(fns: dict[int, object], reps: int) -> dict[int, float]:
    """Median seconds per key, calling the keys in turn each round so machine noise hits all alike."""
    times: dict[int, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,10000,1000000")
    parser.add_argument("--reps", type=int, default=50)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    home = new_home("polling", with_model=False)
    for n in sizes:
        print_progress(f"writing a {n:,}-step run")
        write_synthetic_run(home / "runs", f"run-{n:09d}", n)

    from fastapi.testclient import TestClient

    from finetune import charts
    from finetune.server import create_app
    from finetune.settings import Settings

    t0 = time.perf_counter()
    app = create_app(Settings(home=home))
    startup = time.perf_counter() - t0
    studio = app.state.studio
    results: dict[int, dict[str, float]] = {n: {} for n in sizes}
    live_reps = max(5, args.reps // 2)
    with TestClient(app) as client:
        jobs = {n: studio.runs.get(f"run-{n:09d}") for n in sizes}
        status_urls = {n: f"/api/status?job_id={jobs[n].job_id}" for n in sizes}
        logs_urls = {n: f"/api/logs?job_id={jobs[n].job_id}&since={max(0, jobs[n].events.last_seq - 100)}" for n in sizes}
        for n in sizes:
            resp = client.get(status_urls[n])
            assert resp.status_code == 200, resp.text
            results[n]["status_b"] = len(resp.content)
            resp = client.get(logs_urls[n])
            assert resp.status_code == 200 and len(resp.json()["logs"]) == 100, resp.text
            results[n]["logs_b"] = len(resp.content)
        print_progress("status and logs, sizes interleaved")
        for n, t in interleaved({n: (lambda n=n: client.get(status_urls[n])) for n in sizes}, args.reps).items():
            results[n]["status_s"] = t
        for n, t in interleaved({n: (lambda n=n: client.get(logs_urls[n])) for n in sizes}, args.reps).items():
            results[n]["logs_s"] = t

        def chart(n: int) -> str:
            return charts.loss_figure(studio.series(jobs[n])).to_json()

        # Plotly builds its validators on first use: pay that before timing the cold reads.
        charts.loss_figure(charts.series_from_events([])).to_json()
        for n in sizes:
            print_progress(f"{n:,} steps: chart cold")
            t = time.perf_counter()
            payload = chart(n)
            results[n]["cold_s"] = time.perf_counter() - t
            results[n]["chart_b"] = len(payload.encode())
            results[n]["lr_b"] = len(charts.lr_figure(studio.series(jobs[n])).to_json().encode())
        print_progress("chart warm refreshes, sizes interleaved")
        for n, t in interleaved({n: (lambda n=n: chart(n)) for n in sizes}, args.reps).items():
            results[n]["warm_s"] = t
        lr = {n: (lambda n=n: charts.lr_figure(studio.series(jobs[n])).to_json()) for n in sizes}
        for n, t in interleaved(lr, args.reps).items():
            results[n]["lr_s"] = t

        steps = {n: n for n in sizes}

        def live(n: int) -> float:
            for _ in range(5):  # appended as a running job does; not timed
                steps[n] += 1
                jobs[n].events.append("METRIC", f"step {steps[n]}", step=steps[n], loss=2.5, learning_rate=1e-4, epoch=1.0)
            t = time.perf_counter()
            chart(n)
            return time.perf_counter() - t

        print_progress("chart live refreshes, sizes interleaved")
        live_times: dict[int, list[float]] = {n: [] for n in sizes}
        for _ in range(live_reps):
            for n in sizes:
                live_times[n].append(live(n))
        for n in sizes:
            results[n]["live_s"] = statistics.median(live_times[n])

    base, top = results[sizes[0]], results[sizes[-1]]
    ratio = top["warm_s"] / base["warm_s"]
    live_ratio = top["live_s"] / base["live_s"]
    max_chart = max(r["chart_b"] for r in results.values())
    big, small = f"{sizes[-1]:,}", f"{sizes[0]:,}"
    rows = []
    for label, key, fmt in [
        ("GET /api/status", "status_s", ms), ("status payload", "status_b", kb),
        ("GET /api/logs?since=last-100", "logs_s", ms), ("logs payload", "logs_b", kb),
        ("chart cold (first read of the run)", "cold_s", ms),
        ("chart warm refresh (nothing new)", "warm_s", ms),
        ("chart live refresh (+5 events each)", "live_s", ms),
        ("loss chart payload", "chart_b", kb),
        ("lr chart (series + lr_figure + to_json), warm", "lr_s", ms), ("lr chart payload", "lr_b", kb),
    ]:
        rows.append([label] + [fmt(results[n][key]) for n in sizes] + [""])
    rows.append([f"warm {sizes[-1]:,} ÷ {sizes[0]:,}", "", "", f"{ratio:.2f}", f"≤ 2: {verdict(ratio <= 2)}"][: len(sizes) + 2])
    rows.append([f"live {sizes[-1]:,} ÷ {sizes[0]:,}", "", "", f"{live_ratio:.2f}", f"≤ 2: {verdict(live_ratio <= 2)}"][: len(sizes) + 2])
    rows.append(["largest loss chart payload", "", "", kb(max_chart), f"≤ 150 KB: {verdict(max_chart <= 150 * 1024)}"][: len(sizes) + 2])
    write_table(
        "polling", "Polling cost vs history length (in-process TestClient, full app)",
        ["measure"] + [f"{n:,} steps" for n in sizes] + ["target"], rows,
        notes=(f"Medians of {args.reps} calls (live: {live_reps}), sizes interleaved call by call. Runs recovered from disk at start-up; "
               f"app start-up with all {len(sizes)} histories: {startup:.1f} s. Chart path = Studio.series + "
               "charts.loss_figure + fig.to_json. In-process Starlette TestClient (no sockets)."),
        summary=[
            Figure(f"polling: chart warm refresh, {big} ÷ {small} steps ({ms(top['warm_s'])} vs {ms(base['warm_s'])})",
                   f"{ratio:.2f}×", "≤ 2×", ratio <= 2),
            Figure(f"polling: chart live refresh (+5 events), {big} ÷ {small} steps ({ms(top['live_s'])} vs {ms(base['live_s'])})",
                   f"{live_ratio:.2f}×", "≤ 2× (same bar)", live_ratio <= 2),
            Figure("polling: largest loss-chart payload", kb(max_chart), "≤ 150 KB", max_chart <= 150 * 1024),
            Figure(f"polling: GET /api/status / logs?since=last-100 at {big} steps",
                   f"{ms(top['status_s'])} / {ms(top['logs_s'])}", "flat vs 100 steps "
                   f"({ms(base['status_s'])} / {ms(base['logs_s'])})", None),
            Figure(f"polling: chart cold (first read of a {big}-step run from disk)", ms(top["cold_s"]), "(no target)", None),
        ],
    )


if __name__ == "__main__":
    main()
