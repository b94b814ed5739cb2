"""Video segmentation end to end with the real LiteMedSAM weights, on synthetic clips whose truth is
known (a beating contrast-echo ventricle, colour polyps moving over mucosa) and on the shared CT
lesion cases read as frame sequences."""

from __future__ import annotations

import csv
import dataclasses
import gc
import hashlib
import json
import tracemalloc
from fractions import Fraction
from pathlib import Path

import av
import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage
from test_cli import assert_one_line_error, run
from test_sam2_engine import moving_disk, random_sam2
from test_video_io import write_cine_dicom, write_container

from medsam2.cli.video import VideoRequest, write_outputs
from medsam2.engine.api import segment_volume
from medsam2.engine.models import load_predictor
from medsam2.engine.prompts import Prompt, box_from_mask
from medsam2.engine.sam2_predictor import SAM2Predictor
from medsam2.engine.session import Session
from medsam2.engine.tracking import PropagationConfig
from medsam2.engine.video import (
    FrameMapper,
    VideoConfig,
    VideoMasks,
    VideoSegmentation,
    segment_video,
    window_bounds,
)
from medsam2.io import load_image
from medsam2.io.masks import stored_array
from medsam2.io.video import load_video, load_video_mask, video_from_array
from medsam2.io.video_writers import mask_sequence_writer
from medsam2.metrics import dice, hd95


@pytest.fixture(scope="module")
def predictor():
    return load_predictor("lite-medsam")


def ellipse(shape, cy, cx, a, b, angle) -> np.ndarray:
    """Long semi-axis `a` at `angle` radians from the vertical, in pixels."""
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    along = (cols - cx) * np.sin(angle) + (rows - cy) * np.cos(angle)
    across = (cols - cx) * np.cos(angle) - (rows - cy) * np.sin(angle)
    return (along / a) ** 2 + (across / b) ** 2 <= 1


def ventricle_clip(frames: int = 11, shape=(192, 160), period: int = 12, first_ed: int = 2):
    """A contrast echo of a beating LV: a bright speckled cavity inside a dimmer wall on speckle.
    Contraction rises linearly from ED to ES and back (ED frame 2, ES frame 8, then refilling); the
    cavity shrinks from semi-axes (56, 32) to (48, 22) pixels and drifts. Returns frames, truth, axes."""
    rng = np.random.default_rng(0)
    t = np.arange(frames)
    contraction = 1 - np.abs(((t - first_ed) % period) / (period / 2) - 1)
    a, b = 56 - 8 * contraction, 32 - 10 * contraction
    cy, cx = 96 + 3 * np.sin(2 * np.pi * t / period), 80 + 2 * np.cos(2 * np.pi * t / period)
    clip, truth = np.empty((frames, *shape), np.uint8), np.empty((frames, *shape), bool)
    for k in t:
        cavity = ellipse(shape, cy[k], cx[k], a[k], b[k], 0.15)
        wall = ellipse(shape, cy[k], cx[k], a[k] + 10, b[k] + 10, 0.15) & ~cavity
        speckle = ndimage.gaussian_filter(rng.rayleigh(1.0, shape), 1.2)
        image = 55 + 20 * speckle
        image[wall] = 85 + 25 * speckle[wall]
        image[cavity] = 165 + 30 * speckle[cavity]
        clip[k], truth[k] = np.clip(image, 0, 255), cavity
    return clip, truth, a, b


