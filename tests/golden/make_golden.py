"""Write the golden loss trajectory of a tiny deterministic LoRA run.

Run it (from the repository root) only when a change to the model recipe,
the data pipeline or the training defaults is *meant* to change the numbers:

    HF_HUB_OFFLINE=1 .venv/bin/python tests/golden/make_golden.py

It writes ``tests/golden/lora_demo_losses.json``; ``tests/test_training_e2e.py``
reruns the same run and compares with a relative tolerance.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from finetune.config import TrainConfig  # noqa: E402
from finetune.dataset_store import DatasetStore  # noqa: E402
from finetune.events import EventLog  # noqa: E402
from finetune.settings import Settings  # noqa: E402
from finetune.tinymodel import ensure_tiny_model  # noqa: E402
from finetune.training import RunContext, run_training  # noqa: E402

GOLDEN_FILE = Path(__file__).with_name("lora_demo_losses.json")
# The run the reference values describe. Threads are pinned: float sums on CPU
# may differ in the last bits with another thread count, and one thread is
# also the fastest on a busy machine.
GOLDEN_CONFIG = {
    "dataset_id": "demo",
    "method": "lora",
    "max_steps": 20,
    "logging_steps": 5,
    "seed": 1234,
    "learning_rate": 2e-3,
    "per_device_train_batch_size": 8,
}
GOLDEN_THREADS = 1


def golden_losses(home: Path, models_dir: Path | None = None) -> list[float]:
    """Run the golden config in ``home`` and return the logged training losses in step order."""
    settings = Settings(home=home, torch_threads=GOLDEN_THREADS)
    if models_dir is not None:
        # Reuse an already built bundled model (the test suite builds one per session).
        built = ensure_tiny_model(models_dir)
        settings.models_dir.mkdir(parents=True, exist_ok=True)
        link = settings.models_dir / built.name
        if not link.exists():
            link.symlink_to(built, target_is_directory=True)
    datasets = DatasetStore(settings.datasets_dir)
    datasets.ensure_demo()
    config = TrainConfig(**GOLDEN_CONFIG)
    run_dir = settings.runs_dir / "golden"
    run_dir.mkdir(parents=True, exist_ok=False)
    events = EventLog(run_dir / "events.jsonl")
    ctx = RunContext(run_dir, events, should_stop=lambda: False, on_progress=lambda fields: None)
    path = datasets.file_path("demo")
    result = run_training(config, path, datasets.get("demo")["filename"], ctx, settings)
    assert not result.cancelled
    return [e["loss"] for e in events.iter_all() if e["level"] == "METRIC" and "loss" in e]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        losses = golden_losses(Path(tmp) / "home")
    payload = {"config": GOLDEN_CONFIG, "torch_threads": GOLDEN_THREADS, "losses": losses}
    GOLDEN_FILE.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {GOLDEN_FILE}: {losses}")


if __name__ == "__main__":
    main()
