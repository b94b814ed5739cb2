"""Segmenting a video from prompts on one or a few frames, in bounded memory.

A video is a stack of frames as a volume is a stack of slices, and goes through the same `Session`
(any model: LiteMedSAM's box chain, SAM 2.1 / MedSAM2's memory). A clip of at most
`VideoConfig.chunk_frames` frames is one session, exactly as `segment_volume` does a volume. A longer
clip is cut into windows of that many frames, each sharing its first frame with the previous one;
each window is a session of its own, so only one window of frames, embeddings and masks is in
memory at a time:

- forward sweep, windows in order: a window gets the real prompts that fall in it, and each object's
  mask on its first frame (computed by the previous window) as a mask prompt, then propagates both
  ways (runs meet half-way between anchors, as in a session);
- backward sweep, windows in reverse, for objects first prompted after the first window: each window
  is seeded with the mask on its last frame and propagated backward.

Masks go to a temporary file as soon as a window is done (`VideoMasks`), compressed per object and
frame; outputs are then written in a second pass over the frames (`VideoSegmentation.chunks`). Across
windows a memory model restarts from a mask prompt, and LiteMedSAM's check that the object still
looks like its anchor compares with the window's seed, so very slow changes in appearance are
followed instead of stopping the object.
"""

from __future__ import annotations

import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import numpy as np
from tqdm.auto import tqdm

from medsam2.engine.postprocess import fill_holes_per_slice, largest_component
from medsam2.engine.predictor import SlicePredictor
from medsam2.engine.prompts import Prompt
from medsam2.engine.session import Session
from medsam2.engine.tracking import PropagationConfig, TrackingPredictor
from medsam2.errors import InputError
from medsam2.io.video import Video
from medsam2.io.volume import Volume
from medsam2.preprocess import apply_window, to_uint8

# Frames sampled to choose the intensity mapping of a clip that is not 8-bit already.
INTENSITY_SAMPLE_FRAMES = 16


@dataclass(frozen=True)
class VideoConfig:
    """How a video is segmented."""

    # Frames per session and per decoded chunk: memory grows with it, not with the clip's length
    # (a window of 512x512 RGB frames takes about 1 MB per frame, plus the session's masks).
    chunk_frames: int = 128
    keep_largest: bool = False  # per frame, the largest connected component of each object
    fill_holes: bool = False  # per frame
    window: str | None = None  # intensity window (preset or "W,L") for frames that are not 8-bit
    propagation: PropagationConfig | None = None  # None: the model family's own defaults

    def __post_init__(self) -> None:
        if self.chunk_frames < 2:
            raise InputError(f"chunk_frames {self.chunk_frames}: windows need at least 2 frames")


class VideoMasks:
    """Per-object, per-frame masks of a clip, zlib-compressed bit planes in a temporary file."""

    def __init__(self, frame_shape: tuple[int, int]):
        self.frame_shape = frame_shape
        self._file = tempfile.TemporaryFile()  # noqa: SIM115 - held open until close()
        self._index: dict[tuple[int, int], tuple[int, int]] = {}  # (object, frame) -> (offset, size)

    def put(self, obj_id: int, frame: int, mask: np.ndarray) -> None:
        blob = zlib.compress(np.packbits(mask).tobytes(), 1)
        offset = self._file.seek(0, 2)
        self._file.write(blob)
        self._index[obj_id, frame] = (offset, len(blob))

    def get(self, obj_id: int, frame: int) -> np.ndarray | None:
        """The (H, W) bool mask of an object on a frame; None where it is absent."""
        if (obj_id, frame) not in self._index:
            return None
        offset, size = self._index[obj_id, frame]
        self._file.seek(offset)
        bits = np.frombuffer(zlib.decompress(self._file.read(size)), dtype=np.uint8)
        return np.unpackbits(bits, count=int(np.prod(self.frame_shape))).reshape(self.frame_shape).astype(bool)

    def close(self) -> None:
        self._file.close()


