"""Checkpoints: one safetensors file plus a JSON config, checked on load.

Layout of a checkpoint folder::

    model.safetensors   network weights ("net.*") and trained text side ("text.*":
                        prompts, [SEG] embedding, LoRA adapters)
    config.json         {"format": 1, "network": NetworkConfig, "text_encoder": identity,
                         "preprocessing": {...}, "training": {...}, "metrics": {...}}

Loading compares the stored network config with the expected one (when given) and the
stored encoder identity with the attached encoder; any difference is refused.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from model.errors import CheckpointMismatchError, ConfigurationError, ModelNotFoundError
from model.files import file_digest
from model.network.config import NetworkConfig
from model.network.context import PromptContext, state_digest
from model.network.segmenter import ContourNet
from model.text.encoders import TextEncoder

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"


@dataclass
class Checkpoint:
    """A loaded checkpoint: network, text side (unattached), and its metadata."""

    network: ContourNet
    context: PromptContext | None
    config: NetworkConfig
    text_encoder: str | None
    meta: dict[str, Any] = field(default_factory=dict)
    digest: str = ""
    text_state: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def short_hash(self) -> str:
        """First 12 hex digits of the weights file's SHA-256 (names the model version)."""
        return self.digest[:12]


def save_checkpoint(
    folder: Path,
    network: ContourNet,
    context: PromptContext | None,
    *,
    text_encoder: str | None,
    meta: dict[str, Any] | None = None,
) -> str:
    """Write a checkpoint atomically (temporary files, then rename); returns its digest."""
    tensors = {f"net.{k}": v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    if context is not None:
        for k, v in context.text_state().items():
            tensors[f"text.{k}"] = v.detach().cpu().contiguous()
    doc = {
        "format": FORMAT_VERSION,
        "network": json.loads(network.config.to_json()),
        "text_encoder": text_encoder,
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **(meta or {}),
    }
    return write_checkpoint_files(folder, tensors, doc)


def write_checkpoint_files(
    folder: Path, tensors: dict[str, torch.Tensor], doc: dict[str, Any]
) -> str:
    """Write weights and config atomically (temporary files, then rename) into ``folder``
    (created if missing); returns the weights digest."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp_w, tmp_c = folder / (WEIGHTS + ".tmp"), folder / (CONFIG + ".tmp")
    save_file(tensors, str(tmp_w), metadata={"format": "pt", "llmctv": str(FORMAT_VERSION)})
    tmp_c.write_text(json.dumps(doc, indent=2, sort_keys=True))
    tmp_w.replace(folder / WEIGHTS)
    tmp_c.replace(folder / CONFIG)
    return file_digest(folder / WEIGHTS)


def read_config(folder: Path) -> dict[str, Any]:
    """The checkpoint's JSON document (raises :class:`ModelNotFoundError` if unreadable)."""
    path = folder / CONFIG
    if not path.is_file() or not (folder / WEIGHTS).is_file():
        raise ModelNotFoundError(f"no checkpoint ({WEIGHTS} + {CONFIG}) in {folder}")
    try:
        doc: dict[str, Any] = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelNotFoundError(f"unreadable checkpoint config {path}: {exc}") from exc
    if doc.get("format") != FORMAT_VERSION:
        raise CheckpointMismatchError(f"{path}: unsupported checkpoint format {doc.get('format')}")
    return doc


def load_checkpoint(
    folder: Path, expected: NetworkConfig | None = None, device: str | torch.device = "cpu"
) -> Checkpoint:
    """Load a checkpoint; refuse it if its config differs from ``expected``.

    The text side is returned unattached: call ``checkpoint.context.attach(encoder,
    init_seg=False)`` with an encoder whose identity equals ``checkpoint.text_encoder``
    (see :func:`attach_encoder`).
    """
    doc = read_config(folder)
    config = NetworkConfig.from_json(json.dumps(doc["network"]))
    if expected is not None and expected.to_json() != config.to_json():
        raise CheckpointMismatchError(
            f"checkpoint {folder} was trained with a different network config"
        )
    tensors = load_file(str(folder / WEIGHTS), device=str(device))
    network = ContourNet(config).to(device)
    _load_into(network, {k[4:]: v for k, v in tensors.items() if k.startswith("net.")}, folder)
    context = None
    text = {k[5:]: v for k, v in tensors.items() if k.startswith("text.")}
    if config.multimodal:
        context = PromptContext(config).to(device)
    network.eval()
    return Checkpoint(
        network,
        context,
        config,
        doc.get("text_encoder"),
        doc,
        file_digest(folder / WEIGHTS),
        text,
    )


def _load_into(module: torch.nn.Module, state: dict[str, torch.Tensor], folder: Path) -> None:
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointMismatchError(
            f"checkpoint {folder}: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )


def attach_encoder(checkpoint: Checkpoint, encoder: TextEncoder) -> PromptContext:
    """Attach a loaded text encoder to the checkpoint's text side and load its weights.

    Raises
    ------
    CheckpointMismatchError
        If the encoder is not the one the checkpoint was trained with.
    """
    if checkpoint.context is None:
        raise CheckpointMismatchError("vision-only checkpoint has no text side")
    if checkpoint.text_encoder is not None and encoder.identity != checkpoint.text_encoder:
        raise CheckpointMismatchError(
            f"checkpoint expects text encoder {checkpoint.text_encoder}, got {encoder.identity}"
        )
    ctx = checkpoint.context
    ctx.attach(encoder, init_seg=False)
    _load_into(ctx, checkpoint.text_state, Path("<checkpoint>"))
    ctx.eval()
    return ctx


def detached_context(checkpoint: Checkpoint) -> PromptContext:
    """The checkpoint's text side without its language model: it keys g, never computes it.

    The cache key uses the encoder identity recorded in the checkpoint and the digest of the
    stored text-side tensors, exactly what a worker holding the encoder computes (prompts,
    ``[SEG]`` and any LoRA adapters), so both kinds of worker share one cache.

    Raises
    ------
    ConfigurationError
        A vision-only checkpoint, or one that does not record its encoder identity.
    """
    if checkpoint.context is None:
        raise ConfigurationError("vision-only checkpoint has no text side")
    if not checkpoint.text_encoder:
        raise ConfigurationError(
            "the checkpoint does not record its text encoder identity; "
            "a worker without the text encoder cannot key the embedding cache"
        )
    ctx = checkpoint.context
    plain = {k: v for k, v in checkpoint.text_state.items() if not k.startswith("lora.")}
    _load_into(ctx, plain, Path("<checkpoint>"))
    ctx.pin_key(checkpoint.text_encoder, state_digest(checkpoint.text_state))
    ctx.eval()
    return ctx
