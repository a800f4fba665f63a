"""The context embedding g: what the frozen language model says about a clinical note.

Input sequence per note and prompt set ``p`` (embeddings, width D)::

    [BOS] + v_p,1 .. v_p,M + note tokens + [SEG]

``v`` are learnable prompt vectors (N sets of M), ``[SEG]`` is a *trained* input embedding
saved in our checkpoint (the reference code left it as an unsaved random row). The final
hidden state (after the model's final norm) at ``[SEG]``, one per prompt set, is
``g in R^{N x D}``.

g depends only on (encoder identity, text-side weights, note text), so it is computed once
per note and keyed by :func:`context_key`; the segmentation network takes g, never text.
Caches of g follow :class:`ContextStore`: :class:`ContextCache` in one process, or Redis
(``workers.embedding_cache``) shared by every worker. A module without its encoder
(a worker started without the LLM) still computes the key and serves cached notes; any
other note raises :class:`~model.errors.ContextNotCachedError`.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import torch
from torch import nn

from model.errors import ConfigurationError, ContextNotCachedError
from model.network.config import NetworkConfig, TuningMode
from model.text.encoders import TextEncoder

log = logging.getLogger(__name__)

MAX_NOTE_TOKENS = 128


def context_key(encoder_identity: str, text_digest: str, note: str) -> str:
    """Cache key of g for a note: hash of encoder identity, text-side weights and the text."""
    h = hashlib.sha256()
    for part in (encoder_identity, text_digest, note):
        h.update(part.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()


def state_digest(state: Mapping[str, torch.Tensor]) -> str:
    """Hash of text-side tensors (names and float32 values), 16 hex digits."""
    h = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class ContextStore(Protocol):
    """Where g tensors are kept, keyed by :func:`context_key`."""

    def get(self, key: str) -> torch.Tensor | None:
        """Cached g ``(N, D)`` or ``None``."""

    def put(self, key: str, value: torch.Tensor) -> None:
        """Store g ``(N, D)``."""


class PromptContext(nn.Module):
    """Learnable text side (prompts, [SEG], optional LoRA) around a frozen encoder.

    The frozen encoder is held by reference and is not part of ``state_dict()`` (only
    LoRA adapters, when used, are); :meth:`text_state` is what checkpoints store.
    """

    def __init__(self, config: NetworkConfig, encoder: TextEncoder | None = None) -> None:
        super().__init__()
        self.config = config
        d, n, m = config.text_dim, config.n_prompts, config.prompt_length
        self.prompts = nn.Parameter(torch.randn(n, m, d) * 0.02) if config.uses_prompts else None
        self.seg = nn.Parameter(torch.zeros(d), requires_grad=config.tuning is not TuningMode.NONE)
        self._encoder: list[TextEncoder] = []
        self._digest: str | None = None
        self._detached: tuple[str, str] | None = None
        self.forward_calls = 0
        if encoder is not None:
            self.attach(encoder)

    # --- encoder -----------------------------------------------------------------------------
    def attach(self, encoder: TextEncoder, init_seg: bool = True) -> None:
        """Attach the frozen encoder; initialise [SEG] to the mean token embedding."""
        if encoder.hidden_size != self.config.text_dim:
            raise ConfigurationError(
                f"text encoder width {encoder.hidden_size} != "
                f"config text_dim {self.config.text_dim}"
            )
        self._encoder = [encoder]
        if init_seg and self.seg.device.type != "meta":
            with torch.no_grad():
                table = encoder.input_embeddings().weight
                self.seg.copy_(table.float().mean(dim=0).to(self.seg.device))
        if self.config.tuning is TuningMode.LORA:
            self._add_lora(encoder)

    def _add_lora(self, encoder: TextEncoder) -> None:
        from peft import LoraConfig, get_peft_model

        names = {n.rsplit(".", 1)[-1] for n, _ in encoder.model.named_modules()}
        targets = [t for t in ("q_proj", "v_proj", "query", "value") if t in names]
        lora = LoraConfig(
            r=self.config.lora_rank,
            lora_alpha=self.config.lora_alpha,
            target_modules=targets,
            lora_dropout=0.0,
        )
        encoder.model = get_peft_model(encoder.model, lora)
        self.lora = nn.ParameterDict(
            {k.replace(".", "__"): p for k, p in encoder.model.named_parameters() if "lora_" in k}
        )

    @property
    def encoder(self) -> TextEncoder:
        """The attached encoder (raises if none)."""
        if not self._encoder:
            raise ConfigurationError("no text encoder attached to the context module")
        return self._encoder[0]

    @property
    def has_encoder(self) -> bool:
        """Whether a text encoder is attached (g can be computed, not only looked up)."""
        return bool(self._encoder)

    @property
    def identity(self) -> str:
        """Identity of the attached encoder (or the one pinned by :meth:`pin_key`)."""
        if not self._encoder and self._detached is not None:
            return self._detached[0]
        return self.encoder.identity

    def pin_key(self, identity: str, digest: str) -> None:
        """Key g without an encoder: the checkpoint's encoder identity and text digest.

        Used by workers that never load the language model; they serve cached notes only.
        """
        self._detached = (identity, digest)

    # --- computing g -------------------------------------------------------------------------
    def _sequences(self, notes: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Embedded, right-padded sequences (B*N, L, D), attention mask, [SEG] positions."""
        enc = self.encoder
        table = enc.input_embeddings()
        device, dtype = table.weight.device, table.weight.dtype
        token_lists = enc.tokenize(list(notes))
        n_sets = self.config.n_prompts
        seqs: list[torch.Tensor] = []
        for ids in token_lists:
            if len(ids) > MAX_NOTE_TOKENS:
                log.warning("note truncated from %d to %d tokens", len(ids), MAX_NOTE_TOKENS)
                ids = ids[:MAX_NOTE_TOKENS]
            head = [enc.bos_id] if enc.bos_id is not None else []
            tok = table(torch.tensor(head + ids, dtype=torch.long, device=device))
            for p in range(n_sets):
                parts = [tok[: len(head)]]
                if self.prompts is not None:
                    parts.append(self.prompts[p].to(device, dtype))
                parts += [tok[len(head) :], self.seg.to(device, dtype)[None]]
                seqs.append(torch.cat(parts, dim=0))
        lengths = torch.tensor([s.shape[0] for s in seqs], device=device)
        width = int(lengths.max())
        batch = torch.zeros(len(seqs), width, table.weight.shape[1], device=device, dtype=dtype)
        for i, s in enumerate(seqs):
            batch[i, : s.shape[0]] = s
        mask = (torch.arange(width, device=device)[None] < lengths[:, None]).long()
        return batch, mask, lengths - 1

    def forward(self, notes: Sequence[str]) -> torch.Tensor:
        """g for a batch of notes: ``(B, N, D)`` float32. One encoder forward pass."""
        if not notes:
            raise ConfigurationError("no notes given")
        embeds, mask, seg_pos = self._sequences(notes)
        out = self.encoder.model(inputs_embeds=embeds, attention_mask=mask)
        hidden = out.last_hidden_state
        self.forward_calls += 1
        g = hidden[torch.arange(hidden.shape[0], device=hidden.device), seg_pos]
        shaped: torch.Tensor = g.float().view(len(notes), self.config.n_prompts, -1)
        return shaped

    # --- identity of the trained text side ---------------------------------------------------
    def text_state(self) -> dict[str, torch.Tensor]:
        """The trainable text-side tensors that a checkpoint stores."""
        return {k: v for k, v in self.state_dict().items()}

    def digest(self) -> str:
        """Hash of the text-side weights (part of the g cache key).

        Cached in eval mode; training mode (weights may change) or loading weights
        recomputes it.
        """
        if not self._encoder and self._detached is not None:
            return self._detached[1]
        if self._digest is not None and not self.training:
            return self._digest
        digest = state_digest(self.text_state())
        self._digest = None if self.training else digest
        return digest

    def train(self, mode: bool = True) -> PromptContext:
        """Switch mode; forget the cached digest."""
        self._digest = None
        return super().train(mode)

    def load_state_dict(self, *args: Any, **kwargs: Any) -> Any:
        """Load weights; forget the cached digest."""
        self._digest = None
        return super().load_state_dict(*args, **kwargs)


