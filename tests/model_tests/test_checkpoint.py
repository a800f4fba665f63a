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


def test_weight_average_is_the_mean_and_refuses_other_networks(tmp_path: Path) -> None:
    """``llmctv average-checkpoints``: the averaged network's weights are the sources' mean,
    it loads and predicts like any checkpoint, the sources are recorded, and networks of
    another config are refused (an average over different networks has no meaning)."""
    from model.cli import main as cli_main
    from model.training.weight_average import average_checkpoints

    (a_net, a_ctx), (b_net, b_ctx) = _trained_pair(), _trained_pair()
    with torch.no_grad():
        for p in b_net.parameters():
            p.add_(0.1)
    save_checkpoint(
        tmp_path / "a",
        a_net,
        a_ctx,
        text_encoder=a_ctx.identity,
        meta={"split": {"train": ["c1"], "val": ["c2", "c3"]}, "metrics": {"x": 1}},
    )
    save_checkpoint(tmp_path / "b", b_net, b_ctx, text_encoder=b_ctx.identity,
                    meta={"split": {"train": ["c2"], "val": ["c3"]}})  # fmt: skip
    assert cli_main(["average-checkpoints", str(tmp_path / "a"), str(tmp_path / "b"),
                     "--out", str(tmp_path / "ab")]) == 0  # fmt: skip
    avg = load_checkpoint(tmp_path / "ab", expected=a_net.config)
    for name, value in avg.network.state_dict().items():
        if value.is_floating_point():
            mean = (a_net.state_dict()[name] + b_net.state_dict()[name]) / 2
            torch.testing.assert_close(value, mean)
    torch.testing.assert_close(avg.text_state["seg"], (a_ctx.seg + b_ctx.seg) / 2)
    assert [s["weight"] for s in avg.meta["weight_average"]] == [0.5, 0.5]
    assert avg.meta["split"] == {"train": ["c1", "c2"], "val": ["c3"]}
    assert "metrics" not in avg.meta
    ctx = attach_encoder(avg, tiny_llama())
    with torch.no_grad():
        assert torch.isfinite(
            avg.network(torch.rand(1, 1, *a_net.config.roi_size), ctx(["N1"]))
        ).all()

    other = ContourNet(preset("tiny", tuning="single_prompt")).eval()
    other_ctx = PromptContext(other.config, tiny_llama()).eval()
    save_checkpoint(tmp_path / "c", other, other_ctx, text_encoder=other_ctx.identity)
    with pytest.raises(CheckpointMismatchError, match="network"):
        average_checkpoints([tmp_path / "a", tmp_path / "c"], tmp_path / "ac")
    assert not (tmp_path / "ac").exists()
