"""Settings of llmctv (environment variables ``LLMCTV_*``) and their one cached loader.

Each package owns the settings it reads: :class:`ModelSettings` here, the workers' in
:mod:`workers.settings`, DICOM networking in :mod:`service.dicomnet.settings`, and the gateway's
(which holds them all) in :mod:`service.settings`. Every class is loaded through
:func:`load_settings`; nothing else reads the environment. Tests may call
:func:`clear_settings_cache` after changing the environment.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Annotated, TypeVar, cast

from pydantic import Field
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

CommaList = Annotated[list[str], NoDecode]
"""A list setting, comma-separated in the environment."""

S = TypeVar("S", bound=BaseSettings)


def split_commas(value: object) -> object:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``; other values unchanged (a validator's body)."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class ModelSettings(BaseSettings):
    """What the network and text side read.

    Attributes
    ----------
    cache_dir
        Where converted text encoders (GGUF -> safetensors) and data caches live.
    device
        ``auto`` picks CUDA when available, else CPU.
    torch_threads
        CPU threads for torch (0 keeps torch's default).
    text_encoder
        Text-encoder folder overriding the checkpoint's own.
    checkpoint
        Checkpoint folder (default: the shipped demo model).
    offline
        Never reach a model hub (always true in clinical use).
    """

    model_config = SettingsConfigDict(env_prefix="LLMCTV_", extra="ignore")

    cache_dir: Path = Field(default=Path.home() / ".cache" / "llmctv")
    device: str = "auto"
    torch_threads: int = 0
    text_encoder: Path | None = None
    checkpoint: Path | None = None
    offline: bool = True


@cache
def _load(cls: type[BaseSettings]) -> BaseSettings:
    return cls()


def load_settings(cls: type[S]) -> S:
    """The process settings of class ``cls``, read from the environment once."""
    return cast(S, _load(cls))


def clear_settings_cache() -> None:
    """Forget every loaded settings object (tests that change the environment)."""
    _load.cache_clear()


def with_overrides(settings: S, updates: Mapping[str, object]) -> S:
    """A validated copy of ``settings`` with ``updates`` applied (command-line options)."""
    return type(settings).model_validate({**settings.model_dump(), **updates})


def get_settings() -> ModelSettings:
    """The model's settings (cached by :func:`load_settings`)."""
    return load_settings(ModelSettings)
