"""Checkpoints: safetensors + JSON, [SEG] saved, config and encoder checked on load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model.errors import CheckpointMismatchError, ModelNotFoundError
from model.network.checkpoint import attach_encoder, load_checkpoint, save_checkpoint
from model.network.config import preset
from model.network.context import PromptContext
from model.network.segmenter import ContourNet
from model.text.encoders import tiny_llama


def _trained_pair() -> tuple[ContourNet, PromptContext]:
    cfg = preset("tiny")
    net = ContourNet(cfg).eval()
    ctx = PromptContext(cfg, tiny_llama()).eval()
    with torch.no_grad():
        ctx.seg.add_(torch.randn_like(ctx.seg))  # a "trained" [SEG]
    return net, ctx


def test_round_trip_gives_identical_predictions(tmp_path: Path) -> None:
    net, ctx = _trained_pair()
    digest = save_checkpoint(tmp_path, net, ctx, text_encoder=ctx.identity)
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "config.json").is_file()
    ckpt = load_checkpoint(tmp_path, expected=net.config)
    assert ckpt.digest == digest
    ctx2 = attach_encoder(ckpt, tiny_llama())
    torch.testing.assert_close(ctx2.seg, ctx.seg)
    x = torch.rand(1, 1, *net.config.roi_size)
    with torch.no_grad():
        a = net(x, ctx(["N1, left side"]))
        b = ckpt.network(x, ctx2(["N1, left side"]))
    torch.testing.assert_close(a, b)


def test_config_mismatch_is_refused(tmp_path: Path) -> None:
    net, ctx = _trained_pair()
    save_checkpoint(tmp_path, net, ctx, text_encoder=ctx.identity)
    with pytest.raises(CheckpointMismatchError):
        load_checkpoint(tmp_path, expected=preset("tiny", tuning="single_prompt"))


def test_other_encoder_is_refused(tmp_path: Path) -> None:
    net, ctx = _trained_pair()
    save_checkpoint(tmp_path, net, ctx, text_encoder=ctx.identity)
    ckpt = load_checkpoint(tmp_path)
    with pytest.raises(CheckpointMismatchError):
        attach_encoder(ckpt, tiny_llama(seed=1))


def test_missing_checkpoint_names_the_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="nowhere"):
        load_checkpoint(tmp_path / "nowhere")
