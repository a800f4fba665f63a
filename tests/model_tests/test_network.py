"""The network: shapes, text conditioning, vision-only baseline."""

from __future__ import annotations

import pytest
import torch

from model.errors import ConfigurationError
from model.network.config import NetworkConfig, TuningMode, preset
from model.network.segmenter import ContourNet


def test_multimodal_forward_shape_and_text_dependence() -> None:
    cfg = preset("tiny")
    net = ContourNet(cfg).eval()
    x = torch.rand(2, 1, *cfg.roi_size)
    g1 = torch.randn(1, cfg.n_prompts, cfg.text_dim)
    g2 = torch.randn(1, cfg.n_prompts, cfg.text_dim)
    with torch.no_grad():
        a, b = net(x, g1), net(x, g2)
    assert a.shape == (2, 2, *cfg.roi_size)
    assert not torch.allclose(a, b), "the context embedding must change the output"


def test_shared_context_equals_repeated_context() -> None:
    cfg = preset("tiny")
    net = ContourNet(cfg).eval()
    x = torch.rand(3, 1, *cfg.roi_size)
    g = torch.randn(1, cfg.n_prompts, cfg.text_dim)
    with torch.no_grad():
        shared = net(x, g)
        repeated = net(x, g.expand(3, -1, -1))
    torch.testing.assert_close(shared, repeated)


def test_vision_only_ignores_text_and_has_no_alignment() -> None:
    cfg = preset("tiny", multimodal=False)
    net = ContourNet(cfg)
    assert net.alignment is None
    out = net(torch.rand(1, 1, *cfg.roi_size))
    assert out.shape[1] == 2


def test_multimodal_refuses_missing_or_wrong_width_context() -> None:
    cfg = preset("tiny")
    net = ContourNet(cfg)
    x = torch.rand(1, 1, *cfg.roi_size)
    with pytest.raises(ConfigurationError):
        net(x, None)
    with pytest.raises(ConfigurationError):
        net(x, torch.randn(1, 2, cfg.text_dim + 1))


def test_alignment_at_all_five_levels_with_paper_shapes() -> None:
    cfg = preset("paper", text_dim=64)
    net = ContourNet(cfg)
    assert net.alignment is not None
    assert len(net.alignment.transformers) == 5
    widths = [t.layers[0].mlp[0].out_features for t in net.alignment.transformers]
    assert widths == [48, 96, 192, 384, 768]
    assert [p.out_features for p in net.alignment.projections] == [48, 48, 96, 192, 384]


def test_config_json_round_trip_and_validation() -> None:
    cfg = preset("cpu", tuning="single_prompt")
    assert NetworkConfig.from_json(cfg.to_json()) == cfg
    assert cfg.tuning is TuningMode.SINGLE_PROMPT and cfg.n_prompts == 1
    with pytest.raises(ConfigurationError):
        NetworkConfig(roi_size=(30, 64, 64))
    with pytest.raises(ConfigurationError):
        preset("nonexistent")
