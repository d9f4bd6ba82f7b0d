"""Shared helpers for the benchmark scripts.

Every benchmark prints a markdown table (figure, target, met or missed) and
writes it to ``bench/results/<name>.md`` with the machine and the date; with a
``summary`` it also writes ``bench/results/<name>.json``, which ``bench.all``
collects into one summary table.
"""

from __future__ import annotations

import json
import math
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# Offline, and quiet: no weight-loading bars or deprecation chatter in the tables' output.
for _name, _value in (("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"),
                      ("TOKENIZERS_PARALLELISM", "false"), ("TRANSFORMERS_VERBOSITY", "error"),
                      ("HF_HUB_DISABLE_PROGRESS_BARS", "1"), ("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")):
    os.environ.setdefault(_name, _value)
warnings.filterwarnings("ignore", category=FutureWarning)

# bench.all --quick points this elsewhere, so smoke-test figures never replace real ones.
RESULTS = Path(os.environ.get("BENCH_RESULTS") or Path(__file__).parent / "results")


def _cpu_counters() -> tuple[float, float, float]:
    """(wall s, busy CPU-seconds of the whole machine, CPU-seconds of this process and its waited children)."""
    busy = float("nan")
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        busy = (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # all but idle, iowait
    except (OSError, ValueError, IndexError):
        pass
    t = os.times()
    return time.monotonic(), busy, t.user + t.system + t.children_user + t.children_system


# Other people's jobs share this machine: each table says how much CPU they took meanwhile.
_COUNTERS_AT_START = _cpu_counters()


def others_cpu() -> float:
    """Average cores used by processes other than this benchmark since it started."""
    wall0, busy0, own0 = _COUNTERS_AT_START
    wall1, busy1, own1 = _cpu_counters()
    return max(0.0, ((busy1 - busy0) - (own1 - own0)) / max(wall1 - wall0, 1e-9))
ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


# -- machine, verdicts, formatting -------------------------------------------------
def machine() -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {cores} cores, Python {platform.python_version()}"


def today() -> str:
    return time.strftime("%Y-%m-%d")


def verdict(ok: bool | None) -> str:
    if ok is None:
        return "n/a"
    return "met" if ok else "MISSED"


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = max(0, min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1))
    return ordered[k]


def ms(seconds: float) -> str:
    value = seconds * 1000
    return f"{value:.2f} ms" if value < 10 else f"{value:.1f} ms" if value < 100 else f"{value:,.0f} ms"


def kb(n_bytes: float) -> str:
    return f"{n_bytes / 1024:,.1f} KB"


def runs_list(values: Iterable[float], fmt: str = "{:,.1f}") -> str:
    return ", ".join(fmt.format(v) for v in values)


@dataclass
class Figure:
    """One line of the summary table: a measured figure against its target."""

    figure: str
    value: str
    target: str
    met: bool | None


