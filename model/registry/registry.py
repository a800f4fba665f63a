"""The models folder (setting ``models_dir``): registered versions and the promoted one.

Layout::

    MODELS/
      versions/<name>-v<n>/      one version, never changed after registration
          model.safetensors      the checkpoint (copied; files read-only)
          config.json
          card.json              the model card (:class:`~model.registry.model_card.ModelCard`)
          structure-map.toml     the site's structure map (when there is one)
          report/                the commissioning report (when given)
      cards/<name>-v<n>.md       the card to read, with its promotions (rewritten on each)
      promoted.json              the promoted version and those promoted before it
      history.jsonl              every registration, promotion and rollback (append-only)
      .lock                      serialises changes (flock)

A version is copied into a temporary folder, hashed, described and renamed into place in one
step; its card lists the SHA-256 of every file, checked again before it is promoted and when a
worker loads it. ``promoted.json`` is replaced atomically (temporary file, fsync, rename): a
worker reads the old pointer or the new one, never a partial one. A promotion needs a PASS
commissioning report (:meth:`ModelCard.promotion_problems`) or an override with a reason;
the history records the override before the pointer changes, and every change is handed to
``on_event`` (the audit trail, :func:`workers.model_loading.registry_audit_sink`). A rollback
returns to the version promoted before the current one.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from model.dataset.structure_map import StructureMap, load_structure_map, parse_structure_map
from model.errors import (
    CheckpointMismatchError,
    ConfigurationError,
    ModelNotFoundError,
    NoPreviousVersionError,
    PromotionRefusedError,
    UnknownModelVersionError,
)
from model.files import file_digest, folder_lock, write_atomically
from model.registry.model_card import (
    ModelCard,
    build_card,
    commissioning_of,
    map_summary,
    output_names,
    render_markdown,
)

log = logging.getLogger(__name__)
# The checkpoint's files (as model.network.checkpoint names them; not imported: it loads torch).
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
CARD = "card.json"
MAP_FILE = "structure-map.toml"
REPORT_DIR = "report"
REPORT_JSON = "report.json"
VERSIONS = "versions"
CARDS = "cards"
POINTER = "promoted.json"
HISTORY = "history.jsonl"
POINTER_FORMAT = 1
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}"
_NAME = re.compile(NAME_PATTERN)
_VERSION = re.compile(rf"(?P<name>{NAME_PATTERN})-v(?P<number>[1-9][0-9]{{0,5}})")
#: An override reason is a sentence a person wrote, not a token.
MIN_REASON, MAX_REASON = 10, 1000
MAX_WHO = 128


class Action:
    """What happened to a version (``action`` of history entries and events)."""

    REGISTERED = "registered"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"


@dataclass(frozen=True)
class Promoted:
    """The pointer: the promoted version (``None``: none yet) and those promoted before it."""

    version: str | None = None
    previous: tuple[str, ...] = ()
    changed_at: str | None = None
    changed_by: str | None = None


@dataclass(frozen=True)
class RegistryEvent:
    """One change of the registry, as the history and the audit trail record it."""

    action: str
    version: str
    label: str
    who: str
    at: datetime = field(default_factory=lambda: datetime.now(UTC))
    replaced: str | None = None
    override_reason: str | None = None
    verdict: str | None = None

    def facts(self) -> dict[str, Any]:
        """The entry's fields besides ``who`` (no patient data: versions and hashes)."""
        found: dict[str, Any] = {"version": self.version, "model": self.label}
        if self.replaced is not None:
            found["replaced"] = self.replaced
        if self.verdict is not None:
            found["verdict"] = self.verdict
        if self.override_reason is not None:
            found["override"] = True
            found["override_reason"] = self.override_reason
        return found

    def as_dict(self) -> dict[str, Any]:
        """The history line."""
        return {
            "at": self.at.isoformat(timespec="seconds"),
            "action": self.action,
            "who": self.who,
            "reason": self.override_reason,
            **self.facts(),
        }


EventSink = Callable[[RegistryEvent], None]


def _who(who: str) -> str:
    name = who.strip()
    if not name or len(name) > MAX_WHO or not name.isprintable():
        raise ConfigurationError(f"who acts must be a name of 1 to {MAX_WHO} characters")
    return name


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigurationError(f"{what} {path} is unreadable: {exc}") from exc
    if not isinstance(doc, dict):
        raise ConfigurationError(f"{what} {path} is not a JSON object")
    return doc


