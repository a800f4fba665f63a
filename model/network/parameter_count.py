"""Trainable parameter counts of a configuration, built without weights (meta device).

The fidelity gate: for the paper configuration with D = 4096 the counts must match the
paper's Table S3 within 3 %: backbone 13.10 M, alignment 8.32 M, prompts 0.07 M.
"""

from __future__ import annotations

from typing import Any

import torch

from model.network.config import NetworkConfig
from model.network.context import PromptContext
from model.network.segmenter import ContourNet, count_parameters

PAPER_TABLE_S3 = {"backbone": 13.10, "alignment": 8.32, "prompts": 0.07}


def parameter_report(config: NetworkConfig) -> dict[str, Any]:
    """Counts by part: ``backbone``, ``alignment`` (projections + two-way), ``prompts``."""
    with torch.device("meta"):
        net = ContourNet(config)
        ctx = PromptContext(config) if config.multimodal else None
    counts = {
        "backbone": count_parameters(net.encoder) + count_parameters(net.decoder),
        "alignment": count_parameters(net.alignment),
        "prompts": count_parameters(ctx),
    }
    if ctx is not None and not ctx.seg.requires_grad:
        counts["prompts"] = 0
    counts["total"] = sum(counts.values())
    return {
        "config": {
            "channels": list(config.channels),
            "text_dim": config.text_dim,
            "n_prompts": config.n_prompts,
            "prompt_length": config.prompt_length,
            "tuning": config.tuning.value,
            "multimodal": config.multimodal,
        },
        "parameters": counts,
        "millions": {k: round(v / 1e6, 4) for k, v in counts.items()},
        "paper_table_s3_millions": PAPER_TABLE_S3,
        "note": "LoRA adapter weights depend on the language model and are not counted here",
    }