class FrameMapper:
    """A clip's frames as the uint8 the models take, with one mapping for the whole clip: 8-bit
    frames unchanged; others by `to_uint8`'s rule (window, or foreground percentiles) chosen on
    frames sampled across the clip."""

    def __init__(self, video: Video, window: str | None = None):
        self.mapping = None
        first = video.read(0, 1)
        if first.dtype == np.uint8 and window is None:
            return
        picks = np.unique(np.linspace(0, video.num_frames - 1, INTENSITY_SAMPLE_FRAMES).round().astype(int))
        sample = np.concatenate([video.read(int(index), int(index) + 1) for index in picks])
        mapping = to_uint8(Volume(array=sample, modality=video.modality, source=video.source), window=window).mapping
        self.mapping = None if mapping.kind == "passthrough" else mapping

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        if self.mapping is None:
            return frames.astype(np.uint8, copy=False)
        low, high = self.mapping.low, self.mapping.high
        return apply_window(frames, max(high - low, np.finfo(np.float64).tiny), (low + high) / 2)


@dataclass
class VideoSegmentation:
    """The result of `segment_video`: masks by object and frame (in a temporary file; `close` it or
    use `with`), read back in frame order with the frames they belong to."""

    video: Video
    masks: VideoMasks
    mapper: FrameMapper
    config: VideoConfig
    names: dict[int, str | None]
    prompts: list[Prompt] = field(default_factory=list)

    @property
    def object_ids(self) -> list[int]:
        return sorted(self.names)

    @property
    def label_dtype(self) -> np.dtype:
        return np.dtype(np.uint8 if max(self.names, default=0) < 256 else np.uint16)

    def labels(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """(n, H, W) label maps of frames start..stop; where objects overlap, the higher id wins."""
        stop = self.video.num_frames if stop is None else stop
        labels = np.zeros((stop - start, *self.video.frame_shape), dtype=self.label_dtype)
        for obj_id in self.object_ids:
            for position in range(stop - start):
                mask = self.masks.get(obj_id, start + position)
                if mask is None:
                    continue
                if self.config.fill_holes:
                    mask = fill_holes_per_slice(mask)
                if self.config.keep_largest:
                    mask = largest_component(mask)
                labels[position][mask] = obj_id
        return labels

    def chunks(self) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """(first frame index, uint8 frames, label maps) for consecutive chunks of the whole clip."""
        step = self.config.chunk_frames
        for start in range(0, self.video.num_frames, step):
            stop = min(start + step, self.video.num_frames)
            yield start, self.mapper(self.video.read(start, stop)), self.labels(start, stop)

    def close(self) -> None:
        self.masks.close()

    def __enter__(self) -> VideoSegmentation:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def window_bounds(num_frames: int, size: int) -> list[tuple[int, int]]:
    """(start, stop) of windows of `size` frames covering the clip, each starting on the previous
    one's last frame."""
    bounds = [(0, min(size, num_frames))]
    while bounds[-1][1] < num_frames:
        start = bounds[-1][1] - 1
        bounds.append((start, min(start + size, num_frames)))
    return bounds


def check_prompt_frames(video: Video, prompts: list[Prompt]) -> None:
    """A one-line error for the first prompt outside the clip's frames."""
    for prompt in prompts:
        if not 0 <= prompt.slice_index < video.num_frames:
            raise InputError(
                f"{video.name}: prompt on frame {prompt.slice_index} (object {prompt.obj_id}) is outside the clip's "
                f"frames 0..{video.num_frames - 1}"
            )
        prompt.validate(video.num_frames, *video.frame_shape, unit="frame")


def segment_video(
    video: Video,
    prompts: list[Prompt],
    predictor: SlicePredictor | TrackingPredictor,
    config: VideoConfig = VideoConfig(),
    progress: bool = True,
) -> VideoSegmentation:
    """Segment every prompted object through `video` (prompts: `slice_index` is the frame), forward
    and backward from its prompted frames, one window of frames at a time (module doc)."""
    if not prompts:
        raise InputError(f"{video.name}: no prompt given")
    check_prompt_frames(video, prompts)
    names: dict[int, str | None] = {}
    for prompt in prompts:
        names[prompt.obj_id] = prompt.name or names.get(prompt.obj_id)
    segmentation = VideoSegmentation(video, VideoMasks(video.frame_shape), FrameMapper(video, config.window), config, names, list(prompts))
    try:
        _Sweeps(segmentation, predictor, progress).run()
    except BaseException:
        segmentation.close()
        raise
    return segmentation


class _Sweeps:
    """The forward and backward sweeps of the module doc, writing into `segmentation.masks`."""

    def __init__(self, segmentation: VideoSegmentation, predictor, progress: bool):
        self.segmentation = segmentation
        self.video = segmentation.video
        self.masks = segmentation.masks
        self.predictor = predictor
        self.config = segmentation.config
        self.progress = progress
        self.windows = window_bounds(self.video.num_frames, self.config.chunk_frames)
        first_frame: dict[int, int] = {}
        for prompt in segmentation.prompts:
            first_frame[prompt.obj_id] = min(prompt.slice_index, first_frame.get(prompt.obj_id, prompt.slice_index))
        # The first window holding each object's first prompt: the backward sweep starts before it.
        self.first_window = {
            obj_id: next(k for k, (start, stop) in enumerate(self.windows) if start <= frame < stop)
            for obj_id, frame in first_frame.items()
        }

    def run(self) -> None:
        several = len(self.windows) > 1
        total = len(self.windows) + max(self.first_window.values())
        with tqdm(total=total, desc="video windows", unit="window", disable=not (self.progress and several)) as bar:
            for k in range(len(self.windows)):
                self._forward(k)
                bar.update(1)
            for k in range(max(self.first_window.values()) - 1, -1, -1):
                self._backward(k)
                bar.update(1)

    def _session(self, k: int) -> Session:
        start, stop = self.windows[k]
        frames = self.segmentation.mapper(self.video.read(start, stop))
        return Session(np.ascontiguousarray(frames), self.predictor, self.config.propagation, unit="frame")

    def _forward(self, k: int) -> None:
        start, stop = self.windows[k]
        prompts = [prompt for prompt in self.segmentation.prompts if start <= prompt.slice_index < stop]
        prompted_on_first = {prompt.obj_id for prompt in prompts if prompt.slice_index == start}
        seeds = {
            obj_id: mask
            for obj_id in self.segmentation.object_ids
            if k > 0 and obj_id not in prompted_on_first and (mask := self.masks.get(obj_id, start)) is not None
        }
        if not prompts and not seeds:
            return
        session = self._session(k)
        for obj_id, mask in seeds.items():
            session.add_prompt(0, obj_id, mask=mask)
        for prompt in prompts:
            session.apply(replace(prompt, slice_index=prompt.slice_index - start))
        session.propagate("both", progress=self.progress)
        self._keep(session, start, range(start, stop))

    def _backward(self, k: int) -> None:
        start, stop = self.windows[k]
        last = stop - 1
        seeds = {
            obj_id: mask
            for obj_id, first in self.first_window.items()
            if first > k and (mask := self.masks.get(obj_id, last)) is not None
        }
        if not seeds:
            return
        session = self._session(k)
        for obj_id, mask in seeds.items():
            session.add_prompt(last - start, obj_id, mask=mask)
        session.propagate("backward", progress=self.progress)
        self._keep(session, start, range(start, last))

    def _keep(self, session: Session, start: int, frames: range) -> None:
        for obj_id, tracked in session.objects.items():
            for index, mask in tracked.masks.items():
                if start + index in frames:
                    self.masks.put(obj_id, start + index, mask)