class ModelRegistry:
    """The models folder ``root``.

    Parameters
    ----------
    root
        The folder (setting ``models_dir``); created on the first registration.
    on_event
        Called with every registration, promotion and rollback once it took effect (the audit
        trail). It must not raise.
    """

    def __init__(self, root: Path, on_event: EventSink | None = None) -> None:
        self.root = Path(root)
        self.on_event = on_event

    # --- reading -------------------------------------------------------------------------------
    def folder(self, version: str) -> Path:
        """The folder of a registered version.

        Raises
        ------
        UnknownModelVersionError
            Not a version name (``<name>-v<n>``), or not registered here.
        """
        if not _VERSION.fullmatch(version):
            raise UnknownModelVersionError(f"{version[:80]!r} is not a model version (NAME-vN)")
        folder = self.root / VERSIONS / version
        if not (folder / CARD).is_file():
            raise UnknownModelVersionError(f"no model version {version} is registered")
        return folder

    def card(self, version: str) -> ModelCard:
        """The card of a registered version.

        Raises
        ------
        UnknownModelVersionError
            No such version.
        ModelNotFoundError
            Its card is unreadable.
        """
        path = self.folder(version) / CARD
        try:
            return ModelCard.model_validate_json(path.read_bytes())
        except (OSError, ValidationError) as exc:
            raise ModelNotFoundError(f"the model card {path} is unreadable: {exc}") from exc

    def versions(self) -> list[ModelCard]:
        """Every registered version, oldest first."""
        base = self.root / VERSIONS
        if not base.is_dir():
            return []
        names = [p.name for p in base.iterdir() if _VERSION.fullmatch(p.name)]
        cards = [self.card(name) for name in names if (base / name / CARD).is_file()]
        return sorted(cards, key=lambda c: (c.registered_at, c.name, c.number))

    def promoted(self) -> Promoted:
        """The pointer (no version when nothing was ever promoted).

        Raises
        ------
        ModelNotFoundError
            ``promoted.json`` exists but is unreadable.
        """
        path = self.root / POINTER
        if not path.is_file():
            return Promoted()
        try:
            doc = _read_json(path, "the promoted-version pointer")
            version = doc.get("version")
            previous = tuple(str(v) for v in doc.get("previous") or ())
        except (ConfigurationError, TypeError) as exc:
            raise ModelNotFoundError(f"the promoted-version pointer {path} is unreadable") from exc
        return Promoted(
            version=str(version) if version else None,
            previous=previous,
            changed_at=doc.get("changed_at"),
            changed_by=doc.get("changed_by"),
        )

    def promoted_card(self) -> ModelCard | None:
        """The card of the promoted version, or ``None`` when none is promoted."""
        version = self.promoted().version
        return None if version is None else self.card(version)

    def history(self, version: str | None = None) -> list[dict[str, Any]]:
        """History entries, oldest first (of ``version`` only, when given)."""
        path = self.root / HISTORY
        if not path.is_file():
            return []
        found = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(entry, dict) and (version is None or entry.get("version") == version):
                found.append(entry)
        return found

    def verify(self, version: str) -> ModelCard:
        """The card, once every file the card lists still has its SHA-256.

        Raises
        ------
        CheckpointMismatchError
            A file is missing or changed since registration.
        """
        card = self.card(version)
        folder = self.folder(version)
        for name, digest in card.files.items():
            path = folder / name
            if not path.is_file() or file_digest(path) != digest:
                raise CheckpointMismatchError(
                    f"model version {version}: {name} is missing or changed since registration"
                )
        return card

    # --- changing ------------------------------------------------------------------------------
    def _locked(self) -> AbstractContextManager[None]:
        return folder_lock(self.root)

    def register(
        self,
        checkpoint: Path,
        name: str,
        *,
        who: str,
        report: Path | None = None,
        structure_map: Path | None = None,
        roi_names: Sequence[str] = (),
        side_form: str | None = None,
    ) -> ModelCard:
        """Copy a checkpoint in as the next version of ``name``, with its model card.

        ``report`` is the commissioning report folder (or its ``report.json``);
        ``structure_map`` the site's map (default: the one the checkpoint was trained with);
        ``roi_names`` (``structure=BASE``) and ``side_form`` (``_Lt/_Rt``) the output names.

        Raises
        ------
        ConfigurationError
            A bad name, checkpoint, report (not of this checkpoint), map or output name.
        """
        who = _who(who)
        if not _NAME.fullmatch(name):
            raise ConfigurationError(
                f"model name {name[:40]!r}: 1 to 32 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
        source = Path(checkpoint)
        if not (source / WEIGHTS).is_file() or not (source / CONFIG).is_file():
            raise ConfigurationError(f"no checkpoint ({WEIGHTS} + {CONFIG}) in {source}")
        report_json = None
        if report is not None:
            report_json = report if report.is_file() else report / REPORT_JSON
            if not report_json.is_file():
                raise ConfigurationError(f"no commissioning report ({REPORT_JSON}) at {report}")
        site_map = load_structure_map(structure_map) if structure_map is not None else None
        with self._locked():
            number = 1 + max(
                (
                    int(m["number"])
                    for p in self._version_dirs()
                    if (m := _VERSION.fullmatch(p.name)) and m["name"] == name
                ),
                default=0,
            )
            version = f"{name}-v{number}"
            (self.root / VERSIONS).mkdir(parents=True, exist_ok=True)
            temp = Path(tempfile.mkdtemp(prefix=".new-", dir=self.root / VERSIONS))
            try:
                card = self._fill(
                    temp,
                    source,
                    version,
                    name,
                    number,
                    who,
                    report_json,
                    site_map,
                    roi_names,
                    side_form,
                )
                for path in temp.rglob("*"):
                    if path.is_file():
                        path.chmod(0o444)
                temp.rename(self.root / VERSIONS / version)
            except BaseException:
                shutil.rmtree(temp, ignore_errors=True)
                raise
            event = RegistryEvent(
                Action.REGISTERED,
                version,
                card.label,
                who,
                verdict=card.commissioning.verdict if card.commissioning else None,
            )
            self._append_history(event)
            self._render(version)
        log.info("registered %s", card.label)
        self._emit(event)
        return card

    def _version_dirs(self) -> list[Path]:
        base = self.root / VERSIONS
        return [p for p in base.iterdir() if p.is_dir()] if base.is_dir() else []

    def _fill(
        self,
        temp: Path,
        source: Path,
        version: str,
        name: str,
        number: int,
        who: str,
        report_json: Path | None,
        site_map: StructureMap | None,
        roi_names: Sequence[str],
        side_form: str | None,
    ) -> ModelCard:
        """Copy the files into ``temp``, then describe them (hashes of the copies)."""
        shutil.copyfile(source / WEIGHTS, temp / WEIGHTS)
        shutil.copyfile(source / CONFIG, temp / CONFIG)
        checkpoint = _read_json(temp / CONFIG, "the checkpoint config")
        if checkpoint.get("format") != 1:
            raise ConfigurationError(f"{source}: unsupported checkpoint format")
        if site_map is None:
            stored = checkpoint.get("structure_map")
            if isinstance(stored, dict) and isinstance(stored.get("toml"), str):
                site_map = parse_structure_map(stored["toml"], source=str(stored.get("source")))
        map_file = None
        if site_map is not None and site_map.text:
            (temp / MAP_FILE).write_text(site_map.text, encoding="utf-8")
            map_file = MAP_FILE
        report_doc = None
        if report_json is not None:
            for path in sorted(report_json.parent.rglob("*")):
                if path.is_file() and not path.is_symlink():
                    target = temp / REPORT_DIR / path.relative_to(report_json.parent)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(path, target)
            report_doc = _read_json(temp / REPORT_DIR / REPORT_JSON, "the commissioning report")
        files = {
            path.relative_to(temp).as_posix(): file_digest(path)
            for path in sorted(temp.rglob("*"))
            if path.is_file()
        }
        weights = files[WEIGHTS]
        structures = [str(s) for s in (checkpoint.get("network") or {}).get("structures") or []]
        card = build_card(
            version=version,
            name=name,
            number=number,
            registered_at=datetime.now(UTC),
            registered_by=who,
            weights_sha256=weights,
            files=files,
            source=str(source),
            checkpoint=checkpoint,
            names=output_names(structures, roi_names, side_form, site_map),
            structure_map=map_summary(site_map, map_file),
            commissioning=(
                None
                if report_doc is None
                else commissioning_of(
                    report_doc, files[f"{REPORT_DIR}/{REPORT_JSON}"], weights[:12]
                )
            ),
        )
        (temp / CARD).write_text(card.model_dump_json(indent=2), encoding="utf-8")
        return card

    def promote(
        self, version: str, *, who: str, override_reason: str | None = None
    ) -> RegistryEvent | None:
        """Make ``version`` the one workers serve; ``None`` when it already is.

        Raises
        ------
        PromotionRefusedError
            No PASS commissioning report and no override reason (of at least 10
            characters), or the version's files changed since registration.
        UnknownModelVersionError
            No such version.
        """
        who = _who(who)
        reason = " ".join((override_reason or "").split()) or None
        if reason is not None and not MIN_REASON <= len(reason) <= MAX_REASON:
            raise PromotionRefusedError(
                f"an override reason is a sentence of {MIN_REASON} to {MAX_REASON} characters"
            )
        card = self._verified(version)
        problems = card.promotion_problems()
        if problems and reason is None:
            raise PromotionRefusedError(
                f"{version} may not be promoted: {'; '.join(problems)}. Commission it (a PASS "
                "report), or give an override reason; the override is audited"
            )
        with self._locked():
            state = self.promoted()
            if state.version == version:
                return None
            previous = (*state.previous, state.version) if state.version else state.previous
            event = RegistryEvent(
                Action.PROMOTED,
                version,
                card.label,
                who,
                replaced=state.version,
                override_reason=reason if problems else None,
                verdict=card.commissioning.verdict if card.commissioning else None,
            )
            self._append_history(event)  # an override is on record before it takes effect
            self._write_pointer(Promoted(version, previous), event)
            self._render(version, state.version)
        log.info("promoted %s%s", card.label, " (override)" if problems else "")
        self._emit(event)
        return event

    def rollback(self, *, who: str) -> RegistryEvent:
        """Serve the version promoted before the current one again.

        Raises
        ------
        NoPreviousVersionError
            Nothing was promoted before the current version.
        PromotionRefusedError
            That version's files changed since registration.
        """
        who = _who(who)
        with self._locked():
            state = self.promoted()
            if not state.previous:
                raise NoPreviousVersionError(
                    "no earlier promoted version to return to"
                    + (f" (serving {state.version})" if state.version else "")
                )
            target = state.previous[-1]
            card = self._verified(target)
            event = RegistryEvent(
                Action.ROLLED_BACK,
                target,
                card.label,
                who,
                replaced=state.version,
                verdict=card.commissioning.verdict if card.commissioning else None,
            )
            self._append_history(event)
            self._write_pointer(Promoted(target, state.previous[:-1]), event)
            self._render(target, state.version)
        log.info("rolled back to %s", card.label)
        self._emit(event)
        return event

    def _verified(self, version: str) -> ModelCard:
        try:
            return self.verify(version)
        except CheckpointMismatchError as exc:
            raise PromotionRefusedError(exc.detail) from exc

    def _append_history(self, event: RegistryEvent) -> None:
        line = json.dumps(event.as_dict(), separators=(",", ":")) + "\n"
        fd = os.open(self.root / HISTORY, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def _write_pointer(self, state: Promoted, event: RegistryEvent) -> None:
        doc = {
            "format": POINTER_FORMAT,
            "version": state.version,
            "previous": list(state.previous),
            "changed_at": event.at.isoformat(timespec="seconds"),
            "changed_by": event.who,
            "action": event.action,
        }
        write_atomically(self.root / POINTER, json.dumps(doc, indent=2).encode())

    def _render(self, *versions: str | None) -> None:
        """Rewrite the readable cards of ``versions`` (their promotions changed)."""
        for version in versions:
            if version is None:
                continue
            text = render_markdown(self.card(version), self.history(version))
            write_atomically(self.root / CARDS / f"{version}.md", text.encode())

    def _emit(self, event: RegistryEvent) -> None:
        if self.on_event is not None:
            self.on_event(event)
