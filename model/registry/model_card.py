"""The model card of one registered model version: a JSON record and a Markdown page.

The card is written once, when the version is registered (:mod:`model.registry.registry`),
and never changes; who promoted the version and when comes from the registry's history and is
added to the Markdown page (:func:`render_markdown`) each time it changes.

What it holds, taken from the checkpoint's ``config.json`` where training recorded it:

- **data**: number of cases, of training and validation cases, and the SHA-256 of the case
  split (never the case names: they may derive from patient IDs), the ROI rules or the
  structure map digest, the preprocessing, the checkpoint it was fine-tuned from;
- **structure map**: the site's map (``llmctv dataset check``): its digest, structures,
  side forms;
- **output ROI names**: per structure a template and the site's side form
  (:class:`~model.contouring.naming.SideAffix`), each name at most 16 characters and read
  back by the site's map as its own structure and side;
- **text encoder** identity, **network** configuration, **training** budget and settings,
  validation metrics;
- **commissioning**: the report's verdict overall and per structure, its criteria, its
  SHA-256; the report must be of this very checkpoint (same weights hash).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from model.contouring.naming import (
    SideAffix,
    SideLabels,
    base_names,
    check_roi_name,
    roi_label,
)
from model.dataset.structure_map import RoiKind, StructureMap
from model.errors import ConfigurationError

CARD_FORMAT = 1
PASS = "PASS"
SIDES = ("L", "R")


class OutputNames(BaseModel):
    """The output ROI names of a version: a template per structure and the side form.

    ``templates["imn"] == "CTVn_IMN{side}"`` with ``side_form == "_Lt/_Rt"`` names the left
    IMN ``CTVn_IMN_Lt``.
    """

    model_config = ConfigDict(frozen=True)

    side_form: str = "_L/_R"
    side_prefix: bool = False
    templates: dict[str, str]

    @property
    def affix(self) -> SideAffix:
        """The side form."""
        left, _, right = self.side_form.partition("/")
        return SideAffix(left, right, self.side_prefix)

    @property
    def labels(self) -> SideLabels:
        """What replaces ``{side}`` in the templates (:class:`ContouringPolicy.side_labels`)."""
        return self.affix.labels

    def rois(self) -> dict[str, list[str]]:
        """``{structure: [left name, right name]}``."""
        return {
            structure: [roi_label(template, side, self.labels) for side in SIDES]
            for structure, template in self.templates.items()
        }


def output_names(
    structures: Sequence[str],
    pairs: Sequence[str] = (),
    side_form: str | None = None,
    structure_map: StructureMap | None = None,
) -> OutputNames:
    """The output names of a network's ``structures``: defaults, then the site's choices.

    ``pairs`` are ``structure=BASE`` (``imn=CTVn_IMN``: the name without its side);
    ``side_form`` is ``LEFT/RIGHT`` (``_Lt/_Rt``, ``Lt_/Rt_``), by default the first side
    form of ``structure_map`` (the site writes its own form first), else ``_L/_R``. Every
    name must be at most 16 characters, unique, and (with a map) read back by the map as its
    own structure and side.

    Raises
    ------
    ConfigurationError
        A malformed pair, a structure the network does not have or that has no name, a name
        too long or repeated, or one the site's map reads otherwise.
    """
    bases = {k: v for k, v in base_names().items() if k in structures}
    for pair in pairs:
        structure, sep, base = pair.partition("=")
        structure, base = structure.strip(), base.strip()
        if not sep or not base:
            raise ConfigurationError(f"ROI names are structure=BASE (e.g. imn=CTVn_IMN): {pair!r}")
        if structure not in structures:
            raise ConfigurationError(
                f"--roi-name {pair!r}: the network has no structure {structure!r} "
                f"(it has {', '.join(structures) or 'only the CTV'})"
            )
        if "{" in base or "}" in base:
            raise ConfigurationError(
                f"--roi-name {pair!r}: give the name without its side; --side-form says how "
                "the side is written"
            )
        bases[structure] = base
    missing = [s for s in structures if s not in bases]
    if missing:
        raise ConfigurationError(
            f"no output ROI name for {', '.join(missing)}: add --roi-name STRUCTURE=BASE"
        )
    if side_form is not None:
        affix = SideAffix.parse(side_form)
    elif structure_map is not None and structure_map.side_forms:
        first = structure_map.side_forms[0]
        affix = SideAffix(first.left, first.right, first.prefix)
    else:
        affix = SideAffix()
    names = OutputNames(
        side_form=affix.text(),
        side_prefix=affix.prefix,
        templates={s: affix.template(bases[s]) for s in structures},
    )
    check_output_names(names, structure_map)
    return names


def check_output_names(names: OutputNames, structure_map: StructureMap | None) -> None:
    """Every name: at most 16 characters, unique, read back by the map as its structure/side.

    Raises
    ------
    ConfigurationError
        The first name that breaks a rule.
    """
    seen: dict[str, str] = {}
    for structure, pair in names.rois().items():
        for side, name in zip(SIDES, pair, strict=True):
            check_roi_name(name)
            key = name.lower()
            if key in seen:
                raise ConfigurationError(f"ROI name {name!r} is used twice ({seen[key]})")
            seen[key] = f"{structure} {side}"
            if structure_map is None:
                continue
            found = structure_map.classify(name)
            if (
                found.kind is not RoiKind.STRUCTURE
                or found.structure != structure
                or found.side != side
            ):
                read = (
                    f"{found.kind.value} {found.structure or ''} side {found.side or '?'}".strip()
                )
                raise ConfigurationError(
                    f"the site's structure map reads output name {name!r} as {read}, not as "
                    f"{structure} side {side}: choose names and a side form the map knows"
                )


class Commissioning(BaseModel):
    """What the commissioning report (``llmctv commission``) said about this checkpoint."""

    model_config = ConfigDict(frozen=True)

    verdict: str
    structures: dict[str, str]
    reasons: dict[str, str] = {}
    candidate: str
    checkpoint_hash: str
    n_cases: int = 0
    generated_at: str | None = None
    software_version: str | None = None
    acceptance: dict[str, Any] = {}
    report_sha256: str


def _mapping(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"not an llmctv commissioning report: {where} is missing")
    return value


def _optional(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def commissioning_of(
    report: Mapping[str, Any], report_sha256: str, short_hash: str
) -> Commissioning:
    """The card's summary of ``report.json``, which must be about this checkpoint.

    Raises
    ------
    ConfigurationError
        Not a commissioning report, or its candidate is another checkpoint.
    """
    candidate = report.get("candidate")
    if report.get("report") != "llmctv commissioning report" or not isinstance(candidate, str):
        raise ConfigurationError("not an llmctv commissioning report (report.json)")
    info = _mapping(_mapping(report.get("models"), "models").get(candidate), "the candidate")
    reported = str(info.get("checkpoint_hash", ""))
    if not reported or not short_hash.startswith(reported):
        raise ConfigurationError(
            f"the commissioning report's candidate is checkpoint {reported or 'unknown'}, not "
            f"this one ({short_hash}): commission this checkpoint first"
        )
    verdicts = _mapping(_mapping(report.get("verdicts"), "verdicts").get(candidate), "verdicts")
    per_structure = _mapping(verdicts.get("structures"), "the structures' verdicts")
    summary = _optional(report.get("summary"))
    results = _optional(_optional(summary.get("results")).get(candidate))
    acceptance = _optional(summary.get("acceptance"))
    return Commissioning(
        verdict=str(report.get("verdict")),
        structures={str(k): str(v) for k, v in per_structure.items()},
        reasons={
            str(k): str(v.get("reason", "")) for k, v in results.items() if isinstance(v, Mapping)
        },
        candidate=candidate,
        checkpoint_hash=reported,
        n_cases=int(report.get("n_cases") or 0),
        generated_at=report.get("generated_at"),
        software_version=report.get("software_version"),
        acceptance=dict(acceptance),
        report_sha256=report_sha256,
    )


class ModelCard(BaseModel):
    """One registered model version (``card.json``; written once, never changed)."""

    model_config = ConfigDict(frozen=True)

    card_format: int = CARD_FORMAT
    version: str
    name: str
    number: int
    registered_at: datetime
    registered_by: str
    weights_sha256: str
    files: dict[str, str]
    source: str
    network: dict[str, Any]
    text_encoder: dict[str, Any]
    data: dict[str, Any]
    training: dict[str, Any]
    metrics: dict[str, Any]
    structure_map: dict[str, Any] | None = None
    output_names: OutputNames
    commissioning: Commissioning | None = None

    @property
    def short_hash(self) -> str:
        """First 12 hex digits of the weights' SHA-256 (as jobs record the checkpoint)."""
        return self.weights_sha256[:12]

    @property
    def label(self) -> str:
        """``model <name> v<n> <hash>``: what the RTSTRUCT's SoftwareVersions and jobs say."""
        return f"model {self.name} v{self.number} {self.short_hash}"

    @property
    def structures(self) -> list[str]:
        """The network's output structures (empty: a single-CTV network)."""
        return [str(s) for s in self.network.get("structures") or []]

    def promotion_problems(self) -> list[str]:
        """Why this version may not be promoted without an override (empty: it may).

        It needs a commissioning report whose overall verdict is PASS and in which every
        structure the network outputs is PASS.
        """
        found = self.commissioning
        if found is None:
            return ["no commissioning report"]
        problems = []
        if found.verdict != PASS:
            problems.append(f"the commissioning verdict is {found.verdict}")
        for structure in self.structures:
            verdict = found.structures.get(structure)
            if verdict != PASS:
                problems.append(f"{structure} is {verdict or 'not in the report'}")
        return problems

    def summary(self) -> dict[str, Any]:
        """The facts ``llmctv models list`` and ``GET /models`` show for each version."""
        return {
            "version": self.version,
            "label": self.label,
            "registered_at": self.registered_at.isoformat(),
            "registered_by": self.registered_by,
            "weights_sha256": self.weights_sha256,
            "verdict": self.commissioning.verdict if self.commissioning else None,
            "text_encoder": self.text_encoder.get("identity"),
            "output_rois": self.output_names.rois(),
        }


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def data_summary(doc: Mapping[str, Any]) -> dict[str, Any]:
    """What the checkpoint says of its data: counts and a hash of the split, never case names."""
    split = doc.get("split") if isinstance(doc.get("split"), Mapping) else None
    summary: dict[str, Any] = {"n_cases": doc.get("n_cases")}
    if split is not None:
        train = sorted(str(c) for c in split.get("train", []))
        val = sorted(str(c) for c in split.get("val", []))
        summary["n_train"], summary["n_val"] = len(train), len(val)
        canonical = json.dumps({"train": train, "val": val}, sort_keys=True)
        summary["split_sha256"] = _sha256_text(canonical)
    for key in ("roi_rule", "structure_rules", "preprocessing", "init_from"):
        if doc.get(key) is not None:
            summary[key] = doc[key]
    return summary


