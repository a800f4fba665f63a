"""Diagnostic: does the network learn to follow the note, given enough training steps?

Builds phantom training cases in memory (site A, scale 0.25, 6 x 4 x 4 mm network grid),
trains the CPU-preset multimodal network with a text encoder, and every few epochs measures
the *text effect*: the mean absolute change of the predicted probability when the side in
the note is flipped, and the fraction of predicted CTV voxels on the side the note names.
A network that ignores the text has effect ~0 and side fraction ~0.5.

``python scripts/probe_text_engagement.py --device cuda --epochs 40 --encoder tiny-llama``
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from model.evaluation.metrics import dice
from model.imaging.preprocessing import PreprocessConfig, preprocess_ct, resample_labels
from model.inference import sliding_window_probability
from model.lab.phantoms.case import (
    N_SWITCH,
    PhantomCase,
    eligible_perturbations,
    generate_case,
    perturb,
)
from model.lab.phantoms.cohort import case_id_for, case_seed
from model.network.config import preset
from model.text.encoders import load_text_encoder
from model.training.sampling import TrainingCase
from model.training.trainer import TrainConfig, Trainer, lr_lambda

PRE = PreprocessConfig(target_spacing=(6.0, 4.0, 4.0))


def _flip(note: str) -> str:
    return note.replace("left", "\0").replace("right", "left").replace("\0", "right")


def build_cases(
    n: int, seed: int, counterfactuals: bool = False
) -> list[tuple[TrainingCase, np.ndarray]]:
    """(case, x of each network-grid column in LPS minus the body centre) for n phantoms.

    With ``counterfactuals`` every allowed text perturbation of a case is added as a further
    training case on the same CT (the spec's rule recomputes the target).
    """
    out = []
    for index in range(1, n + 1):
        base = generate_case(case_id_for("A", index), "A", case_seed(seed, "A", index), 0.25)
        variants = [base]
        if counterfactuals:
            variants += [perturb(base, k) for k in eligible_perturbations(base.clinical)]
        out += [_training_case(case) for case in variants]
    return out


def _training_case(case: PhantomCase) -> tuple[TrainingCase, np.ndarray]:
    image, plan = preprocess_ct(case.volume, PRE)
    label = resample_labels(case.masks["CTV"].astype(np.uint8), plan)
    columns = np.arange(plan.target.shape[2])
    zeros = np.zeros_like(columns)
    x = plan.target.index_to_lps(np.stack([zeros, zeros, columns], axis=1))[:, 0]
    x = x - case.anatomy.params.body.cx
    note = case.clinical.prompt_text()
    return TrainingCase(case.case_id, image, label, note, PRE.target_spacing), x


NodalProbe = tuple[np.ndarray, str, str, np.ndarray]


def nodal_regions(n: int, seed: int) -> list[NodalProbe]:
    """Unilateral probe cases: (image, N+ note, N0 note, nodal region), on the network grid."""
    out = []
    for index in range(1, n + 1):
        base = generate_case(case_id_for("A", index), "A", case_seed(seed, "A", index), 0.25)
        if N_SWITCH not in eligible_perturbations(base.clinical):
            continue
        other = perturb(base, N_SWITCH)
        positive, negative = (
            (base, other)
            if base.clinical.diagnoses[0].node_positive
            else (
                other,
                base,
            )
        )
        image, plan = preprocess_ct(base.volume, PRE)
        region = positive.masks["CTV"] & ~negative.masks["CTV"]
        nodal = resample_labels(region.astype(np.uint8), plan) > 0
        notes = positive.clinical.prompt_text(), negative.clinical.prompt_text()
        out.append((image, *notes, nodal))
    return out


def text_effect(trainer: Trainer, cases: list[tuple[TrainingCase, np.ndarray]]) -> dict[str, float]:
    """Mean |p(note) - p(flipped note)|, side fraction for the flipped note, Dice."""
    if trainer.context is None:
        raise SystemExit("the probe needs a multimodal network")
    trainer.net.eval()
    trainer.context.eval()
    effects, fractions, dices = [], [], []
    with torch.no_grad():
        for case, x in cases:
            if ";" in case.note:
                continue
            p, _ = sliding_window_probability(trainer.net, case.image, trainer.context([case.note]))
            q, _ = sliding_window_probability(
                trainer.net, case.image, trainer.context([_flip(case.note)])
            )
            effects.append(float(np.abs(p - q).mean()))
            dices.append(dice(p >= 0.5, case.label > 0))
            mask = q >= 0.5
            on_left = mask[..., x > 0].sum()
            total = max(int(mask.sum()), 1)
            named_left = "left" in _flip(case.note)
            fractions.append((on_left if named_left else total - on_left) / total)
    trainer.net.train()
    trainer.context.train()
    return {
        "text_effect": float(np.mean(effects)),
        "side_fraction_flipped": float(np.mean(fractions)),
        "dice": float(np.mean(dices)),
    }


def nodal_ratio(trainer: Trainer, probes: list[NodalProbe]) -> float:
    """Predicted nodal-region volume with the N0 note over that with the N+ note (mean)."""
    if trainer.context is None:
        return float("nan")
    ratios = []
    trainer.net.eval()
    with torch.no_grad():
        for image, pos, neg, region in probes:
            p, _ = sliding_window_probability(trainer.net, image, trainer.context([pos]))
            q, _ = sliding_window_probability(trainer.net, image, trainer.context([neg]))
            with_n = float(((p >= 0.5) & region).sum())
            ratios.append(float(((q >= 0.5) & region).sum()) / max(with_n, 1.0))
    trainer.net.train()
    return float(np.mean(ratios)) if ratios else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--encoder", default="tiny-llama")
    parser.add_argument("--cases", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--budget-s", type=float, default=600)
    parser.add_argument(
        "--counterfactuals", action="store_true", help="train on perturbed notes too"
    )
    args = parser.parse_args()
    start = time.perf_counter()
    cases = build_cases(args.cases, seed=101, counterfactuals=args.counterfactuals)
    held_out = build_cases(8, seed=202)
    nodal = nodal_regions(8, seed=202)
    print(f"built {len(cases)} cases in {time.perf_counter() - start:.1f} s", flush=True)
    enc = load_text_encoder(args.encoder)
    cfg = preset("cpu", text_dim=enc.hidden_size)
    tc = TrainConfig(
        epochs=args.epochs,
        steps_per_epoch=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        device=args.device,
    )
    trainer = Trainer(cfg, tc, Path(tempfile.mkdtemp()), enc)
    train = [c for c, _ in cases]
    total = args.epochs * args.steps
    sched = torch.optim.lr_scheduler.LambdaLR(trainer.optim, lr_lambda(total, total // 20))
    rng = np.random.default_rng(0)
    probe = held_out  # never trained on, in any variant
    print(f"counterfactual training: {args.counterfactuals}; probe: 8 held-out cases")
    print(
        "| epoch | steps | loss | text effect | side fraction (flipped note) | "
        "nodal ratio N0/N+ | Dice | s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for epoch in range(1, args.epochs + 1):
        loss = trainer._train_epoch(train, rng, sched, args.steps)
        if epoch % args.every == 0 or epoch == args.epochs:
            m = text_effect(trainer, probe)
            ratio = nodal_ratio(trainer, nodal)
            print(
                f"| {epoch} | {epoch * args.steps} | {loss:.3f} | {m['text_effect']:.4f} | "
                f"{m['side_fraction_flipped']:.3f} | {ratio:.3f} | {m['dice']:.3f} | "
                f"{time.perf_counter() - start:.0f} |",
                flush=True,
            )
        if time.perf_counter() - start > args.budget_s:
            print(f"stopped at the time budget ({args.budget_s:.0f} s)")
            break
    return 0


if __name__ == "__main__":
    sys.exit(main())
