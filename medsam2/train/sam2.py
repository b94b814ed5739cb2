"""Fine-tuning SAM 2.1 / MedSAM2 on clips of consecutive slices, through the memory path.

A sample is a clip: an object (case and object drawn uniformly), a slice where it is present (the
prompted frame) and the next `clip_length - 1` slices in a random direction (the other direction
where the stack ends first). The prompted frame gets the object's box with SAM 2's box noise (and
optionally clicks) and is decoded without memory, as at inference; every later frame attends to the
memory bank the engine uses (`medsam2.engine.memory.MemoryBank`), is decoded and leaves its own
memory, all with gradients. Every frame has losses, as in SAM 2's training: Dice + BCE and the IoU
head's loss on the frames where the object is present, and the object-present score's cross-entropy
on all. Where the model misses a present object its mask is the constant "no object" logit: a large
mask loss without a gradient, which the object-score loss removes by learning the object is there.

With the image encoder frozen, its features of each slice are computed once and kept; the mask
decoder's two convolutions that read the encoder's high-resolution features stay fixed with it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medsam2.engine.memory import MemoryBank, MemoryEntry
from medsam2.engine.prompts import box_from_mask
from medsam2.engine.registry import PRESETS, resolve_model, split_preset, trained_settings, warn_if_other_variant
from medsam2.errors import InputError
from medsam2.engine.sam2_predictor import BOX_CORNER_LABELS, SAM2Predictor
from medsam2.models.sam2 import FrameFeatures, FrameOutput, SAM2Model, sam2_from_state
from medsam2.models.weights import read_checkpoint
from medsam2.preprocess.resize import SquareResize
from medsam2.train.config import TrainConfig
from medsam2.train.data import CaseData
from medsam2.train.losses import mask_losses
from medsam2.train.task import (
    StepModule,
    clicks_inside,
    jitter_box,
    pick_object,
    sample_rng,
)

FOREGROUND_CLICK = 1


@dataclass
class Clip:
    """One training clip, frames in the order they are visited (the prompted one first)."""

    targets: torch.Tensor  # (L, 1, S, S) {0, 1} object masks at the model's input size
    present: torch.Tensor  # (L,) bool: the object is on the slice (at its own resolution); always on frame 0
    points: torch.Tensor  # (1, N, 2) prompt of frame 0 in input pixels: box corners, then clicks
    point_labels: torch.Tensor  # (1, N)
    images: torch.Tensor | None = None  # (L, 3, S, S) model input, when the encoder trains
    features: list[FrameFeatures] | None = None  # per frame, when it is frozen


class SAM2Step(StepModule):
    """The forward pass of a micro-batch of clips and its losses; the module DDP wraps."""

    model: SAM2Model

    def forward(self, clips: list[Clip]) -> dict[str, torch.Tensor]:
        terms = [self._clip_terms(clip) for clip in clips]
        return {key: torch.stack([t[key] for t in terms]).mean() for key in terms[0]}

    def _clip_terms(self, clip: Clip) -> dict[str, torch.Tensor]:
        model, config = self.model, self.model.config
        frames = clip.features if clip.features is not None else model.encode_image(clip.images).split()
        first = frames[0]
        output = model.decode(
            model.without_memory(first.top),
            first.high_res,
            clip.points,
            clip.point_labels,
            multimask_output=model.use_multimask(True, clip.points.shape[1]),
        )
        memory = model.encode_memory(first.top, output.high_res_masks, output.object_score_logits, binarize=True)
        bank = MemoryBank([MemoryEntry(0, memory, output.obj_ptr)], 1, len(frames), config.num_maskmem, config.max_obj_ptrs)
        outputs = [output]
        for index in range(1, len(frames)):
            output, memory = model.track(frames[index], bank.select(index).for_model())
            bank.add(MemoryEntry(index, memory, output.obj_ptr))
            outputs.append(output)
        return self._losses(outputs, clip.targets, clip.present)

    def _losses(self, outputs: list[FrameOutput], targets: torch.Tensor, present: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = torch.cat([o.high_res_masks for o in outputs]).float()  # (L, 1, S, S)
        # The decoder keeps the mask it ranks first: the one with the highest predicted IoU.
        chosen_iou = torch.cat([o.ious.max(dim=-1, keepdim=True).values for o in outputs])  # (L, 1)
        scores = torch.cat([o.object_score_logits for o in outputs]).float()  # (L, 1)
        terms = mask_losses(logits[present], targets[present], chosen_iou[present], self.weights)
        object_score = F.binary_cross_entropy_with_logits(scores[:, 0], present.float())
        terms["loss"] = terms["loss"] + self.weights.object_score * object_score
        terms["object_score"] = object_score
        return terms


def starting_checkpoint(config: TrainConfig) -> Path:
    """The file `model.checkpoint` names: a path, or as `--model` takes them a preset's name (its
    configured file) or PRESET=FILE, whose preset must be the one `model.sam2_preset` trains with."""
    given = config.model.checkpoint
    if given not in PRESETS and not split_preset(given)[0]:
        return Path(given)
    choice = resolve_model(given)
    if choice.preset.name != config.model.sam2_preset:
        raise InputError(
            f"model.checkpoint {given!r} names preset {choice.preset.name}, model.sam2_preset is "
            f"{config.model.sam2_preset} (the settings it trains with): set model.sam2_preset: {choice.preset.name}"
        )
    return choice.path


class SAM2Task:
    """`TrainingTask` of a SAM 2.1 or MedSAM2 checkpoint."""

    model_name = "sam2"
    loss_terms = ("loss", "dice", "bce", "iou", "object_score")

    def __init__(self, config: TrainConfig, cases: Sequence[CaseData], device: torch.device) -> None:
        self.config = config
        self.cases = list(cases)
        self.device = device
        self.preset = PRESETS[config.model.sam2_preset]
        settings = self.preset.config()
        if config.model.sam2_image_size is not None:
            settings = dataclasses.replace(settings, image_size=config.model.sam2_image_size)
        path = starting_checkpoint(config)
        state, recorded = read_checkpoint(path)
        trained = trained_settings(recorded)
        if trained is not None and trained[0] is not self.preset:  # trained at its input size and resampling
            raise InputError(
                f"{path}: trained by medsam2 train with preset {trained[0].name}, model.sam2_preset is "
                f"{self.preset.name}: set model.sam2_preset: {trained[0].name}"
            )
        self.network = sam2_from_state(state, path, settings, device)
        # The default preset is MedSAM2's (hiera-tiny, 512 px): fine-tuning Meta's large file
        # under it went on at 512 px without a word, and `--model FILE` then ran it so.
        matching = [name for name, preset in PRESETS.items() if preset.variant == self.network.config.variant]
        warn_if_other_variant(
            path, self.network.config.variant, self.preset, f"model.sam2_preset {self.preset.name}", "training",
            f" (for its own: model.sam2_preset: {matching[0]})" if matching else "",
        )
        self.transform = SquareResize(self.network.image_size, resample=self.preset.resample)
        self.frozen = config.model.freeze_image_encoder
        if self.frozen:
            for module in (self.network.image_encoder, self.network.sam_mask_decoder.conv_s0, self.network.sam_mask_decoder.conv_s1):
                module.requires_grad_(False)
        self.step_module = SAM2Step(self.network, config.loss, self.frozen).to(device)
        self._features: dict[tuple[str, int], FrameFeatures] = {}

    def batch(self, indices: Sequence[int]) -> list[Clip]:
        return [self._clip(index) for index in indices]

    def _clip(self, index: int) -> Clip:
        rng = sample_rng(self.config.training.seed, index)
        case, label = pick_object(self.cases, rng)
        frames = self._frames(case, int(rng.choice(case.objects[label])), rng)
        masks = case.labels[frames] == label
        hw = masks.shape[1:]
        prompts = self.config.prompts
        box = self.transform.box_to_model(np.asarray(box_from_mask(masks[0])), hw)
        box = jitter_box(box, rng, prompts.box_noise, prompts.box_noise_max, self.transform.content_hw(hw))
        points, labels = [box.reshape(2, 2)], list(BOX_CORNER_LABELS)
        if rng.random() < prompts.point_probability:
            points.append(self.transform.points_to_model(clicks_inside(masks[0], prompts.num_points, rng), hw))
            labels += [FOREGROUND_CLICK] * prompts.num_points
        clip = Clip(
            targets=self.transform.mask_to_model(masks)[:, None].to(self.device),
            present=torch.from_numpy(masks.reshape(len(masks), -1).any(axis=1)).to(self.device),
            points=torch.tensor(np.concatenate(points), dtype=torch.float32, device=self.device)[None],
            point_labels=torch.tensor([labels], dtype=torch.int32, device=self.device),
        )
        if self.frozen:
            clip.features = [self._encoded(case, frame) for frame in frames]
        else:
            clip.images = self.transform.prepare_batch(case.slices[frames], self.device)
        return clip

    def _frames(self, case: CaseData, prompted: int, rng: np.random.Generator) -> np.ndarray:
        """Slice indices of a clip from `prompted` on, in a random direction; the other one where
        the stack ends first; shorter only where the stack is too short both ways."""
        count = len(case.slices)
        step = 1 if rng.random() < 0.5 else -1
        room = {1: count - 1 - prompted, -1: prompted}
        if room[step] < self.config.model.clip_length - 1 and room[-step] > room[step]:
            step = -step
        length = min(self.config.model.clip_length, room[step] + 1)
        return prompted + step * np.arange(length)

    @torch.no_grad()
    def _encoded(self, case: CaseData, index: int) -> FrameFeatures:
        key = (case.id, index)
        if key in self._features:
            return self._features[key]
        features = self.network.encode_image(self.transform.prepare_batch(case.slices[index][None], self.device))
        if len(self._features) < self.config.data.embedding_cache_slices:
            self._features[key] = features
        return features

    def predictor(self) -> SAM2Predictor:
        return SAM2Predictor(self.network, self.device, resample=self.preset.resample)
