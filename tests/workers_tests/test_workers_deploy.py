"""Deployment files: the example settings cover every setting; the compose file validates."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from model.settings import setting_paths
from service.settings import Settings

REPO = Path(__file__).resolve().parents[2]
ENV_EXAMPLE = REPO / "deploy" / "llmctv.env.example"


def _assignments(text: str, commented: bool) -> dict[str, str]:
    pattern = r"^#?\s*(LLMCTV_[A-Z0-9_]+)=(.*)$" if commented else r"^(LLMCTV_[A-Z0-9_]+)=(.*)$"
    found = {}
    for line in text.splitlines():
        match = re.match(pattern, line.strip())
        if match:
            found[match.group(1)] = match.group(2)
    return found


def test_example_env_lists_every_setting_and_is_valid() -> None:
    text = ENV_EXAMPLE.read_text()
    listed = _assignments(text, commented=True)
    expected = {f"LLMCTV_{name.upper()}" for name in setting_paths(Settings)}  # every section's
    assert sorted(expected - set(listed)) == []
    assert sorted(set(listed) - expected) == [], "names that are not settings"
    active = {k.removeprefix("LLMCTV_").lower(): v for k, v in _assignments(text, False).items()}
    settings = Settings.from_env(**active)
    assert settings.jobs.redis_url == "redis://:change-this-redis-password@redis:6379/0"
    # Safe defaults (issue 23): review required, secure cookie, an AE allow-list, DICOM on
    # loopback, Redis with a password.
    assert (
        settings.review.require_review
        and settings.review.ui_secure_cookie
        and settings.review.hold_needs_attention
    )
    assert settings.dicom.dicom_allowed_aets and settings.dicom.dicom_host == "127.0.0.1"
    assert (
        settings.jobs.task_soft_time_limit
        < settings.jobs.task_hard_time_limit
        < settings.jobs.visibility_timeout
    )


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_compose_file_validates_and_reserves_a_gpu() -> None:
    done = subprocess.run(
        ["docker-compose", "--profile", "cache-workers", "config"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    config = done.stdout
    assert "driver: nvidia" in config and "capabilities:" in config
    assert "--appendfsync" in config and "always" in config
    assert config.count("healthcheck:") >= 4
