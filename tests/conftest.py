"""Shared fixtures: isolated settings, tiny models."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

from model.settings import clear_settings_cache, get_settings

if TYPE_CHECKING:
    from fastapi import FastAPI

    from model.lab.phantoms.cohort import WrittenCase

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def llmctv_cache() -> Path:
    """The real cache folder (converted encoders are reused between runs)."""
    return get_settings().cache_dir


@pytest.fixture
def isolated_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Point LLMCTV_CACHE_DIR at a temporary folder for one test."""
    monkeypatch.setenv("LLMCTV_CACHE_DIR", str(tmp_path / "cache"))
    clear_settings_cache()
    yield tmp_path / "cache"
    clear_settings_cache()


@pytest.fixture(scope="session")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> list[WrittenCase]:
    """Two small site-A phantoms (128x128 slices): CT files, ground truth, clinical record."""
    from model.lab.phantoms import write_cohort

    return write_cohort(tmp_path_factory.mktemp("ph") / "A", 2, "A", seed=3, scale=0.25)


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, FastAPI]]:
    """A live gateway (uvicorn, free port) on the shipped demo model, embedded worker."""
    from gateway_client import TOKEN
    from live_server import serve_app

    from service.app import create_app
    from service.settings import Settings

    settings = Settings.from_env(
        api_tokens=[TOKEN], storage_dir=tmp_path_factory.mktemp("storage"), dicom_listener=False
    )
    app = create_app(settings)
    with serve_app(app) as url:
        yield url, app