def polyp_clip(frames: int = 12, shape=(160, 192)):
    """Endoscopy-like colour clip: two reddish shaded polyps crossing pink, textured mucosa in
    opposite directions, each by less than a tenth of its size per frame (LiteMedSAM follows an
    object by its previous box grown by 10%). Returns frames (T, H, W, 3) and the truth labels."""
    rng = np.random.default_rng(1)
    rows, cols = np.mgrid[: shape[0], : shape[1]].astype(float)
    texture = ndimage.gaussian_filter(rng.normal(size=shape), 6)
    texture /= np.abs(texture).max()
    grain = ndimage.gaussian_filter(rng.normal(size=(frames, *shape)), (0, 1, 1))
    clip, truth = np.empty((frames, *shape, 3), np.uint8), np.zeros((frames, *shape), np.uint8)
    for k in range(frames):
        image = np.stack([200 + 25 * texture, 120 + 20 * texture, 110 + 15 * texture], axis=-1)
        for label, (cx, cy, radius) in enumerate([(50 + 3.5 * k, 60 + 1.5 * k, 24), (150 - 3 * k, 135, 14)], start=1):
            distance = np.hypot(cols - cx, rows - cy)
            polyp = distance <= radius
            shade = np.clip(1 - distance / radius, 0, 1)[polyp]
            image[polyp] = np.stack([150 + 60 * shade, 60 + 40 * shade, 70 + 30 * shade], axis=-1)
            truth[k][polyp] = label
        clip[k] = np.clip(image + 6 * grain[k][..., None], 0, 255)
    return clip, truth


def analytic_ef(a: np.ndarray, b: np.ndarray, ed: int, es: int) -> float:
    """EF of the prolate spheroids the ED and ES ellipses sweep about their long axes."""
    return 100 * (1 - (a[es] * b[es] ** 2) / (a[ed] * b[ed] ** 2))


def test_echo_of_an_object_that_does_not_beat_is_a_warning_on_its_own_line(tmp_path: Path) -> None:
    still = np.repeat(moving_disk(1), 4, axis=0)  # the same disc on every frame: no cycle
    clip = write_container(tmp_path / "still.avi", still, "ffv1", "gray", Fraction(25))
    result = run("segment", clip, "--frame-box", "1,14,20,36,44", "-o", tmp_path / "m.npz", "--areas", tmp_path / "a.csv", "--echo")
    assert result.exit_code == 0, result.output
    (line,) = [line for line in result.stderr.replace("\r", "\n").splitlines() if "--echo" in line]
    assert line.startswith("warning: --echo: the left ventricle's area ") and "no cardiac cycle to measure" in line
    assert "EF" not in result.stdout and (tmp_path / "a.csv").exists()


def test_window_bounds_share_one_frame() -> None:
    assert window_bounds(16, 6) == [(0, 6), (5, 11), (10, 16)]
    assert window_bounds(5, 128) == [(0, 5)]
    assert window_bounds(11, 6) == [(0, 6), (5, 11)]


def test_echo_clip_from_an_inner_frame_through_the_cli(tmp_path: Path) -> None:
    clip, truth, a, b = ventricle_clip()
    echo = write_cine_dicom(tmp_path / "echo.dcm", clip, frame_time_ms=40, region_cm=(0.03, 0.03))
    x1, y1, x2, y2 = box_from_mask(truth[8])  # ES: followed backward to frame 0, forward to 10
    out = tmp_path / "out"
    result = run(
        "segment", echo, "--frame-box", f"8,{x1},{y1},{x2},{y2}", "-o", out / "lv.nii.gz",
        "--overlay", out / "lv.mp4", "--areas", out / "lv.csv", "--echo",
    )
    assert result.exit_code == 0, result.output
    masks = load_video_mask(out / "lv.nii.gz")
    scores = [dice(masks[k] == 1, truth[k]) for k in range(len(clip))]
    assert min(scores) >= 0.9, np.round(scores, 3)
    assert nib.load(out / "lv.nii.gz").header.get_zooms() == pytest.approx((0.3, 0.3, 1.0, 0.04))
    assert "ED frames [2], ES frames [8]" in result.stdout
    assert "frame/s" in result.stderr and "slice/s" not in result.stderr  # the progress bars count frames
    with open(out / "lv.csv", newline="") as table:
        rows = list(csv.DictReader(table))
    assert [int(row["frame"]) for row in rows] == list(range(11))
    assert [int(row["area_px_1"]) for row in rows] == (masks == 1).sum(axis=(1, 2)).tolist()
    assert float(rows[5]["area_mm2_1"]) == pytest.approx(int(rows[5]["area_px_1"]) * 0.09, abs=1e-3)
    phases = {int(row["frame"]): row["phase"] for row in rows if row["phase"]}
    assert phases == {2: "ED", 8: "ES"}
    volumes = {frame: float(rows[frame]["lv_volume_ml"]) for frame in phases}
    assert 100 * (1 - volumes[8] / volumes[2]) == pytest.approx(analytic_ef(a, b, 2, 8), abs=2.0)
    assert volumes[2] == pytest.approx(4 / 3 * np.pi * a[2] * b[2] ** 2 * 0.3**3 / 1000, rel=0.1)  # mL
    with load_video(out / "lv.mp4") as overlay:
        assert overlay.num_frames == 11 and overlay.frame_rate == 25
    assert (out / "lv.png").stat().st_size > 0
    assert sorted(p.name for p in out.iterdir()) == ["lv.csv", "lv.mp4", "lv.nii.gz", "lv.png"]


