"""The structure map: how a department names its CTV structures in its RTSTRUCTs.

A TOML file (format: ``docs/dataset-check.md``; example: ``deploy/structure-map.example.toml``)::

    version = 1
    [sides]                       # optional; replaces the default side forms
    suffixes = [["_L", "_R"], [" Left", " Right"]]
    prefixes = [["Lt_", "Rt_"]]
    [union]                       # optional: the ROI that is the union of the structures
    patterns = ["CTV", "CTV_Total"]
    [ignore]                      # optional: ROIs that are not targets (PTVs, BODY, helpers)
    patterns = ["PTV*", "BODY", "z_*"]
    [structures.breast]
    patterns = ["CTV_Breast", "re:ctvp?[ _]breast"]
    [structures.axilla]
    patterns = ["CTVn_Axilla*"]
    nodal = true                  # default: true for axilla, scf and imn
    n_stages = ["1", "2", "3"]    # nodal only: the N stages it is drawn for (default all)
    [structures.chest_wall]
    patterns = ["CTV_ChestWall"]
    skin_margin_mm = 3            # optional: cropped this far below the skin (default: the
                                  # specification's 5 for breast, 3 for chest_wall, else 0)
    stop_at_ribs = true           # optional: nothing behind the ribs' front (default: the
                                  # specification's chest_wall only)

A pattern is a shell glob (``*``, ``?``, ``[...]``) or, after ``re:``, a Python regular
expression; both are case-insensitive and must match the **whole** ROI name. A name is
tried first without its side affix (``CTV_Breast_L`` -> ``CTV_Breast``, side ``L``), then
whole (side unknown: the inventory takes it from the contour's position). Precedence:
``ignore``, then ``union``, then the structures in file order; a name that matches two
structures is reported as ambiguous.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
import tomllib
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from model.errors import ConfigurationError
from model.imaging.borders import SPEC_BORDERS, BorderPolicy
from model.network.structures import NODAL

MAP_VERSION = 1
REGEX_PREFIX = "re:"
_STRUCTURE_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
_TOP_KEYS = frozenset({"version", "sides", "union", "ignore", "structures"})
_STRUCTURE_KEYS = frozenset({"patterns", "nodal", "n_stages", "skin_margin_mm", "stop_at_ribs"})
#: The largest skin margin a map may set (mm).
MAX_SKIN_MARGIN_MM = 20.0
#: N stages (without a/b/c) of a node-positive side; N0 and N1mi never have a nodal CTV.
NODE_POSITIVE_BASES: tuple[str, ...] = ("1", "2", "3")
_NODAL_NAMES = frozenset(s.value for s in NODAL)

#: Side forms used when the map has no ``[sides]`` table: ``(left, right)`` pairs.
DEFAULT_SUFFIXES: tuple[tuple[str, str], ...] = (
    ("_L", "_R"),
    ("_Lt", "_Rt"),
    ("_Left", "_Right"),
    (" L", " R"),
    (" Lt", " Rt"),
    (" Left", " Right"),
    ("-L", "-R"),
    ("-Lt", "-Rt"),
    ("-Left", "-Right"),
)
DEFAULT_PREFIXES: tuple[tuple[str, str], ...] = (
    ("L_", "R_"),
    ("Lt_", "Rt_"),
    ("Left_", "Right_"),
    ("Lt ", "Rt "),
    ("Left ", "Right "),
)


class RoiKind(StrEnum):
    """What an ROI is to the map."""

    STRUCTURE = "structure"
    UNION = "union"
    IGNORED = "ignored"
    UNMATCHED = "unmatched"


@dataclass(frozen=True)
class NamePattern:
    """One ROI-name pattern: a glob, or a regular expression after ``re:``; whole name, any case."""

    text: str
    regex: re.Pattern[str]

    @classmethod
    def parse(cls, text: str, where: str) -> NamePattern:
        """Compile ``text``; :class:`ConfigurationError` naming ``where`` if it is invalid."""
        if text.startswith(REGEX_PREFIX):
            body = text[len(REGEX_PREFIX) :]
            if not body:
                raise ConfigurationError(f"{where}: empty regular expression {text!r}")
            try:
                return cls(text, re.compile(body, re.IGNORECASE))
            except re.error as exc:
                raise ConfigurationError(
                    f"{where}: invalid regular expression {text!r}: {exc}"
                ) from exc
        return cls(text, re.compile(fnmatch.translate(text), re.IGNORECASE))

    def matches(self, name: str) -> bool:
        """Whether the whole ``name`` matches."""
        return self.regex.fullmatch(name) is not None


@dataclass(frozen=True)
class SideForm:
    """How a side is written in an ROI name: ``left``/``right`` as a suffix or a prefix."""

    left: str
    right: str
    prefix: bool

    def text(self) -> str:
        """``"_L/_R"`` for a suffix form, ``"Lt_/Rt_ (prefix)"`` for a prefix form."""
        return f"{self.left}/{self.right}" + (" (prefix)" if self.prefix else "")


@dataclass(frozen=True)
class StructureEntry:
    """One structure of the map: its name, ROI-name patterns, whether it is nodal, and for a
    nodal one the N stages (``"1"``, ``"2"``, ``"3"``; suffixes a/b/c ignored) whose side the
    department draws it for (e.g. internal mammary nodes only for N2-N3)."""

    name: str
    patterns: tuple[NamePattern, ...]
    nodal: bool
    n_stages: tuple[str, ...] = NODE_POSITIVE_BASES
    skin_margin_mm: float | None = None
    stop_at_ribs: bool | None = None

    def drawn_for(self, n_stage: str) -> bool:
        """Whether the department draws this structure for a side of ``n_stage`` (``"2a"``).

        Non-nodal structures are drawn whatever the stage; nodal ones never for N0/N1mi.
        """
        if not self.nodal:
            return True
        return n_stage not in ("0", "1mi") and n_stage[:1] in self.n_stages

    def borders(self) -> dict[str, float | bool]:
        """The borders the entry sets (``skin_margin_mm``, ``stop_at_ribs``), as in the map."""
        found: dict[str, float | bool] = {}
        if self.skin_margin_mm is not None:
            found["skin_margin_mm"] = self.skin_margin_mm
        if self.stop_at_ribs is not None:
            found["stop_at_ribs"] = self.stop_at_ribs
        return found

    def matches(self, roi_name: str) -> bool:
        """Whether any pattern matches the whole ``roi_name``."""
        return any(p.matches(roi_name) for p in self.patterns)


@dataclass(frozen=True)
class RoiClass:
    """What the map makes of one ROI name.

    Attributes
    ----------
    kind
        Structure, union, ignored or unmatched.
    structure
        The structure (first matching, in map order) for ``kind`` structure.
    side
        ``"L"`` or ``"R"`` when the name carries a side affix, else ``None``.
    also
        Further structures whose patterns match the name too (an ambiguous map).
    """

    kind: RoiKind
    structure: str | None = None
    side: str | None = None
    also: tuple[str, ...] = ()


@dataclass(frozen=True)
class StructureMap:
    """A department's ROI naming: structures, the union ROI, ignored ROIs, side forms.

    ``source`` is where it was read, ``digest`` the SHA-256 of its text and ``text`` the TOML
    text itself (a checkpoint keeps it, to read its reference ROIs the way training did).
    """

    structures: tuple[StructureEntry, ...]
    union: tuple[NamePattern, ...]
    ignore: tuple[NamePattern, ...]
    side_forms: tuple[SideForm, ...]
    source: str = "<text>"
    digest: str = ""
    text: str = field(default="", repr=False, compare=False)

    @property
    def structure_names(self) -> tuple[str, ...]:
        """Structure names in map order."""
        return tuple(s.name for s in self.structures)

    @property
    def nodal_names(self) -> tuple[str, ...]:
        """The nodal structures, in map order."""
        return tuple(s.name for s in self.structures if s.nodal)

    def split_side(self, name: str) -> tuple[str, str | None]:
        """``(base, side)``: the name without its longest side affix, and ``"L"``/``"R"``.

        A name with no side affix (or one that would leave nothing) comes back whole with
        side ``None``.
        """
        stripped = name.strip()
        lowered = stripped.lower()
        best: tuple[int, str, str | None] = (0, stripped, None)
        for form in self.side_forms:
            for letter, affix in (("L", form.left), ("R", form.right)):
                low = affix.lower()
                if len(low) <= best[0] or len(low) >= len(lowered):
                    continue
                if form.prefix and lowered.startswith(low):
                    best = (len(low), stripped[len(low) :], letter)
                elif not form.prefix and lowered.endswith(low):
                    best = (len(low), stripped[: -len(low)], letter)
        base = best[1].strip()
        return (base, best[2]) if base else (stripped, None)

    def classify(self, name: str) -> RoiClass:
        """Classify one ROI name (see the module docstring for the precedence)."""
        whole = name.strip()
        base, side = self.split_side(whole)
        tries: tuple[tuple[str, str | None], ...] = ((base, side),)
        if side is not None:
            tries += ((whole, None),)
        if any(p.matches(n) for p in self.ignore for n, _ in tries):
            return RoiClass(RoiKind.IGNORED)
        for candidate, candidate_side in tries:
            if any(p.matches(candidate) for p in self.union):
                return RoiClass(RoiKind.UNION, side=candidate_side)
        for candidate, candidate_side in tries:
            hits = [s.name for s in self.structures if s.matches(candidate)]
            if hits:
                return RoiClass(
                    RoiKind.STRUCTURE, hits[0], side=candidate_side, also=tuple(hits[1:])
                )
        return RoiClass(RoiKind.UNMATCHED)

    def is_nodal(self, structure: str) -> bool:
        """Whether the named structure is nodal (``False`` for a name not in the map)."""
        return structure in self.nodal_names

    def describe(self) -> dict[str, Any]:
        """The map as plain data (for reports and model cards)."""
        return {
            "source": self.source,
            "sha256": self.digest,
            "structures": {
                s.name: {
                    "patterns": [p.text for p in s.patterns],
                    "nodal": s.nodal,
                    **({"n_stages": list(s.n_stages)} if s.nodal else {}),
                    **s.borders(),
                }
                for s in self.structures
            },
            "union": [p.text for p in self.union],
            "ignore": [p.text for p in self.ignore],
            "sides": [f.text() for f in self.side_forms],
        }


# --- loading -----------------------------------------------------------------------------------
def load_structure_map(path: Path) -> StructureMap:
    """Read and validate a structure map file.

    Raises
    ------
    ConfigurationError
        The file is missing, is not TOML, or breaks the format (the message names the key).
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"structure map {path} cannot be read: {exc.strerror}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigurationError(f"structure map {path} is not UTF-8 text") from exc
    return parse_structure_map(text, source=str(path))


