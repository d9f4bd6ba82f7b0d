"""API under load while training: 16 pollers against a real `python app.py` server.

Run:  .venv/bin/python -m bench.load [--pollers 16] [--steps 150] [--rounds 2] [--windows 3]

One server subprocess (fresh FINETUNE_HOME), training LoRA on the bundled model
and demo dataset. Pollers are threads of this process (httpx, one client
each) alternating GET /api/status and GET /api/logs?since=<its cursor>.

1. Runs, as specified: per round a quiet job (nobody polls but this script,
   once a second) then the same job while 16 pollers hammer in a closed loop
   (no pause). Training speed is each job's own train_samples_per_second;
   latencies are client-side, counted while the job trains.
2. Windows, a noise-robust cross-check (this machine is shared): one long job
   whose 5-second windows alternate quiet / hammer / quiet / 2 Hz (each
   poller polls both routes twice a second: 16 open dashboards). Step rates
   come from the job's own per-step METRIC event times; each loaded window is
   compared with the quiet windows either side of it.

Targets (hammer): 0 errors, p95 < 100 ms, training samples/s loaded ÷ quiet >= 0.8.
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


def all_events(base_url: str, job_id: str) -> list[dict]:
    import httpx

    events, since = [], 0
    with httpx.Client(base_url=base_url, timeout=120) as client:
        while True:
            page = client.get("/api/logs", params={"job_id": job_id, "since": since, "limit": 5000}).json()
            if not page["logs"]:
                return events
            events += page["logs"]
            since = page["next_since"]


KINDS = ("hammer", "2 Hz", "hammer other")


def windows(base_url: str, other_url: str, pollers: int, cycles: int, seconds: float = 5.0) -> dict[str, dict]:
    """One long job; quiet windows between loaded ones; loaded ÷ adjacent quiet step rates.

    "hammer other" hammers a second, idle studio process instead: the
    training process serves nothing, so what is left is the CPU the pollers and
    a server take from a 2-core machine (the control for "hammer").
    """
    body = job_body(10**6) | {"logging_steps": 1}  # a timestamp every step
    job_id = http_json(f"{base_url}/api/jobs", body)["job_id"]
    while http_json(f"{base_url}/api/jobs/{job_id}")["status"] != "running":
        time.sleep(0.1)
    time.sleep(6.0)  # past model loading and the first steps
    plan: list[tuple[str, float, float]] = []
    loads: dict[str, list[Load]] = {k: [] for k in KINDS}
    for _ in range(cycles):
        for name in ("quiet", "hammer", "quiet", "2 Hz", "quiet", "hammer other"):
            t0 = time.time()
            if name == "quiet":
                time.sleep(seconds)
            else:
                url = other_url if name == "hammer other" else base_url
                with Load(url, pollers, 0.5 if name == "2 Hz" else 0.0) as load:
                    load.recording.set()
                    time.sleep(seconds)
                    load.recording.clear()
                load.window = (0.0, seconds)
                loads[name].append(load)
            plan.append((name, t0 + 0.5, time.time()))  # skip the pollers' start-up
    plan.append(("quiet", time.time() + 0.5, time.time() + seconds))
    time.sleep(seconds)
    http_json(f"{base_url}/api/jobs/{job_id}/cancel", {})
    points = [(e["time"], e["step"]) for e in all_events(base_url, job_id) if e["level"] == "METRIC" and "loss" in e]

    def rate(t0: float, t1: float) -> float:
        inside = [p for p in points if t0 <= p[0] <= t1]
        return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])

    rates = [(name, rate(t0, t1)) for name, t0, t1 in plan]
    out: dict[str, dict] = {}
    for name in loads:
        ratios = []
        for i, (n, r) in enumerate(rates):
            if n == name:
                quiet = [rates[j][1] for j in (i - 1, i + 1) if rates[j][0] == "quiet"]
                ratios.append(r / statistics.mean(quiet))
        lats = [x for load in loads[name] for x in load.latencies]
        out[name] = {"ratios": ratios, "latencies": lats, "errors": sum(ld.errors for ld in loads[name]),
                     "rps": len(lats) / (seconds * len(loads[name]))}
    out["quiet_steps_per_s"] = statistics.median(r for n, r in rates if n == "quiet")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pollers", type=int, default=16)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--windows", type=int, default=3, help="cycles of quiet/hammer/quiet/2 Hz windows")
    args = parser.parse_args()

    quiet: list[float] = []
    loaded: list[float] = []
    lats: list[float] = []
    errors, busy_s = 0, 0.0
    kinds: dict[str, int] = {}
    server = Server(new_home("load"))
    other = Server(new_home("load-other", with_model=False))
    print_progress(f"server up in {server.start():.1f} s")
    try:
        print_progress("warm-up job (imports, first steps)")
        train(server.url, 10, None)
        for i in range(args.rounds):
            print_progress(f"round {i + 1}/{args.rounds}: quiet job")
            quiet.append(train(server.url, args.steps, None))
            print_progress(f"round {i + 1}/{args.rounds}: job with {args.pollers} pollers hammering")
            with Load(server.url, args.pollers, 0.0) as load:
                loaded.append(train(server.url, args.steps, load))
            lats += load.latencies
            errors += load.errors
            busy_s += load.window[1] - load.window[0]
            for k, v in load.error_kinds.items():
                kinds[k] = kinds.get(k, 0) + v
        win = None
        if args.windows:
            other.start()
            print_progress(f"windows: {args.windows} cycles of quiet / hammer / quiet / 2 Hz / quiet / hammer other, 5 s each")
            win = windows(server.url, other.url, args.pollers, args.windows)
    finally:
        server.stop()
        other.stop()

    m_quiet, m_load = statistics.median(quiet), statistics.median(loaded)
    ratio = m_load / m_quiet
    p50, p95, p99 = (percentile(lats, p) for p in (50, 95, 99))
    rps = len(lats) / busy_s
    err_text = f"{errors}" + (f" ({', '.join(f'{k}: {v}' for k, v in kinds.items())})" if kinds else "")
    rows = [
        ["runs: quiet job", "", "", "", "", "", f"{m_quiet:.1f} samples/s ({runs_list(quiet)})", ""],
        [f"runs: job with {args.pollers} pollers hammering", f"{rps:,.0f}", err_text, ms(p50), ms(p95), ms(p99),
         f"{m_load:.1f} samples/s ({runs_list(loaded)})", f"{ratio:.2f}"],
    ]
    summary = [
        Figure(f"load: errors, {args.pollers} pollers hammering during training", str(errors), "0", errors == 0),
        Figure(f"load: p95 latency, {args.pollers} pollers hammering (p50 {ms(p50)}, p99 {ms(p99)}, {rps:,.0f} req/s)",
               ms(p95), "< 100 ms", p95 < 0.1),
        Figure("load: training samples/s hammered ÷ quiet (separate runs, medians)", f"{ratio:.2f}", "≥ 0.8", ratio >= 0.8),
    ]
    if win is not None:
        for name in KINDS:
            w = win[name]
            r = statistics.median(w["ratios"])
            wl = w["latencies"]
            rows.append([f"windows: {name}", f"{w['rps']:,.0f}", str(w["errors"]), ms(percentile(wl, 50)),
                         ms(percentile(wl, 95)), ms(percentile(wl, 99)), f"step rate ÷ adjacent quiet: {runs_list(w['ratios'], '{:.2f}')}",
                         f"{r:.2f}"])
            target = {"hammer": "≥ 0.8", "2 Hz": "(UI-like polling; no target)",
                      "hammer other": "(control: pollers hit a second, idle server)"}[name]
            summary.append(Figure(f"load: training step rate {name} ÷ quiet (alternating 5-s windows, one job; p95 "
                                  f"{ms(percentile(wl, 95))})", f"{r:.2f}", target, r >= 0.8 if name == "hammer" else None))
    write_table(
        "load", f"API under load during training ({args.pollers} pollers vs a real `python app.py`)",
        ["scenario", "requests/s", "errors", "p50", "p95", "p99", "training", "÷ quiet"],
        rows,
        notes=(f"{args.steps}-step LoRA jobs (bundled model, demo dataset, batch 8), {args.rounds} rounds of quiet → hammered; "
               f"then one job in alternating 5-s windows ({args.windows} cycles; \"hammer other\" hammers a second, idle studio "
               "process instead of the training one; quiet step rate "
               f"{win['quiet_steps_per_s'] if win else float('nan'):.1f} steps/s). Pollers are threads of the bench process "
               "(httpx) on the same 2 cores as the server; each alternates GET /api/status and GET /api/logs?since=<cursor>. "
               "Latencies are client-side. Targets (hammer): 0 errors, p95 < 100 ms, ÷ quiet ≥ 0.8."),
        summary=summary,
    )


if __name__ == "__main__":
    main()