class RememberingPredictor:
    """The real predictor; a frame it has encoded once is not encoded again (the first frame of a window
    is the last of the one before; the volume path and the video path show it the same slices), which
    only saves time: an embedding depends on the pixels alone."""

    def __init__(self, predictor):
        self.inner = predictor
        self.embeddings: dict[bytes, object] = {}

    def encode(self, slices: np.ndarray) -> list:
        keys = [hashlib.sha1(plane.tobytes()).digest() for plane in slices]
        missing = [position for position, key in enumerate(keys) if key not in self.embeddings]
        if missing:
            for position, embedding in zip(missing, self.inner.encode(slices[missing])):
                self.embeddings[keys[position]] = embedding
        return [self.embeddings[key] for key in keys]

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


class RecordedFrames:
    """A video's frame source that notes the ranges read from it."""

    def __init__(self, frames):
        self.inner = frames
        self.ranges: list[tuple[int, int]] = []

    def read(self, start: int, stop: int) -> np.ndarray:
        self.ranges.append((start, stop))
        return self.inner.read(start, stop)

    def close(self) -> None:
        self.inner.close()


def test_colour_clip_in_windows_with_two_objects_prompted_on_different_frames(tmp_path: Path, predictor) -> None:
    clip, truth = polyp_clip()
    path = write_container(tmp_path / "endoscopy.mp4", clip, "libx264", "yuv420p", Fraction(30), crf="18")
    prompts = [Prompt(6, 1, box=box_from_mask(truth[6] == 1), name="polyp"), Prompt(2, 2, box=box_from_mask(truth[2] == 2))]
    # Windows [0, 5), [4, 9), [8, 12): object 1 is followed forward from window 1 and backward
    # into window 0, object 2 forward from window 0; every window seeds the next from its masks.
    with load_video(path) as opened:
        assert opened.is_color and opened.frame_rate == 30
        video = dataclasses.replace(opened, frames=RecordedFrames(opened.frames))
        with segment_video(video, prompts, RememberingPredictor(predictor), VideoConfig(chunk_frames=5), progress=False) as result:
            labels = result.labels()
            chunks = [(start, frames.shape, masks.shape) for start, frames, masks in result.chunks()]
    assert chunks == [(0, (5, 160, 192, 3), (5, 160, 192)), (5, (5, 160, 192, 3), (5, 160, 192)), (10, (2, 160, 192, 3), (2, 160, 192))]
    # Never more than a window of frames decoded at once (the first frame's read picks the intensity mapping).
    assert max(stop - start for start, stop in video.frames.ranges) == 5
    for label in (1, 2):
        scores = [dice(labels[k] == label, truth[k] == label) for k in range(len(clip))]
        assert min(scores) >= 0.9, (label, np.round(scores, 3))


