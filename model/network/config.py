"""Network configuration: presets, tuning modes, and validation.

A :class:`NetworkConfig` fully determines the architecture; it is stored as JSON next to
every checkpoint, and loading refuses a checkpoint whose config differs.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any

from model.errors import ConfigurationError


class TuningMode(StrEnum):
    """How the text side is adapted (the paper's Table 4a ablation)."""

    MULTI_PROMPT = "multi_prompt"
    """N learnable prompt sets of M vectors each (N = 2, the paper's default)."""
    SINGLE_PROMPT = "single_prompt"
    """One learnable prompt set (N = 1)."""
    LORA = "lora"
    """LoRA adapters on the frozen LLM's attention; no prompt vectors, one [SEG] read-out."""
    NONE = "none"
    """Nothing on the text side is trained: fixed [SEG] embedding, no prompts."""


@dataclass(frozen=True)
class NetworkConfig:
    """Architecture of the contouring network.

    Attributes
    ----------
    channels
        Feature channels of the 5 encoder levels (paper: 48, 48, 96, 192, 384).
    in_channels, out_channels
        CT in; classes out: background plus one per structure (2 for a single ``CTV``).
    structures
        Names of the output structures after the background (e.g. ``breast``,
        ``chest_wall``, ``axilla``, ``scf``, ``imn``; :mod:`model.network.structures`); empty
        means one class, the whole CTV.
    text_dim
        Hidden size D of the text encoder (Llama-2-7b: 4096; SmolLM2-135M: 576).
    multimodal
        False gives the vision-only baseline (same backbone, no alignment).
    n_prompts, prompt_length
        N prompt sets of M learnable vectors (paper: N = 2, M = 8).
    tuning
        See :class:`TuningMode`.
    attn_depth, attn_heads, attn_downsample, mlp_base
        Two-way transformer: depth 2, 8 heads, attention downsample 2, MLP width
        ``mlp_base * 2**level`` (paper: 48).
    norm
        Normalisation of the convolution blocks (``instance`` as in the reference).
    lora_rank, lora_alpha
        LoRA settings for ``tuning = lora``.
    roi_size
        Sliding-window patch ``(k, j, i)`` = (slices, rows, columns); paper 128 x 384 x 384.
    """

    channels: tuple[int, ...] = (48, 48, 96, 192, 384)
    in_channels: int = 1
    out_channels: int = 2
    text_dim: int = 4096
    multimodal: bool = True
    n_prompts: int = 2
    prompt_length: int = 8
    tuning: TuningMode = TuningMode.MULTI_PROMPT
    attn_depth: int = 2
    attn_heads: int = 8
    attn_downsample: int = 2
    mlp_base: int = 48
    norm: str = "instance"
    lora_rank: int = 8
    lora_alpha: int = 16
    roi_size: tuple[int, int, int] = (128, 384, 384)
    extra: dict[str, Any] = field(default_factory=dict)
    structures: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.out_channels != 1 + max(1, len(self.structures)):
            raise ConfigurationError(
                f"out_channels {self.out_channels} must be 1 + the {len(self.structures) or 1} "
                "structure(s)"
            )
        if len(set(self.structures)) != len(self.structures):
            raise ConfigurationError(f"structures must be distinct, got {self.structures}")
        if len(self.channels) != 5:
            raise ConfigurationError(f"channels must list 5 levels, got {self.channels}")
        stride = 2 ** len(self.channels)
        if any(s % stride for s in self.roi_size):
            raise ConfigurationError(f"roi_size {self.roi_size} must be divisible by {stride}")
        for c in self.channels:
            if (c // self.attn_downsample) % self.attn_heads:
                raise ConfigurationError(
                    f"{self.attn_heads} heads must divide {c} / {self.attn_downsample}"
                )
        if self.tuning in (TuningMode.SINGLE_PROMPT, TuningMode.LORA, TuningMode.NONE):
            if self.n_prompts != 1:
                raise ConfigurationError(f"tuning {self.tuning.value} uses n_prompts = 1")
        elif self.n_prompts < 1:
            raise ConfigurationError("multi_prompt needs n_prompts >= 1")

    @property
    def uses_prompts(self) -> bool:
        """Whether learnable prompt vectors are part of the input sequence."""
        return self.tuning in (TuningMode.MULTI_PROMPT, TuningMode.SINGLE_PROMPT)

    def to_json(self) -> str:
        """Canonical JSON (sorted keys) used for storage and for the config check."""
        data = asdict(self)
        data["tuning"] = self.tuning.value
        return json.dumps(data, sort_keys=True, indent=2)

    @classmethod
    def from_json(cls, text: str) -> NetworkConfig:
        """Parse :meth:`to_json` output; unknown keys are an error."""
        data = json.loads(text)
        try:
            data["channels"] = tuple(data["channels"])
            data["roi_size"] = tuple(data["roi_size"])
            data["tuning"] = TuningMode(data["tuning"])
            data["structures"] = tuple(data.get("structures", ()))
            return cls(**data)
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigurationError(f"invalid network config: {exc}") from exc

    @property
    def structure_names(self) -> tuple[str, ...]:
        """The foreground classes in channel order (``("ctv",)`` for a single-CTV network)."""
        return self.structures or ("ctv",)

    def with_structures(self, structures: tuple[str, ...]) -> NetworkConfig:
        """Copy predicting ``structures`` (empty: one CTV class)."""
        return replace(self, structures=structures, out_channels=1 + max(1, len(structures)))

    def with_tuning(self, tuning: TuningMode) -> NetworkConfig:
        """Copy with a tuning mode, adjusting ``n_prompts`` as that mode requires."""
        n = self.n_prompts if tuning is TuningMode.MULTI_PROMPT else 1
        if tuning is TuningMode.MULTI_PROMPT and self.n_prompts == 1:
            n = 2
        return replace(self, tuning=tuning, n_prompts=n)


PRESETS: dict[str, NetworkConfig] = {
    # The paper's configuration (Table S1): 5 levels of 48..384 channels, Llama-2-7b (D=4096).
    "paper": NetworkConfig(),
    # CPU demo: quarter width, SmolLM2-135M (D=576), 32 x 128 x 128 patches.
    "cpu": NetworkConfig(
        channels=(16, 16, 32, 64, 128), text_dim=576, mlp_base=16, roi_size=(32, 128, 128)
    ),
    # Tests: tiny everything.
    "tiny": NetworkConfig(
        channels=(8, 8, 16, 16, 32),
        text_dim=64,
        mlp_base=8,
        attn_heads=2,
        roi_size=(32, 64, 64),
    ),
}


def preset(name: str, **overrides: Any) -> NetworkConfig:
    """A named preset with field overrides (e.g. ``text_dim``, ``multimodal``)."""
    if name not in PRESETS:
        raise ConfigurationError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    base = PRESETS[name]
    tuning = overrides.pop("tuning", None)
    cfg = replace(base, **overrides)
    return cfg.with_tuning(TuningMode(tuning)) if tuning is not None else cfg


@dataclass(frozen=True)
class NetworkChoice:
    """A preset with the command line's overrides (``--preset``, ``--text-dim``, ...).

    Parameters
    ----------
    preset
        ``paper``, ``cpu`` or ``tiny``.
    text_dim
        Width D of the context embedding; default: the text encoder's.
    tuning
        Text-side tuning mode (paper Table 4a); default: the preset's.
    vision_only
        The baseline without text.
    structures
        Output structures (empty: one CTV class).
    """

    preset: str
    text_dim: int | None = None
    tuning: str | None = None
    vision_only: bool = False
    structures: tuple[str, ...] = ()

    def config(self, encoder_dim: int | None = None) -> NetworkConfig:
        """The validated configuration; ``encoder_dim`` applies unless ``text_dim`` is set."""
        overrides: dict[str, Any] = {}
        dim = self.text_dim or encoder_dim
        if dim is not None:
            overrides["text_dim"] = dim
        if self.tuning:
            overrides["tuning"] = self.tuning
        if self.vision_only:
            overrides["multimodal"] = False
        return preset(self.preset, **overrides).with_structures(self.structures)