class ContextCache:
    """In-process LRU of g tensors keyed by :func:`context_key` (Redis comes with workers)."""

    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> torch.Tensor | None:
        """Cached g or ``None``."""
        value = self._items.get(key)
        if value is None:
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return value

    def put(self, key: str, value: torch.Tensor) -> None:
        """Store g (detached, on CPU)."""
        self._items[key] = value.detach().cpu()
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)


@torch.no_grad()
def contexts_for(
    module: PromptContext, notes: Sequence[str], cache: ContextStore | None = None
) -> torch.Tensor:
    """g for ``notes`` ``(B, N, D)``, computing only the uncached ones in one batch.

    Raises
    ------
    ContextNotCachedError
        A note is not cached and ``module`` has no encoder to compute it.
    """
    digest = module.digest()
    keys = [context_key(module.identity, digest, n) for n in notes]
    found: dict[str, torch.Tensor] = {}
    if cache is not None:
        for k in keys:
            v = cache.get(k)
            if v is not None:
                found[k] = v
    missing = list(dict.fromkeys(n for n, k in zip(notes, keys, strict=True) if k not in found))
    if missing and not module.has_encoder:
        raise ContextNotCachedError(
            f"{len(missing)} note(s) not in the embedding cache and no text encoder loaded here"
        )
    if missing:
        g = module(missing)
        for note, row in zip(missing, g, strict=True):
            key = context_key(module.identity, digest, note)
            found[key] = row.cpu()
            if cache is not None:
                cache.put(key, row)
    return torch.stack([found[k] for k in keys])