def write_table(
    name: str,
    title: str,
    headers: list[str],
    rows: list[list[object]],
    notes: str = "",
    summary: list[Figure] | None = None,
    save: bool = True,
) -> str:
    others = others_cpu()
    busy = " · **busy machine: figures unreliable**" if others > 0.5 else ""
    lines = [f"### {title}", "", f"{today()} · {machine()} · other processes used {others:.2f} cores on average "
             f"meanwhile{busy}", ""]
    lines.append("| " + " | ".join(headers) + " |")
    lines.append("|" + "---|" * len(headers))
    for row in rows:
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    if notes:
        lines += ["", notes]
    text = "\n".join(lines) + "\n"
    print(text, flush=True)
    if not save:
        return text
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.md").write_text(text)
    if summary is not None:
        payload = {"name": name, "date": today(), "machine": machine(), "figures": [asdict(f) for f in summary]}
        (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    return text


# -- offline environment, the bundled model ------------------------------------------
def offline_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"})
    for name in ("FINETUNE_API_TOKEN", "FINETUNE_TORCH_THREADS", "FINETUNE_MAX_UPLOAD_MB"):
        env.pop(name, None)
    env.update(extra)
    return env


def shared_model_dir() -> Path:
    """The bundled tiny model, built once per machine for all benchmarks."""
    from finetune.tinymodel import ensure_tiny_model

    return ensure_tiny_model(Path(tempfile.gettempdir()) / "finetune-bench-models")


def new_home(prefix: str, with_model: bool = True) -> Path:
    """A fresh FINETUNE_HOME; the bundled model is linked in so no run pays for its build."""
    home = Path(tempfile.mkdtemp(prefix=f"bench-{prefix}-"))
    if with_model:
        model = shared_model_dir()
        (home / "models").mkdir(parents=True)
        (home / "models" / model.name).symlink_to(model, target_is_directory=True)
    return home


# -- real servers in subprocesses ---------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def http_json(url: str, body: dict[str, Any] | None = None, timeout: float = 30.0) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"},
                                 method="GET" if body is None else "POST")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class Server:
    """A real ``python <script>`` server subprocess on a free port.

    ``start()`` returns the seconds from launch to the first 200 from ``ready_path``.
    """

    def __init__(self, home: Path | None = None, script: str | Path = "app.py", ready_path: str = "/api/status",
                 env: dict[str, str] | None = None, log_path: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.script = str(script)
        self.ready_path = ready_path
        extra = {"GRADIO_SERVER_PORT": str(self.port), "GRADIO_SERVER_NAME": "127.0.0.1"}
        if home is not None:
            extra["FINETUNE_HOME"] = str(home)
        self.env = offline_env(**extra, **(env or {}))
        self.log_path = log_path or Path(tempfile.mkstemp(prefix="bench-server-", suffix=".log")[1])
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 120.0) -> float:
        log = self.log_path.open("wb")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen([PYTHON, self.script], cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; log: {self.log_path}\n"
                                   + self.log_path.read_text()[-3000:])
            try:
                status, _ = http_get(self.url + self.ready_path, timeout=2)
                if status == 200:
                    return time.perf_counter() - t0
            except OSError:
                pass
            if time.perf_counter() - t0 > timeout:
                self.stop()
                raise TimeoutError(f"server not ready after {timeout}s; log: {self.log_path}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_job(base_url: str, job_id: str, timeout: float = 900.0, every: float = 1.0) -> dict[str, Any]:
    """Poll GET /api/jobs/{id} (lightly) until the job ends; return the job."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = http_json(f"{base_url}/api/jobs/{job_id}")
        if job["status"] in ("completed", "failed", "cancelled", "interrupted"):
            if job["status"] != "completed":
                raise RuntimeError(f"job {job_id} ended {job['status']}: {job.get('error')}")
            return job
        time.sleep(every)
    raise TimeoutError(f"job {job_id} still running after {timeout}s")


# -- synthetic run histories ----------------------------------------------------------
def write_synthetic_run(runs_dir: Path, run_id: str, steps: int, eval_every: int = 100) -> Path:
    """A finished run folder with ``steps`` METRIC events, in EventLog's line format.

    Written directly (not through EventLog.append) so a 1M-step history takes
    seconds; RunManager recovers it like any run from a previous process.
    """
    from finetune.config import TrainConfig

    folder = runs_dir / run_id
    folder.mkdir(parents=True)
    config = TrainConfig(dataset_id="demo", max_steps=steps, logging_steps=1)
    (folder / "config.json").write_text(config.model_dump_json(indent=2), encoding="utf-8")
    t0 = 1.7e9
    seq = 0
    with (folder / "events.jsonl").open("w", encoding="utf-8") as fh:
        def emit(level: str, message: str, extra: str = "") -> None:
            nonlocal seq
            seq += 1
            fh.write(f'{{"seq":{seq},"time":{t0 + seq * 0.01:.3f},"level":"{level}","message":"{message}"{extra}}}\n')

        emit("INFO", "queued: lora on bundled/tiny-llama with dataset demo")
        emit("INFO", f"training: {steps} steps on CPU (float32)")
        for step in range(1, steps + 1):
            loss = 2.5 + 3.5 / (1 + step / 50) + 0.15 * ((step * 2654435761) % 1000 / 1000 - 0.5)
            lr = 2e-3 * (1 - step / (steps + 1))
            epoch = step / 50
            emit("METRIC", f"step {step} loss {loss:.4f} lr {lr:.3g}",
                 f',"step":{step},"loss":{loss!r},"learning_rate":{lr!r},"grad_norm":{1 + loss / 10!r},"epoch":{epoch!r}')
            if eval_every and step % eval_every == 0:
                emit("METRIC", f"step {step} eval_loss {loss + 0.1:.4f}", f',"step":{step},"eval_loss":{loss + 0.1!r},"epoch":{epoch!r}')
        emit("INFO", "done")
    record = {
        "job_id": run_id, "status": "completed", "created_at": t0, "started_at": t0, "finished_at": t0 + seq * 0.01,
        "train_started_at": t0, "step": steps, "max_steps": steps, "epoch": steps / 50, "loss": 2.6,
        "learning_rate": 0.0, "error": None, "metrics": {}, "dataset_id": "demo", "dataset_filename": "demo.csv",
        "base_model": config.base_model, "method": config.method,
    }
    (folder / "status.json").write_text(json.dumps(record), encoding="utf-8")
    return folder


def print_progress(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
