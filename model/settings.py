"""Settings of llmctv (environment variables ``LLMCTV_*``) and their one cached loader.

Settings come in **sections**: each section is a :class:`~pydantic_settings.BaseSettings`
with the prefix ``LLMCTV_`` that reads its own variables, under their flat names
(``LLMCTV_PORT`` is ``settings.http.port``, ``LLMCTV_STORAGE_DIR`` is
``settings.storage.storage_dir``). A process's settings are :class:`Sections`, a composition
of sections that reads nothing itself. Each package owns the sections it reads:
:class:`ModelSettings` here, the workers' in :mod:`workers.settings`, DICOM networking in
:mod:`service.dicomnet.settings`, and the gateway's (which holds them all) in
:mod:`service.settings`. Every one is loaded through :func:`load_settings`; nothing else reads
the environment. Tests build settings with :meth:`Sections.from_env` and may call
:func:`clear_settings_cache` after changing the environment.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal, Self, TypeVar, cast

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

CommaList = Annotated[list[str], NoDecode]
"""A list setting, comma-separated in the environment."""

M = TypeVar("M", bound=BaseModel)


def split_commas(value: object) -> object:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``; other values unchanged (a validator's body)."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class ModelSettings(BaseSettings):
    """What the network and text side read.

    Attributes
    ----------
    cache_dir
        Where converted text encoders (GGUF -> safetensors) and data caches live.
    device
        ``auto`` picks CUDA when available, else CPU.
    torch_threads
        CPU threads for torch (0 keeps torch's default).
    text_encoder
        Text-encoder folder overriding the checkpoint's own.
    checkpoint
        Checkpoint folder. Wins over ``models_dir``; without either, the shipped demo model.
    models_dir
        The models folder of ``llmctv models`` (:mod:`model.registry`): workers serve its
        promoted version unless ``checkpoint`` is set.
    offline
        Never reach a model hub (always true in clinical use).
    """

    model_config = SettingsConfigDict(env_prefix="LLMCTV_", extra="ignore")

    cache_dir: Path = Field(default=Path.home() / ".cache" / "llmctv")
    device: str = "auto"
    torch_threads: int = 0
    text_encoder: Path | None = None
    checkpoint: Path | None = None
    models_dir: Path | None = None
    offline: bool = True


class Sections(BaseModel):
    """Settings made of sections: every field is a section, read from the environment.

    A section is a :class:`~pydantic_settings.BaseSettings` (``env_prefix="LLMCTV_"``) or
    :class:`Sections` again; its default is the section as the environment gives it. Each
    setting's name occurs in one section only, so a flat name (``storage_dir``) says where
    it lives: :meth:`from_env` and :func:`with_overrides` take flat names.
    """

    model_config = ConfigDict(extra="forbid")

    @classmethod
    def from_env(cls, **fields: object) -> Self:
        """The sections as the environment gives them, with ``fields`` (flat names) instead.

        ``Settings.from_env(storage_dir=tmp, require_review=True)`` puts each value into its
        section; the other settings come from the environment or their defaults.

        Raises
        ------
        ValueError
            A name that is no setting of these sections.
        """
        built: dict[str, BaseModel] = {}
        for name, values in _by_section(cls, fields).items():
            kind = section_types(cls)[name]
            if issubclass(kind, Sections):
                built[name] = kind.from_env(**values)
            else:
                built[name] = kind(**values)
        return cls(**built)


def section_types(cls: type[Sections]) -> dict[str, type[BaseModel]]:
    """The section of each field of ``cls``, by field name."""
    found: dict[str, type[BaseModel]] = {}
    for name, info in cls.model_fields.items():
        kind = info.annotation
        if not (isinstance(kind, type) and issubclass(kind, BaseModel)):
            raise TypeError(f"{cls.__name__}.{name} is not a settings section")
        found[name] = kind
    return found


@cache
def setting_paths(cls: type[BaseModel]) -> dict[str, tuple[str, ...]]:
    """Every setting of ``cls`` by its flat name: the sections that lead to it.

    ``setting_paths(Settings)["port"] == ("http",)``; a section's own fields have ``()``.

    Raises
    ------
    TypeError
        Two sections hold a setting of the same name (one environment variable, two places).
    """
    if not issubclass(cls, Sections):
        return {name: () for name in cls.model_fields}
    paths: dict[str, tuple[str, ...]] = {}
    for section, kind in section_types(cls).items():
        for name, path in setting_paths(kind).items():
            if name in paths:
                where = ".".join(paths[name])
                raise TypeError(f"setting {name!r} is in both {where} and {section}")
            paths[name] = (section, *path)
    return paths


def _by_section(cls: type[Sections], values: Mapping[str, object]) -> dict[str, dict[str, Any]]:
    """``values`` (flat names) grouped by the section of ``cls`` that holds each."""
    paths = setting_paths(cls)
    grouped: dict[str, dict[str, Any]] = {}
    for name, value in values.items():
        if name not in paths:
            raise ValueError(f"{name!r} is no setting of {cls.__name__}")
        grouped.setdefault(paths[name][0], {})[name] = value
    return grouped


def with_overrides(settings: M, updates: Mapping[str, object]) -> M:
    """A validated copy of ``settings`` with ``updates`` applied (command-line options).

    ``updates`` are flat setting names; for :class:`Sections` each goes to its section, and the
    sections without updates stay the very same objects.

    Raises
    ------
    ValueError
        A name that is no setting of ``settings``.
    """
    if isinstance(settings, Sections):
        grouped = _by_section(type(settings), updates)
        changed = {name: with_overrides(getattr(settings, name), v) for name, v in grouped.items()}
        return settings.model_copy(update=changed)
    unknown = sorted(set(updates) - set(type(settings).model_fields))
    if unknown:
        raise ValueError(f"{unknown[0]!r} is no setting of {type(settings).__name__}")
    return type(settings).model_validate({**settings.model_dump(), **updates})


def flat_dump(settings: BaseModel, mode: Literal["json", "python"] = "python") -> dict[str, Any]:
    """Every setting by its flat name (as the environment names it), sections dissolved."""
    if not isinstance(settings, Sections):
        return settings.model_dump(mode=mode)
    flat: dict[str, Any] = {}
    for name in section_types(type(settings)):
        flat.update(flat_dump(getattr(settings, name), mode))
    return flat


@cache
def _load(cls: type[BaseModel]) -> BaseModel:
    return cls()


def load_settings(cls: type[M]) -> M:
    """The process settings of class ``cls`` (a section or :class:`Sections`), read once."""
    return cast(M, _load(cls))


def clear_settings_cache() -> None:
    """Forget every loaded settings object (tests that change the environment)."""
    _load.cache_clear()


def get_settings() -> ModelSettings:
    """The model's settings (cached by :func:`load_settings`)."""
    return load_settings(ModelSettings)
