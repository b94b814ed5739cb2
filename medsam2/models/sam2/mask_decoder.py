"""SAM 2's mask decoder: SAM's decoder plus an object-score token, high-resolution skip features
in the upscaling, and the choice of one mask among the multimask outputs by stability."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from medsam2.models.common import MLP
from medsam2.models.mask_decoder import MaskDecoder
from medsam2.models.transformer import TwoWayTransformer


@dataclass
class DecoderOutput:
    """Masks for one batch of prompts, before the model picks its best."""

    masks: torch.Tensor  # (B, K, 4h, 4w) low-resolution logits; K = 3 with multimask output, else 1
    ious: torch.Tensor  # (B, K) predicted IoUs
    tokens: torch.Tensor  # (B, K or 1, C) output tokens the object pointer is made from
    object_score_logits: torch.Tensor  # (B, 1) > 0 where the object is present


class SAM2MaskDecoder(MaskDecoder):
    """Parameter names as in SAM 2.1 checkpoints (`sam_mask_decoder.*`)."""

    def __init__(
        self,
        transformer_dim: int = 256,
        stability_delta: float = 0.05,
        stability_threshold: float = 0.98,
        dynamic_multimask_via_stability: bool = True,
        use_multimask_token_for_obj_ptr: bool = True,
    ) -> None:
        super().__init__(
            transformer_dim=transformer_dim,
            transformer=TwoWayTransformer(depth=2, embedding_dim=transformer_dim, num_heads=8, mlp_dim=2048, layout="sam2"),
            num_multimask_outputs=3,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        )
        self.obj_score_token = nn.Embedding(1, transformer_dim)
        self.conv_s0 = nn.Conv2d(transformer_dim, transformer_dim // 8, kernel_size=1)
        self.conv_s1 = nn.Conv2d(transformer_dim, transformer_dim // 4, kernel_size=1)
        self.pred_obj_score_head = MLP(transformer_dim, transformer_dim, 1, 3)
        self.stability_delta = stability_delta
        self.stability_threshold = stability_threshold
        self.dynamic_multimask_via_stability = dynamic_multimask_via_stability
        self.use_multimask_token_for_obj_ptr = use_multimask_token_for_obj_ptr

    def forward(  # type: ignore[override]
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        high_res_features: tuple[torch.Tensor, torch.Tensor],
        multimask_output: bool,
    ) -> DecoderOutput:
        """image_embeddings (B, C, h, w), image_pe (1, C, h, w), sparse (B, T, C), dense (B, C, h, w),
        high_res_features ((B, C/8, 4h, 4w), (B, C/4, 2h, 2w)) already through conv_s0 / conv_s1."""
        batch = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.obj_score_token.weight, self.iou_token.weight, self.mask_tokens.weight])
        tokens = torch.cat([output_tokens.expand(batch, -1, -1), sparse_prompt_embeddings], dim=1)

        src = image_embeddings + dense_prompt_embeddings  # (B, C, h, w)
        _, channels, height, width = src.shape
        hs, src = self.transformer(src, image_pe.expand(batch, -1, -1, -1), tokens)
        obj_score_token_out, iou_token_out = hs[:, 0], hs[:, 1]
        mask_tokens_out = hs[:, 2 : 2 + self.num_mask_tokens]  # (B, 4, C)

        conv1, norm1, act1, conv2, act2 = self.output_upscaling
        feat_s0, feat_s1 = high_res_features
        src = src.transpose(1, 2).reshape(batch, channels, height, width)
        upscaled = act1(norm1(conv1(src) + feat_s1))
        upscaled = act2(conv2(upscaled) + feat_s0)  # (B, C/8, 4h, 4w)
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )  # (B, 4, C/8)
        masks = (hyper_in @ upscaled.flatten(2)).view(batch, -1, *upscaled.shape[2:])
        ious = torch.sigmoid(self.iou_prediction_head(iou_token_out))

        if multimask_output:
            masks, ious = masks[:, 1:], ious[:, 1:]
        elif self.dynamic_multimask_via_stability and not self.training:
            masks, ious = self._stable_or_best_multimask(masks, ious)
        else:
            masks, ious = masks[:, :1], ious[:, :1]
        # Without multimask output the pointer always comes from the single-mask token, even when
        # stability picked a multimask mask: SAM 2 tracked with that token in training.
        use_multimask_tokens = multimask_output and self.use_multimask_token_for_obj_ptr
        tokens_out = mask_tokens_out[:, 1:] if use_multimask_tokens else mask_tokens_out[:, :1]
        return DecoderOutput(masks, ious, tokens_out, self.pred_obj_score_head(obj_score_token_out))

    def _stable_or_best_multimask(self, masks: torch.Tensor, ious: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The single-mask output where it is stable (its area barely changes between logit
        thresholds -delta and +delta), else the multimask output with the highest predicted IoU."""
        rows = torch.arange(masks.shape[0], device=masks.device)
        best = torch.argmax(ious[:, 1:], dim=-1)
        best_masks = masks[:, 1:][rows, best].unsqueeze(1)
        best_ious = ious[:, 1:][rows, best].unsqueeze(1)
        single = masks[:, :1].flatten(-2)
        inner = torch.sum(single > self.stability_delta, dim=-1).float()
        outer = torch.sum(single > -self.stability_delta, dim=-1).float()
        stable = torch.where(outer > 0, inner / outer, 1.0) >= self.stability_threshold  # (B, 1)
        chosen_masks = torch.where(stable[..., None, None], masks[:, :1], best_masks)
        return chosen_masks, torch.where(stable, ious[:, :1], best_ious)