def test_two_objects_through_the_cli_one_by_flag_one_named_in_a_prompts_file(tmp_path: Path) -> None:
    clip, truth = polyp_clip(frames=8)
    path = write_container(tmp_path / "endoscopy.mp4", clip, "libx264", "yuv420p", Fraction(30), crf="18")
    x1, y1, x2, y2 = box_from_mask(truth[5] == 1)
    prompts = {"objects": [{"id": 2, "name": "small polyp", "prompts": [{"slice": 1, "box": list(box_from_mask(truth[1] == 2))}]}]}
    (tmp_path / "polyps.json").write_text(json.dumps(prompts))
    out = tmp_path / "out"
    result = run(
        "segment", path, "--frame-box", f"5,{x1},{y1},{x2},{y2}", "--prompts", tmp_path / "polyps.json",
        "-o", out / "polyps.npz", "--areas", out / "polyps.csv",
    )
    assert result.exit_code == 0, result.output
    assert "object 1: on 8 of 8 frames" in result.stdout and "object 2 (small polyp): on 8 of 8 frames" in result.stdout
    masks = load_video_mask(out / "polyps.npz")
    assert set(np.unique(masks)) == {0, 1, 2}
    for label in (1, 2):
        scores = [dice(masks[k] == label, truth[k] == label) for k in range(len(clip))]
        assert min(scores) >= 0.9, (label, np.round(scores, 3))
    with open(out / "polyps.csv", newline="") as table:
        rows = list(csv.DictReader(table))
    for label in (1, 2):
        assert [int(row[f"area_px_{label}"]) for row in rows] == (masks == label).sum(axis=(1, 2)).tolist()
    assert sorted(p.name for p in out.iterdir()) == ["polyps.csv", "polyps.npz", "polyps.png"]


def test_ct_lesions_read_as_frames_give_the_volume_masks(tmp_path: Path, ct_lesion_cases, predictor) -> None:
    predictor = RememberingPredictor(predictor)
    one_ahead = PropagationConfig(prefetch=1)  # no slices encoded past a lesion's end: only saves time
    for case in ct_lesion_cases:
        volume = load_image(case)
        gts = stored_array(volume, "gts") > 0
        key = int(np.argmax(gts.sum(axis=(1, 2))))
        prompts = [Prompt(key, 1, box=box_from_mask(gts[key]))]
        frames = tmp_path / case.stem
        frames.mkdir()
        for index, plane in enumerate(volume.array):
            Image.fromarray(plane).save(frames / f"slice_{index}.png")
        expected = segment_volume(volume, prompts, predictor, config=one_ahead, progress=False).labels.array
        with load_video(frames) as video, segment_video(video, prompts, predictor, VideoConfig(propagation=one_ahead), progress=False) as result:
            labels = result.labels()
        assert labels.any()
        assert np.array_equal(labels, expected), case.name


def test_a_sam2_model_goes_through_the_same_windows(tmp_path: Path) -> None:
    # Random weights (no checkpoint is downloaded): the masks mean nothing, but the memory model must
    # take the window seeds (mask prompts) and follow the object through every window.
    predictor = SAM2Predictor(random_sam2(64), "cpu")
    frames = moving_disk(8)
    prompt = Prompt(5, 1, box=(14, 20, 36, 44))
    with segment_video(video_from_array(frames), [prompt], predictor, VideoConfig(chunk_frames=4), progress=False) as result:
        labels = result.labels()  # windows [0, 4), [3, 7), [6, 8)
    assert all(labels[k].any() for k in range(8))
    anchor = Session(frames, predictor).apply(prompt)
    assert dice(labels[5] == 1, anchor) > 0.99  # the prompted frame: the model's answer to the box


def test_a_sam2_checkpoint_segments_a_video_from_the_cli(tmp_path: Path) -> None:
    # A SAM 2.1 checkpoint file with random weights run with MedSAM2's settings (512 px): the file
    # loads as an official one does, and the object is followed over every frame.
    checkpoint = tmp_path / "random_sam2.pt"
    torch.save({"model": random_sam2(64).state_dict()}, checkpoint)
    clip = write_container(tmp_path / "clip.avi", moving_disk(2), "ffv1", "gray", Fraction(10))
    result = run("segment", clip, "--model", f"medsam2={checkpoint}", "--frame-box", "1,14,20,36,44", "-o", tmp_path / "masks.npz")
    assert result.exit_code == 0, result.output
    masks = load_video_mask(tmp_path / "masks.npz")
    assert masks.shape == (2, 64, 64) and set(np.unique(masks)) == {0, 1} and masks[0].any() and masks[1].any()


