"""The model a worker process runs, loaded from its settings.

Every path that loads the network goes through here: the embedded worker, the Celery pool
processes, the spawned preflight check and the embedding-cache warmer. torch is imported only
when a function here is called, never at import time.

Which checkpoint (:func:`model_choice`), first match wins:

1. ``checkpoint`` (``LLMCTV_CHECKPOINT``, ``--checkpoint``): that folder, always;
2. ``models_dir`` (``LLMCTV_MODELS_DIR``): the promoted version of the models folder
   (:mod:`model.registry`), its files checked against its model card; no promoted version is
   an error (``model_not_found``), never a silent fall-back to the demo model;
3. the shipped CPU demo model.

An engine loaded from the registry carries its card (:func:`served_card`): the job records
its version, the RTSTRUCT names it in SoftwareVersions, and its ROI names are the card's
(:func:`contouring_policy`). The embedded worker compares :func:`promoted_version` with the
card of its engine before each job and loads the promoted version when they differ; a Celery
worker loads once per process (a rolling restart picks up a promotion).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING
from weakref import WeakKeyDictionary

from model.contouring.structure_set import ContouringPolicy
from model.errors import CheckpointMismatchError, ConfigurationError, ModelNotFoundError
from model.registry.model_card import ModelCard
from model.registry.registry import Action, EventSink, ModelRegistry, RegistryEvent
from workers.settings import WorkerSettings

if TYPE_CHECKING:
    from model.contouring.engine import ContourEngine
    from model.inference import Predictor
    from model.network.context import ContextStore
    from workers.audit import AuditLog

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[1]  # workers/ is one level below the repository
#: The shipped CPU demo model, used when no checkpoint is configured.
DEMO_CHECKPOINT = REPO / "checkpoints" / "demo"
#: The card of each engine loaded from the registry (an engine outside it has none).
_SERVED: WeakKeyDictionary[ContourEngine, ModelCard] = WeakKeyDictionary()


@dataclass(frozen=True)
class ModelChoice:
    """The checkpoint folder to load, and its model card when it is a registered version."""

    folder: Path
    card: ModelCard | None = None


def model_choice(settings: WorkerSettings) -> ModelChoice:
    """The checkpoint of ``settings``: explicit checkpoint, promoted version, or the demo.

    Raises
    ------
    ModelNotFoundError
        The folder holds no ``model.safetensors``, or the models folder has no promoted
        version (or an unreadable pointer or card).
    CheckpointMismatchError
        The promoted version's files changed since registration.
    """
    model = settings.model
    if model.checkpoint is None and model.models_dir is not None:
        registry = ModelRegistry(model.models_dir)
        version = registry.promoted().version
        if version is None:
            raise ModelNotFoundError(
                f"no model version is promoted in {model.models_dir}: llmctv models promote "
                "VERSION (or unset LLMCTV_MODELS_DIR)"
            )
        card = registry.verify(version)
        return ModelChoice(registry.folder(version), card)
    folder = Path(model.checkpoint or DEMO_CHECKPOINT)
    if not (folder / "model.safetensors").is_file():
        raise ModelNotFoundError(f"no checkpoint (model.safetensors) in {folder}")
    return ModelChoice(folder)


def checkpoint_folder(settings: WorkerSettings) -> Path:
    """The checkpoint folder to load (:func:`model_choice`).

    Raises
    ------
    ModelNotFoundError
        No checkpoint there, or no promoted version in the models folder.
    """
    return model_choice(settings).folder


def promoted_version(settings: WorkerSettings) -> str | None:
    """The registry version a worker of ``settings`` should serve now; ``None`` when it
    serves a fixed checkpoint (``checkpoint`` set, or no ``models_dir``).

    Raises
    ------
    ModelNotFoundError
        The pointer is unreadable.
    """
    model = settings.model
    if model.checkpoint is not None or model.models_dir is None:
        return None
    return ModelRegistry(model.models_dir).promoted().version


def served_card(engine: ContourEngine) -> ModelCard | None:
    """The model card of the version ``engine`` was loaded from (``None``: not a version)."""
    return _SERVED.get(engine)


def contouring_policy(settings: WorkerSettings, engine: ContourEngine) -> ContouringPolicy:
    """The site's contouring policy for a job run by ``engine``.

    An engine loaded from the registry names its structures as its card says (templates and
    side form; ``roi_names`` does not apply) and writes its version into SoftwareVersions.
    """
    policy = settings.contouring.contouring_policy()
    card = served_card(engine)
    if card is None:
        return policy
    return replace(
        policy,
        roi_names=dict(card.output_names.templates),
        side_labels=card.output_names.labels,
        model_version=card.label,
    )


_AUDIT_KINDS = {
    Action.REGISTERED: "model.registered",
    Action.PROMOTED: "model.promoted",
    Action.ROLLED_BACK: "model.rolled_back",
}


def registry_audit_sink(audit: AuditLog) -> EventSink:
    """Registry changes as audit entries (``model.registered``, ``model.promoted``,
    ``model.rolled_back``; an override with ``override`` and ``override_reason``)."""

    def record(event: RegistryEvent) -> None:
        kind = _AUDIT_KINDS.get(event.action, f"model.{event.action}")
        audit.record(kind, event.who, **event.facts())

    return record


def registry_audit() -> EventSink:
    """The audit sink of ``llmctv models`` (the audit log of the storage settings)."""
    from workers.audit import AuditLog
    from workers.settings import get_settings

    return registry_audit_sink(AuditLog.from_settings(get_settings().storage))


def load_predictor(
    settings: WorkerSettings,
    *,
    cache: ContextStore | None = None,
    device: str | None = None,
    with_text_encoder: bool = True,
) -> Predictor:
    """The checkpoint of ``settings`` with its text encoder (unless ``with_text_encoder`` is
    false: then g comes from ``cache`` only)."""
    return _load_predictor(
        model_choice(settings),
        settings,
        cache=cache,
        device=device,
        with_text_encoder=with_text_encoder,
    )


def _load_predictor(
    choice: ModelChoice,
    settings: WorkerSettings,
    *,
    cache: ContextStore | None,
    device: str | None,
    with_text_encoder: bool,
) -> Predictor:
    from model.inference import Predictor

    predictor = Predictor.from_checkpoint(
        choice.folder,
        text_encoder=settings.model.text_encoder,
        device=device or settings.model.device,
        overlap=settings.contouring.overlap,
        sw_batch_size=settings.contouring.sw_batch_size,
        cache=cache,
        with_text_encoder=with_text_encoder,
        mirror_tta=settings.contouring.mirror_tta,
    )
    if predictor.mirrors and not with_text_encoder:
        raise ConfigurationError(
            "LLMCTV_MIRROR_TTA needs the text encoder in the worker for a multimodal model: "
            "the mirrored note is never in the gateway's cache"
        )
    if choice.card is not None and predictor.checkpoint_hash != choice.card.short_hash:
        raise CheckpointMismatchError(
            f"model version {choice.card.version}: the loaded weights "
            f"({predictor.checkpoint_hash}) are not those of its card ({choice.card.short_hash})"
        )
    return predictor


def load_engine(
    settings: WorkerSettings, cache: ContextStore | None = None, *, with_text_encoder: bool = True
) -> ContourEngine:
    """The engine of one worker process.

    g is cached in ``cache``; by default in Redis when ``redis_url`` is set, else in this
    process. Without ``with_text_encoder`` (a Celery worker with ``worker_text_encoder=false``)
    the language model is never loaded.
    """
    from model.contouring.engine import ContourEngine
    from workers.embedding_cache import context_cache_for

    choice = model_choice(settings)
    predictor = _load_predictor(
        choice,
        settings,
        cache=cache if cache is not None else context_cache_for(settings),
        device=None,
        with_text_encoder=with_text_encoder,
    )
    engine = ContourEngine(predictor)
    if choice.card is not None:
        _SERVED[engine] = choice.card
        log.info("model loaded (%s)", choice.card.label)
    else:
        log.info("model loaded (checkpoint %s)", predictor.checkpoint_hash)
    return engine
