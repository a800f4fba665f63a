"""Interactive alignment: SAM-style two-way attention between context tokens and image.

At each of the 5 levels, the context embedding ``g`` (``(B, N, D)``, N context tokens of the
text encoder's width D) is projected to the level's channels ``C``; a two-way transformer
then lets the tokens and the image features attend to each other, and the updated image
features replace the skip (or bottleneck) features fed to the decoder.

Block structure (SAM's mask decoder, Kirillov et al. 2023), per layer:
self-attention on the tokens, token->image cross-attention, MLP on the tokens,
image->token cross-attention; then a final token->image attention. Cross-attention
works in ``C / downsample`` internal channels. The image has no positional encoding
(as in the paper's reference network); the token positional term is the projected ``g``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Multi-head attention with an optional reduced internal width."""

    def __init__(self, dim: int, heads: int, downsample: int = 1) -> None:
        super().__init__()
        self.heads = heads
        inner = dim // downsample
        self.q_proj = nn.Linear(dim, inner)
        self.k_proj = nn.Linear(dim, inner)
        self.v_proj = nn.Linear(dim, inner)
        self.out_proj = nn.Linear(inner, dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.view(b, n, self.heads, c // self.heads).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``q``: (B, Nq, C); ``k``, ``v``: (B, Nk, C) -> (B, Nq, C)."""
        qh = self._split(self.q_proj(q))
        kh = self._split(self.k_proj(k))
        vh = self._split(self.v_proj(v))
        out = F.scaled_dot_product_attention(qh, kh, vh)
        b, h, n, c = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, h * c))  # type: ignore[no-any-return]


class TwoWayBlock(nn.Module):
    """One two-way layer: token self-attn, token->image, MLP, image->token."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, downsample: int, first: bool) -> None:
        super().__init__()
        self.first = first
        self.self_attn = Attention(dim, heads)
        self.norm1 = nn.LayerNorm(dim)
        self.token_to_image = Attention(dim, heads, downsample)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.ReLU(), nn.Linear(mlp_dim, dim))
        self.norm3 = nn.LayerNorm(dim)
        self.image_to_token = Attention(dim, heads, downsample)
        self.norm4 = nn.LayerNorm(dim)

    def forward(
        self, tokens: torch.Tensor, image: torch.Tensor, token_pe: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``tokens``: (B, N, C); ``image``: (B, HWD, C). Returns both updated."""
        if self.first:
            tokens = self.self_attn(tokens, tokens, tokens)
        else:
            q = tokens + token_pe
            tokens = tokens + self.self_attn(q, q, tokens)
        tokens = self.norm1(tokens)
        tokens = self.norm2(tokens + self.token_to_image(tokens + token_pe, image, image))
        tokens = self.norm3(tokens + self.mlp(tokens))
        image = self.norm4(image + self.image_to_token(image, tokens + token_pe, tokens))
        return tokens, image


class TwoWayTransformer(nn.Module):
    """``depth`` two-way layers and a final token->image attention."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, depth: int, downsample: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayBlock(dim, heads, mlp_dim, downsample, first=(i == 0)) for i in range(depth)
        )
        self.final_attn = Attention(dim, heads, downsample)
        self.final_norm = nn.LayerNorm(dim)

    def forward(
        self, image: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``image``: (B, C, k, j, i); ``tokens``: (B, N, C). Returns (tokens, image)."""
        b, c, *spatial = image.shape
        flat = image.flatten(2).transpose(1, 2)
        pe = tokens
        for layer in self.layers:
            tokens, flat = layer(tokens, flat, pe)
        tokens = self.final_norm(tokens + self.final_attn(tokens + pe, flat, flat))
        return tokens, flat.transpose(1, 2).reshape(b, c, *spatial)


class InteractiveAlignment(nn.Module):
    """Per-level projection of ``g`` and two-way transformers at all 5 levels."""

    def __init__(
        self,
        channels: tuple[int, ...],
        text_dim: int,
        heads: int,
        depth: int,
        downsample: int,
        mlp_base: int,
    ) -> None:
        super().__init__()
        self.projections = nn.ModuleList(nn.Linear(text_dim, c) for c in channels)
        self.transformers = nn.ModuleList(
            TwoWayTransformer(c, heads, mlp_base * 2**level, depth, downsample)
            for level, c in enumerate(channels)
        )

    def forward(self, features: list[torch.Tensor], context: torch.Tensor) -> list[torch.Tensor]:
        """Align every level's features with ``context`` (B or 1, N, D); returns new features.

        A context of batch 1 is shared by all windows of a batch (sliding-window inference).
        """
        out = []
        batch = features[0].shape[0]
        g = context.expand(batch, -1, -1) if context.shape[0] == 1 else context
        for feat, proj, transformer in zip(
            features, self.projections, self.transformers, strict=True
        ):
            _, aligned = transformer(feat, proj(g.to(feat.dtype)))
            out.append(aligned)
        return out
