"""Model versions over HTTP, for administrators: list, promote, roll back.

``GET /models`` lists the versions of the models folder (setting ``models_dir``) with their
commissioning verdicts and output ROI names, the promoted one, and the version the embedded
worker serves now. ``POST /models/{version}/promote`` (body ``{"override_reason": ...}``
optional) and ``POST /models/rollback`` change the promoted version through
:class:`model.registry.registry.ModelRegistry`, exactly as ``llmctv models`` does: a
promotion needs a PASS commissioning report or an override reason (409 ``promotion_refused``
otherwise), the pointer is replaced atomically, and each change is recorded in the registry's
history and the audit trail (``model.promoted``, ``model.rolled_back``) under the caller's
identity. The embedded worker serves the new version from its next job; Celery workers after
a rolling restart (``docs/models.md``).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body
from pydantic import BaseModel, Field

from model.errors import PromotionRefusedError
from model.registry.registry import MAX_REASON, ModelRegistry, RegistryEvent
from service.deps import Admin, AuditDep, SettingsDep, StateDep
from service.settings import Settings
from workers.audit import AuditLog
from workers.model_loading import registry_audit_sink

router = APIRouter()


class ModelVersionView(BaseModel):
    """One registered version."""

    version: str
    label: str = Field(description="model <name> v<n> <hash>, as jobs and RTSTRUCTs name it")
    registered_at: str
    registered_by: str
    weights_sha256: str
    verdict: str | None = Field(description="the commissioning report's verdict, if any")
    text_encoder: str | None
    output_rois: dict[str, list[str]] = Field(description="per structure: left and right name")
    promoted: bool
    promotion_problems: list[str] = Field(
        description="why a promotion needs an override (empty: it may be promoted)"
    )


class ModelList(BaseModel):
    """``GET /models``."""

    configured: bool = Field(description="whether a models folder (models_dir) is set")
    promoted: str | None
    previous: list[str] = Field(description="versions promoted before, the latest last")
    serving: str | None = Field(
        description="the version the embedded worker serves now (null: Celery workers, or a "
        "checkpoint outside the registry)"
    )
    versions: list[ModelVersionView]


class PromoteRequest(BaseModel):
    """``POST /models/{version}/promote``."""

    override_reason: str | None = Field(
        default=None,
        max_length=MAX_REASON,
        description="promote without a PASS commissioning report; audited (no patient data)",
    )


class RegistryChange(BaseModel):
    """What a promotion or rollback did."""

    changed: bool
    action: str | None = None
    version: str
    label: str | None = None
    replaced: str | None = None
    override: bool = False


def _registry(settings: Settings, audit: AuditLog) -> ModelRegistry:
    folder = settings.model.models_dir
    if folder is None:
        raise PromotionRefusedError("no models folder is configured (LLMCTV_MODELS_DIR)")
    return ModelRegistry(folder, on_event=registry_audit_sink(audit))


def _change(event: RegistryEvent) -> RegistryChange:
    return RegistryChange(
        changed=True,
        action=event.action,
        version=event.version,
        label=event.label,
        replaced=event.replaced,
        override=event.override_reason is not None,
    )


@router.get("/models", response_model=ModelList, summary="Model versions (admin)")
def list_models(settings: SettingsDep, state: StateDep, _: Admin) -> ModelList:
    """Every registered version, oldest first, and which one is promoted and served."""
    served: Any = state.dispatcher.describe().get("model_version")
    folder = settings.model.models_dir
    if folder is None:
        return ModelList(configured=False, promoted=None, previous=[], serving=served, versions=[])
    registry = ModelRegistry(folder)
    pointer = registry.promoted()
    views = [
        ModelVersionView(
            **{k: v for k, v in card.summary().items() if k in ModelVersionView.model_fields},
            promoted=card.version == pointer.version,
            promotion_problems=card.promotion_problems(),
        )
        for card in registry.versions()
    ]
    return ModelList(
        configured=True,
        promoted=pointer.version,
        previous=list(pointer.previous),
        serving=served,
        versions=views,
    )


@router.post(
    "/models/{version}/promote",
    response_model=RegistryChange,
    summary="Promote a model version (admin; PASS report or an audited override)",
)
def promote_model(
    version: str,
    settings: SettingsDep,
    audit: AuditDep,
    who: Admin,
    body: Annotated[PromoteRequest | None, Body()] = None,
) -> RegistryChange:
    """Serve ``version`` from the next job on (409 ``promotion_refused`` without a PASS report
    or an override reason)."""
    reason = body.override_reason if body is not None else None
    event = _registry(settings, audit).promote(version, who=who.name, override_reason=reason)
    if event is None:
        return RegistryChange(changed=False, version=version)
    return _change(event)


@router.post(
    "/models/rollback",
    response_model=RegistryChange,
    summary="Return to the previously promoted model version (admin)",
)
def rollback_model(settings: SettingsDep, audit: AuditDep, who: Admin) -> RegistryChange:
    """Serve the version promoted before the current one (409 ``no_previous_version``)."""
    return _change(_registry(settings, audit).rollback(who=who.name))
