"""Packing benchmark: training tokens/s with packing on and off on short examples.

Run:  .venv/bin/python -m bench.packing [--steps 60] [--rounds 3]

Uses the studio's own run path (finetune.training.run_training) on the bundled
model and demo dataset (short prompt/completion pairs), alternating on/off so
machine noise hits both alike. Target: packed/unpacked >= 1.5.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
from pathlib import Path

from bench.common import Figure, new_home, verdict, write_table  # also: offline, quiet environment


def one_run(home: Path, packing: bool, steps: int, batch: int) -> float:
    from finetune.config import TrainConfig
    from finetune.dataset_store import DatasetStore
    from finetune.events import EventLog
    from finetune.settings import Settings
    from finetune.training import RunContext, run_training

    settings = Settings(home=home)
    store = DatasetStore(settings.datasets_dir)
    meta = store.ensure_demo()
    run_dir = Path(tempfile.mkdtemp(dir=home))
    ctx = RunContext(run_dir, EventLog(run_dir / "events.jsonl"), threading.Event().is_set, lambda _f: None)
    config = TrainConfig(dataset_id="demo", max_steps=steps, packing=packing, per_device_train_batch_size=batch,
                         max_seq_length=256, save_steps=10**6, logging_steps=10)
    result = run_training(config, store.file_path("demo"), meta["filename"], ctx, settings)
    return float(result.metrics["train_tokens_per_second"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    home = new_home("packing")  # the bundled model is linked in, built once per machine
    one_run(home, False, 5, args.batch)  # warm-up: import everything
    off, on = [], []
    for i in range(args.rounds):
        # Alternate which goes first, so drift in machine load hits both alike.
        for packing in ((False, True) if i % 2 == 0 else (True, False)):
            (on if packing else off).append(one_run(home, packing, args.steps, args.batch))
    m_off, m_on = statistics.median(off), statistics.median(on)
    ratio = m_on / m_off
    write_table(
        "packing", "Packing: training tokens/s on short examples (demo dataset, bundled model, LoRA)",
        ["packing", "tokens/s (median)", "runs"],
        [["off", f"{m_off:,.0f}", ", ".join(f"{v:,.0f}" for v in off)],
         ["on", f"{m_on:,.0f}", ", ".join(f"{v:,.0f}" for v in on)],
         ["ratio on/off", f"{ratio:.2f}", f"target ≥ 1.5: {verdict(ratio >= 1.5)}"]],
        notes=f"{args.steps} steps per run, batch {args.batch}, max_seq_length 256, {args.rounds} alternated rounds.",
        summary=[Figure("packing: training tokens/s packed ÷ unpacked (short examples)", f"{ratio:.2f}", "≥ 1.5", ratio >= 1.5)],
    )


if __name__ == "__main__":
    main()
