"""Settings in sections: the same LLMCTV_* names, one loader, one copy of each section."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from model.settings import (
    clear_settings_cache,
    flat_dump,
    load_settings,
    setting_paths,
    with_overrides,
)
from service.settings import Settings, get_settings, public_settings
from workers.settings import WorkerSettings

#: The gateway's sections and how many settings each holds (README, docs/architecture.md).
SECTIONS = {
    "http": 11,
    "uploads": 5,
    "auth": 5,
    "review": 4,
    "orders": 1,
    "dicom": 24,
    "contouring": 16,
    "jobs": 12,
    "storage": 6,
    "model": 7,
}


def test_the_gateway_has_its_documented_sections() -> None:
    paths = setting_paths(Settings)
    assert Counter(path[0] for path in paths.values()) == SECTIONS
    assert all(len(path) == 1 for path in paths.values()), "one level of sections"
    workers = setting_paths(WorkerSettings)
    assert {name: paths[name] for name in workers} == workers, "the worker's sections are the same"


def test_variables_keep_their_flat_names(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LLMCTV_PORT", "8123")
    monkeypatch.setenv("LLMCTV_DICOM_PORT", "11999")
    monkeypatch.setenv("LLMCTV_STORAGE_DIR", str(tmp_path))
    monkeypatch.setenv("LLMCTV_REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("LLMCTV_ROI_NAMES", "breast=Breast_{side}, axilla=Ax_{side}")
    monkeypatch.setenv("LLMCTV_API_TOKENS", "a:admin:secret-a,b:reviewer:secret-b")
    monkeypatch.setenv("LLMCTV_HTTP", "not a section")  # the composition reads nothing itself
    clear_settings_cache()
    try:
        settings = get_settings()
        assert get_settings() is settings, "loaded once"
        assert settings.http.port == 8123 and settings.dicom.dicom_port == 11999
        assert settings.storage.storage_dir == tmp_path
        assert settings.jobs.redis_url == "redis://127.0.0.1:1/0"
        assert settings.contouring.roi_names == ["breast=Breast_{side}", "axilla=Ax_{side}"]
        assert settings.auth.api_tokens == ["a:admin:secret-a", "b:reviewer:secret-b"]
        worker = load_settings(WorkerSettings)
        assert worker.storage.storage_dir == tmp_path and worker.jobs.redis_url is not None
    finally:
        clear_settings_cache()


def test_the_worker_view_holds_the_very_same_sections(tmp_path: Path) -> None:
    settings = Settings.from_env(storage_dir=tmp_path, checkpoint=tmp_path / "ckpt")
    worker = settings.worker
    assert worker.storage is settings.storage and worker.model is settings.model
    assert worker.jobs is settings.jobs and worker.contouring is settings.contouring
    changed = with_overrides(settings, {"storage_dir": tmp_path / "other"})
    assert changed.worker.storage.storage_dir == tmp_path / "other"
    assert settings.storage.storage_dir == tmp_path, "the original is left as it was"


def test_overrides_go_to_their_sections_and_are_validated(tmp_path: Path) -> None:
    settings = Settings.from_env(storage_dir=tmp_path, require_review=True, port=9000)
    assert settings.storage.storage_dir == tmp_path
    assert settings.review.require_review and settings.http.port == 9000
    changed = with_overrides(settings, {"port": "9001", "dicom_allowed_aets": ["PACS"]})
    assert changed.http.port == 9001 and changed.dicom.dicom_allowed_aets == ["PACS"]
    assert changed.storage is settings.storage, "sections without changes are kept"
    assert with_overrides(changed, {"worker_text_encoder": False}).jobs.worker_text_encoder is False
    with pytest.raises(ValueError, match="no setting"):
        with_overrides(settings, {"storage": tmp_path})
    with pytest.raises(ValueError, match="no setting"):
        Settings.from_env(storag_dir=tmp_path)
    with pytest.raises(ValueError):
        with_overrides(settings, {"port": "not a port"})


def test_the_audit_sees_every_setting_by_its_flat_name_without_secrets(tmp_path: Path) -> None:
    settings = Settings.from_env(
        storage_dir=tmp_path,
        api_tokens=["ops:admin:very-secret-token"],
        redis_url="redis://:hunter2@redis:6379/0",
    )
    public = public_settings(settings)
    assert set(public) == (set(flat_dump(settings)) - {"api_tokens"}) | {"api_identities"}
    assert public["api_identities"] == 1 and public["storage_dir"] == str(tmp_path)
    assert public["redis_url"] == "redis://***@redis:6379/0"
    assert "very-secret-token" not in str(public) and "hunter2" not in str(public)
