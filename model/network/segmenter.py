"""The contouring network: residual U-Net, optionally aligned with a context embedding.

``ContourNet(config)(x, context)`` takes a CT patch ``x`` of shape ``(B, 1, k, j, i)``
(slices, rows, columns; HU normalised to [0, 1]) and the context embedding ``g`` of shape
``(B or 1, N, D)`` computed *once per note* by :mod:`model.network.context`; it never sees text, so
sliding-window inference never runs the language model. It returns logits
``(B, 2, k, j, i)``.
"""

from __future__ import annotations

import torch
from torch import nn

from model.errors import ConfigurationError
from model.network.alignment import InteractiveAlignment
from model.network.backbone import ResidualUNetDecoder, ResidualUNetEncoder
from model.network.config import NetworkConfig


class ContourNet(nn.Module):
    """Multimodal network (``config.multimodal``) or the vision-only baseline."""

    def __init__(self, config: NetworkConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = ResidualUNetEncoder(config.in_channels, config.channels, config.norm)
        self.decoder = ResidualUNetDecoder(config.channels, config.out_channels, config.norm)
        self.alignment: InteractiveAlignment | None = None
        if config.multimodal:
            self.alignment = InteractiveAlignment(
                config.channels,
                config.text_dim,
                config.attn_heads,
                config.attn_depth,
                config.attn_downsample,
                config.mlp_base,
            )

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """Logits for patch ``x`` given context embedding ``context`` (ignored if vision-only)."""
        features = self.encoder(x)
        if self.alignment is not None:
            if context is None:
                raise ConfigurationError("the multimodal network needs a context embedding")
            if context.shape[-1] != self.config.text_dim:
                raise ConfigurationError(
                    f"context width {context.shape[-1]} != text_dim {self.config.text_dim}"
                )
            features = self.alignment(features, context)
        return self.decoder(features)  # type: ignore[no-any-return]


def count_parameters(module: nn.Module | None, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters of ``module`` (0 for ``None``)."""
    if module is None:
        return 0
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
