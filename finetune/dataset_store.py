"""Uploaded datasets on disk: ``datasets/<id>/`` with the file and ``meta.json``.

The user's file name is kept only as display text in the metadata; on disk
the file is ``data<ext>`` under a generated id, so a name can never become a
path. An upload is checked in a temporary folder and renamed into place only
once it loads, so a refused or interrupted upload leaves nothing behind.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, BinaryIO

from finetune import data
from finetune.demo import DEMO_FILENAME, demo_csv_bytes

log = logging.getLogger(__name__)

DEMO_DATASET_ID = "demo"
_CHUNK = 1024 * 1024


class DatasetNotFound(KeyError):
    pass


class UploadTooLarge(ValueError):
    pass


def _extension(filename: str) -> str:
    ext = os.path.splitext(filename)[1].lower()
    if ext not in data.SUPPORTED_EXTENSIONS:
        accepted = ", ".join(data.SUPPORTED_EXTENSIONS)
        shown = ext or "no extension"
        raise data.DataError(f"Files of type '{shown}' are not accepted. Upload one of: {accepted}.")
    return ext


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write JSON via temp file + rename so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=2, default=str)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class DatasetStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # Leftovers of uploads killed mid-way.
        for leftover in self.root.glob(".upload-*"):
            shutil.rmtree(leftover, ignore_errors=True)

    # -- writing ---------------------------------------------------------
    def add(self, stream: BinaryIO, filename: str, max_bytes: int, dataset_id: str | None = None) -> dict[str, Any]:
        """Store an upload after checking it; raises DataError / UploadTooLarge."""
        ext = _extension(filename)
        tmp = Path(tempfile.mkdtemp(prefix=".upload-", dir=self.root))
        try:
            file_path = tmp / f"data{ext}"
            size = 0
            with file_path.open("wb") as out:
                while chunk := stream.read(_CHUNK):
                    size += len(chunk)
                    if size > max_bytes:
                        raise UploadTooLarge(
                            f"The file is larger than the {max_bytes / 1024 / 1024:g} MB limit. "
                            "Upload a smaller file or raise FINETUNE_MAX_UPLOAD_MB."
                        )
                    out.write(chunk)
            table = data.load_table(file_path, filename)
            meta = self._describe(table, filename, size)
            dataset_id = dataset_id or f"ds-{time.strftime('%Y%m%d')}-{secrets.token_hex(4)}"
            meta["dataset_id"] = dataset_id
            atomic_write_json(tmp / "meta.json", meta)
            with self._lock:
                target = self.root / dataset_id
                if target.exists():
                    shutil.rmtree(target)
                os.replace(tmp, target)
            log.info("stored dataset %s (%d rows)", dataset_id, meta["num_rows"])
            return meta
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def ensure_demo(self) -> dict[str, Any]:
        """Create the bundled demo dataset if it is not there yet."""
        if (self.root / DEMO_DATASET_ID / "meta.json").exists():
            return self.get(DEMO_DATASET_ID)
        import io

        payload = demo_csv_bytes()
        return self.add(io.BytesIO(payload), DEMO_FILENAME, len(payload) + 1, dataset_id=DEMO_DATASET_ID)

    @staticmethod
    def _describe(table: data.Table, filename: str, size: int) -> dict[str, Any]:
        guess = data.guess_columns(table)
        # Refuse now, not at training time, a file with too few usable rows.
        examples = data.build_examples(table)
        return {
            "usable_rows": len(examples),
            "dropped_rows": examples.dropped,
            "filename": filename,
            "format": table.file_format,
            "size_bytes": size,
            "num_rows": len(table.rows),
            "columns": table.columns,
            "text_columns": data.text_columns(table),
            "guess": asdict(guess),
            "preview": data.preview_rows(table),
            "warnings": table.warnings,
            "created_at": time.time(),
        }

    # -- reading ---------------------------------------------------------
    def get(self, dataset_id: str) -> dict[str, Any]:
        folder = self._folder(dataset_id)
        try:
            return json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DatasetNotFound(dataset_id) from exc

    def file_path(self, dataset_id: str) -> Path:
        folder = self._folder(dataset_id)
        for candidate in folder.glob("data.*"):
            return candidate
        raise DatasetNotFound(dataset_id)

    def load(self, dataset_id: str) -> data.Table:
        meta = self.get(dataset_id)
        return data.load_table(self.file_path(dataset_id), meta["filename"])

    def list(self) -> list[dict[str, Any]]:
        out = []
        for folder in sorted(self.root.iterdir()):
            if folder.name.startswith(".") or not (folder / "meta.json").exists():
                continue
            try:
                meta = self.get(folder.name)
            except DatasetNotFound:
                continue
            out.append({k: meta.get(k) for k in ("dataset_id", "filename", "format", "num_rows", "columns", "created_at")})
        out.sort(key=lambda m: m.get("created_at") or 0, reverse=True)
        return out

    def _folder(self, dataset_id: str) -> Path:
        # Ids are generated by us; anything else (slashes, dots) is simply unknown.
        if not dataset_id or not all(c.isalnum() or c in "-_" for c in dataset_id):
            raise DatasetNotFound(dataset_id)
        folder = self.root / dataset_id
        if not folder.is_dir():
            raise DatasetNotFound(dataset_id)
        return folder
