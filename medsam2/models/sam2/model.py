"""SAM 2.1: image encoder, prompt encoder, mask decoder, memory encoder and memory attention.

The model computes; it does not decide. It offers the pieces of one frame's step as plain,
differentiable functions (`encode_image`, `condition_on_memory`, `decode`, `mask_as_output`,
`encode_memory`, `memory_tokens`); which memories a frame sees and in what order frames are visited
is the engine's business (`medsam2.engine.memory`). Each piece repeats the arithmetic of Meta's
`SAM2Base` (sam2==1.1.0) in the same order, so official checkpoints give the same logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from medsam2.models.common import MLP
from medsam2.models.prompt_encoder import PromptEncoder
from medsam2.models.sam2.config import SAM2Config
from medsam2.models.sam2.image_encoder import ImageEncoder
from medsam2.models.sam2.mask_decoder import SAM2MaskDecoder
from medsam2.models.sam2.memory_attention import MemoryAttention
from medsam2.models.sam2.memory_encoder import MemoryEncoder
from medsam2.models.sam2.position_encoding import sine_code, sine_position_map

HIDDEN_DIM = 256
MEMORY_DIM = 64
# Logits standing for "no object here": what a frame where the object is absent predicts everywhere.
NO_OBJECT_LOGIT = -1024.0
# A binary mask taken as logits (-10 outside, +10 inside), as SAM 2 turns a mask prompt into output.
MASK_LOGIT_SCALE, MASK_LOGIT_BIAS = 20.0, -10.0


@dataclass
class FrameFeatures:
    """The image encoder's output for a batch of frames."""

    high_res: tuple[torch.Tensor, torch.Tensor]  # (B, C/8, S/4, S/4), (B, C/4, S/8, S/8), decoder skips
    top: torch.Tensor  # (B, C, S/16, S/16)

    def split(self) -> list[FrameFeatures]:
        """One `FrameFeatures` of batch 1 per frame, each in memory of its own: a frame evicted from
        a cache frees its memory, and every frame looks alike to a compiled step (no offsets into
        a batch)."""
        s0, s1, top = ([frame.clone() for frame in level.split(1)] for level in (*self.high_res, self.top))
        return [FrameFeatures((a, b), c) for a, b, c in zip(s0, s1, top)]


@dataclass
class FrameOutput:
    """The model's answer on one frame for a batch of objects."""

    low_res_masks: torch.Tensor  # (B, 1, S/4, S/4) logits of the chosen mask
    high_res_masks: torch.Tensor  # (B, 1, S, S) the same, upsampled to the input size
    ious: torch.Tensor  # (B, K) predicted IoUs of the K decoded masks
    obj_ptr: torch.Tensor  # (B, C) object pointer for later frames
    object_score_logits: torch.Tensor  # (B, 1) > 0 where the object is present


@dataclass
class SelectedMemory:
    """The memories one frame attends to, stacked: the model's side of the engine's memory bank.
    Tensors, so that a compiled step takes them as inputs whatever the frame."""

    spatial: torch.Tensor  # (S, B, C_mem, h, w) spatial memories
    slots: torch.Tensor  # (S,) int64: 0 for prompted frames, num_maskmem - k for the k-th most recent frame
    pointers: torch.Tensor  # (B, P, C) object pointers, P >= 1
    # (P,) each pointer's distance in frames from the current frame over the largest distance the
    # bank holds (SAM 2's scaling, computed as SAM 2 computes it: an int64 tensor over an int)
    pointer_positions: torch.Tensor


@dataclass
class MemoryTokens:
    """What a frame's features attend to: spatial memories, then object-pointer tokens."""

    memory: torch.Tensor  # (B, M, C_mem)
    position: torch.Tensor  # (B, M, C_mem)
    num_pointer_tokens: int  # the last ones of M


