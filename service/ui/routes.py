"""The review station's routes under ``/ui/``: login, worklist, review page, slices, contours.

Every route but the login form and the static assets needs a live session (or a Bearer
token); pages without one redirect to ``/ui/login``, data endpoints answer 401. POSTs from
pages need the session's CSRF token. Unknown jobs give a 404 page, never a stack trace. What
the pages keep between requests is the application's
:class:`~service.review_station.state.ReviewStation` (``StationDep``).

The login form goes through the gateway's :class:`~service.auth.AuthGate`: failures are
counted per address and per named identity, and past the limit the form answers 429 with
``Retry-After``. A submitter's worklist holds its own jobs only, and another submitter's job
is "no such job" on every page and data endpoint (:func:`service.auth.visible_job`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse
from starlette.responses import Response

from model.text.clinical import parse_clinical
from service.api import JobView
from service.api_review import (
    CounterfactualRequest,
    ReviewRequest,
    decide,
    start_counterfactual,
)
from service.auth import Identity, Role, client_address, may_see, visible_job
from service.deps import AuditDep, DeskDep, GateDep, ServiceState, StateDep, StationDep
from service.errors import (
    ForbiddenError,
    JobNotFinishedError,
    TooManyAttemptsError,
    UnauthorizedError,
)
from service.orders import Order
from service.review_station.state import ReviewStation
from service.ui import pages
from service.ui.cookies import (
    check_csrf,
    clear_cookie,
    current_session,
    request_identity,
    set_cookie,
)
from workers.audit import AuditKind
from workers.errors import JobNotFoundError
from workers.job_events import ACTOR
from workers.jobs import Job, JobStatus, iter_jobs
from workers.review import ReviewStatus

log = logging.getLogger(__name__)
router = APIRouter(prefix="/ui", include_in_schema=False)
STATIC = Path(__file__).resolve().parent / "static"
_STATIC_TYPES = {".js": "text/javascript", ".css": "text/css"}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; script-src 'self'; "
        "style-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _html(text: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(text, status_code=status, headers=SECURITY_HEADERS)


def _csrf(request: Request) -> str:
    session = current_session(request)
    return session.csrf if session is not None else ""


def _finished_job(service: ServiceState, job_id: str, identity: Identity) -> Job:
    job = visible_job(service.store, job_id, identity)
    if job.status is not JobStatus.SUCCEEDED:
        raise JobNotFinishedError(f"job {job_id} is {job.status.value}; it has no structures yet")
    return job


# --- login ----------------------------------------------------------------------------------
@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request) -> Response:
    """The token form (or the worklist, for a live session)."""
    if current_session(request) is not None:
        return RedirectResponse("/ui/", status_code=303)
    return _html(pages.login_page())


@router.post("/login", response_class=HTMLResponse)
def login(
    request: Request,
    token: Annotated[str, Form(max_length=4096)],
    service: StateDep,
    station: StationDep,
    audit: AuditDep,
    gate: GateDep,
    name: Annotated[str, Form(max_length=128)] = "",
) -> Response:
    """Check the token once and open a session (303 to the worklist).

    A wrong token is 401, a locked-out address or identity 429 with ``Retry-After`` (even
    with the right token); the gate audits both.
    """
    settings = service.settings
    client = client_address(request.scope)
    try:
        identity = gate.login(name, token, client)
    except TooManyAttemptsError as exc:
        wait = exc.retry_after_s
        page = _html(pages.login_page(f"Too many failed attempts: try again in {wait} s."), 429)
        page.headers["Retry-After"] = str(wait)
        return page
    except UnauthorizedError:
        return _html(pages.login_page("That token is not accepted."), status=401)
    audit.record(AuditKind.LOGIN, identity.name, client=client)
    session = station.sessions.open(identity)
    response = RedirectResponse("/ui/", status_code=303, headers=SECURITY_HEADERS)
    set_cookie(response, session, settings.review)
    log.info("review station: %s logged in", identity.name)
    return response


@router.post("/logout")
def logout(
    request: Request,
    service: StateDep,
    station: StationDep,
    audit: AuditDep,
    csrf: Annotated[str, Form(max_length=256)] = "",
) -> Response:
    """End the session and forget the cookie."""
    identity = check_csrf(request, csrf)
    session = current_session(request)
    station.sessions.close(session.session_id if session else None)
    audit.record(AuditKind.LOGOUT, identity.name, client=client_address(request.scope))
    response = RedirectResponse("/ui/login", status_code=303, headers=SECURITY_HEADERS)
    clear_cookie(response, service.settings.review)
    return response


@router.get("", include_in_schema=False)
def ui_root() -> Response:
    """``/ui`` -> ``/ui/``."""
    return RedirectResponse("/ui/", status_code=307)


@router.get("/static/{name}")
def static(name: str) -> Response:
    """The pages' script and style sheet (no data; open like the login form)."""
    path = STATIC / name
    media = _STATIC_TYPES.get(path.suffix)
    if media is None or "/" in name or not path.is_file():
        return _html(pages.not_found_page("no such file", None, None), status=404)
    return FileResponse(path, media_type=media, headers={"Cache-Control": "no-cache"})