def map_summary(structure_map: StructureMap | None, file: str | None) -> dict[str, Any] | None:
    """The structure map as the card keeps it (its text is in the version's folder)."""
    if structure_map is None:
        return None
    return {**structure_map.describe(), "file": file}


def build_card(
    *,
    version: str,
    name: str,
    number: int,
    registered_at: datetime,
    registered_by: str,
    weights_sha256: str,
    files: Mapping[str, str],
    source: str,
    checkpoint: Mapping[str, Any],
    names: OutputNames,
    structure_map: dict[str, Any] | None,
    commissioning: Commissioning | None,
) -> ModelCard:
    """The card of a version from its checkpoint document (``config.json``) and the rest."""
    training = checkpoint.get("training")
    metrics = checkpoint.get("metrics")
    return ModelCard(
        version=version,
        name=name,
        number=number,
        registered_at=registered_at,
        registered_by=registered_by,
        weights_sha256=weights_sha256,
        files=dict(files),
        source=source,
        network=dict(checkpoint.get("network") or {}),
        text_encoder={
            "identity": checkpoint.get("text_encoder"),
            "name": checkpoint.get("text_encoder_name"),
        },
        data=data_summary(checkpoint),
        training={
            **(dict(training) if isinstance(training, Mapping) else {}),
            "saved_at": checkpoint.get("saved_at"),
        },
        metrics=dict(metrics) if isinstance(metrics, Mapping) else {},
        structure_map=structure_map,
        output_names=names,
        commissioning=commissioning,
    )


