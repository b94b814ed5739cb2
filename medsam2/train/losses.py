"""Losses of promptable segmentation training: Dice + BCE on the mask logits, and the IoU head's
loss (MSE between the IoU the model predicts and the IoU its thresholded mask really has), as in
LiteMedSAM's and MedSAM2's training code."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

from medsam2.train.config import LossConfig

# LiteMedSAM's training: MONAI's Dice on sigmoid probabilities with squared denominators.
_DICE = DiceLoss(sigmoid=True, squared_pred=True, reduction="mean")


def actual_iou(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B, 1) IoU of masks thresholded at logit 0 with (B, 1, H, W) {0, 1} targets (no gradient)."""
    with torch.no_grad():
        predicted = (logits > 0).flatten(1)
        truth = targets.flatten(1) > 0.5
        intersection = (predicted & truth).sum(dim=1).float()
        union = (predicted | truth).sum(dim=1).float()
        # An empty prediction of an empty target is perfect.
        return torch.where(union > 0, intersection / union.clamp(min=1), torch.ones_like(union))[:, None]


def mask_losses(
    logits: torch.Tensor, targets: torch.Tensor, predicted_iou: torch.Tensor, weights: LossConfig
) -> dict[str, torch.Tensor]:
    """Loss terms of (B, 1, H, W) mask logits against {0, 1} targets and the (B, 1) predicted IoUs;
    "loss" is their weighted sum. Computed in float32 whatever the autocast precision."""
    logits, targets, predicted_iou = logits.float(), targets.float(), predicted_iou.float()
    dice = _DICE(logits, targets)
    bce = F.binary_cross_entropy_with_logits(logits, targets)
    iou = F.mse_loss(predicted_iou, actual_iou(logits, targets))
    total = weights.dice * dice + weights.bce * bce + weights.iou * iou
    return {"loss": total, "dice": dice, "bce": bce, "iou": iou}
