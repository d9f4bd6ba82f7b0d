"""Headless training on the same TrainConfig schema as the UI and the REST API.

Run:
    python -m finetune train config.yaml            # YAML or JSON; FINETUNE_HOME picks the data folder
    python -m finetune train config.yaml --dataset my_data.jsonl   # register a file and train on it
    python -m finetune config-template > config.yaml                # every field, with its help text

``train`` validates the file with TrainConfig (errors name the field, exit 2),
runs in the foreground with a progress bar and METRIC lines, and writes the
same ``runs/<id>/`` folder the studio writes, so the run shows in the studio's
history. Exit codes: 0 completed, 1 failed, 2 bad config, 130 interrupted
(Ctrl-C stops cooperatively: the current step finishes and the model is saved).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from pydantic import PrivateAttr, ValidationError

from finetune.settings import Settings

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_INTERRUPTED = 0, 1, 2, 130


class _StagedSettings(Settings):
    """Settings whose runs folder is a private staging folder.

    A RunManager recovers every run under its root at start-up: on the live
    home it would mark a server's running job 'interrupted' and run the
    server's queued jobs in this process. So the CLI trains in a hidden
    ``runs/.cli-*`` folder (the manager skips dot-folders) and moves the
    finished run into ``runs/``.
    """

    _staging: Path | None = PrivateAttr(None)

    @property
    def runs_dir(self) -> Path:
        return self._staging or super().runs_dir


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m finetune",
        description="Fine-tuning studio, headless. Runs land in FINETUNE_HOME/runs/<id>/ like the studio's own.",
        epilog="Settings come from the environment (FINETUNE_HOME, FINETUNE_TORCH_THREADS, ...). "
        "The UI and REST API: python app.py",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train = sub.add_parser("train", help="train from a YAML or JSON config file, in the foreground",
                           description="Train from a config file validated by the studio's TrainConfig schema.",
                           epilog="Exit codes: 0 completed, 1 failed, 2 bad config or dataset, 130 interrupted "
                           "(Ctrl-C stops after the current step and saves the model; Ctrl-C again quits at once).")
    train.add_argument("config", type=Path, help="YAML or JSON file with TrainConfig fields (see config-template)")
    train.add_argument("--dataset", type=Path, metavar="FILE",
                       help="register this data file (csv, tsv, json, jsonl, parquet, txt) and train on it; overrides dataset_id")
    train.add_argument("--quiet", action="store_true", help="no progress bar; print only METRIC and final lines")
    sub.add_parser("config-template", help="print a default YAML config with every field's description",
                   description="Print a YAML config with the defaults and the help text of every field.")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "config-template":
        print(config_template(), end="")
        return EXIT_OK
    return train(args.config, args.dataset, quiet=args.quiet)


def config_template() -> str:
    from finetune.config import TrainConfig
    from finetune.export import config_yaml

    values: dict[str, Any] = {"dataset_id": "demo"}
    values.update({name: f.default for name, f in TrainConfig.model_fields.items() if not f.is_required()})
    header = "# Training config for `python -m finetune train` (same fields as POST /api/jobs and the UI form).\n"
    return header + config_yaml(values)


def load_config(path: Path, dataset_id: str | None = None) -> Any:
    """Read and validate a config file; raises ValueError with a readable message."""
    import yaml

    from finetune.config import TrainConfig
    from finetune.errors import describe_validation_error

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ValueError(f"{path} is not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'}: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping of config fields (like 'dataset_id: demo'), not {type(data).__name__}")
    if dataset_id:
        data["dataset_id"] = dataset_id
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        raise ValueError(f"invalid config in {path}: {describe_validation_error(exc)}") from None


def train(config_path: Path, dataset_file: Path | None = None, quiet: bool = False) -> int:
    from finetune.dataset_store import DatasetNotFound
    from finetune.errors import describe_validation_error
    from finetune.service import Studio

    try:
        settings = _StagedSettings()
    except ValidationError as exc:
        _fail_config(f"invalid environment settings: {describe_validation_error(exc)}")
        return EXIT_CONFIG
    settings.runs_dir.mkdir(parents=True, exist_ok=True)
    settings._staging = Path(tempfile.mkdtemp(prefix=".cli-", dir=settings.runs_dir))
    studio = None
    try:
        studio = Studio(settings)
        dataset_id = None
        if dataset_file is not None:
            with dataset_file.open("rb") as fh:
                dataset_id = studio.add_dataset(fh, dataset_file.name)["dataset_id"]
            print(f"registered {dataset_file} as dataset {dataset_id}")
        config = load_config(config_path, dataset_id)
        # Before the worker starts: transformers' lazy first import is not safe
        # to run from two threads at once (seen: "cannot import AutoTokenizer").
        _quiet_libraries()
        try:
            job = studio.start_job(config)
        except DatasetNotFound:
            raise ValueError(f"dataset_id: no dataset '{config.dataset_id}' in {settings.datasets_dir}. Pass --dataset FILE, "
                             "use 'demo', or set FINETUNE_HOME to the studio's data folder.") from None
    except (ValueError, OSError) as exc:  # DataError and UploadTooLarge are ValueErrors
        _fail_config(str(exc))
        return _finish(studio, settings, None, EXIT_CONFIG)
    except KeyboardInterrupt:
        return _finish(studio, settings, None, EXIT_INTERRUPTED)

    print(f"job {job.job_id}: {config.method} on {config.base_model}, dataset {config.dataset_id}", flush=True)
    try:
        status = _follow(studio, job, quiet)
    except KeyboardInterrupt:
        # Second Ctrl-C: quit now. The run keeps status "running" on disk, so
        # the next studio start marks it interrupted, as after any crash.
        print("quit before the run stopped: it will show as interrupted", file=sys.stderr)
        return _finish(None, settings, job.job_id, EXIT_INTERRUPTED)
    code = {"completed": EXIT_OK, "cancelled": EXIT_INTERRUPTED}.get(status, EXIT_FAILED)
    return _finish(studio, settings, job.job_id, code)


def _quiet_libraries() -> None:
    """A terminal user wants the run's own lines, not library progress bars and deprecation notes."""
    warnings.filterwarnings("ignore", category=FutureWarning)
    import tqdm  # noqa: F401 - imported here, in the main thread, before the worker needs them
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer  # noqa: F401
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _fail_config(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


def _follow(studio: Any, job: Any, quiet: bool) -> str:
    """Print events and drive a progress bar until the job ends; Ctrl-C cancels it cooperatively."""
    from tqdm import tqdm

    bar: Any = None
    since, interrupted = 0, False
    try:
        while True:
            try:
                for event in job.events.read(since, limit=1000):
                    since = event["seq"]
                    _print_event(event, bar, quiet)
                rec = job.snapshot()
                if bar is None and not quiet and rec.get("max_steps"):
                    # Opened once the step count is known, so the rate counts training only.
                    bar = tqdm(total=rec["max_steps"], unit="step", dynamic_ncols=True, file=sys.stderr)
                if bar is not None and (rec.get("step") or 0) != bar.n:
                    if rec.get("loss") is not None:
                        bar.set_postfix(loss=f"{rec['loss']:.4f}", refresh=False)
                    bar.update((rec.get("step") or 0) - bar.n)
                if rec["status"] not in ("queued", "running") and job.events.last_seq <= since:
                    return rec["status"]
                time.sleep(0.2)
            except KeyboardInterrupt:
                if interrupted:
                    raise  # a second Ctrl-C: stop waiting
                interrupted = True
                _write("interrupted: stopping after the current step and saving (Ctrl-C again to quit now)", bar)
                try:
                    studio.runs.cancel(job.job_id)
                except Exception as exc:  # noqa: BLE001 - it may have just finished
                    log.debug("cancel: %s", exc)
    finally:
        if bar is not None:
            bar.close()


def _print_event(event: dict[str, Any], bar: Any, quiet: bool) -> None:
    level = event.get("level")
    if level == "METRIC":
        fields = " ".join(f"{k}={event[k]:.6g}" if isinstance(event[k], float) else f"{k}={event[k]}"
                          for k in ("step", "loss", "learning_rate", "grad_norm", "eval_loss", "epoch") if k in event)
        _write(f"METRIC {fields}", bar)
    elif not quiet or level == "ERROR":
        _write(f"{level} {event.get('message')}", bar)


def _write(line: str, bar: Any) -> None:
    if bar is not None:
        bar.write(line, file=sys.stdout)
    else:
        print(line, flush=True)


def _finish(studio: Any, settings: _StagedSettings, job_id: str | None, code: int) -> int:
    """Stop the worker (unless studio is None), move the run into FINETUNE_HOME/runs, remove the staging folder."""
    if studio is not None:
        studio.close()
    staging = settings._staging
    settings._staging = None
    if staging is not None:
        if job_id is not None and (staging / job_id).is_dir():
            target = settings.runs_dir / job_id
            os.replace(staging / job_id, target)
            rec = json.loads((target / "status.json").read_text(encoding="utf-8"))
            tail = f": {rec['error']}" if rec.get("error") else ""
            stream = sys.stdout if code == EXIT_OK else sys.stderr
            print(f"{rec['status']}: job {job_id} in {target}{tail}", file=stream)
            if rec.get("metrics"):
                print("metrics: " + json.dumps(rec["metrics"], default=str), file=stream)
        shutil.rmtree(staging, ignore_errors=True)
    return code


def run() -> None:
    """Console entry: the default SIGINT handler raises KeyboardInterrupt in the main thread, which _follow handles."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(main())