# --- pages ------------------------------------------------------------------------------------
def _work_rows(
    service: ServiceState,
    station: ReviewStation,
    orders_now: list[Order],
    needs_review: bool,
    identity: Identity,
) -> list[pages.WorkRow]:
    """The worklist of ``identity``: a submitter's own jobs only (orders have no submitter:
    reviewers and admins see them)."""
    everything = identity.may(Role.REVIEWER)
    orders = {o.job_id or o.order_id: o for o in orders_now} if everything else {}
    rows = []
    for job in iter_jobs(service.store):
        if not may_see(identity, job):
            continue
        pending = (
            job.status is JobStatus.SUCCEEDED
            and job.review.status is ReviewStatus.PENDING
            and not job.counterfactual_of
        )
        if needs_review and not pending:
            continue
        order = orders.pop(job.job_id, None)
        rows.append(
            pages.WorkRow(
                job.created_at,
                job,
                order.status.value if order else None,
                order.destination if order else None,
                order.send.status.value if order else None,
                order.order_id if order else None,
                service.settings.review.require_review,
                station.patient_of(service.files, job),
            )
        )
    if not needs_review and everything:
        for order in orders.values():
            rows.append(
                pages.WorkRow(
                    order.created_at,
                    None,
                    order.status.value,
                    order.destination,
                    order.send.status.value,
                    order.order_id,
                )
            )
    return sorted(rows, key=lambda r: r.created_at, reverse=True)


def _warm_next(station: ReviewStation, service: ServiceState, rows: list[pages.WorkRow]) -> None:
    """Load the CT of the newest job awaiting review: the one a reviewer opens next."""
    for row in rows:
        job = row.job
        if job is None or job.status is not JobStatus.SUCCEEDED or job.counterfactual_of:
            continue
        if job.review.status is ReviewStatus.PENDING:
            station.prefetch(service.files, job)
            return


@router.get("/", response_class=HTMLResponse)
def worklist(
    request: Request,
    service: StateDep,
    station: StationDep,
    desk: DeskDep,
    filter: str | None = None,
) -> Response:
    """Jobs and orders, newest first (``?filter=needs-review``: pending reviews only)."""
    identity = request_identity(request)
    needs_review = filter == "needs-review"
    rows = _work_rows(service, station, desk.orders.all(), needs_review, identity)
    _warm_next(station, service, rows)
    return _html(pages.worklist_page(rows, needs_review, identity, _csrf(request)))


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def review_page(request: Request, job_id: str, service: StateDep, station: StationDep) -> Response:
    """The review page of a job (404 page for an unknown one)."""
    identity = request_identity(request)
    try:
        job = visible_job(service.store, job_id, identity)
    except JobNotFoundError:
        return _html(pages.not_found_page("There is no such job.", identity, _csrf(request)), 404)
    if job.status is JobStatus.SUCCEEDED:
        station.prefetch(service.files, job)
    note = parse_clinical(job.clinical).prompt_text() if job.clinical else ""
    return _html(pages.review_page(job, note, identity, _csrf(request)))