def parse_structure_map(text: str, source: str = "<text>") -> StructureMap:
    """Validate a structure map given as TOML text (see :func:`load_structure_map`)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{source}: not valid TOML: {exc}") from exc
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise ConfigurationError(f"{source}: unknown keys {unknown}; allowed: {sorted(_TOP_KEYS)}")
    version = data.get("version", MAP_VERSION)
    if isinstance(version, bool) or version != MAP_VERSION:
        raise ConfigurationError(
            f"{source}: version {version!r} is not supported (expected {MAP_VERSION})"
        )
    structures = _structures(data.get("structures"), source)
    union = _pattern_table(data.get("union"), "union", source)
    ignore = _pattern_table(data.get("ignore"), "ignore", source)
    _no_repeated_patterns(structures, union, ignore, source)
    return StructureMap(
        structures=structures,
        union=union,
        ignore=ignore,
        side_forms=_side_forms(data.get("sides"), source),
        source=source,
        digest=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        text=text,
    )


def _table(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigurationError(f"{where}: must be a table")
    return value


def _patterns(value: object, where: str) -> tuple[NamePattern, ...]:
    if not isinstance(value, list) or not value:
        raise ConfigurationError(f"{where}: must be a non-empty list of strings")
    out = []
    for item in value:
        if not isinstance(item, str) or not item.strip():
            raise ConfigurationError(f"{where}: {item!r} is not a non-empty string")
        out.append(NamePattern.parse(item.strip(), where))
    return tuple(out)


def _pattern_table(value: object, key: str, source: str) -> tuple[NamePattern, ...]:
    if value is None:
        return ()
    table = _table(value, f"{source}: [{key}]")
    extra = sorted(set(table) - {"patterns"})
    if extra:
        raise ConfigurationError(f"{source}: [{key}] has unknown keys {extra}; allowed: patterns")
    return _patterns(table.get("patterns"), f"{source}: {key}.patterns")


def _structures(value: object, source: str) -> tuple[StructureEntry, ...]:
    if value is None:
        raise ConfigurationError(f"{source}: no [structures.NAME] table; a map needs at least one")
    table = _table(value, f"{source}: [structures]")
    if not table:
        raise ConfigurationError(f"{source}: [structures] is empty; a map needs at least one")
    out = []
    for name, body in table.items():
        where = f"{source}: structures.{name}"
        if not _STRUCTURE_NAME.fullmatch(name):
            raise ConfigurationError(
                f"{where}: a structure name is lower case letters, digits and '_' "
                "(at most 32, starting with a letter)"
            )
        entry = _table(body, where)
        extra = sorted(set(entry) - _STRUCTURE_KEYS)
        if extra:
            raise ConfigurationError(
                f"{where}: unknown keys {extra}; allowed: {sorted(_STRUCTURE_KEYS)}"
            )
        nodal = entry.get("nodal", name in _NODAL_NAMES)
        if not isinstance(nodal, bool):
            raise ConfigurationError(f"{where}.nodal: must be true or false")
        patterns = _patterns(entry.get("patterns"), f"{where}.patterns")
        ribs = entry.get("stop_at_ribs")
        if ribs is not None and not isinstance(ribs, bool):
            raise ConfigurationError(f"{where}.stop_at_ribs: must be true or false")
        stages = _n_stages(entry, nodal, where)
        out.append(StructureEntry(name, patterns, nodal, stages, _skin_margin(entry, where), ribs))
    return tuple(out)


def _skin_margin(entry: dict[str, Any], where: str) -> float | None:
    """The ``skin_margin_mm`` of a structure entry (``None`` when not set), checked."""
    if "skin_margin_mm" not in entry:
        return None
    value = entry["skin_margin_mm"]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(f"{where}.skin_margin_mm: a number of mm")
    if not 0.0 <= float(value) <= MAX_SKIN_MARGIN_MM:
        raise ConfigurationError(
            f"{where}.skin_margin_mm: between 0 and {MAX_SKIN_MARGIN_MM:g} mm, not {value}"
        )
    return float(value)


def borders_of(structure_map: StructureMap | None) -> BorderPolicy:
    """The borders of the superficial CTVs under ``structure_map``: the specification's
    (:data:`~model.imaging.borders.SPEC_BORDERS`) where the map sets none."""
    margins = dict(SPEC_BORDERS.skin_margins_mm)
    ribs = set(SPEC_BORDERS.stop_at_ribs)
    for entry in structure_map.structures if structure_map is not None else ():
        if entry.skin_margin_mm is not None:
            margins[entry.name] = entry.skin_margin_mm
        if entry.stop_at_ribs is not None:
            (ribs.add if entry.stop_at_ribs else ribs.discard)(entry.name)
    return BorderPolicy(skin_margins_mm=margins, stop_at_ribs=frozenset(ribs))


def _n_stages(entry: dict[str, Any], nodal: bool, where: str) -> tuple[str, ...]:
    """The ``n_stages`` of a structure entry (default N1-N3), checked."""
    if "n_stages" not in entry:
        return NODE_POSITIVE_BASES
    value = entry["n_stages"]
    if not nodal:
        raise ConfigurationError(f"{where}.n_stages: only a nodal structure has N stages")
    if (
        not isinstance(value, list)
        or not value
        or any(v not in NODE_POSITIVE_BASES for v in value)
        or len(set(value)) != len(value)
    ):
        raise ConfigurationError(
            f'{where}.n_stages: a non-empty list of distinct stages from ["1", "2", "3"]'
        )
    return tuple(sorted(value))


def _no_repeated_patterns(
    structures: tuple[StructureEntry, ...],
    union: tuple[NamePattern, ...],
    ignore: tuple[NamePattern, ...],
    source: str,
) -> None:
    owner: dict[str, str] = {}
    groups = [(f"structures.{s.name}", s.patterns) for s in structures]
    groups += [("union", union), ("ignore", ignore)]
    for where, patterns in groups:
        for pattern in patterns:
            key = pattern.text.lower()
            if key in owner and owner[key] != where:
                raise ConfigurationError(
                    f"{source}: pattern {pattern.text!r} is listed under both {owner[key]} "
                    f"and {where}"
                )
            owner[key] = where


def _side_pairs(value: object, where: str) -> list[tuple[str, str]]:
    if not isinstance(value, list):
        raise ConfigurationError(f"{where}: must be a list of [left, right] pairs")
    pairs = []
    for item in value:
        ok = (
            isinstance(item, list)
            and len(item) == 2
            and all(isinstance(v, str) and v.strip() for v in item)
            and str(item[0]).lower() != str(item[1]).lower()
        )
        if not ok:
            raise ConfigurationError(
                f"{where}: {item!r} is not a pair of two different non-empty strings [left, right]"
            )
        pairs.append((str(item[0]), str(item[1])))
    return pairs


def _side_forms(value: object, source: str) -> tuple[SideForm, ...]:
    if value is None:
        suffixes, prefixes = list(DEFAULT_SUFFIXES), list(DEFAULT_PREFIXES)
    else:
        table = _table(value, f"{source}: [sides]")
        extra = sorted(set(table) - {"suffixes", "prefixes"})
        if extra:
            raise ConfigurationError(
                f"{source}: [sides] has unknown keys {extra}; allowed: prefixes, suffixes"
            )
        suffixes = _side_pairs(table.get("suffixes", []), f"{source}: sides.suffixes")
        prefixes = _side_pairs(table.get("prefixes", []), f"{source}: sides.prefixes")
        if not suffixes and not prefixes:
            raise ConfigurationError(f"{source}: [sides] lists no side form")
    forms = [SideForm(left, right, prefix=False) for left, right in suffixes]
    forms += [SideForm(left, right, prefix=True) for left, right in prefixes]
    return tuple(forms)
