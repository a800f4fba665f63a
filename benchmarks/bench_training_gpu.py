"""Training on CUDA: paper-size step time and memory, and a short end-to-end run (a table).

Run on a GPU machine: ``python benchmarks/bench_training_gpu.py``. Measures

* one AMP training step (forward + backward + AdamW) of the paper-size multimodal network
  on a batch of 2 windows of 128 x 384 x 384, with g of width 4096 (median of 3 after a
  warm-up) and the peak GPU memory;
* a short :class:`model.training.trainer.Trainer` run on CUDA (tiny preset, tiny Llama) to exercise
  AMP, the gradient scaler, validation and checkpointing end to end.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from monai.losses.dice import DiceCELoss

from model.network.config import preset
from model.network.segmenter import ContourNet
from model.text.encoders import tiny_llama
from model.training.sampling import TrainingCase
from model.training.trainer import TrainConfig, Trainer


def paper_step(batch: int = 2, repeats: int = 3) -> tuple[float, float]:
    """Median seconds per AMP training step and peak GPU memory (GiB)."""
    cfg = preset("paper")
    net = ContourNet(cfg).cuda()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=1e-5)
    scaler = torch.amp.GradScaler("cuda")
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    x = torch.rand(batch, 1, *cfg.roi_size, device="cuda")
    y = (torch.rand(batch, 1, *cfg.roi_size, device="cuda") > 0.7).long()
    g = torch.randn(batch, cfg.n_prompts, cfg.text_dim, device="cuda", requires_grad=True)
    times = []
    for i in range(repeats + 1):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.float16):
            loss = loss_fn(net(x, g).float(), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t0)
    return statistics.median(times), torch.cuda.max_memory_allocated() / 2**30


def short_run() -> tuple[float, float, float]:
    """First and last epoch loss and seconds of a tiny CUDA training run."""
    cases = []
    for idx in range(4):
        rng = np.random.default_rng(idx)
        image = (rng.random((32, 64, 64)) * 0.1).astype(np.float32)
        image[8:24, 20:44, 10:30] += 0.8
        label = np.zeros(image.shape, np.uint8)
        label[8:24, 20:44, 10:30] = 1
        cases.append(TrainingCase(f"c{idx}", image, label, "N1, cT2, left side", (3, 1, 1)))
    cfg = TrainConfig(epochs=5, steps_per_epoch=5, lr=3e-2, device="cuda", val_fraction=0.25)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = Trainer(preset("tiny"), cfg, Path(tmp), tiny_llama()).fit(cases)
    return result.history[0]["loss"], result.history[-1]["loss"], time.perf_counter() - t0


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 1
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    step, mem = paper_step()
    first, last, seconds = short_run()
    print("\n| measurement | value |")
    print("|---|---|")
    print(f"| paper-size AMP training step, batch 2 x 128x384x384 | {step:.3f} s |")
    print(f"| peak GPU memory of that step | {mem:.1f} GiB |")
    print(f"| tiny CUDA run: loss epoch 1 -> 5 | {first:.3f} -> {last:.3f} ({seconds:.1f} s) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
