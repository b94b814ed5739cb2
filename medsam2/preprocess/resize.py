"""From a uint8 slice to a model's input, and from the model's output back to the slice.

Two transforms, one per model family, each a frozen dataclass of settings:

- `LongestSideResize` (LiteMedSAM, 256): the longest side is resized to the target with area
  averaging (OpenCV's ``INTER_AREA``), the result min-max normalised to [0, 1] and zero-padded at the
  bottom and right to a square.
- `SquareResize` (SAM 2.1 / MedSAM2, 512): the slice is stretched to a square with Pillow, divided
  by 255 and normalised with the ImageNet mean and std.

Coordinates are in pixels of the original slice, ``x`` = column and ``y`` = row; boxes are
``(x_min, y_min, x_max, y_max)``. As in both reference implementations, a coordinate goes to the
model by multiplying with the resize factor (no half-pixel shift). LiteMedSAM's reference truncates
box coordinates to integers after scaling; we keep them fractional (a sub-pixel difference) so that
the mapping is exactly invertible.

Images go in as numpy arrays and come out as float32 torch tensors, channels first, on the device
asked for.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from medsam2.transfer import to_device

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

HW = tuple[int, int]


@dataclass(frozen=True)
class SliceResize(ABC):
    """A slice of any size to a ``target x target`` model input, and the mapping of coordinates,
    masks and logits between the two. The resized slice sits at the top left of the input; the
    rest (if any) is padding."""

    target: int

    @abstractmethod
    def content_hw(self, original_hw: HW) -> HW:
        """(rows, columns) of the resized slice inside the model input."""

    @abstractmethod
    def scale_xy(self, original_hw: HW) -> np.ndarray:
        """(sx, sy): model-input pixels per original pixel along x (columns) and y (rows)."""

    @abstractmethod
    def _normalised(self, slices: np.ndarray, device: torch.device | str) -> torch.Tensor:
        """(N, H, W, C) uint8 with C in (1, 3) -> (N, 3, target, target) float32 model input on `device`."""

    def prepare(self, image: np.ndarray) -> torch.Tensor:
        """One uint8 slice, (H, W) grey or (H, W, 3) RGB -> (3, target, target) float32."""
        if image.ndim == 2 or (image.ndim == 3 and image.shape[-1] == 3):
            return self.prepare_batch(image[None])[0]
        raise ValueError(f"expected a (H, W) or (H, W, 3) slice, got shape {image.shape}")

    def prepare_batch(self, slices: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
        """A uint8 stack, (N, H, W) grey or (N, H, W, 3) RGB -> (N, 3, target, target) float32 on
        `device` (where a transform can, the last steps run there, on a quarter of the bytes)."""
        if slices.dtype != np.uint8:
            raise ValueError(f"expected uint8 slices (see preprocess.to_uint8), got {slices.dtype}")
        if slices.ndim == 3:
            slices = slices[..., None]
        if slices.ndim != 4 or slices.shape[-1] not in (1, 3):
            raise ValueError(f"expected (N, H, W) or (N, H, W, 3) slices, got shape {slices.shape}")
        return self._normalised(slices, device)

    def points_to_model(self, points_xy: np.ndarray, original_hw: HW) -> np.ndarray:
        """(..., 2) points (x, y) in the slice -> the same points in model-input pixels."""
        return np.asarray(points_xy, dtype=np.float64) * self.scale_xy(original_hw)

    def box_to_model(self, box_xyxy: np.ndarray, original_hw: HW) -> np.ndarray:
        """(..., 4) boxes (x_min, y_min, x_max, y_max) in the slice -> model-input pixels."""
        return np.asarray(box_xyxy, dtype=np.float64) * np.tile(self.scale_xy(original_hw), 2)

    def mask_to_model(self, mask: np.ndarray | torch.Tensor, size: int | None = None) -> torch.Tensor:
        """(..., H, W) binary masks -> (..., size, size) float32 {0, 1} masks on the model's grid.

        `size` defaults to the input size; pass a model's mask-prompt size (4x its image-embedding
        size) to land on its low-resolution grid. Resized as SAM 2 resizes a mask prompt: bilinear
        with antialiasing, then thresholded at 0.5.
        """
        mask = mask if isinstance(mask, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(mask))
        size = self.target if size is None else size
        original_hw = (int(mask.shape[-2]), int(mask.shape[-1]))
        content = self.content_on_grid(original_hw, size)
        flat = mask.reshape(-1, 1, *original_hw).float()
        resized = F.interpolate(flat, size=content, mode="bilinear", align_corners=False, antialias=True)
        padded = F.pad(resized, (0, size - content[1], 0, size - content[0]))
        return (padded >= 0.5).float().reshape(*mask.shape[:-2], size, size)

    def logits_to_image(self, logits: np.ndarray | torch.Tensor, original_hw: HW) -> torch.Tensor:
        """(..., h, w) logits on any square model grid -> (..., H, W) float32 logits on the slice.

        The padding is cropped and the rest resized bilinearly, as both references post-process
        their masks; threshold the result at 0.
        """
        logits = logits if isinstance(logits, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(logits))
        grid = int(logits.shape[-1])
        content_h, content_w = self.content_on_grid(original_hw, grid)
        cropped = logits[..., :content_h, :content_w].reshape(-1, 1, content_h, content_w).float()
        resized = F.interpolate(cropped, size=original_hw, mode="bilinear", align_corners=False)
        return resized.reshape(*logits.shape[:-2], *original_hw)

    def content_on_grid(self, original_hw: HW, grid: int) -> HW:
        """`content_hw` on a grid of `grid` x `grid` cells covering the model input."""
        if grid == self.target:
            return self.content_hw(original_hw)
        content_h, content_w = self.content_hw(original_hw)
        return max(1, round(content_h * grid / self.target)), max(1, round(content_w * grid / self.target))


@dataclass(frozen=True)
class LongestSideResize(SliceResize):
    """LiteMedSAM's input: longest side to `target` by area averaging, min-max to [0, 1], zero padding."""

    target: int = 256

    def content_hw(self, original_hw: HW) -> HW:
        scale = self.target / max(original_hw)
        # int(x + 0.5), not round(): the reference's rounding, which differs from Python's at .5
        return int(original_hw[0] * scale + 0.5), int(original_hw[1] * scale + 0.5)

    def scale_xy(self, original_hw: HW) -> np.ndarray:
        return np.full(2, self.target / max(original_hw))

    def _normalised(self, slices: np.ndarray, device: torch.device | str) -> torch.Tensor:
        content_h, content_w = self.content_hw(slices.shape[1:3])
        channels_first = slices.transpose(0, 3, 1, 2).astype(np.float32)
        row_weights = _area_weights(slices.shape[1], content_h)
        col_weights = _area_weights(slices.shape[2], content_w)
        resized = row_weights @ channels_first @ col_weights.T
        # OpenCV returns uint8 for uint8 input, rounding half up; the reference normalises that.
        resized = np.floor(resized + 0.5)
        low = resized.min(axis=(1, 2, 3), keepdims=True)
        high = resized.max(axis=(1, 2, 3), keepdims=True)
        unit = (resized - low) / np.maximum(high - low, 1e-8)
        out = torch.zeros(len(slices), 3, self.target, self.target, dtype=torch.float32)
        out[:, :, :content_h, :content_w] = torch.from_numpy(unit).float()  # grey broadcasts to RGB
        return to_device(out, device)


