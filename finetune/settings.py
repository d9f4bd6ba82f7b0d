"""Runtime settings, read once from the environment (pydantic-settings).

Every knob an operator can turn lives here, so the README's settings table and
this class are the same list.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_threads() -> int:
    # sched_getaffinity honours container CPU limits, os.cpu_count does not.
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    home: Path = Field(
        Path("finetune_home"),
        validation_alias=AliasChoices("FINETUNE_HOME"),
        description="Data folder: datasets, runs, built models and caches.",
    )
    max_upload_mb: float = Field(
        200, gt=0, validation_alias=AliasChoices("FINETUNE_MAX_UPLOAD_MB"),
        description="Largest dataset upload accepted, in MB (bigger gets 413).",
    )
    api_token: SecretStr | None = Field(
        None, validation_alias=AliasChoices("FINETUNE_API_TOKEN"),
        description="When set, /api/* needs 'Authorization: Bearer <token>' and the UI asks for it.",
    )
    trust_remote_code: bool = Field(
        False, validation_alias=AliasChoices("FINETUNE_TRUST_REMOTE_CODE"),
        description="Allow models whose code lives on the Hub. Off: only built-in architectures load.",
    )
    model_roots: str = Field(
        "", validation_alias=AliasChoices("FINETUNE_MODEL_ROOTS"),
        description="Folders (separated by ':') under which local base models may be loaded; FINETUNE_HOME/models always is.",
    )
    torch_threads: int = Field(
        default_factory=_default_threads, ge=1,
        validation_alias=AliasChoices("FINETUNE_TORCH_THREADS"),
        description="CPU threads the training thread may use (default: all available cores).",
    )
    server_name: str = Field(
        "127.0.0.1", validation_alias=AliasChoices("GRADIO_SERVER_NAME"),
        description="Host to bind. 127.0.0.1 keeps the studio private to this machine.",
    )
    server_port: int = Field(
        7860, ge=1, le=65535, validation_alias=AliasChoices("GRADIO_SERVER_PORT"),
        description="Port to bind.",
    )

    @property
    def datasets_dir(self) -> Path:
        return self.home / "datasets"

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"

    @property
    def allowed_model_roots(self) -> list[Path]:
        roots = [self.models_dir]
        roots += [Path(p) for p in self.model_roots.split(os.pathsep) if p.strip()]
        return [Path(os.path.abspath(r.expanduser())) for r in roots]

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