def live_storages() -> dict[int, int]:
    """Bytes of each torch storage alive now (views counted once), by data pointer."""
    storages = {}
    for candidate in gc.get_objects():
        if issubclass(type(candidate), torch.Tensor):  # type(): isinstance would ask deprecated objects for __class__
            if candidate.is_mkldnn:  # oneDNN's packed weights, frozen into an earlier test's compiled model
                continue
            storage = candidate.untyped_storage()
            try:
                pointer = storage.data_ptr()
            except RuntimeError:  # a fake or meta tensor (torch.export leaves some alive): it holds no memory
                continue
            storages[pointer] = storage.nbytes()
    return storages


def live_tensor_bytes(excluded: set[int]) -> int:
    """Bytes of the torch storages alive now but for those whose data pointer is in `excluded`."""
    return sum(size for pointer, size in live_storages().items() if pointer not in excluded)


def live_numpy_bytes() -> int:
    """Bytes of numpy arrays' data alive now (frames, masks, logits...), as tracemalloc traces them."""
    domain = tracemalloc.DomainFilter(inclusive=True, domain=np.lib.tracemalloc_domain)
    return sum(trace.size for trace in tracemalloc.take_snapshot().filter_traces([domain]).traces)


class ObservedSAM2(SAM2Predictor):
    """A SAM 2.1 predictor that notes what the process holds besides the model's weights each time it
    is asked for embeddings (a window's first frame, then each prefetched batch): torch storages
    (embeddings, memory banks, logits...) and numpy arrays (frames, masks...). Storages alive before
    the run (the weights, and whatever earlier tests in the process keep) are left out."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.excluded: set[int] = set()
        self.samples: list[tuple[int, int]] = []  # (tensor bytes, numpy bytes)
        self.encoded = 0

    def encode(self, slices: np.ndarray) -> list:
        self.samples.append((live_tensor_bytes(self.excluded), live_numpy_bytes()))
        self.encoded += len(slices)
        return super().encode(slices)


def test_what_the_engine_holds_stays_bounded_over_a_long_clip(torch_one_thread) -> None:
    # 48 frames in windows of 8 (a tiny random SAM 2.1: each frame's features and memory are
    # tensors): embeddings, memory banks, frames and masks of one window at a time, so what the
    # process holds late in the clip is what it held early, far below what the whole clip's take.
    frames, window, size = 48, 8, 192
    clip = moving_disk(frames, size)
    predictor = ObservedSAM2(random_sam2(64), "cpu")
    features = SAM2Predictor(predictor.model, "cpu").encode(clip[:1])[0]  # one frame's, unobserved
    feature_bytes = sum(tensor.untyped_storage().nbytes() for tensor in (*features.high_res, features.top))
    del features
    video = dataclasses.replace(video_from_array(clip), frames=RecordedFrames(video_from_array(clip).frames))
    prompt = Prompt(0, 1, box=box_from_mask(clip[0] == 220))
    gc.collect()
    predictor.excluded = set(live_storages())
    tracemalloc.start()
    try:
        with segment_video(video, [prompt], predictor, VideoConfig(chunk_frames=window), progress=False) as result:
            present = [result.masks.get(1, k) is not None for k in range(frames)]
    finally:
        tracemalloc.stop()
    assert all(present)
    assert max(stop - start for start, stop in video.frames.ranges) == window
    assert predictor.encoded >= frames
    tensors, arrays = np.array(predictor.samples).T
    third = len(tensors) // 3
    assert tensors[-third:].max() <= 1.1 * tensors[:third].max(), tensors
    assert tensors.max() < frames * feature_bytes / 4  # a quarter of the clip's features alone
    assert arrays[-third:].max() <= 1.1 * arrays[:third].max(), arrays
    assert arrays.max() < clip.nbytes / 4


def disc_mask(index: int, size: int = 192) -> np.ndarray:
    """The object on frame `index` of a long clip: a disc circling once every 60 frames."""
    rows, cols = np.ogrid[:size, :size]
    angle = 2 * np.pi * index / 60
    return (rows - size / 2 - size / 4 * np.sin(angle)) ** 2 + (cols - size / 2 - size / 4 * np.cos(angle)) ** 2 <= (size / 8) ** 2


def disc_frame(index: int, size: int = 192) -> np.ndarray:
    """Frame `index` of the long colour clip: the disc over noise."""
    frame = np.random.default_rng(index).integers(0, 90, (size, size, 3), dtype=np.uint8)
    frame[disc_mask(index, size)] = (220, 120, 90)
    return frame


def write_long_clip(path: Path, frames: int) -> Path:
    """An MP4 made frame by frame, so that the test itself never holds the clip."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(30))
        stream.width = stream.height = 192
        stream.pix_fmt, stream.options = "yuv420p", {"preset": "ultrafast"}
        for index in range(frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(disc_frame(index), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def output_pass_peak(tmp_path: Path, frames: int) -> int:
    """Peak bytes numpy and Python allocate while a clip's masks are stored as the engine stores
    them (one frame at a time), then written out (npz, areas CSV and plot) from the decoded clip."""
    clip = write_long_clip(tmp_path / f"long_{frames}.mp4", frames)
    config = VideoConfig(chunk_frames=32)
    request = VideoRequest(clip, tmp_path / f"long_{frames}.npz", areas=tmp_path / f"long_{frames}.csv", config=config)
    tracemalloc.start()
    try:
        with load_video(clip) as video:
            masks = VideoMasks(video.frame_shape)
            for index in range(frames):
                masks.put(1, index, disc_mask(index))
            with VideoSegmentation(video, masks, FrameMapper(video), config, {1: "disc"}) as segmentation:
                write_outputs(segmentation, request)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_long_clip_is_decoded_and_written_in_chunks(tmp_path: Path) -> None:
    # The segmentation itself holds one window (checked on the model above; peak RSS per clip
    # length in benchmarks/video_speed.py); here, with masks as the engine stores them, the
    # decoding and writing of a clip four times longer takes no more memory.
    short, long = output_pass_peak(tmp_path, 120), output_pass_peak(tmp_path, 480)
    clip_bytes = 480 * 192 * 192 * 3
    assert long < 1.3 * short and long < clip_bytes / 4, (short, long, clip_bytes)
    with np.load(tmp_path / "long_480.npz") as npz:
        segs = npz["segs"]
    assert segs.shape == (480, 192, 192)
    assert all(np.array_equal(segs[k] == 1, disc_mask(k)) for k in (0, 239, 479))
    with open(tmp_path / "long_480.csv", newline="") as table:
        areas = [int(row["area_px_1"]) for row in csv.DictReader(table)]
    assert areas == segs.reshape(480, -1).astype(bool).sum(axis=1).tolist()


def test_mask_prompt_on_one_frame_to_a_folder_of_pngs(tmp_path: Path) -> None:
    clip, truth, _, _ = ventricle_clip(frames=6)
    frames = tmp_path / "frames"
    frames.mkdir()
    for index, frame in enumerate(clip):
        Image.fromarray(frame).save(frames / f"frame_{index:02d}.png")
    Image.fromarray(truth[2].astype(np.uint8) * 3).save(tmp_path / "lv_frame2.png")  # label 3
    result = run("segment", frames, "--mask-prompt", f"2:{tmp_path / 'lv_frame2.png'}", "-o", tmp_path / "masks")
    assert result.exit_code == 0, result.output
    written = sorted(p.name for p in (tmp_path / "masks").iterdir())
    assert written == [f"frame_{index:02d}.png" for index in range(6)]
    masks = load_video_mask(tmp_path / "masks")
    assert min(dice(masks[k] == 3, truth[k]) for k in range(6)) >= 0.9


def test_a_mask_prompt_sequence_beside_the_outputs_in_the_working_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A FILE spec (no frame) was also taken as the input "" (the working folder): every output
    # there was refused as "in the input folder ..., among the images it holds"
    clip, truth, _, _ = ventricle_clip(frames=4)
    write_container(tmp_path / "echo.mkv", clip, "ffv1", "gray", Fraction(25))
    np.savez(tmp_path / "lv_seq.npz", segs=truth.astype(np.uint8), frame_rate=25.0)
    monkeypatch.chdir(tmp_path)
    result = run("segment", "echo.mkv", "--mask-prompt", "lv_seq.npz", "-o", "lv.npz")
    assert result.exit_code == 0, result.output
    assert min(dice(load_video_mask("lv.npz")[k] == 1, truth[k]) for k in range(4)) >= 0.9


def test_bad_video_input_gives_one_line_errors_and_no_output(tmp_path: Path) -> None:
    clip = ventricle_clip(frames=4)[0]
    good = write_container(tmp_path / "good.avi", clip, "ffv1", "gray", Fraction(25))
    (tmp_path / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    write_container(tmp_path / "empty.mp4", clip[:0], "libx264", "yuv420p", Fraction(25))
    header_only = write_cine_dicom(tmp_path / "header_only.dcm", None, frame_time_ms=40)
    np.savez(tmp_path / "sequence.npz", segs=np.zeros((4, 160, 192), np.uint8))
    Image.fromarray(np.zeros((192, 160), np.uint8)).save(tmp_path / "one_frame.png")
    out = tmp_path / "out"
    box = "50,40,110,150"
    cases = [
        (["segment", tmp_path / "corrupt.mp4", "--frame-box", f"0,{box}"], ["corrupt.mp4", "cannot read"]),
        (["segment", tmp_path / "empty.mp4", "--frame-box", f"0,{box}"], ["empty.mp4", "no video stream"]),
        (["segment", header_only, "--frame-box", f"0,{box}"], ["header_only.dcm", "no pixel data"]),
        (["segment", good, "--frame-box", f"7,{box}"], ["frame 7", "outside the clip's frames 0..3"]),
        (["segment", good, "--frame-point", "9,60,80"], ["frame 9", "outside the clip's frames 0..3"]),
        (["segment", good, "--frame-box", "1,50,40,110,400"], ["prompt on frame 1 (object 1): box", "reaches outside the 160x192 frame"]),
        (["segment", good, "--frame-box", "1.5,50,40,110,150"], ["--frame-box: frame must be a whole number, got 1.5"]),
        (["segment", good, "--frame-box", "nan,50,40,110,150"], ["--frame-box: frame must be a whole number, got NaN"]),
        (["segment", good, "--frame-point", "1,60,80,inf"], ["--frame-point: label must be a whole number, got Infinity"]),
        (["segment", good, "--frame-box", f"1,{box},2", "--echo"], ["--echo", "object 1"]),
        (["segment", good, "--frame-box", f"1,{box}", "--axis", "coronal"], ["--axis"]),
        (["segment", good, "--frame-box", f"1,{box}", "--direction", "forward"], ["--direction forward", "forward and backward"]),
        (["segment", good, "--frame-box", f"1,{box}", "--erase", "2"], ["--erase 2", "corrected in the web app"]),
        (["segment", good, "--frame-box", f"1,{box}", "--overlay", out / "overlay.gif"], ["overlay.gif", ".mp4"]),
        (["segment", good], ["no prompt"]),
        (["segment", good, "--frame-point", "1,60,80,0"], ["object 1: background clicks alone mark no object", "on some frame"]),
        (["segment", good, "--mask-prompt", f"2:{tmp_path / 'sequence.npz'}"], ["holds 4 frames, not one frame's labels"]),
        (["segment", good, "--mask-prompt", tmp_path / "one_frame.png"], ["does not fit the video's (T, H, W) (4, 192, 160)", "--mask-prompt T:"]),
    ]
    for arguments, fragments in cases:
        result = run(*arguments, "-o", out / "masks.nii.gz")
        assert_one_line_error(result, *fragments)
        assert not out.exists(), arguments


def test_eval_scores_video_masks_frame_by_frame_in_the_plane(tmp_path: Path) -> None:
    """A video's masks are scored frame by frame in 2D with the pixel spacing (0.5 mm here): a
    prediction 3 px off on every frame is 1.5 mm off at most. Read as a volume, time counted as a
    third axis 1 mm deep (as eval did with a video's npz; it refused a 2D+t NIfTI); masks of an
    uncalibrated video are scored in pixels, and their NIfTI says no spacing rather than 1 mm."""
    truth = (moving_disk(6) > 200).astype(np.uint8)
    shifted = np.roll(truth, 3, axis=2)
    calibrated = video_from_array(truth, frame_rate=25.0, pixel_spacing=(0.5, 0.5))
    for path, video, labels in ((tmp_path / "gt.npz", calibrated, truth), (tmp_path / "pred.nii.gz", calibrated, shifted)):
        with mask_sequence_writer(path, video, np.uint8) as write:
            write(labels)
    scored = run("eval", tmp_path / "pred.nii.gz", tmp_path / "gt.npz", "--json", tmp_path / "scores.json")
    assert scored.exit_code == 0, scored.output
    assert "1 video, scored frame by frame in 2D" in scored.stdout and "pixel units" not in scored.stdout
    (row,) = json.loads((tmp_path / "scores.json").read_text())["cases"]
    frames = [(dice(p, g), hd95(p, g, (0.5, 0.5))) for p, g in zip(shifted, truth)]
    assert row["dice"] == pytest.approx(np.mean([d for d, _ in frames])) and row["hd95"] == pytest.approx(np.mean([h for _, h in frames]))
    assert 1.0 < row["hd95"] <= 1.5 and row["gt_voxels"] == truth.sum()

    uncalibrated = video_from_array(truth)
    with mask_sequence_writer(tmp_path / "plain.nii.gz", uncalibrated, np.uint8) as write:
        write(truth)
    with load_video(tmp_path / "plain.nii.gz") as read_back:
        assert read_back.pixel_spacing is None and read_back.num_frames == 6
    in_pixels = run("eval", tmp_path / "pred.nii.gz", tmp_path / "plain.nii.gz", "--json", tmp_path / "pixels.json")
    assert in_pixels.exit_code == 0 and "(pixel units)" in in_pixels.stdout, in_pixels.output
    assert json.loads((tmp_path / "pixels.json").read_text())["cases"][0]["hd95"] == pytest.approx(2 * row["hd95"])
    assert_one_line_error(run("eval", tmp_path / "pred.nii.gz", tmp_path / "scores.json"), "scores.json")
    short = tmp_path / "short.npz"
    np.savez(short, segs=truth[:4], pixel_spacing=np.array([0.5, 0.5]))
    assert_one_line_error(run("eval", tmp_path / "pred.nii.gz", short), "6 frames of 64x64 vs 4 of 64x64")


def test_the_readme_python_video_example_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """README's Python video example, run verbatim on a clip of a disc gliding right; every frame's
    mask is the disc."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    example = readme.split("short one:\n\n```python\n", 1)[1].split("```", 1)[0]
    assert "segment_video" in example
    rows, cols = np.mgrid[:128, :160]
    discs = np.stack([(rows - 64) ** 2 + (cols - 50 - 2 * t) ** 2 < 15**2 for t in range(20)])
    write_container(tmp_path / "echo.mp4", np.where(discs, 200, 30).astype(np.uint8), "libx264", "yuv420p", Fraction(10))
    monkeypatch.chdir(tmp_path)
    exec(compile(example, "README.md", "exec"), {})
    masks = np.asarray(nib.load(tmp_path / "echo_masks.nii.gz").dataobj)
    assert masks.shape == (160, 128, 1, 20)
    for frame in range(20):
        assert dice(masks[:, :, 0, frame].T == 1, discs[frame]) > 0.9, frame
