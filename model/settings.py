"""The one settings object of llmctv (environment variables ``LLMCTV_*``).

Nothing else reads the environment. Use :func:`get_settings`; tests may call
``get_settings.cache_clear()`` after changing the environment.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Process-wide configuration.

    Attributes
    ----------
    cache_dir
        Where converted text encoders (GGUF -> safetensors) and data caches live.
    device
        ``auto`` picks CUDA when available, else CPU.
    torch_threads
        CPU threads for torch (0 keeps torch's default).
    """

    model_config = SettingsConfigDict(env_prefix="LLMCTV_", extra="ignore")

    cache_dir: Path = Field(default=Path.home() / ".cache" / "llmctv")
    device: str = "auto"
    torch_threads: int = 0
    text_encoder: Path | None = None
    checkpoint: Path | None = None
    offline: bool = True


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Return the cached process settings."""
    return Settings()
