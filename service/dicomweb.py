"""DICOMweb STOW-RS: ``POST /dicomweb/studies[/{StudyInstanceUID}]`` (DICOM PS3.18 §10.5).

The body is ``multipart/related; type="application/dicom"``, one DICOM Part 10 file per part.
It is read as it streams in (:mod:`service.multipart_related`): each part is spooled to a
temporary file on the storage file system, then handed to the application's
:class:`~service.stow.StowReceiver`, which accepts it exactly like a C-STORE instance. The
body is capped like uploads (``max_upload_bytes``); a full disk refuses the request before it
is read (:mod:`service.storage_guard`).

The answer is a PS3.18 store response (:func:`service.stow.store_response`): 200 when all
instances were stored, 202 when some failed, 409 when all did. These three statuses are
STOW-RS's own protocol, so they are chosen there; errors of the request as a whole (401, 413,
415, 400, 503) are problem+json of :mod:`service.problems`.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from service.deps import Authorized, StowDep
from service.dicomnet.storage import check_uid
from service.errors import StorageFullError
from service.multipart_related import PartSpooler, SpooledPart, related_boundary
from service.storage_guard import RETRY_AFTER_S
from service.stow import DICOM_JSON, PART_TYPE, Outcome, StowReceiver, store_response

log = logging.getLogger(__name__)

router = APIRouter(tags=["dicomweb"])


async def _receive(
    request: Request, receiver: StowReceiver, study_uid: str | None, sender: str
) -> JSONResponse:
    boundary = related_boundary(request.headers.get("content-type", ""), PART_TYPE)
    spooler = PartSpooler(boundary, receiver.root, receiver.max_instance_bytes)
    outcomes: list[Outcome] = []
    handed: list[SpooledPart] = []  # discarded in the end whatever happens (idempotent)
    try:
        async for chunk in request.stream():
            try:
                parts = await run_in_threadpool(spooler.feed, chunk)  # disk writes
            except OSError as exc:
                raise StorageFullError(
                    f"a part cannot be spooled: {exc.strerror or type(exc).__name__}",
                    retry_after_s=RETRY_AFTER_S,
                ) from exc
            handed.extend(parts)
            for part in parts:
                outcomes.append(await run_in_threadpool(receiver.accept, part, study_uid, sender))
        spooler.finish()
    finally:
        spooler.close()
        for part in handed:
            part.discard()
    status, body = store_response(outcomes)
    stored = sum(o.failure is None for o in outcomes)
    refused = len(outcomes) - stored
    log.info("STOW-RS: %d instance(s) stored, %d refused", stored, refused)
    receiver.events.stow_request(sender, stored, refused, status)
    return JSONResponse(body, status_code=status, media_type=DICOM_JSON)


_STORE_RESPONSE = {DICOM_JSON: {"schema": {"type": "object"}}}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "all instances stored", "content": _STORE_RESPONSE},
    202: {
        "description": "some stored, the others in FailedSOPSequence",
        "content": _STORE_RESPONSE,
    },
    409: {"description": "no instance stored", "content": _STORE_RESPONSE},
    415: {"description": 'not multipart/related; type="application/dicom"'},
    503: {"description": "storage_full (disk backpressure), with Retry-After"},
}
#: The body is read from the stream, so FastAPI cannot describe it: it is declared here.
_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            f'multipart/related; type="{PART_TYPE}"': {
                "schema": {"type": "string", "format": "binary"}
            }
        },
    }
}


@router.post(
    "/dicomweb/studies",
    summary="STOW-RS: store instances (multipart/related; type=application/dicom)",
    responses=_RESPONSES,
    openapi_extra=_BODY,
)
async def store_instances(
    request: Request, receiver: StowDep, identity: Authorized
) -> JSONResponse:
    """Store the instances of any studies."""
    return await _receive(request, receiver, None, f"DICOMweb:{identity.name}")


@router.post(
    "/dicomweb/studies/{study_instance_uid}",
    summary="STOW-RS: store instances of one study",
    responses=_RESPONSES,
    openapi_extra=_BODY,
)
async def store_study_instances(
    request: Request, study_instance_uid: str, receiver: StowDep, identity: Authorized
) -> JSONResponse:
    """Store instances that must belong to ``study_instance_uid`` (others fail, 0xC409)."""
    study = check_uid(study_instance_uid, "StudyInstanceUID")
    return await _receive(request, receiver, study, f"DICOMweb:{identity.name}")
