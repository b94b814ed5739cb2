"""SAM 2.1 / MedSAM2 behind the session: prompted slices are conditioning frames, runs carry a
memory bank.

Per object and direction, a run starts from its anchor with a fresh `MemoryBank` holding the anchor
(and the next anchor ahead, if any) as conditioning frames; each following slice attends to the
bank, is decoded, and leaves its own memory. With `PropagationConfig(memory="confidence")` the
bank is a `ConfidenceMemoryBank` instead: the most confident earlier slices of the run, weighted by
their similarity to the current one (which costs one host synchronisation per frame). With one prompted slice, `direction="both"` is thus
MedSAM2's CT procedure: propagate forward from the key slice, start again from the same prompt,
propagate backward, and take the union.

Work is arranged for throughput and flat memory: frames are encoded in batches ahead of the
sequential memory step (a bounded cache, shared by every object), runs of several objects going the
same way advance together frame by frame, the per-frame step has no host synchronisation, and
finished masks go to the host in chunks, each while the next is computed (frames and memory
selections cross to the GPU through pinned memory, so no copy makes the host wait for the GPU).
Only the banks and the cache live on the device. On CUDA
the network runs under bfloat16 autocast unless `precision="fp32"`, one autocast context a chunk.

With `compiled=True` the per-frame step (memory tokens, memory attention, decoder, memory encoder:
hundreds of small kernels, launched one by one from Python) is compiled with `torch.compile`, on
CUDA as CUDA graphs (mode "reduce-overhead"), and on CUDA the image encoder too: on a GPU the
host's launching of kernels, not the GPU, bounds both. `warm_up` then pays the compilation, and the
first-use costs of CUDA, before a user's first propagation does.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, replace
from typing import Literal, ParamSpec, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from medsam2.engine.cache import EmbeddingCache
from medsam2.engine.memory import MemoryBank, MemoryEntry
from medsam2.engine.memory_policy import ConfidenceMemoryBank
from medsam2.engine.prompts import Prompt
from medsam2.engine.tracking import PropagationConfig, Run
from medsam2.models.sam2 import FrameFeatures, FrameOutput, SAM2Model, SelectedMemory
from medsam2.models.sam2.model import MASK_LOGIT_BIAS, MASK_LOGIT_SCALE
from medsam2.preprocess.resize import SquareResize
from medsam2.transfer import HostCopy

Precision = Literal["fp32", "bf16"]
P = ParamSpec("P")
R = TypeVar("R")
BOX_CORNER_LABELS = (2, 3)
# SAM 2 clamps earlier logits before feeding them back with new clicks ("rare numerical issues").
PREVIOUS_LOGITS_LIMIT = 32.0
# Memory models look at each frame once per run: a small cache of prefetched frames is enough.
SAM2_PROPAGATION = PropagationConfig(prefetch=8, cache_slices=16)


def memory_propagation(memory: str) -> PropagationConfig | None:
    """The propagation settings for memory policy `memory` ("recent" or "confidence"); None (each
    model family's defaults) for SAM 2's own "recent"."""
    if memory == "recent":
        return None
    return PropagationConfig(prefetch=SAM2_PROPAGATION.prefetch, cache_slices=SAM2_PROPAGATION.cache_slices, memory=memory)  # type: ignore[arg-type]


@dataclass
class SAM2Anchor:
    """What the session keeps for a prompted slice."""

    low_res_logits: torch.Tensor  # (1, 1, S/4, S/4) logits of the chosen mask
    memory: MemoryEntry  # its conditioning memory (binarised mask) and object pointer
    erased: bool = False  # the object taken off the slice (an empty mask alone)


def frozen_compile(function: Callable[P, R], mode: str | None) -> Callable[P, R]:
    """`function` compiled with the model's weights frozen into the code as constants (inductor's
    "freezing"): under autocast their bfloat16 casts are folded away once instead of running as
    kernels on every call (the step's 136 fused kernels become 74, counted on the CPU), and a CUDA
    graph takes the frame's dozen tensors as inputs instead of every parameter too. Dynamo decides
    this while it traces, so the setting holds around every call that may compile; the weights must
    not change afterwards (a predictor is for inference). Not dynamic=True: that also turns the
    modules' float constants (norm epsilons, scales) into graph inputs, copied from the host before
    every CUDA-graph replay; dynamo's default makes only what changes dynamic (the bank's size)."""
    from torch._inductor import config as inductor_config  # a second to import: only when compiling

    compiled = torch.compile(function, mode=mode)

    @functools.wraps(function)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        with inductor_config.patch(freezing=True):
            return compiled(*args, **kwargs)

    return call


class SAM2Predictor:
    """A SAM 2.1 model on a device, with MedSAM2's or Meta's preprocessing.

    `resample` is how slices are stretched to the model's square input: MedSAM2 resizes CT slices
    bilinearly, Meta's video predictor with Pillow's default (bicubic)."""

    def __init__(
        self,
        model: SAM2Model,
        device: torch.device | str = "cpu",
        resample: Literal["bicubic", "bilinear"] = "bicubic",
        precision: Precision | None = None,
        encode_batch: int | None = None,
        output_chunk: int = 8,
        compiled: bool = False,
        description: str | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        # what runs, in words for people (the command line says it before a run)
        self.description = description or f"SAM 2.1 hiera-{model.config.variant} at {model.image_size} px"
        self.transform = SquareResize(model.image_size, resample=resample)
        on_gpu = self.device.type == "cuda"
        self.precision: Precision = precision or ("bf16" if on_gpu else "fp32")
        # Batches keep a GPU busy; on a CPU they only raise the peak memory of the encoder (by
        # about 100 MiB at 512 px for a second frame, measured with benchmarks/sam2_speed.py). In
        # float32, the reference mode, frames are encoded one at a time as SAM 2 does: in batches
        # the GPU's libraries pick other kernels, and 2 pixels of 200 frames differed from Meta's.
        self.encode_batch = encode_batch or (8 if on_gpu and self.precision == "bf16" else 1)
        self.output_chunk = output_chunk
        self.compiled = compiled
        self._track = model.track
        self._encode_image = model.encode_image
        # A compiled encoder records a CUDA graph for each batch size it meets; given only full
        # batches it records one, in the warm-up, where a run's last batch (or a prompted frame
        # alone) would record another, a fraction of a second, when a user first propagates.
        self._full_batches = compiled and on_gpu
        if compiled:
            mode = "reduce-overhead" if on_gpu else None
            self._track = frozen_compile(model.track, mode)
        if compiled and on_gpu:
            # A CPU runs the encoder no faster compiled, frozen or not (and compiles it for a minute).
            self._encode_image = frozen_compile(model.encode_image, "reduce-overhead")

    def track(self, features: FrameFeatures, memory: SelectedMemory) -> tuple[FrameOutput, torch.Tensor]:
        """`SAM2Model.track`, compiled if asked for. A CUDA graph reuses its output memory on the next
        replay, so what it returns is copied out when compiled."""
        output, memory = self._track(features, memory)
        if not self.compiled:
            return output, memory
        copies = {field.name: getattr(output, field.name).clone() for field in fields(output)}
        return replace(output, **copies), memory.clone()

    def warm_up(self, num_frames: int | None = None) -> None:
        """Propagate a box through blank frames of the model's size, long enough for the memory bank
        to fill (`max_obj_ptrs` + 1 frames by default), then back from a second prompted frame at the
        end, as a correction's run between two prompts goes (the one ahead is in the memory without
        its pointer: a bank shape the first run never has): compiles the step for every shape and
        loads every kernel a propagation needs, so that the first real one, and the first
        correction, run at full speed. Twice when compiled for a GPU: a CUDA graph is recorded on
        the second call of each shape, the first runs it plainly (a CPU has no graphs to record, and
        the second pass would only cost encodings)."""
        frames = num_frames or self.model.config.max_obj_ptrs + 1
        size = self.model.image_size
        box = (size / 4, size / 4, 3 * size / 4, 3 * size / 4)
        records_graphs = self.compiled and self.device.type == "cuda"
        for _ in range(2 if records_graphs else 1):
            tracker = self.tracker(np.zeros((frames, size, size), dtype=np.uint8))
            _, first = tracker.segment_anchor(Prompt(0, box=box), None, None)
            _, last = tracker.segment_anchor(Prompt(frames - 1, box=box), None, None)
            runs = [
                Run(obj_id=1, anchor=0, step=1, slices=range(1, frames), conditioning={0: first}),
                Run(obj_id=1, anchor=frames - 1, step=-1, slices=range(frames - 2, frames // 2, -1), conditioning={frames - 1: last, 0: first}),
            ]
            for _ in tracker.follow(runs):
                pass

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    @torch.inference_mode()
    def encode(self, slices: np.ndarray) -> list[FrameFeatures]:
        """Features of a batch of uint8 slices, (N, H, W) or (N, H, W, 3), one entry per slice."""
        features: list[FrameFeatures] = []
        for start in range(0, len(slices), self.encode_batch):
            batch = slices[start : start + self.encode_batch]
            images = self.transform.prepare_batch(batch, self.device)
            if self._full_batches and len(batch) < self.encode_batch:
                images = F.pad(images, (0, 0, 0, 0, 0, 0, 0, self.encode_batch - len(batch)))  # blank frames after
            with self.autocast():
                # split() copies each frame out: a CUDA graph's outputs are overwritten by its next replay
                features.extend(self._encode_image(images).split()[: len(batch)])
        return features

    def tracker(self, slices: np.ndarray, config: PropagationConfig | None = None) -> SAM2Tracker:
        return SAM2Tracker(self, slices, config or SAM2_PROPAGATION)


class SAM2Tracker:
    """`Tracker` for one stack of slices."""

    def __init__(self, predictor: SAM2Predictor, slices: np.ndarray, config: PropagationConfig) -> None:
        self.predictor = predictor
        self.model = predictor.model
        self.config = config
        self.embeddings = EmbeddingCache(slices, predictor.encode, config.cache_slices)
        self.num_frames = len(slices)
        self.slice_hw: tuple[int, int] = (slices.shape[1], slices.shape[2])
        self.banks: list[MemoryBank | ConfidenceMemoryBank] = []  # those of the runs being followed, for inspection

    # -- prompted slices -------------------------------------------------------------------------

    @torch.inference_mode()
    def segment_anchor(
        self,
        prompt: Prompt,
        previous: SAM2Anchor | None,
        current_mask: np.ndarray | None,
        neighbour_mask: np.ndarray | None = None,
        mask_source: SAM2Anchor | None = None,
    ) -> tuple[np.ndarray, SAM2Anchor]:
        """A prompted slice, decoded without memory as SAM 2 decodes a frame's first prompt. A mask
        alone is taken as the answer (and kept exactly on its slice). Otherwise the slice's earlier logits (when it was prompted
        before), a mask given with clicks, or the propagated mask (for clicks on a slice that
        propagation reached) enter as the mask prompt, so clicks refine what is there. As in Meta's
        predictor, masks on other slices (`neighbour_mask`, `mask_source`) play no part in a prompted slice."""
        model, features = self.model, self.embeddings.get(prompt.slice_index)
        with self.predictor.autocast():
            if prompt.mask is not None and prompt.box is None and not prompt.points:
                output = model.mask_as_output(features.top, features.high_res, self._mask_on_input(prompt.mask))
            else:
                points, labels = self._points(prompt)
                output = model.decode(
                    model.without_memory(features.top),
                    features.high_res,
                    points,
                    labels,
                    self._mask_prompt(prompt, previous, current_mask),
                    model.use_multimask(True, points.shape[1]),
                )
            memory = model.encode_memory(features.top, output.high_res_masks, output.object_score_logits, binarize=True)
        anchor = SAM2Anchor(output.low_res_masks, self._entry(prompt.slice_index, output, memory), prompt.erases)
        if prompt.mask is not None and prompt.box is None and not prompt.points:
            return prompt.mask, anchor  # the user's mask is the answer on its slice
        logits = self.predictor.transform.logits_to_image(output.low_res_masks[0, 0].float(), self.slice_hw)
        return (logits > 0).cpu().numpy(), anchor

    def _points(self, prompt: Prompt) -> tuple[torch.Tensor, torch.Tensor]:
        """(1, N, 2) points in input pixels and (1, N) labels: the box as two corner points first,
        then the clicks, as SAM 2 was trained."""
        transform = self.predictor.transform
        coords: list[np.ndarray] = []
        labels: list[int] = []
        if prompt.box is not None:
            coords.append(transform.box_to_model(np.asarray(prompt.box), self.slice_hw).reshape(2, 2))
            labels.extend(BOX_CORNER_LABELS)
        if prompt.points:
            coords.append(transform.points_to_model(np.asarray(prompt.points), self.slice_hw))
            labels.extend(prompt.labels)
        device = self.predictor.device
        points = torch.as_tensor(np.concatenate(coords), dtype=torch.float32, device=device)[None]
        return points, torch.tensor([labels], dtype=torch.int32, device=device)

    def _mask_on_input(self, mask: np.ndarray) -> torch.Tensor:
        """(1, 1, S, S) {0, 1} mask at the model's input size."""
        return self.predictor.transform.mask_to_model(mask)[None, None].to(self.predictor.device)

    def _mask_prompt(
        self, prompt: Prompt, previous: SAM2Anchor | None, current_mask: np.ndarray | None
    ) -> torch.Tensor | None:
        """Logits for the decoder's mask input, or None."""
        if prompt.mask is not None:
            return self._mask_on_input(prompt.mask) * MASK_LOGIT_SCALE + MASK_LOGIT_BIAS
        if previous is not None:
            return previous.low_res_logits.clamp(-PREVIOUS_LOGITS_LIMIT, PREVIOUS_LOGITS_LIMIT)
        if current_mask is not None and prompt.box is None:
            return self._mask_on_input(current_mask) * MASK_LOGIT_SCALE + MASK_LOGIT_BIAS
        return None

    @staticmethod
    def _entry(frame: int, output: FrameOutput, memory: torch.Tensor) -> MemoryEntry:
        # SAM 2 keeps spatial memories in bfloat16, whatever the compute precision.
        return MemoryEntry(frame, memory.to(torch.bfloat16), output.obj_ptr)

    # -- runs ------------------------------------------------------------------------------------

    def follow(self, runs: list[Run]) -> Iterator[tuple[Run, int, np.ndarray | None]]:
        # A run from an erased slice with no object anchor ahead starts nothing, as the box chain's:
        # the user marked where the object ends (the no-object memory would only make it likely).
        # Towards an object anchor the run is tracked, both anchors in its memory.
        def ended(run: Run) -> bool:
            return all(anchor.erased for anchor in run.conditioning.values())

        for run in filter(ended, runs):
            for index in run.slices:
                yield run, index, None
        for step in (1, -1):
            chosen = [run for run in runs if run.step == step and not ended(run)]
            if chosen:
                yield from self._sweep(chosen, step)

    def _sweep(self, runs: list[Run], step: int) -> Iterator[tuple[Run, int, np.ndarray]]:
        """Advance all runs of one direction together, frame by frame in that direction. A chunk's
        masks travel to the host while the next chunk is queued, so the host waits only for work
        the GPU has already done, never for the queue to drain."""
        previous: FinishedChunk | None = None
        for finished in self._chunks(runs, step):
            if previous is not None:
                yield from previous.results()
            previous = finished
        if previous is not None:
            yield from previous.results()

    def _chunks(self, runs: list[Run], step: int) -> Iterator[FinishedChunk]:
        """The runs' frames in chunks, each queued on the device and its logits sent to the host."""
        self.banks = banks = [self._bank([anchor.memory for anchor in run.conditioning.values()], step) for run in runs]
        frames = sorted({index for run in runs for index in run.slices}, key=lambda index: index * step)
        chunk = max(1, self.predictor.output_chunk // len(runs))
        for start in range(0, len(frames), chunk):
            pending: list[tuple[Run, int, torch.Tensor]] = []
            # One autocast context for a chunk of frames: its cache casts each weight to bfloat16
            # once, where a context per frame would cast them all again (hundreds of kernels) each time.
            with self.predictor.autocast():
                for position in range(start, min(start + chunk, len(frames))):
                    frame = frames[position]
                    features = self.embeddings.get(frame, prefetch=frames[position + 1 : position + self.config.prefetch])
                    for run, bank in zip(runs, banks):
                        if frame in run.slices:
                            pending.append((run, frame, self._step(features, bank, frame)))
            if pending:
                yield self._to_host(pending)

    def _bank(self, conditioning: list[MemoryEntry], step: int) -> MemoryBank | ConfidenceMemoryBank:
        """A fresh bank for a run in direction `step`, of the configured policy."""
        settings = self.model.config
        if self.config.memory == "confidence":
            # Pointer distances scaled as the recent bank scales them, by the longest a run can see.
            max_pointers = min(self.num_frames, settings.max_obj_ptrs)
            return ConfidenceMemoryBank(conditioning, self.config.bank, settings.num_maskmem, max_pointers)
        return MemoryBank(conditioning, step, self.num_frames, settings.num_maskmem, settings.max_obj_ptrs)

    # no_grad, not inference_mode: autocast keeps its bfloat16 copies of the weights (for the chunk
    # of frames `_chunks` runs in one autocast context) only outside inference mode.
    @torch.no_grad()
    def _step(self, features: FrameFeatures, bank: MemoryBank | ConfidenceMemoryBank, frame: int) -> torch.Tensor:
        """Track one frame of one run, inside `_chunks`'s autocast context; (1, 1, S/4, S/4) logits,
        left on the device."""
        if isinstance(bank, ConfidenceMemoryBank):
            selection = bank.select(frame, features)
        else:
            selection = bank.select(frame)
        output, memory = self.predictor.track(features, selection.for_model())
        entry = self._entry(frame, output, memory)
        if isinstance(bank, ConfidenceMemoryBank):
            bank.add(entry, output, features)
        else:
            bank.add(entry)
        return output.low_res_masks

    @torch.inference_mode()
    def _to_host(self, pending: list[tuple[Run, int, torch.Tensor]]) -> FinishedChunk:
        """Slice-resolution logits of finished frames, sent to the host in one transfer."""
        low_res = torch.cat([logits for _, _, logits in pending])[:, 0].float()
        logits = self.predictor.transform.logits_to_image(low_res, self.slice_hw)
        return FinishedChunk([(run, frame) for run, frame, _ in pending], HostCopy(logits))


@dataclass
class FinishedChunk:
    """Tracked frames whose logits are on their way to the host."""

    frames: list[tuple[Run, int]]
    logits: HostCopy  # (N, H, W) at slice resolution, one per entry of `frames`

    def results(self) -> Iterator[tuple[Run, int, np.ndarray]]:
        for (run, frame), frame_logits in zip(self.frames, self.logits.result().numpy()):
            yield run, frame, frame_logits