# --- data for the page's script ---------------------------------------------------------------
@router.get("/jobs/{job_id}/state.json")
def job_state(request: Request, job_id: str, service: StateDep) -> JSONResponse:
    """The job's status, review and volumes (polled while a counterfactual runs)."""
    identity = request_identity(request)
    view = JobView.of(visible_job(service.store, job_id, identity))
    return JSONResponse(view.model_dump(mode="json"), headers={"Cache-Control": "no-store"})


@router.get("/jobs/{job_id}/view.json")
def job_view(request: Request, job_id: str, service: StateDep, station: StationDep) -> JSONResponse:
    """Slice counts and pixel aspect per plane, and the ROIs (number, name, colour, cc)."""
    identity = request_identity(request)
    job = _finished_job(service, job_id, identity)
    structures = station.structures(service.files, job)
    ct = structures.ct
    planes = {
        plane: {
            "count": ct.count(plane),
            "aspect": ct.aspect(plane),
            "size": list(ct.image(plane, 0).shape[::-1]),
        }
        for plane in ("axial", "coronal", "sagittal")
    }
    rois = [{"number": r.number, "name": r.name, "color": list(r.color)} for r in structures.rois]
    body = {
        "job_id": job.job_id,
        "planes": planes,
        "rois": rois,
        "start": structures.start_slices(),
        "patient": ct.header,
        "volumes_cc": job.roi_volumes_cc,
        "counterfactual_of": job.counterfactual_of,
        "counterfactuals": [
            j.job_id
            for j in iter_jobs(service.store)
            if j.counterfactual_of == job.job_id and may_see(identity, j)
        ],
    }
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


@router.get("/jobs/{job_id}/slices/{plane}/{index}.png")
def slice_png(
    request: Request,
    job_id: str,
    plane: str,
    index: int,
    service: StateDep,
    station: StationDep,
    window: str = "soft",
) -> Response:
    """Slice ``index`` of ``plane`` (axial, coronal, sagittal) through a window preset."""
    identity = request_identity(request)
    job = visible_job(service.store, job_id, identity)
    png = station.ct_view(service.files, job).png(plane, index, window)
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=600"})


@router.get("/jobs/{job_id}/contours/{plane}/{index}.json")
def contours(
    request: Request, job_id: str, plane: str, index: int, service: StateDep, station: StationDep
) -> JSONResponse:
    """Polygons of every ROI on one slice, in display pixels of that slice's PNG."""
    identity = request_identity(request)
    job = _finished_job(service, job_id, identity)
    found = station.structures(service.files, job).contours(plane, index)
    return JSONResponse(found, headers={"Cache-Control": "private, max-age=600"})


# --- decisions from the page ------------------------------------------------------------------
def _reviewer(identity: Identity) -> Identity:
    if not identity.may(Role.REVIEWER):
        raise ForbiddenError("this needs the role 'reviewer'")
    return identity


@router.post("/jobs/{job_id}/review")
def review(
    request: Request,
    job_id: str,
    body: ReviewRequest,
    service: StateDep,
    audit: AuditDep,
    desk: DeskDep,
) -> JSONResponse:
    """Approve or reject, as the logged-in reviewer (CSRF header needed)."""
    identity = _reviewer(check_csrf(request, None))
    job = decide(service, job_id, body, identity, audit)
    desk.poke()  # an approval may release an order's send-back
    return JSONResponse(JobView.of(job).model_dump(mode="json"))


@router.post("/jobs/{job_id}/counterfactual", status_code=202)
def counterfactual(
    request: Request, job_id: str, body: CounterfactualRequest, service: StateDep
) -> JSONResponse:
    """Contour the same CT with one field changed; answers the new job's id."""
    identity = check_csrf(request, None)
    acting = ACTOR.set(identity.name)  # the session's person submits it (audit)
    try:
        job = start_counterfactual(service, job_id, body, identity)
    finally:
        ACTOR.reset(acting)
    return JSONResponse({"job_id": job.job_id, "status": job.status.value}, status_code=202)
