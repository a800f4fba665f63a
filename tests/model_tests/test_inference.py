"""Sliding-window inference: grid, progress, one LLM pass per note."""

from __future__ import annotations

import numpy as np
import torch

from model.imaging.geometry import Grid, Volume
from model.imaging.preprocessing import PreprocessConfig
from model.inference import Predictor
from model.network.config import preset
from model.network.context import PromptContext
from model.network.segmenter import ContourNet
from model.network.sliding_window import count_windows
from model.text.encoders import tiny_llama


def _volume() -> Volume:
    grid = Grid((20, 90, 100), (-120.0, -80.0, 40.0), (3.0, 1.2, 1.2))
    rng = np.random.default_rng(0)
    return Volume(rng.normal(0, 200, grid.shape).astype(np.float32), grid)


def test_prediction_lands_on_the_input_grid_with_one_llm_pass() -> None:
    cfg = preset("tiny")
    ctx = PromptContext(cfg, tiny_llama()).eval()
    predictor = Predictor(
        ContourNet(cfg),
        ctx,
        device="cpu",
        overlap=0.5,
        preprocess=PreprocessConfig(target_spacing=(3.0, 1.0, 1.0)),
    )
    seen: list[float] = []
    volume = _volume()
    pred = predictor.predict(volume, "N1, cT2, left side", progress=seen.append)
    assert pred.mask.shape == volume.grid.shape and pred.mask.dtype == bool
    assert pred.windows > 1, "the test volume needs several windows"
    assert seen[-1] == 1.0 and seen == sorted(seen)
    assert ctx.forward_calls == 1, "sliding windows never run the language model"
    predictor.predict(volume, "N1, cT2, left side")
    assert ctx.forward_calls == 1, "a cached note costs 0 LLM forward passes"
    stages = {"preprocess", "context", "network", "postprocess", "plausibility"}
    assert set(pred.timings) == stages


def test_window_count_matches_monai() -> None:
    cfg = preset("tiny")
    net = ContourNet(
        cfg,
    ).eval()
    predictor = Predictor(net, None, device="cpu", overlap=0.25)
    g = torch.zeros(1, cfg.n_prompts, cfg.text_dim)
    volume = _volume()
    pred = predictor.predict(volume, context=g)
    image_shape = (20, 108, 120)  # 90 * 1.2 / 1.0, 100 * 1.2 / 1.0
    assert pred.windows == count_windows(image_shape, cfg.roi_size, 0.25)


def test_count_windows_small_volume_is_one_window() -> None:
    assert count_windows((10, 20, 20), (32, 64, 64), 0.25) == 1
    assert count_windows((128, 384, 384), (128, 384, 384), 0.5) == 1
    assert count_windows((130, 384, 384), (128, 384, 384), 0.5) == 2
