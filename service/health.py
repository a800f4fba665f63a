"""Liveness and readiness: ``GET /health/live`` and ``GET /health/ready`` (no authentication).

Readiness is what a load balancer or an operator's monitor should watch: 200 when the
service can contour now, else 503 problem+json ``not_ready`` listing every failing check
(the checks: :mod:`service.readiness`). ``GET /health`` is in :mod:`service.api`.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from model import __version__
from service.deps import ReadinessDep, StateDep
from service.problems import problem

router = APIRouter()


@router.get("/health/live", summary="Liveness (no authentication)")
async def live(state: StateDep) -> dict[str, Any]:
    """Answers while the process is alive (as ``/health``)."""
    facts = state.dispatcher.describe()
    return {"status": "ok", "version": __version__, "dispatcher": facts}


@router.get(
    "/health/ready",
    summary="Readiness: 200, or 503 listing the failing checks (no authentication)",
    responses={503: {"description": "problem+json `not_ready` with `checks`"}},
)
async def ready(request: Request, readiness: ReadinessDep) -> JSONResponse:
    """Whether the service can contour now; each check with its detail."""
    checks = readiness.latest()
    listed = [asdict(c) for c in checks]
    failing = [c.name for c in checks if not c.ok]
    if failing:
        detail = "failing checks: " + ", ".join(failing)
        return problem(503, "not_ready", detail, request.url.path, checks=listed, failing=failing)
    return JSONResponse({"status": "ready", "version": __version__, "checks": listed})