@dataclass(frozen=True)
class SquareResize(SliceResize):
    """SAM 2 / MedSAM2's input: stretched to `target` x `target` with Pillow, /255, mean/std normalised.

    Both references call Pillow's ``resize`` with its default filter, which is bicubic; a slice
    already at the target size is left as it is.
    """

    target: int = 512
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resample: Literal["bicubic", "bilinear"] = "bicubic"

    def content_hw(self, original_hw: HW) -> HW:
        return self.target, self.target

    def scale_xy(self, original_hw: HW) -> np.ndarray:
        return np.array([self.target / original_hw[1], self.target / original_hw[0]])

    def _normalised(self, slices: np.ndarray, device: torch.device | str) -> torch.Tensor:
        resample = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}[self.resample]
        size = (self.target, self.target)
        if slices.shape[1:3] == size and slices.flags.writeable:
            resized = slices  # what Pillow would return: a copy
        else:
            resized = np.stack(
                [np.asarray(Image.fromarray(s[..., 0] if s.shape[-1] == 1 else s).resize(size, resample)) for s in slices]
            )
        # uint8 crosses to the device and is scaled there. The divisor is a tensor on the device, not
        # a Python number: CUDA would multiply by 1/255 instead, and 126 of the 256 levels would
        # then differ by one float32 step from the x / 255 the reference computes (in float64, on
        # the host); an IEEE division gives its values exactly, on any device.
        levels = to_device(torch.from_numpy(resized), device).float()
        unit = levels / torch.full((), 255.0, device=device)
        unit = unit[..., None] if unit.ndim == 3 else unit
        mean = to_device(torch.tensor(self.mean, dtype=torch.float32), device)
        std = to_device(torch.tensor(self.std, dtype=torch.float32), device)
        return ((unit - mean) / std).permute(0, 3, 1, 2).contiguous()


def _area_weights(source: int, target: int) -> np.ndarray:
    """(target, source) matrix of OpenCV INTER_AREA resampling along one axis.

    Output cell i averages the source interval [i, i + 1) * source / target, each source pixel
    weighted by its overlap. Written out because torch's "area" mode (adaptive pooling, whole-pixel
    bins) and Pillow's BOX filter (point-sampled support) differ from it at non-integer factors.
    """
    step = source / target
    bounds = np.arange(target + 1) * step
    pixels = np.arange(source)
    overlap = np.minimum(bounds[1:, None], pixels[None, :] + 1) - np.maximum(bounds[:-1, None], pixels[None, :])
    return (np.clip(overlap, 0.0, None) / step).astype(np.float32)
