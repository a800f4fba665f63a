"""Dice + cross-entropy where some crops leave some classes unlabelled (a marginal loss).

A department that draws a nodal structure only for some N stages (the internal mammary nodes
for N2-N3, :mod:`model.dataset.stage_rule`) leaves it undrawn on its N1 cases. That absence is
the department's protocol, not anatomy: counted as background, it teaches the network to erase
a structure the CT shows, and where the text cannot yet tell N1 from N2 the network shrinks the
structure for every stage. The served version applies the rule itself, so the training only
has to stay silent there: in a crop whose background is flagged
(:data:`model.training.sampling.UNLABELLED_FLAG`), the probabilities of the flagged classes are
added to the background's before the loss (the *marginal* loss of Shi et al., Medical Image
Analysis 2021, for partially labelled segmentation), and the Dice of those classes is left out.

Without flags the loss is MONAI's :class:`~monai.losses.DiceCELoss` (softmax, one-hot target,
background included, Dice per sample and class, mean), which is what it computes then, term
for term. Shapes: logits ``(B, C, k, j, i)``, labels ``(B, 1, k, j, i)`` (class indices, or a
flag ``>= UNLABELLED_FLAG`` on background voxels).
"""

from __future__ import annotations

import torch
from monai.losses.dice import DiceCELoss

from model.training.sampling import UNLABELLED_FLAG

#: MONAI's DiceLoss smoothing (numerator and denominator), kept so both paths agree.
SMOOTH = 1e-5


class PartialDiceCELoss(torch.nn.Module):
    """``lambda_dice * Dice + lambda_ce * CE``, marginal over each crop's unlabelled classes."""

    def __init__(self, lambda_dice: float = 1.0, lambda_ce: float = 1.0) -> None:
        super().__init__()
        self.lambda_dice = lambda_dice
        self.lambda_ce = lambda_ce
        self.full = DiceCELoss(
            to_onehot_y=True, softmax=True, lambda_dice=lambda_dice, lambda_ce=lambda_ce
        )

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The batch's loss (a scalar)."""
        flagged = labels >= UNLABELLED_FLAG
        if not bool(flagged.any()):
            loss: torch.Tensor = self.full(logits, labels)
            return loss
        return self.marginal(logits, labels)

    def marginal(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The loss computed with each sample's unlabelled classes merged into background."""
        n_classes = logits.shape[1]
        unlabelled = unlabelled_classes(labels, n_classes)  # (B, C) bool
        # Log-probabilities of the merged classes: background takes the unlabelled ones.
        log_p = torch.log_softmax(logits, dim=1)
        spatial = (1,) * (logits.dim() - 2)
        merged_into_bg = unlabelled.clone()
        merged_into_bg[:, 0] = True
        mask = merged_into_bg.view(*merged_into_bg.shape, *spatial)
        log_bg = torch.logsumexp(log_p.masked_fill(~mask, float("-inf")), dim=1, keepdim=True)
        log_q = torch.cat([log_bg, log_p[:, 1:]], dim=1)
        log_q = log_q.masked_fill(unlabelled.view(*unlabelled.shape, *spatial), float("-inf"))
        target = torch.where(labels >= UNLABELLED_FLAG, torch.zeros_like(labels), labels)
        ce = -log_q.gather(1, target.long()).mean()
        q = log_q.exp()
        onehot = torch.zeros_like(q).scatter_(1, target.long(), 1.0)
        dims = tuple(range(2, logits.dim()))
        overlap = (q * onehot).sum(dims)
        total = q.sum(dims) + onehot.sum(dims)
        dice = 1.0 - (2.0 * overlap + SMOOTH) / (total + SMOOTH)  # (B, C)
        known = (~unlabelled).float()
        dice_mean = (dice * known).sum() / known.sum()
        return self.lambda_dice * dice_mean + self.lambda_ce * ce


def unlabelled_classes(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """``(B, C)``: the classes each sample's flag names (never background)."""
    batch = labels.shape[0]
    flags = torch.where(labels >= UNLABELLED_FLAG, labels, torch.zeros_like(labels))
    per_sample = flags.reshape(batch, -1).amax(dim=1) & (UNLABELLED_FLAG - 1)
    bits = torch.arange(n_classes, device=labels.device)
    out = ((per_sample[:, None] >> (bits - 1).clamp(min=0)) & 1).bool()
    out[:, 0] = False
    return out
