"""Hostile and broken input at the gateway (issue 15): absurd geometry, validator bypasses,
over-long ids, API docs. Every refusal is a 422/404 problem in milliseconds, before a job.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from factories import CtSpec, write_ct_series
from fake_engine import HoldingDispatcher
from gateway_client import AUTH, TOKEN, submit
from live_server import serve_app
from pydicom.dataset import FileDataset

from service.app import create_app
from service.deps import ServiceState
from service.settings import Settings
from workers.jobs import FileJobStore, JobFiles


@pytest.fixture(scope="module")
def held(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, HoldingDispatcher]]:
    settings = Settings.from_env(
        api_tokens=[TOKEN], storage_dir=tmp_path_factory.mktemp("held"), dicom_listener=False
    )
    files = JobFiles(settings.storage.storage_dir)
    dispatcher = HoldingDispatcher()
    state = ServiceState(settings, FileJobStore(files), files, dispatcher)
    with serve_app(create_app(settings, state)) as url:
        yield url, dispatcher


def _diagnosis(**changes: str) -> dict[str, str]:
    return {
        "side": "left",
        "surgery": "breast_conserving",
        "t_stage": "2",
        "n_stage": "1",
    } | changes


def _clinical(note: str | None = None, **changes: str) -> str:
    body: dict[str, Any] = {"diagnoses": [_diagnosis(**changes)]}
    if note is not None:
        body["note"] = note
    return json.dumps(body)


def _problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["code"] == code, body
    return body


# --- geometry --------------------------------------------------------------------------------
def _set(keyword: str, value: Any) -> Callable[[int, FileDataset], None]:
    def edit(k: int, ds: FileDataset) -> None:
        setattr(ds, keyword, value)

    return edit


def test_600_mm_pixels_are_refused_in_milliseconds(
    held: tuple[str, HoldingDispatcher], tmp_path: Path
) -> None:
    """The probe of the issue: five 16x16 slices with PixelSpacing 600 mm (11 min before)."""
    url, dispatcher = held
    before = len(dispatcher.submitted)
    spec = CtSpec(n_slices=5, rows=16, columns=16, pixel_spacing=(600.0, 600.0))
    paths = write_ct_series(tmp_path, spec)
    t0 = time.perf_counter()
    answer = submit(url, paths, _clinical())
    elapsed = time.perf_counter() - t0
    body = _problem(answer, 422, "implausible_geometry")
    assert "PixelSpacing" in body["detail"]
    assert elapsed < 1.0, elapsed
    assert len(dispatcher.submitted) == before  # no job was queued


@pytest.mark.parametrize(
    ("spec", "edit", "word"),
    [
        (CtSpec(n_slices=5, slice_spacing=100_000.0), None, "slice spacing"),
        (CtSpec(n_slices=5, pixel_spacing=(0.01, 0.01)), None, "PixelSpacing"),
        (CtSpec(n_slices=5, rows=128, columns=16, pixel_spacing=(9.0, 9.0)), None, "1152 mm"),
        (CtSpec(n_slices=5), _set("Rows", 0), "matrix"),
        (CtSpec(n_slices=5), _set("Columns", 0), "matrix"),
        (CtSpec(n_slices=5), _set("Rows", 65535), "matrix"),
        (CtSpec(n_slices=5), _set("ImageOrientationPatient", [1, 0, 0, 0, "nan", 0]), "NaN"),
        (CtSpec(n_slices=5), _set("ImagePositionPatient", [0, "nan", 0]), "NaN"),
        (CtSpec(n_slices=5), _set("PixelSpacing", ["inf", 0.7]), "NaN"),
        (CtSpec(n_slices=5), _set("PixelSpacing", ["nan", 0.7]), "NaN"),
        (CtSpec(n_slices=5), _set("SliceThickness", "nan"), "SliceThickness"),
    ],
    ids=[
        "slices-100m-apart",
        "pixels-0.01mm",
        "extent-over-1m",
        "rows-0",
        "columns-0",
        "rows-65535",
        "nan-orientation",
        "nan-position",
        "inf-spacing",
        "nan-spacing",
        "nan-thickness",
    ],
)
def test_absurd_geometry_is_422(
    held: tuple[str, HoldingDispatcher],
    tmp_path: Path,
    spec: CtSpec,
    edit: Callable[[int, FileDataset], None] | None,
    word: str | None,
) -> None:
    url, _ = held
    body = _problem(
        submit(url, write_ct_series(tmp_path, spec, edit=edit), _clinical()),
        422,
        "implausible_geometry",
    )
    assert word is None or word in body["detail"], body["detail"]


def test_plausible_series_is_still_accepted(
    held: tuple[str, HoldingDispatcher], tmp_path: Path
) -> None:
    url, _ = held
    answer = submit(url, write_ct_series(tmp_path, CtSpec(n_slices=5)), _clinical())
    assert answer.status_code == 202, answer.text


# --- clinical validators -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("clinical", "code", "field"),
    [
        (_clinical(n_stage="0\n"), "invalid_clinical", "diagnoses.0.n_stage"),
        (_clinical(t_stage="2\n"), "invalid_clinical", "diagnoses.0.t_stage"),
        (_clinical(side="left\n"), "invalid_clinical", "diagnoses.0.side"),
        (_clinical(note="left breast\nN0, cT1, right side"), "invalid_clinical", "note"),
        (_clinical(note="left breast \x1b[31m"), "invalid_clinical", "note"),
        (_clinical(note="left\u202e breast"), "invalid_clinical", "note"),
        (_clinical(note="nodes positive, " * 30), "note_too_long", "note"),
        (_clinical(note="right breast after lumpectomy"), "note_contradicts_fields", "note"),
        (_clinical(note="left breast, ypN0 after chemotherapy"), "note_contradicts_fields", "note"),
    ],
    ids=[
        "n-stage-newline",
        "t-stage-newline",
        "side-newline",
        "note-newline",
        "note-escape",
        "note-bidi",
        "note-too-long",
        "note-other-side",
        "note-other-n-stage",
    ],
)
def test_clinical_bypass_is_422(
    held: tuple[str, HoldingDispatcher], tmp_path: Path, clinical: str, code: str, field: str
) -> None:
    url, dispatcher = held
    before = len(dispatcher.submitted)
    paths = write_ct_series(tmp_path, CtSpec(n_slices=5))
    body = _problem(submit(url, paths, clinical), 422, code)
    assert body["detail"].startswith(field), body["detail"]
    assert len(dispatcher.submitted) == before


def test_contradiction_names_both(held: tuple[str, HoldingDispatcher], tmp_path: Path) -> None:
    url, _ = held
    paths = write_ct_series(tmp_path, CtSpec(n_slices=5))
    detail = _problem(
        submit(url, paths, _clinical(note="right breast")), 422, "note_contradicts_fields"
    )["detail"]
    assert "right" in detail and "left" in detail
    detail = _problem(
        submit(url, paths, _clinical(note="left, pN2a")), 422, "note_contradicts_fields"
    )["detail"]
    assert "N2a" in detail and "N1" in detail


def test_agreeing_note_is_accepted(held: tuple[str, HoldingDispatcher], tmp_path: Path) -> None:
    url, _ = held
    paths = write_ct_series(tmp_path, CtSpec(n_slices=5))
    answer = submit(url, paths, _clinical(note="left breast after lumpectomy, pN1a, cT2"))
    assert answer.status_code == 202, answer.text


def test_invalid_order_clinical_is_422(held: tuple[str, HoldingDispatcher]) -> None:
    url, _ = held
    order = {"study_instance_uid": "1.2.3", "clinical": json.loads(_clinical(n_stage="0\n"))}
    answer = httpx.post(f"{url}/orders", json=order, headers=AUTH)
    _problem(answer, 422, "invalid_clinical")


# --- ids and docs -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "path",
    [
        "/jobs/{id}",
        "/jobs/{id}/rtstruct",
        "/jobs/{id}/preview.png",
        "/orders/{id}",
    ],
)
def test_overlong_ids_are_404_without_a_traceback(
    held: tuple[str, HoldingDispatcher], path: str, caplog: pytest.LogCaptureFixture
) -> None:
    url, _ = held
    caplog.set_level(logging.INFO)
    t0 = time.perf_counter()
    answer = httpx.get(url + path.format(id="a" * 300), headers=AUTH)
    assert time.perf_counter() - t0 < 1.0
    assert answer.status_code == 404, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


def test_overlong_id_cancel_and_send_are_404(held: tuple[str, HoldingDispatcher]) -> None:
    url, _ = held
    assert httpx.delete(f"{url}/jobs/{'b' * 300}", headers=AUTH).status_code == 404
    assert httpx.post(f"{url}/orders/{'b' * 300}/send", headers=AUTH).status_code == 404


def test_api_docs_are_off_by_default(held: tuple[str, HoldingDispatcher]) -> None:
    url, _ = held
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert httpx.get(url + path).status_code in (401, 404), path
        assert httpx.get(url + path, headers=AUTH).status_code == 404, path


def test_api_docs_can_be_switched_on(tmp_path: Path) -> None:
    settings = Settings.from_env(
        api_tokens=[TOKEN], storage_dir=tmp_path, dicom_listener=False, api_docs=True
    )
    files = JobFiles(tmp_path)
    state = ServiceState(settings, FileJobStore(files), files, HoldingDispatcher())
    with serve_app(create_app(settings, state)) as url:
        spec = httpx.get(f"{url}/openapi.json", headers=AUTH).json()
        assert "/contour" in spec["paths"]
