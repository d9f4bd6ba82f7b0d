"""Studio overhead: training samples/s through the studio vs a bare Trainer.train().

Run:  .venv/bin/python -m bench.overhead [--steps 120] [--rounds 6]

Both sides train the bundled tiny model (LoRA) on the demo dataset with the
same TrainConfig, so the same tokenised data, collator and TrainingArguments:

- bare: the Trainer is built here from finetune.training's own helpers
  (_load_examples, prep.tokenize_examples, _to_dataset, _build_trainer), the
  studio's event callback removed, and ``trainer.train()`` called directly;
- studio: create_app() served by a real uvicorn server in a thread of this
  process, the job submitted with POST /api/jobs and run by the RunManager's
  worker thread, while 2 clients poll /api/status and /api/logs?since=<cursor>
  at 2 Hz each.

Rounds alternate which side goes first. Speed is the Trainer's own
train_samples_per_second on both sides (steps x batch / train_runtime); the
figure is the median over rounds of studio / bare (the two runs of a round are
back to back, so drift in machine load mostly cancels).
Target: studio / bare >= 0.98.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench.common import Figure, free_port, new_home, print_progress, runs_list, verdict, write_table  # noqa: E402


def make_config(steps: int):
    from finetune.config import TrainConfig

    # No checkpoints inside the timed loop; metrics logged every 5 steps (the default).
    return TrainConfig(dataset_id="demo", max_steps=steps, save_steps=10**6)


def bare_run(settings, steps: int) -> float:
    """Trainer.train() on exactly what finetune.training builds, without the studio around it."""
    import torch
    from transformers import set_seed

    from finetune import modeling, prep, training
    from finetune.dataset_store import DatasetStore
    from finetune.events import EventLog

    config = make_config(steps)
    store = DatasetStore(settings.datasets_dir)
    meta = store.ensure_demo()
    plan = modeling.pick_device()
    torch.set_num_threads(settings.torch_threads)
    examples = training._load_examples(config, store.file_path("demo"), meta["filename"], lambda *a, **k: None, "training")
    path = modeling.resolve_model_path(config.base_model, settings)
    tokenizer = modeling.load_tokenizer(path, settings)
    set_seed(config.seed)
    model = modeling.load_model(path, config, plan, settings)
    encoded = prep.tokenize_examples(examples, tokenizer, config.max_seq_length, config.completion_only_loss)
    dataset = training._to_dataset(encoded)
    run_dir = Path(tempfile.mkdtemp(prefix="bare-", dir=settings.home))
    ctx = training.RunContext(run_dir, EventLog(run_dir / "events.jsonl"), lambda: False, lambda _f: None)
    trainer = training._build_trainer(config, model, tokenizer, dataset, None, ctx, plan)
    for cb in list(trainer.callback_handler.callbacks):
        if type(cb).__name__ == "StudioCallback":
            trainer.remove_callback(cb)
    out = trainer.train()
    return float(out.metrics["train_samples_per_second"])


class Pollers:
    """Clients that each GET /api/status and /api/logs?since=<cursor> every ``period`` seconds."""

    def __init__(self, base_url: str, n: int, period: float) -> None:
        self.base_url, self.period = base_url, period
        self.stop = threading.Event()
        self.requests = 0
        self.errors = 0
        self.threads = [threading.Thread(target=self._poll, daemon=True) for _ in range(n)]

    def _poll(self) -> None:
        import httpx

        cursor = 0
        with httpx.Client(base_url=self.base_url, timeout=10) as client:
            while not self.stop.is_set():
                t0 = time.perf_counter()
                try:
                    ok = client.get("/api/status").status_code == 200
                    resp = client.get("/api/logs", params={"since": cursor})
                    ok = ok and resp.status_code == 200
                    if resp.status_code == 200:
                        cursor = resp.json()["next_since"]
                except httpx.HTTPError:
                    ok = False
                self.requests += 2
                self.errors += 0 if ok else 1
                self.stop.wait(max(0.0, self.period - (time.perf_counter() - t0)))

    def __enter__(self) -> Pollers:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(10)


def studio_run(base_url: str, studio, steps: int, pollers: int) -> tuple[float, int, int]:
    import httpx

    with Pollers(base_url, pollers, 0.5) as polling:
        resp = httpx.post(f"{base_url}/api/jobs", json=make_config(steps).model_dump(), timeout=30)
        resp.raise_for_status()
        job = studio.runs.get(resp.json()["job_id"])
        while job.record["status"] in ("queued", "running"):
            time.sleep(0.2)
    if job.record["status"] != "completed":
        raise RuntimeError(f"studio run {job.job_id} ended {job.record['status']}: {job.record.get('error')}")
    return float(job.record["metrics"]["train_samples_per_second"]), polling.requests, polling.errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--pollers", type=int, default=2)
    args = parser.parse_args()

    import uvicorn

    from finetune.server import create_app
    from finetune.settings import Settings

    home = new_home("overhead")
    settings = Settings(home=home)
    app = create_app(settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    base_url = f"http://127.0.0.1:{port}"
    studio = app.state.studio
    try:
        print_progress("warm-up (imports, first steps)")
        bare_run(settings, 10)
        studio_run(base_url, studio, 10, args.pollers)
        bare, staged, requests, errors = [], [], 0, 0
        for i in range(args.rounds):
            order = ("bare", "studio") if i % 2 == 0 else ("studio", "bare")
            for side in order:
                print_progress(f"round {i + 1}/{args.rounds}: {side}")
                if side == "bare":
                    bare.append(bare_run(settings, args.steps))
                else:
                    sps, req, err = studio_run(base_url, studio, args.steps, args.pollers)
                    staged.append(sps)
                    requests += req
                    errors += err
    finally:
        server.should_exit = True
        thread.join(30)
        studio.close()

    m_bare, m_studio = statistics.median(bare), statistics.median(staged)
    per_round = [s / b for s, b in zip(staged, bare)]
    # Each round's two runs are back to back, so drift in machine load mostly
    # cancels within a round: the median of per-round ratios is the figure.
    ratio = statistics.median(per_round)
    write_table(
        "overhead", "Studio overhead: samples/s through the studio vs a bare Trainer.train()",
        ["path", "samples/s (median)", "runs", "target"],
        [["bare Trainer.train()", f"{m_bare:.1f}", runs_list(bare), ""],
         [f"studio (uvicorn + worker thread, {args.pollers} pollers at 2 Hz)", f"{m_studio:.1f}", runs_list(staged), ""],
         ["ratio studio ÷ bare, median of rounds", f"{ratio:.3f}", "per round: " + runs_list(per_round, "{:.3f}"),
          f"≥ 0.98: {verdict(ratio >= 0.98)}"],
         ["ratio of the medians", f"{m_studio / m_bare:.3f}", "", ""]],
        notes=(f"{args.steps} steps per run (LoRA, bundled tiny model, demo dataset, batch 8, max_seq_length 256), "
               f"{args.rounds} rounds alternating which side goes first, one process. Samples/s is the Trainer's "
               f"train_samples_per_second on both sides. Pollers made {requests} requests, {errors} failed."),
        summary=[Figure("overhead: studio (server + 2 pollers at 2 Hz) ÷ bare Trainer.train() samples/s, median of rounds",
                        f"{ratio:.3f}", "≥ 0.98", ratio >= 0.98)],
    )


if __name__ == "__main__":
    main()