# --- Markdown ----------------------------------------------------------------------------------
def _cell(value: object) -> str:
    text = json.dumps(value) if isinstance(value, dict | list) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _table(rows: Sequence[tuple[object, ...]], header: tuple[str, ...]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines


def _commissioning_lines(card: ModelCard) -> list[str]:
    c = card.commissioning
    if c is None:
        lines = ["No commissioning report."]
    else:
        lines = [
            f"Verdict **{c.verdict}** on {c.n_cases} cases (report of {c.generated_at}, "
            f"candidate `{c.candidate}`, checkpoint {c.checkpoint_hash}, report SHA-256 "
            f"`{c.report_sha256[:16]}`; the report is in `report/`).",
            "",
            *_table(
                [(s, v, c.reasons.get(s, "")) for s, v in c.structures.items()],
                ("structure", "verdict", "reason"),
            ),
        ]
    problems = card.promotion_problems()
    verdict = "allowed" if not problems else "needs an override (" + "; ".join(problems) + ")"
    return [*lines, "", f"Promotion: {verdict}."]


def _history_lines(events: Sequence[Mapping[str, Any]]) -> list[str]:
    rows = [
        (e.get("at", ""), e.get("action", ""), e.get("who", ""), e.get("reason") or "")
        for e in events
    ]
    return _table(rows, ("when (UTC)", "what", "who", "override reason"))


def _names_lines(names: OutputNames) -> list[str]:
    form = f"`{names.side_form}`" + (" (prefix)" if names.side_prefix else "")
    rows = [(s, left, right) for s, (left, right) in names.rois().items()]
    return [f"Side form {form}.", "", *_table(rows, ("structure", "left", "right"))]


def _map_lines(found: Mapping[str, Any] | None) -> list[str]:
    if found is None:
        return ["None recorded (the checkpoint's ROI-name rules chose the references)."]
    digest = str(found.get("sha256", ""))[:16]
    rows = [
        (s, e.get("patterns"), e.get("nodal")) for s, e in (found.get("structures") or {}).items()
    ]
    return [
        f"`{found.get('source')}`, SHA-256 `{digest}`, side forms {found.get('sides')}.",
        "",
        *_table(rows, ("structure", "patterns", "nodal")),
    ]


def render_markdown(card: ModelCard, events: Sequence[Mapping[str, Any]] = ()) -> str:
    """The card as a page to read; ``events`` are this version's history entries
    (registration, promotions, rollbacks: who and when)."""
    encoder = card.text_encoder
    lines = [
        f"# Model card: {card.name} v{card.number}",
        "",
        f"`{card.label}` (SoftwareVersions of its RTSTRUCTs). Registered "
        f"{card.registered_at:%Y-%m-%d %H:%M} UTC by {card.registered_by} from `{card.source}`.",
        "",
        "## Commissioning",
        "",
        *_commissioning_lines(card),
        "",
        "## Registration, promotions and rollbacks",
        "",
        *_history_lines(events),
        "",
        "## Output ROI names",
        "",
        *_names_lines(card.output_names),
        "",
        "## Structure map",
        "",
        *_map_lines(card.structure_map),
        "",
        "## Data",
        "",
        *_table(list(card.data.items()), ("", "")),
        "",
        "## Text encoder and network",
        "",
        f"Text encoder `{encoder.get('identity')}` ({encoder.get('name')}).",
        f"Structures: {', '.join(card.structures) or 'the CTV only'}.",
        "",
        "## Training",
        "",
        *_table(list(card.training.items()), ("", "")),
        "",
        f"Validation: {card.metrics}.",
        "",
        "## Files (SHA-256)",
        "",
        *_table(list(card.files.items()), ("file", "sha256")),
        "",
    ]
    return "\n".join(lines)
