"""API under load while training: 16 pollers against a real `python app.py` server.

Run:  .venv/bin/python -m bench.load [--pollers 16] [--steps 150] [--rounds 2]

One server subprocess (fresh FINETUNE_HOME). Each round trains the same job
(LoRA, bundled model, demo dataset) three times:

- quiet: nobody polls but the bench itself, once a second (GET /api/jobs/{id});
- hammer: 16 pollers in threads of this process, each in a closed loop (no
  pause) alternating GET /api/status and GET /api/logs?since=<its cursor>;
- 2 Hz: the same 16 pollers pausing so each polls both routes twice a second
  (16 open dashboards).

Latency is measured by the clients, per request, while the job trains.
Training speed is the Trainer's own train_samples_per_second of each run.
Targets (hammer): 0 errors, p95 < 100 ms, samples/s under load ÷ quiet >= 0.8.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

from bench.common import (
    Figure,
    Server,
    http_json,
    ms,
    new_home,
    percentile,
    print_progress,
    runs_list,
    verdict,
    wait_job,
    write_table,
)


def job_body(steps: int) -> dict:
    return {"dataset_id": "demo", "method": "lora", "max_steps": steps, "save_steps": 10**6}


class Load:
    """``n`` polling clients; latencies are kept only while ``recording`` is set."""

    def __init__(self, base_url: str, n: int, period: float) -> None:
        self.base_url, self.period = base_url, period
        self.stop = threading.Event()
        self.recording = threading.Event()
        self.latencies: list[float] = []
        self.errors = 0
        self.error_kinds: dict[str, int] = {}
        self.window = (0.0, 0.0)
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._poll, daemon=True) for _ in range(n)]

    def _poll(self) -> None:
        import httpx

        cursor = 0
        mine: list[float] = []
        errors = 0
        kinds: dict[str, int] = {}
        with httpx.Client(base_url=self.base_url, timeout=10) as client:
            while not self.stop.is_set():
                t_round = time.perf_counter()
                for route in ("status", "logs"):
                    t0 = time.perf_counter()
                    try:
                        if route == "status":
                            resp = client.get("/api/status")
                        else:
                            resp = client.get("/api/logs", params={"since": cursor})
                            if resp.status_code == 200:
                                cursor = resp.json()["next_since"]
                        failed = resp.status_code != 200
                        kind = f"HTTP {resp.status_code}"
                    except httpx.HTTPError as exc:
                        failed, kind = True, type(exc).__name__
                    elapsed = time.perf_counter() - t0
                    if self.recording.is_set():
                        mine.append(elapsed)
                        if failed:
                            errors += 1
                            kinds[kind] = kinds.get(kind, 0) + 1
                if self.period:
                    self.stop.wait(max(0.0, self.period - (time.perf_counter() - t_round)))
        with self._lock:
            self.latencies += mine
            self.errors += errors
            for k, v in kinds.items():
                self.error_kinds[k] = self.error_kinds.get(k, 0) + v

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


def train(base_url: str, steps: int, load: Load | None) -> float:
    job_id = http_json(f"{base_url}/api/jobs", job_body(steps))["job_id"]
    # Record from the moment the job runs until it is done.
    while http_json(f"{base_url}/api/jobs/{job_id}")["status"] == "queued":
        time.sleep(0.05)
    t0 = time.perf_counter()
    if load is not None:
        load.recording.set()
    job = wait_job(base_url, job_id, every=1.0)
    if load is not None:
        load.recording.clear()
        load.window = (t0, time.perf_counter())
    return float(job["metrics"]["train_samples_per_second"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pollers", type=int, default=16)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    scenarios = {"hammer": 0.0, "2 Hz": 0.5}
    quiet: list[float] = []
    loaded: dict[str, list[float]] = {k: [] for k in scenarios}
    lat: dict[str, list[float]] = {k: [] for k in scenarios}
    errs: dict[str, int] = dict.fromkeys(scenarios, 0)
    kinds: dict[str, dict[str, int]] = {k: {} for k in scenarios}
    seconds: dict[str, float] = dict.fromkeys(scenarios, 0.0)

    server = Server(new_home("load"))
    print_progress(f"server up in {server.start():.1f} s")
    try:
        print_progress("warm-up job (imports, first steps)")
        train(server.url, 10, None)
        for i in range(args.rounds):
            print_progress(f"round {i + 1}/{args.rounds}: quiet")
            quiet.append(train(server.url, args.steps, None))
            for name, period in scenarios.items():
                print_progress(f"round {i + 1}/{args.rounds}: {name}, {args.pollers} pollers")
                with Load(server.url, args.pollers, period) as load:
                    loaded[name].append(train(server.url, args.steps, load))
                lat[name] += load.latencies
                errs[name] += load.errors
                for k, v in load.error_kinds.items():
                    kinds[name][k] = kinds[name].get(k, 0) + v
                seconds[name] += load.window[1] - load.window[0]
    finally:
        server.stop()

    m_quiet = statistics.median(quiet)
    rows = [["quiet (no pollers)", "", "", "", "", "", f"{m_quiet:.1f}", runs_list(quiet), ""]]
    summary: list[Figure] = []
    for name in scenarios:
        lats, m_load = lat[name], statistics.median(loaded[name])
        ratio = m_load / m_quiet
        p50, p95, p99 = (percentile(lats, p) for p in (50, 95, 99))
        ok = errs[name] == 0 and p95 < 0.1 and ratio >= 0.8
        extra = f" ({', '.join(f'{k}: {v}' for k, v in kinds[name].items())})" if kinds[name] else ""
        rows.append([f"{name}: {args.pollers} pollers", f"{len(lats) / seconds[name]:,.0f}", f"{errs[name]}{extra}",
                     ms(p50), ms(p95), ms(p99), f"{m_load:.1f}", runs_list(loaded[name]),
                     f"{ratio:.2f}" + (f" — targets {verdict(ok)}" if name == "hammer" else "")])
        if name == "hammer":
            summary += [
                Figure(f"load: errors, {args.pollers} pollers hammering during training", str(errs[name]), "0", errs[name] == 0),
                Figure(f"load: p95 latency ({args.pollers} pollers hammering; p50 / p99 {ms(p50)} / {ms(p99)})", ms(p95), "< 100 ms", p95 < 0.1),
                Figure(f"load: requests/s served ({args.pollers} pollers hammering)", f"{len(lats) / seconds[name]:,.0f}", "(no target)", None),
                Figure("load: training samples/s hammered ÷ quiet", f"{ratio:.2f}", "≥ 0.8", ratio >= 0.8),
            ]
        else:
            summary.append(Figure(f"load: {args.pollers} pollers at 2 Hz: p95, samples/s ÷ quiet, errors",
                                  f"{ms(p95)}, {ratio:.2f}, {errs[name]}", "(same bars: < 100 ms, ≥ 0.8, 0)",
                                  errs[name] == 0 and p95 < 0.1 and ratio >= 0.8))
    write_table(
        "load", f"API under load during training ({args.pollers} pollers vs a real `python app.py`)",
        ["scenario", "requests/s", "errors", "p50", "p95", "p99", "samples/s (median)", "runs", "÷ quiet"],
        rows,
        notes=(f"{args.steps}-step LoRA jobs on the bundled model, {args.rounds} rounds of quiet → hammer → 2 Hz. "
               "Pollers are threads of the bench process (httpx, one client each) on the same 2 cores as the server; "
               "each alternates GET /api/status and GET /api/logs?since=<cursor>. Latencies are client-side, "
               "counted only while a job trains. Targets (hammer): 0 errors, p95 < 100 ms, ÷ quiet ≥ 0.8."),
        summary=summary,
    )


if __name__ == "__main__":
    main()
