"""Run every benchmark in sequence and write one summary table.

Run:  .venv/bin/python -m bench.all [--quick] [--only overhead,polling,...]

With --only, the summary keeps the other benchmarks' last recorded figures.

Each benchmark runs in its own process (fresh memory, fresh imports), prints
its table and writes bench/results/<name>.md; this collects their figures into
bench/results/summary.md: every figure against its target, the machine, the
date. The real settings take about 9 minutes on 2 CPU cores; --quick runs
small settings (a smoke test of the scripts, figures not meaningful), writing
to $TMPDIR/finetune-bench-quick/ so real figures are never replaced.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import PYTHON, RESULTS, ROOT, machine, others_cpu, print_progress, today, verdict

# (module, real settings, quick settings)
BENCHES = [
    ("coldstart", ["--rounds", "5"], ["--rounds", "1"]),
    ("polling", ["--reps", "40"], ["--sizes", "100,1000,20000", "--reps", "5"]),
    ("overhead", ["--steps", "120", "--rounds", "6"], ["--steps", "20", "--rounds", "1"]),
    ("load", ["--steps", "150", "--rounds", "2"], ["--steps", "20", "--rounds", "1", "--windows", "1"]),
    ("packing", ["--steps", "60", "--rounds", "3"], ["--steps", "10", "--rounds", "1"]),
    ("memory", ["--steps", "1000000", "--refreshes", "10"], ["--steps", "20000", "--refreshes", "2"]),
    ("gpu", [], ["--cpu-smoke"]),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small settings: check the scripts run")
    parser.add_argument("--only", default="", help="comma-separated benchmark names")
    args = parser.parse_args()
    only = {n for n in args.only.split(",") if n}
    started = time.time()
    results = Path(tempfile.gettempdir()) / "finetune-bench-quick" if args.quick else RESULTS
    env = dict(os.environ, BENCH_RESULTS=str(results))
    outcomes: dict[str, str] = {}
    for name, real, quick in BENCHES:
        if only and name not in only:
            continue
        cmd = [PYTHON, "-m", f"bench.{name}", *(quick if args.quick else real)]
        print_progress("$ " + " ".join(cmd[1:]))
        t0 = time.time()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=None, text=True)
        sys.stdout.write(proc.stdout)
        took = time.time() - t0
        if proc.returncode != 0:
            outcomes[name] = f"FAILED (exit {proc.returncode}) after {took:.0f} s"
        elif "no CUDA device: skipped" in proc.stdout:
            outcomes[name] = "skipped: no CUDA device"
        else:
            outcomes[name] = f"ran in {took:.0f} s"
        print_progress(f"{name}: {outcomes[name]}")

    lines = ["### Benchmarks: every figure against its target", "",
             f"{today()} · {machine()} · `python -m bench.all{' --quick' if args.quick else ''}` "
             f"in {(time.time() - started) / 60:.1f} min · other processes used {others_cpu():.2f} cores on average "
             "meanwhile", "",
             "| figure | value | target | met |", "|---|---|---|---|"]
    for name, _, _ in BENCHES:
        path = results / f"{name}.json"
        fresh = path.exists() and path.stat().st_mtime >= started and outcomes.get(name, "").startswith("ran")
        if only and name not in only and path.exists() and not args.quick:
            # Not rerun this time (--only): keep its last recorded figures, dated.
            saved = json.loads(path.read_text())
            for fig in saved["figures"]:
                lines.append(f"| {fig['figure']} (from {saved['date']}) | {fig['value']} | {fig['target']} | "
                             f"{verdict(fig['met'])} |")
            continue
        if not fresh:
            lines.append(f"| {name} | {outcomes.get(name, 'not run')} | | |")
            continue
        for fig in json.loads(path.read_text())["figures"]:
            lines.append(f"| {fig['figure']} | {fig['value']} | {fig['target']} | {verdict(fig['met'])} |")
    lines += ["", "Details per benchmark: bench/results/<name>.md. The machine is a shared 2-core box; "
              "each table says how much CPU other people's processes took while it ran."]
    text = "\n".join(lines) + "\n"
    results.mkdir(parents=True, exist_ok=True)
    (results / "summary.md").write_text(text)
    print(text)
    return 0 if all(not o.startswith("FAILED") for o in outcomes.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
