"""Residual 3D U-Net backbone (MONAI blocks), as in the paper's Table S1.

Five stride-2 residual encoder levels (channels ``c0..c4``, paper 48, 48, 96, 192, 384),
the first one already downsampling the input by 2; a decoder of transposed-convolution up
blocks with skip connections; a transposed-convolution head back to input resolution with
2 output classes. Tensors are ``(batch, channel, k, j, i)`` = (slices, rows, columns).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks.dynunet_block import UnetBasicBlock, UnetResBlock, get_conv_layer
from torch import nn


class UpBlock(nn.Module):
    """Transposed-conv upsampling x2, concatenation with the skip, then a conv block."""

    def __init__(self, in_ch: int, out_ch: int, norm: str, residual: bool) -> None:
        super().__init__()
        self.up = get_conv_layer(
            3, in_ch, out_ch, kernel_size=2, stride=2, conv_only=True, is_transposed=True
        )
        block = UnetResBlock if residual else UnetBasicBlock
        self.conv = block(3, 2 * out_ch, out_ch, kernel_size=3, stride=1, norm_name=norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat((self.up(x), skip), dim=1))  # type: ignore[no-any-return]


class ResidualUNetEncoder(nn.Module):
    """Five residual stride-2 levels; returns the features of every level (fine to coarse)."""

    def __init__(self, in_channels: int, channels: Sequence[int], norm: str) -> None:
        super().__init__()
        chans = [in_channels, *channels]
        self.levels = nn.ModuleList(
            UnetResBlock(3, chans[i], chans[i + 1], kernel_size=3, stride=2, norm_name=norm)
            for i in range(len(channels))
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for level in self.levels:
            x = level(x)
            features.append(x)
        return features


class ResidualUNetDecoder(nn.Module):
    """Up blocks from the bottleneck back to input resolution, then the class head.

    The deepest up block is residual, the others plain, as in the reference network.
    """

    def __init__(self, channels: Sequence[int], out_channels: int, norm: str) -> None:
        super().__init__()
        c = list(channels)
        self.ups = nn.ModuleList(
            UpBlock(c[i + 1], c[i], norm, residual=(i == len(c) - 2))
            for i in reversed(range(len(c) - 1))
        )
        self.head = get_conv_layer(
            3, c[0], out_channels, kernel_size=2, stride=2, conv_only=True, is_transposed=True
        )

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        for up, skip in zip(self.ups, reversed(features[:-1]), strict=True):
            x = up(x, skip)
        return self.head(x)  # type: ignore[no-any-return]
