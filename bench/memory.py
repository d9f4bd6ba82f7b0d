"""Server memory: RSS of a real `python app.py` before and after serving a 1M-event run.

Run:  .venv/bin/python -m bench.memory [--steps 1000000] [--refreshes 10]

A finished run with ``--steps`` METRIC events (plus an eval every 100 steps)
is written to a fresh FINETUNE_HOME; the server recovers it at start-up. RSS
(VmRSS from /proc/<pid>/status) is read:

1. before: once the server answers and has settled;
2. after: GET /api/status, GET /api/logs paging through the whole history
   with the cursor (limit 5000), then ``--refreshes`` x (GET
   /api/jobs/{id}/metrics + one UI chart refresh: the Gradio timer tick, called
   through Gradio's queue protocol as the browser does);
3. after ``--refreshes`` more of those refreshes (does memory keep growing?).

No pass/fail target; the figures say what a long history costs the server.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid

from bench.common import Figure, Server, new_home, print_progress, rss_mb, write_synthetic_run, write_table


class UiTicker:
    """Calls the monitor's timer tick (a private Gradio event) the way the page does."""

    def __init__(self, client, base_url: str) -> None:
        self.client, self.base_url = client, base_url
        config = client.get(f"{base_url}/config").json()
        self.prefix = config.get("api_prefix", "/gradio_api")
        comps = {c["id"]: c for c in config["components"]}
        for index, dep in enumerate(config["dependencies"]):
            inputs = [comps[i]["type"] for i in dep.get("inputs", [])]
            if any(t[1] == "tick" for t in dep.get("targets", [])) and inputs == ["slider", "checkbox", "state"]:
                self.fn_index, self.trigger = dep.get("id", index), dep["targets"][0][0]
                break
        else:
            raise RuntimeError("monitor timer tick not found in the Gradio config")

    def tick(self) -> int:
        """One forced refresh (empty 'seen' marker: status, logs and both charts); returns bytes received."""
        session = uuid.uuid4().hex[:12]
        resp = self.client.post(f"{self.base_url}{self.prefix}/queue/join", json={
            "data": [0.6, False, ""], "fn_index": self.fn_index, "trigger_id": self.trigger,
            "session_hash": session, "event_data": None,
        })
        resp.raise_for_status()
        received = 0
        with self.client.stream("GET", f"{self.base_url}{self.prefix}/queue/data", params={"session_hash": session}) as stream:
            for line in stream.iter_lines():
                received += len(line)
                if line.startswith("data:"):
                    msg = json.loads(line[5:])
                    if msg.get("msg") == "process_completed":
                        if not msg.get("success"):
                            raise RuntimeError(f"tick failed: {str(msg)[:300]}")
                        return received
        raise RuntimeError("tick stream ended without a result")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--refreshes", type=int, default=10)
    args = parser.parse_args()
    import httpx

    home = new_home("memory", with_model=False)
    run_id = "run-history"
    print_progress(f"writing a {args.steps:,}-step run")
    folder = write_synthetic_run(home / "runs", run_id, args.steps)
    size_mb = (folder / "events.jsonl").stat().st_size / 2**20
    server = Server(home)
    start_s = server.start()
    rows, timings = [], {}
    try:
        time.sleep(2.0)  # let start-up work settle
        before = rss_mb(server.pid)
        print_progress(f"server up in {start_s:.1f} s, RSS {before:.0f} MB")
        with httpx.Client(base_url=server.url, timeout=600) as client:
            t0 = time.perf_counter()
            assert client.get("/api/status", params={"job_id": run_id}).status_code == 200
            since, pages, events = 0, 0, 0
            while True:
                page = client.get("/api/logs", params={"job_id": run_id, "since": since, "limit": 5000}).json()
                if not page["logs"]:
                    break
                events += len(page["logs"])
                pages += 1
                since = page["next_since"]
            timings["paging"] = time.perf_counter() - t0
            after_paging = rss_mb(server.pid)
            print_progress(f"paged {events:,} events in {pages} pages ({timings['paging']:.1f} s), RSS {after_paging:.0f} MB")
            ticker = UiTicker(client, server.url)
            t0 = time.perf_counter()
            ticker.tick()  # first chart refresh: the metrics cache reads the whole history
            timings["cold tick"] = time.perf_counter() - t0
            after_cold = rss_mb(server.pid)
            print_progress(f"first UI chart refresh {timings['cold tick']:.1f} s, RSS {after_cold:.0f} MB")

            def refreshes(label: str) -> float:
                t_metrics = t_ui = 0.0
                for _ in range(args.refreshes):
                    t = time.perf_counter()
                    resp = client.get(f"/api/jobs/{run_id}/metrics")
                    t_metrics += time.perf_counter() - t  # the response received, not yet parsed
                    assert resp.status_code == 200 and len(resp.json()["step"]) == args.steps
                    timings["metrics bytes"] = len(resp.content)
                    t = time.perf_counter()
                    ticker.tick()
                    t_ui += time.perf_counter() - t
                timings[f"{label} metrics"] = t_metrics / args.refreshes
                timings[f"{label} ui"] = t_ui / args.refreshes
                mb = rss_mb(server.pid)
                print_progress(f"{label}: {args.refreshes} refreshes, RSS {mb:.0f} MB "
                               f"(metrics {t_metrics / args.refreshes:.2f} s, UI tick {t_ui / args.refreshes:.2f} s each)")
                return mb

            after = refreshes("first")
            after_more = refreshes("more")
    finally:
        server.stop()

    rows = [
        ["before (recovered the run, idle)", f"{before:.0f}", f"server up in {start_s:.1f} s"],
        [f"after status + logs paging ({events:,} events, {pages} pages of 5,000)", f"{after_paging:.0f}",
         f"{timings['paging']:.1f} s for the whole history"],
        ["after the first UI chart refresh (whole history read into the metrics cache)", f"{after_cold:.0f}",
         f"{timings['cold tick']:.1f} s"],
        [f"after {args.refreshes} × (GET metrics + UI chart refresh)", f"{after:.0f}",
         f"GET metrics {timings['first metrics']:.2f} s ({timings['metrics bytes'] / 2**20:.0f} MB of JSON), "
         f"UI tick {timings['first ui']:.2f} s (means)"],
        [f"after {args.refreshes} more refreshes", f"{after_more:.0f}",
         f"GET metrics {timings['more metrics']:.2f} s, UI tick {timings['more ui']:.2f} s (mean)"],
    ]
    write_table(
        "memory", f"Server memory with a {args.steps:,}-step run history (real `python app.py`)",
        ["point", "RSS MB", "notes"], rows,
        notes=(f"events.jsonl {size_mb:.0f} MB. RSS = VmRSS of the server process. Metrics = GET "
               "/api/jobs/{id}/metrics (all points as JSON arrays); UI tick = the monitor's Gradio timer event "
               "(status, last log lines, loss and LR charts), called over Gradio's queue protocol. No target."),
        summary=[Figure(f"memory: server RSS before / after paging the logs / after the first chart / after {args.refreshes} "
                        f"metrics + chart refreshes / after {args.refreshes} more ({args.steps:,}-step history)",
                        f"{before:.0f} / {after_paging:.0f} / {after_cold:.0f} / {after:.0f} / {after_more:.0f} MB",
                        "(report only; flat after warm-up)", None)],
    )


if __name__ == "__main__":
    main()