class SAM2Model(nn.Module):
    """SAM 2.1 with the parameter names of Meta's and MedSAM2's checkpoints.

    `device` is where the sine position maps are computed: SAM 2 computes them on the GPU when it
    runs on one, and CUDA's sin and cos may round differently from the CPU's, so a model for a GPU
    is best built with its device (as `sam2_from_state` does) rather than moved there."""

    vision_pos: torch.Tensor
    memory_pos: torch.Tensor

    def __init__(self, config: SAM2Config, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.config = config
        size, grid = config.image_size, config.feature_size
        self.image_encoder = ImageEncoder(config.trunk, HIDDEN_DIM)
        self.memory_attention = MemoryAttention(HIDDEN_DIM, grid, MEMORY_DIM)
        self.memory_encoder = MemoryEncoder(HIDDEN_DIM, MEMORY_DIM)
        self.sam_prompt_encoder = PromptEncoder(HIDDEN_DIM, (grid, grid), (size, size), mask_in_chans=16)
        self.sam_mask_decoder = SAM2MaskDecoder(
            HIDDEN_DIM, dynamic_multimask_via_stability=config.dynamic_multimask_via_stability
        )
        # turns a mask prompt at input size into logits at the decoder's mask size (stride 4)
        self.mask_downsample = nn.Conv2d(1, 1, kernel_size=4, stride=4)
        self.obj_ptr_proj = MLP(HIDDEN_DIM, HIDDEN_DIM, HIDDEN_DIM, 3)
        self.obj_ptr_tpos_proj = nn.Linear(HIDDEN_DIM, MEMORY_DIM)
        self.maskmem_tpos_enc = nn.Parameter(torch.zeros(config.num_maskmem, 1, 1, MEMORY_DIM))
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, HIDDEN_DIM))
        self.no_mem_pos_enc = nn.Parameter(torch.zeros(1, 1, HIDDEN_DIM))  # in the checkpoints, unused at inference
        self.no_obj_ptr = nn.Parameter(torch.zeros(1, HIDDEN_DIM))
        self.no_obj_embed_spatial = nn.Parameter(torch.zeros(1, MEMORY_DIM))
        for parameter in (self.maskmem_tpos_enc, self.no_mem_embed, self.no_mem_pos_enc, self.no_obj_ptr, self.no_obj_embed_spatial):
            nn.init.trunc_normal_(parameter, std=0.02)
        self.register_buffer("vision_pos", sine_position_map(HIDDEN_DIM, grid, grid, device=device)[None], persistent=False)
        self.register_buffer("memory_pos", sine_position_map(MEMORY_DIM, grid, grid, device=device)[None], persistent=False)

    @property
    def image_size(self) -> int:
        return self.config.image_size

    # -- per frame -------------------------------------------------------------------------------

    def encode_image(self, images: torch.Tensor) -> FrameFeatures:
        """(B, 3, S, S) normalised images -> features; the decoder's skip convs are applied once here."""
        s0, s1, top = self.image_encoder(images)
        return FrameFeatures((self.sam_mask_decoder.conv_s0(s0), self.sam_mask_decoder.conv_s1(s1)), top)

    def without_memory(self, top: torch.Tensor) -> torch.Tensor:
        """Features of a prompted frame, which attends to no memory: the no-memory embedding added."""
        return top + self.no_mem_embed.view(1, -1, 1, 1)

    def condition_on_memory(self, top: torch.Tensor, memory: MemoryTokens) -> torch.Tensor:
        """(B, C, h, w) features of a tracked frame after attending to the memory bank."""
        batch, channels, height, width = top.shape
        tokens = top.flatten(2).transpose(1, 2)  # (B, hw, C)
        position = self.vision_pos.flatten(2).transpose(1, 2).expand(batch, -1, -1)
        fused = self.memory_attention(tokens, position, memory.memory, memory.position, memory.num_pointer_tokens)
        return fused.transpose(1, 2).reshape(batch, channels, height, width)

    def use_multimask(self, prompted: bool, num_points: int) -> bool:
        """Whether a frame decodes three masks: prompted frames with few clicks, and tracked frames
        (`num_points` counts clicks and box corners)."""
        config = self.config
        return (
            config.multimask_output_in_sam
            and (prompted or config.multimask_output_for_tracking)
            and config.multimask_min_pt_num <= num_points <= config.multimask_max_pt_num
        )

    def decode(
        self,
        features: torch.Tensor,
        high_res: tuple[torch.Tensor, torch.Tensor],
        points: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = False,
    ) -> FrameOutput:
        """Masks from (B, C, h, w) frame features and prompts in input pixels: points (B, N, 2) with
        labels (B, N) of 1 (object), 0 (background), 2 / 3 (box corners); mask_input (B, 1, H, W)
        logits at any size (resized to the decoder's mask size)."""
        batch = features.shape[0]
        if points is None:
            points = torch.zeros(batch, 1, 2, device=features.device)
            labels = -torch.ones(batch, 1, dtype=torch.int32, device=features.device)
        mask_size = self.sam_prompt_encoder.image_embedding_size[0] * 4
        if mask_input is not None and mask_input.shape[-2:] != (mask_size, mask_size):
            mask_input = F.interpolate(
                mask_input.float(), size=(mask_size, mask_size), mode="bilinear", align_corners=False, antialias=True
            )
        sparse, dense = self.sam_prompt_encoder(batch, points, labels, None, mask_input)
        decoded = self.sam_mask_decoder(
            features, self.sam_prompt_encoder.get_dense_pe(), sparse, dense, high_res, multimask_output
        )
        present = decoded.object_score_logits > 0  # (B, 1)
        masks = torch.where(present[:, None, None], decoded.masks, NO_OBJECT_LOGIT).float()
        # All K masks are upsampled before one is picked: upsampling one channel alone takes
        # another kernel on some thread counts, and its rounding would differ from SAM 2's.
        high_res = self._to_input_size(masks)
        token = decoded.tokens[:, 0]
        if multimask_output:
            rows = torch.arange(batch, device=features.device)
            best = torch.argmax(decoded.ious, dim=-1)
            masks, high_res = masks[rows, best].unsqueeze(1), high_res[rows, best].unsqueeze(1)
            if decoded.tokens.shape[1] > 1:
                token = decoded.tokens[rows, best]
        return FrameOutput(
            low_res_masks=masks,
            high_res_masks=high_res,
            ious=decoded.ious,
            obj_ptr=self._pointer(self.obj_ptr_proj(token), present.float()),
            object_score_logits=decoded.object_score_logits,
        )

    def mask_as_output(
        self, top: torch.Tensor, high_res: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor
    ) -> FrameOutput:
        """A mask prompt (B, 1, S, S) in {0, 1} taken as the answer itself (as SAM 2 does with mask
        inputs); the decoder only supplies the object pointer."""
        high_res_masks = mask.float() * MASK_LOGIT_SCALE + MASK_LOGIT_BIAS
        low_res = F.interpolate(
            high_res_masks, size=(mask.shape[-2] // 4, mask.shape[-1] // 4), mode="bilinear", align_corners=False, antialias=True
        )
        pointer = self.decode(top, high_res, mask_input=self.mask_downsample(mask.float())).obj_ptr
        present = torch.any(mask.flatten(1).float() > 0.0, dim=1)[..., None].float()  # (B, 1)
        return FrameOutput(
            low_res_masks=low_res,
            high_res_masks=high_res_masks,
            ious=mask.new_ones(mask.shape[0], 1).float(),
            obj_ptr=self._pointer(pointer, present),
            object_score_logits=MASK_LOGIT_SCALE * present + MASK_LOGIT_BIAS,
        )

    def _pointer(self, pointer: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """The pointer where the object is present (present = 1), the learnt no-object pointer where not."""
        return present * pointer + (1 - present) * self.no_obj_ptr

    def _to_input_size(self, low_res: torch.Tensor) -> torch.Tensor:
        size = (self.image_size, self.image_size)
        return F.interpolate(low_res, size=size, mode="bilinear", align_corners=False)

    def track(self, features: FrameFeatures, memory: SelectedMemory) -> tuple[FrameOutput, torch.Tensor]:
        """SAM 2's step on a frame without prompts: attend to the memory, decode, and encode the
        chosen mask into the frame's own spatial memory (B, C_mem, h, w)."""
        conditioned = self.condition_on_memory(features.top, self.memory_tokens(memory))
        output = self.decode(conditioned, features.high_res, multimask_output=self.use_multimask(False, 0))
        return output, self.encode_memory(features.top, output.high_res_masks, output.object_score_logits, binarize=False)

    def encode_memory(
        self, top: torch.Tensor, high_res_masks: torch.Tensor, object_score_logits: torch.Tensor, binarize: bool
    ) -> torch.Tensor:
        """A frame's spatial memory (B, C_mem, h, w) from its raw features (B, C, h, w) and its chosen
        mask logits (B, 1, S, S); `binarize` for prompted frames (see `SAM2Config`)."""
        config = self.config
        if binarize and config.binarize_mask_from_pts_for_mem_enc and not self.training:
            mask = (high_res_masks > 0).float()
        else:
            mask = torch.sigmoid(high_res_masks)
        mask = mask * config.sigmoid_scale_for_mem_enc + config.sigmoid_bias_for_mem_enc
        # SAM 2 hands its memory encoder features in plain NCHW layout; a channels-last input takes
        # another convolution kernel (different float32 rounding, then amplified by bfloat16 storage).
        memory = self.memory_encoder(top.contiguous(), mask)
        absent = 1 - (object_score_logits > 0).float()  # (B, 1)
        return memory + absent[..., None, None] * self.no_obj_embed_spatial[..., None, None].expand(*memory.shape)

    def memory_tokens(self, selected: SelectedMemory) -> MemoryTokens:
        """Attention inputs from the selected memories: spatial tokens with the grid's position code
        plus their slot's temporal code, then the object pointers with a code of their distance."""
        config = self.config
        spatial, pointers = selected.spatial, selected.pointers
        batch, channels = spatial.shape[1:3]
        memory = spatial.flatten(3).permute(1, 0, 3, 2).reshape(batch, -1, channels)  # (B, S*hw, C_mem)
        grid_pos = self.memory_pos.flatten(2).transpose(1, 2)  # (1, hw, C_mem)
        temporal = self.maskmem_tpos_enc[config.num_maskmem - selected.slots - 1]  # (S, 1, 1, C_mem)
        position = (grid_pos + temporal).reshape(1, -1, channels).expand(batch, -1, -1)  # (B, S*hw, C_mem)
        code = self.obj_ptr_tpos_proj(sine_code(selected.pointer_positions, HIDDEN_DIM))  # (P, C_mem)
        # each C-wide pointer becomes C / C_mem tokens of the memory's width
        split = HIDDEN_DIM // MEMORY_DIM
        pointer_tokens = pointers.reshape(batch, -1, split, MEMORY_DIM).flatten(1, 2)  # (B, P*split, C_mem)
        pointer_position = code.repeat_interleave(split, dim=0).expand(batch, -1, -1)
        return MemoryTokens(
            torch.cat((memory, pointer_tokens), dim=1),
            torch.cat((position, pointer_position), dim=1),
            pointer_tokens.shape[1],
        )
