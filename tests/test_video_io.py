"""Video input and output without a model: every input form round-trips (frames, frame rate, pixel
spacing), the mask and overlay writers read back, damaged input gives one-line errors."""

from __future__ import annotations

import dataclasses
from fractions import Fraction
from pathlib import Path

import av
import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    ExplicitVRLittleEndian,
    UltrasoundMultiFrameImageStorage,
    generate_uid,
)

from medsam2.errors import InputError
from medsam2.io import Volume, load_image
from medsam2.io.overlay import LABEL_COLOURS
from medsam2.io.video import is_video, load_video, load_video_mask, video_from_array
from medsam2.io.video_writers import (
    mask_sequence_writer,
    overlay_video_writer,
    save_curve_plot,
    write_table,
)


def moving_square_clip(frames: int = 12, height: int = 48, width: int = 64, colour: bool = True) -> np.ndarray:
    """A textured clip whose every frame differs (a square moving over a gradient)."""
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[:height, :width]
    clip = []
    for t in range(frames):
        frame = (xx * 3 + yy * 2 + rng.integers(0, 40, (height, width))).astype(np.uint8)
        frame[10:22, 4 + 3 * t : 16 + 3 * t] = 230
        clip.append(np.stack([frame, 255 - frame, frame // 2], axis=-1) if colour else frame)
    return np.stack(clip)


def write_container(path: Path, frames: np.ndarray, codec: str, pixel_format: str, rate: Fraction, **options: str) -> Path:
    grey = frames.ndim == 3
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pixel_format
        stream.options = options
        container.start_encoding()  # writes the header even when there is no frame
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="gray" if grey else "rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_cine_dicom(path: Path, frames: np.ndarray | None, *, frame_time_ms=None, region_cm=None, pixel_spacing=None, cine_rate=None) -> Path:
    """An ultrasound multi-frame DICOM (grey or RGB, 8 bits); `frames` None leaves out the pixel data."""
    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.file_meta.MediaStorageSOPClassUID = dataset.SOPClassUID = UltrasoundMultiFrameImageStorage
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID = generate_uid()
    dataset.PatientName, dataset.PatientID, dataset.Modality = "Test^Echo", "MEDSAM2-VIDEO", "US"
    dataset.StudyInstanceUID, dataset.SeriesInstanceUID = generate_uid(), generate_uid()
    shape = frames.shape if frames is not None else (4, 32, 40)
    dataset.NumberOfFrames, dataset.Rows, dataset.Columns = shape[0], shape[1], shape[2]
    colour = len(shape) == 4
    dataset.SamplesPerPixel = 3 if colour else 1
    dataset.PhotometricInterpretation = "RGB" if colour else "MONOCHROME2"
    if colour:
        dataset.PlanarConfiguration = 0
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 8, 8, 7, 0
    if frame_time_ms is not None:
        dataset.FrameTime = frame_time_ms
        dataset.FrameIncrementPointer = 0x00181063
    if cine_rate is not None:
        dataset.CineRate = cine_rate
    if pixel_spacing is not None:
        dataset.PixelSpacing = list(pixel_spacing)  # (rows, columns)
    if region_cm is not None:
        region = Dataset()
        region.RegionLocationMinX0, region.RegionLocationMinY0 = 0, 0
        region.RegionLocationMaxX1, region.RegionLocationMaxY1 = shape[2] - 1, shape[1] - 1
        region.PhysicalUnitsXDirection = region.PhysicalUnitsYDirection = 3  # cm
        region.PhysicalDeltaX, region.PhysicalDeltaY = region_cm
        dataset.SequenceOfUltrasoundRegions = Sequence([region])
    if frames is not None:
        dataset.PixelData = np.ascontiguousarray(frames).tobytes()
    dataset.save_as(path, enforce_file_format=True)
    return path


def read_all(path: Path):
    with load_video(path) as video:
        return video, video.read()


# -- inputs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "codec", "pixel_format", "options"),
    [
        ("clip.mp4", "libx264rgb", "rgb24", {"qp": "0", "g": "5"}),  # lossless H.264, key frame every 5
        ("clip.avi", "ffv1", "bgr0", {"g": "4"}),
        ("clip.mov", "png", "rgb24", {}),
    ],
)
def test_containers_round_trip_frames_and_frame_rate(tmp_path: Path, name, codec, pixel_format, options) -> None:
    clip = moving_square_clip()
    path = write_container(tmp_path / name, clip, codec, pixel_format, Fraction(30000, 1001), **options)
    assert is_video(path)
    video, frames = read_all(path)
    assert video.num_frames == 12 and video.frame_shape == (48, 64) and video.is_color
    assert video.frame_rate == pytest.approx(30000 / 1001)
    assert np.array_equal(frames, clip)
    # Ranges in any order (windows going backward seek to the key frame before them).
    with load_video(path) as video:
        for start, stop in ((8, 12), (4, 9), (0, 5), (3, 4), (11, 12), (0, 12)):
            assert np.array_equal(video.read(start, stop), clip[start:stop]), (start, stop)


@pytest.mark.parametrize(("name", "codec"), [("clip.mpg", "mpeg2video"), ("clip.avi", "mpeg4")])
def test_b_frame_streams_read_any_range_as_decoded_in_order(tmp_path: Path, name: str, codec: str) -> None:
    """MPEG program streams and AVI (MPEG-4 Part 2) with B-frames: a seek lands a key frame or
    more past the one asked for; every range still reads the frames a decode from the start gives."""
    path = write_container(tmp_path / name, moving_square_clip(30), codec, "yuv420p", Fraction(25), bf="2", g="6")
    with av.open(str(path)) as container:
        decoded = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])
    with load_video(path) as video:
        assert video.num_frames == len(decoded) == 30
        for start, stop in ((0, 30), (20, 30), (8, 16), (0, 5), (13, 14), (27, 30), (1, 2)):
            np.testing.assert_array_equal(video.read(start, stop), decoded[start:stop], err_msg=f"{start}:{stop}")


@pytest.mark.parametrize("rotation", [-90, 90, 180])
def test_a_clip_with_a_display_rotation_reads_upright_as_players_show_it(tmp_path: Path, rotation: int) -> None:
    """A phone's portrait clip is stored landscape with a display rotation (FFmpeg's angle,
    counter-clockwise): its frames, and so the masks and overlays, come turned as players show them."""
    clip = moving_square_clip()
    path = tmp_path / "phone.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264rgb", rate=Fraction(25))
        stream.width, stream.height, stream.pix_fmt, stream.options = 64, 48, "rgb24", {"qp": "0"}
        stream.set_display_rotation(rotation)
        for frame in clip:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    upright = np.rot90(clip, rotation // 90, axes=(1, 2))
    with load_video(path) as video:
        assert video.frame_shape == upright.shape[1:3]
        np.testing.assert_array_equal(video.read(), upright)
        np.testing.assert_array_equal(video.read(5, 7), upright[5:7])


def test_grey_container_stays_grey(tmp_path: Path) -> None:
    clip = moving_square_clip(colour=False)
    path = write_container(tmp_path / "grey.avi", clip, "ffv1", "gray", Fraction(25))
    video, frames = read_all(path)
    assert not video.is_color and video.frame_rate == 25
    assert np.array_equal(frames, clip)


def test_lossy_mp4_reads_close_to_its_source(tmp_path: Path) -> None:
    clip = moving_square_clip()
    path = write_container(tmp_path / "lossy.mp4", clip, "libx264", "yuv420p", Fraction(24), crf="12")
    video, frames = read_all(path)
    assert video.num_frames == 12 and video.frame_rate == 24
    # H.264 in 4:2:0 is not lossless: each decoded frame must still be nearest its own source frame.
    errors = np.abs(frames[:, None].astype(int) - clip[None]).mean(axis=(2, 3, 4))
    assert errors.argmin(axis=1).tolist() == list(range(12))


def test_frame_folder_round_trip_in_natural_order(tmp_path: Path) -> None:
    clip = moving_square_clip(frames=11)
    folder = tmp_path / "frames"
    folder.mkdir()
    for t, frame in enumerate(clip):
        Image.fromarray(frame).save(folder / f"img_{t}.png")  # img_10 sorts after img_9
    (folder / "notes.txt").write_text("not a frame")
    assert is_video(folder)
    video, frames = read_all(folder)
    assert video.num_frames == 11 and video.frame_rate is None and video.is_color
    assert np.array_equal(frames, clip)


def test_jpeg_frame_folder_reads_close_to_its_source(tmp_path: Path) -> None:
    clip = moving_square_clip(frames=10, colour=False)
    folder = tmp_path / "jpegs"
    folder.mkdir()
    for t, frame in enumerate(clip):
        Image.fromarray(frame).save(folder / f"{t}.jpg", quality=95)
    video, frames = read_all(folder)
    assert video.num_frames == 10 and not video.is_color and frames.dtype == np.uint8
    # JPEG is lossy: each frame must be close to, and nearest, its own source frame.
    errors = np.abs(frames[:, None].astype(int) - clip[None]).mean(axis=(2, 3))
    assert errors.argmin(axis=1).tolist() == list(range(10)) and errors.diagonal().max() < 3

    # A frame cut short (a copy broken off) is named in the error, not only the folder.
    cut = (folder / "4.jpg").read_bytes()
    (folder / "4.jpg").write_bytes(cut[: len(cut) // 2])
    with pytest.raises(InputError) as error:
        read_all(folder)
    assert str(error.value).startswith(f"{folder / '4.jpg'}: cannot read (image file is truncated")


def test_a_picture_is_read_upright_as_its_exif_orientation_says(tmp_path: Path) -> None:
    """A phone or scanner stores a JPEG sideways with an EXIF orientation tag; viewers show it turned,
    and so does medsam2 (a mask drawn on what it read fits what the user sees)."""
    stored = np.zeros((20, 40), np.uint8)
    stored[:5, :5] = 255  # top left as stored
    picture = Image.fromarray(stored)
    exif = picture.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view"
    picture.save(tmp_path / "sideways.jpg", exif=exif, quality=100)
    upright = load_image(tmp_path / "sideways.jpg").array[0]
    assert upright.shape == (40, 20)
    assert upright[:5, -5:].mean() > 200 and upright[:5, :5].mean() < 50  # the mark is now top right


@pytest.mark.parametrize("colour", [False, True])
def test_cine_dicom_round_trip_with_frame_time_and_region_spacing(tmp_path: Path, colour: bool) -> None:
    clip = moving_square_clip(colour=colour)
    path = write_cine_dicom(tmp_path / "echo.dcm", clip, frame_time_ms=33.3333, region_cm=(0.025, 0.03))
    assert is_video(path)
    video, frames = read_all(path)
    assert video.is_color == colour and video.modality == "US"
    assert video.frame_rate == pytest.approx(30.0, rel=1e-5)
    assert video.pixel_spacing == pytest.approx((0.25, 0.3))  # cm -> mm, (x, y)
    assert np.array_equal(frames, clip)
    # Written without preamble and file meta, in a file without a suffix, as older machines do.
    dataset = pydicom.dcmread(path)
    dataset.preamble, dataset.file_meta = None, FileMetaDataset()
    dataset.save_as(tmp_path / "ECHO0001", implicit_vr=False, little_endian=True, enforce_file_format=False)
    assert is_video(tmp_path / "ECHO0001")
    assert np.array_equal(read_all(tmp_path / "ECHO0001")[1], clip)


def test_cine_dicom_pixel_spacing_and_cine_rate(tmp_path: Path) -> None:
    clip = moving_square_clip(colour=False)
    path = write_cine_dicom(tmp_path / "cine", clip, cine_rate=50, pixel_spacing=(0.4, 0.2))  # no .dcm suffix
    video, frames = read_all(path)
    assert video.frame_rate == 50 and video.pixel_spacing == pytest.approx((0.2, 0.4))
    assert np.array_equal(frames, clip) and video.frame_times is None and video.time_of(3) == pytest.approx(0.06)
    # A Frame Time Vector (ms since the previous frame) times each frame, unevenly if it says so.
    dataset = pydicom.dcmread(path)
    dataset.FrameTimeVector = [0] + [20] * 5 + [40] * 6
    dataset.save_as(path)
    with load_video(path) as timed:
        assert timed.time_of(5) == pytest.approx(0.1) and timed.time_of(11) == pytest.approx(0.34)


def test_cine_dicom_cut_short_is_refused_at_open(tmp_path: Path) -> None:
    """A broken-off copy was found only when propagation reached its last frames (after the model loaded)."""
    whole = write_cine_dicom(tmp_path / "echo.dcm", moving_square_clip(colour=False)).read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(whole[: len(whole) - 3000])
    with pytest.raises(InputError, match=r"cut.dcm: frame 12 of 12 cannot be read, the file is cut short or damaged \("):
        load_video(cut)


def test_nifti_2d_t_round_trip(tmp_path: Path) -> None:
    clip = moving_square_clip(colour=False)
    data = clip.transpose(2, 1, 0)[:, :, None, :]  # (t, y, x) -> (x, y, 1, t)
    image = nib.Nifti1Image(data, np.diag([0.3, 0.4, 1.0, 1.0]))
    image.header.set_zooms((0.3, 0.4, 1.0, 40.0))
    image.header.set_xyzt_units("mm", "msec")
    nib.save(image, tmp_path / "seq.nii.gz")
    assert is_video(tmp_path / "seq.nii.gz")
    video, frames = read_all(tmp_path / "seq.nii.gz")
    assert video.frame_rate == pytest.approx(25.0) and video.pixel_spacing == pytest.approx((0.3, 0.4))
    assert np.array_equal(frames, clip)


def test_a_nifti_clip_gets_an_overlay_at_its_frame_rate(tmp_path: Path) -> None:
    # pixdim is float32: its frame interval gave a float32 rate (24.999998) that the overlay's
    # Fraction refused with a TypeError
    clip = moving_square_clip(colour=False)
    image = nib.Nifti1Image(clip.transpose(2, 1, 0)[:, :, None, :], np.eye(4))
    image.header.set_zooms((1.0, 1.0, 1.0, 40.0))
    image.header.set_xyzt_units("mm", "msec")
    nib.save(image, tmp_path / "seq.nii.gz")
    with load_video(tmp_path / "seq.nii.gz") as video:
        assert video.frame_rate == 25.0
        with overlay_video_writer(tmp_path / "overlay.mp4", video, {1: "LV"}) as write:
            write(0, video.read(), labels_for(clip))
    back, _ = read_all(tmp_path / "overlay.mp4")
    assert back.num_frames == len(clip) and back.frame_rate == 25.0


def test_camus_half_sequence_reads_like_simpleitk_with_frame_rate_from_info(tmp_path: Path) -> None:
    clip = moving_square_clip(colour=False)
    image = sitk.GetImageFromArray(clip)  # (t, y, x) array -> a 3D (x, y, t) image, as CAMUS stores it
    image.SetSpacing((0.154, 0.308, 1.0))
    path = tmp_path / "patient0001_4CH_half_sequence.nii.gz"
    sitk.WriteImage(image, str(path))
    (tmp_path / "Info_4CH.cfg").write_text("ED: 1\nES: 12\nNbFrame: 12\nFrameRate: 28\n")
    assert is_video(path)
    video, frames = read_all(path)
    assert video.frame_rate == 28 and video.pixel_spacing == pytest.approx((0.154, 0.308))
    assert np.array_equal(frames, clip)
    assert np.array_equal(frames, load_image(path).array)  # same orientation as the scan reader


def test_scans_and_series_folders_are_not_videos(tmp_path: Path, ct_lesion_cases, write_dicom_series) -> None:
    assert not is_video(ct_lesion_cases[0])
    write_dicom_series(Volume(array=np.zeros((3, 16, 16), np.int16)), tmp_path / "series")
    assert not is_video(tmp_path / "series")
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 8, 8), np.int16)), str(tmp_path / "scan.nii.gz"))
    assert not is_video(tmp_path / "scan.nii.gz")
    # ... and a video read as a scan (a batch row, say) is told apart from a damaged scan.
    frames = tmp_path / "frames"
    frames.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(frames / "f0.png")
    one_line_error(lambda: load_image(frames), "frames: a folder of video frames, not a scan; `medsam2 segment` reads videos")
    write_container(tmp_path / "clip.mp4", moving_square_clip(), "libx264", "yuv420p", Fraction(25))
    one_line_error(lambda: load_image(tmp_path / "clip.mp4"), "clip.mp4: a video, not a scan")


# -- outputs -----------------------------------------------------------------------------------------


def labels_for(clip: np.ndarray) -> np.ndarray:
    labels = np.zeros(clip.shape[:3], dtype=np.uint8)
    labels[:, 10:22, 20:30] = 1
    labels[::2, 30:40, 40:60] = 2
    return labels


@pytest.mark.parametrize("target", ["masks.npz", "masks.nii.gz", "masks.nii", "mask_frames"])
def test_mask_writers_stream_chunks_and_read_back(tmp_path: Path, target: str) -> None:
    clip = moving_square_clip(colour=False)
    uneven = tuple(0.04 * t + 0.01 * (t % 3) for t in range(12))  # a variable frame rate's own times
    video = dataclasses.replace(video_from_array(clip, frame_rate=25.0, pixel_spacing=(0.5, 0.25)), frame_times=uneven)
    labels = labels_for(clip)
    path = tmp_path / target
    with mask_sequence_writer(path, video, np.uint8) as write:
        for start in range(0, 12, 5):
            write(labels[start : start + 5])
    assert np.array_equal(load_video_mask(path), labels)
    assert [entry.name for entry in tmp_path.iterdir()] == [target]  # no staging left behind
    if target == "masks.npz":
        with np.load(path) as npz:
            assert npz["frame_rate"] == 25.0 and npz["pixel_spacing"].tolist() == [0.5, 0.25]
            assert npz["frame_times"].tolist() == pytest.approx(uneven)
    if target.startswith("masks.nii"):
        header = nib.load(path).header
        assert nib.load(path).shape == (64, 48, 1, 12)
        assert header.get_zooms() == pytest.approx((0.5, 0.25, 1.0, 0.04))
        with load_video(path) as back:
            assert back.frame_rate == pytest.approx(25.0) and back.pixel_spacing == pytest.approx((0.5, 0.25))


def test_nifti_masks_of_a_nifti_video_mirror_its_layout(tmp_path: Path) -> None:
    clip = moving_square_clip(colour=False)
    image = sitk.GetImageFromArray(clip)
    image.SetSpacing((0.2, 0.3, 1.0))
    image.SetOrigin((5.0, -3.0, 0.0))
    sitk.WriteImage(image, str(tmp_path / "p_2CH_half_sequence.nii.gz"))
    labels = labels_for(clip)
    with load_video(tmp_path / "p_2CH_half_sequence.nii.gz") as video, mask_sequence_writer(tmp_path / "out.nii.gz", video, np.uint8) as write:
        write(labels)
    written = sitk.ReadImage(str(tmp_path / "out.nii.gz"))
    assert written.GetSize() == image.GetSize() and written.GetOrigin() == pytest.approx(image.GetOrigin())
    assert written.GetSpacing() == pytest.approx(image.GetSpacing())
    assert np.array_equal(sitk.GetArrayFromImage(written), labels)


def test_png_folder_masks_keep_the_frame_names_and_replace_an_old_folder(tmp_path: Path) -> None:
    clip = moving_square_clip(frames=3, colour=False)
    (tmp_path / "frames").mkdir()
    for t, frame in enumerate(clip):
        Image.fromarray(frame).save(tmp_path / "frames" / f"us_{t:03d}.jpg")
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.png").write_bytes(b"old")
    with load_video(tmp_path / "frames") as video, mask_sequence_writer(out, video, np.uint8) as write:
        write(labels_for(clip))
    assert sorted(p.name for p in out.iterdir()) == ["us_000.png", "us_001.png", "us_002.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames", "out"]


def test_a_failed_write_leaves_nothing(tmp_path: Path) -> None:
    video = video_from_array(moving_square_clip(colour=False))
    for target in ("m.npz", "m.nii.gz", "m_frames"):
        with pytest.raises(RuntimeError), mask_sequence_writer(tmp_path / target, video, np.uint8) as write:
            write(labels_for(moving_square_clip(colour=False))[:4])
            raise RuntimeError("decoding failed half-way")
    # A short sequence is never committed.
    with pytest.raises(ValueError, match="4 frames of masks written"), mask_sequence_writer(tmp_path / "short.npz", video, np.uint8) as write:
        write(np.zeros((4, 48, 64), np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_overlay_video_has_every_frame_at_the_input_rate_with_contours(tmp_path: Path) -> None:
    clip = moving_square_clip(frames=9, height=47, width=63, colour=False)  # odd sizes are padded
    labels = labels_for(clip)
    video = video_from_array(clip, frame_rate=12.5)
    path = tmp_path / "overlay.mp4"
    with overlay_video_writer(path, video, {1: "LV", 2: None}) as write:
        write(0, clip[:5], labels[:5])
        write(5, clip[5:], labels[5:])
    back, frames = read_all(path)
    scale = 11  # enlarged to at least 512 rows, then padded to even sizes
    assert back.num_frames == 9 and back.frame_rate == 12.5 and back.frame_shape == (47 * scale + 1, 63 * scale + 1)
    contour = frames[:, 10 * scale, 25 * scale].astype(int)  # top edge of object 1
    expected = np.asarray(LABEL_COLOURS[0])
    assert np.all(np.abs(contour - expected).max(axis=1) < 60), contour  # orange through limited-range 4:2:0


def test_a_variable_frame_rate_keeps_each_frames_time_through_to_the_overlay(tmp_path: Path) -> None:
    """A clip whose frames come at uneven times (a phone's recording, a paused stream): each frame
    keeps its time from the timestamps, and the overlay shows each at that time."""
    clip = moving_square_clip(frames=6)
    times = [0.0, 0.04, 0.08, 0.2, 0.4, 1.0]
    path = tmp_path / "uneven.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264rgb", rate=Fraction(25))
        stream.width, stream.height, stream.pix_fmt, stream.options = 64, 48, "rgb24", {"qp": "0"}
        stream.codec_context.time_base = Fraction(1, 1000)
        for frame, seconds in zip(clip, times):
            encoded = av.VideoFrame.from_ndarray(frame, format="rgb24")
            encoded.pts = round(seconds * 1000)
            container.mux(stream.encode(encoded))
        container.mux(stream.encode())
    with load_video(path) as video:
        assert video.frame_times == pytest.approx(times) and [video.time_of(i) for i in (3, 5)] == pytest.approx([0.2, 1.0])
        with overlay_video_writer(tmp_path / "overlay.mp4", video, {1: None}) as write:
            write(0, video.read(), labels_for(clip[..., 0]))
    with load_video(tmp_path / "overlay.mp4") as overlay:
        assert overlay.frame_times == pytest.approx(times)
    assert video_from_array(clip, frame_rate=12.5).time_of(5) == pytest.approx(0.4)  # untimed frames: by the rate


def test_area_table_and_plot(tmp_path: Path) -> None:
    write_table(tmp_path / "areas.csv", {"frame": [0, 1, 2], "area_px_1": [10, 12, 11]})
    assert (tmp_path / "areas.csv").read_text() == "frame,area_px_1\n0,10\n1,12\n2,11\n"
    save_curve_plot(tmp_path / "areas.png", np.arange(3), {"LV": np.array([10, 12, 11])}, x_label="frame", y_label="px", markers={"ED": [1], "ES": [0]})
    with Image.open(tmp_path / "areas.png") as plot:
        assert plot.size == (960, 480)


# -- damaged input -----------------------------------------------------------------------------------


def one_line_error(call, *fragments: str) -> str:
    with pytest.raises(InputError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_damaged_and_empty_videos_give_one_line_errors(tmp_path: Path) -> None:
    (tmp_path / "noise.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    one_line_error(lambda: load_video(tmp_path / "noise.mp4"), "noise.mp4", "cannot read")
    good = write_container(tmp_path / "good.mp4", moving_square_clip(), "libx264", "yuv420p", Fraction(25))
    (tmp_path / "cut.mp4").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    one_line_error(lambda: load_video(tmp_path / "cut.mp4"), "cut.mp4")
    write_container(tmp_path / "empty.mp4", moving_square_clip()[:0], "libx264", "yuv420p", Fraction(25))
    one_line_error(lambda: load_video(tmp_path / "empty.mp4"), "empty.mp4", "no video stream")  # MP4 drops an empty track
    (tmp_path / "empty_folder").mkdir()
    one_line_error(lambda: load_video(tmp_path / "empty_folder"), "no frames")


def test_dicom_without_pixel_data_and_mismatched_frames(tmp_path: Path) -> None:
    path = write_cine_dicom(tmp_path / "header_only.dcm", None, frame_time_ms=20)
    one_line_error(lambda: load_video(path), "header_only.dcm", "no pixel data")
    folder = tmp_path / "frames"
    folder.mkdir()
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(folder / "f0.png")
    Image.fromarray(np.zeros((20, 31), np.uint8)).save(folder / "f1.png")
    # Sizes are checked on opening (before a run prints or computes anything), upright by EXIF.
    one_line_error(lambda: load_video(folder), "f1.png", "frame of shape (20, 31), but the first frame's is (20, 30)")
    sideways = Image.fromarray(np.zeros((30, 20), np.uint8))
    exif = sideways.getexif()
    exif[0x0112] = 6  # viewed turned a quarter: 20 rows of 30
    sideways.save(folder / "f1.png", exif=exif)
    with load_video(folder) as video:
        assert video.read().shape == (2, 20, 30)
    # A colour frame among grey ones has their size: found when it is read (the last frame at open).
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(folder / "f1.png")
    one_line_error(lambda: load_video(folder), "f1.png", "frame of shape (20, 30, 3), but the first frame's is (20, 30)")
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(folder / "f2.png")
    with load_video(folder) as video:
        one_line_error(lambda: video.read(), "f1.png", "frame of shape (20, 30, 3), but the first frame's is (20, 30)")


def test_mask_sequences_must_be_label_maps(tmp_path: Path) -> None:
    np.savez(tmp_path / "truth.npz", imgs=np.zeros((3, 4, 4), np.uint8), gts=np.ones((3, 4, 4), np.float32))
    labels = load_video_mask(tmp_path / "truth.npz")
    assert labels.dtype == np.int32 and labels.shape == (3, 4, 4) and labels.min() == 1
    np.savez(tmp_path / "soft.npz", segs=np.full((2, 4, 4), 0.5))
    one_line_error(lambda: load_video_mask(tmp_path / "soft.npz"), "soft.npz", "non-integer")
    np.savez(tmp_path / "image.npz", imgs=np.zeros((2, 4, 4), np.uint8))
    one_line_error(lambda: load_video_mask(tmp_path / "image.npz"), "image.npz", "'segs' or 'gts'")
    Image.fromarray(moving_square_clip(frames=1)[0]).save(tmp_path / "colour.png")
    one_line_error(lambda: load_video_mask(tmp_path / "colour.png"), "colour.png", "colour")
    colour_clip = write_container(tmp_path / "colour.avi", moving_square_clip(frames=2), "ffv1", "bgr0", Fraction(25))
    one_line_error(lambda: load_video_mask(colour_clip), "colour.avi", "colour video")
    one_line_error(lambda: load_video_mask(tmp_path / "missing.nii.gz"), "missing.nii.gz", "no such")


@pytest.mark.parametrize(("name", "codec", "pixel_format"), [("clip.avi", "ffv1", "gray"), ("clip.avi", "mjpeg", "yuvj420p"), ("clip.mp4", "libx264", "yuv420p"), ("clip.mkv", "ffv1", "gray")])
def test_a_video_cut_short_is_refused_at_open_or_read_whole(tmp_path: Path, name: str, codec: str, pixel_format: str) -> None:
    """A copy broken off anywhere: the file is refused when opened, in one line saying it is cut
    short or damaged (an AVI with its last frame cut passed `info` and failed mid-run; one without
    its index lost frames silently; an MP4 without the header naming its codec was a traceback), or
    every frame it says it has reads. A Matroska file keeps no frame count: its duration tells (it
    read the frames left, and could not seek back: "Operation not permitted")."""
    frames = np.random.default_rng(0).integers(0, 255, (12, 48, 64)).astype(np.uint8)
    whole = write_container(tmp_path / name, frames if pixel_format == "gray" else np.repeat(frames[..., None], 3, -1), codec, pixel_format, Fraction(25))
    data = whole.read_bytes()
    cut = tmp_path / f"cut_{name}"
    refused, read_whole = [], []
    for fraction in np.linspace(0.1, 0.99, 25):
        cut.write_bytes(data[: int(len(data) * fraction)])
        try:
            with load_video(cut) as video:
                assert len(video.read()) == video.num_frames
                read_whole.append(video.num_frames)
        except InputError as error:
            assert "\n" not in str(error) and str(error).startswith(str(cut))
            refused.append(str(error))
    # (an MP4 cut inside its index may keep no stream: it reads as the audio-only file it may be)
    assert len(refused) >= 20 and all("cut short or damaged" in reason or "no video stream" in reason for reason in refused)
    assert all(count == 12 for count in read_whole) or name.endswith(".mkv") and min(read_whole) == 11  # one frame's loss: no telling
    if name.endswith(".avi"):
        assert any("holds 7 of the 12 frames its header declares" in reason for reason in refused)
    if name.endswith(".mkv"):  # no frame count in its header: its duration tells
        assert any("its frames end 0.20 s before the 0.48 s its header declares" in reason for reason in refused)


def test_an_animated_gif_reads_as_a_video(tmp_path: Path) -> None:
    frames = [np.full((48, 64), 50 * t, np.uint8) for t in range(4)]
    pictures = [Image.fromarray(frame) for frame in frames]
    pictures[0].save(tmp_path / "loop.gif", save_all=True, append_images=pictures[1:], duration=100, loop=0)
    assert is_video(tmp_path / "loop.gif")
    with load_video(tmp_path / "loop.gif") as video:
        assert video.shape == (4, 48, 64) and video.frame_rate == 10
        np.testing.assert_array_equal(np.asarray(video.read())[..., 0], np.stack(frames))  # palette colours: grey as RGB


def test_a_gif_at_a_rate_its_centisecond_delays_round_gives_the_rate_of_its_frame_times(tmp_path: Path) -> None:
    # 15 fps is stored as delays of 7 and 6 cs; FFmpeg's rate (50/3 fps, from one delay) put 0.06 s
    # between frames in the NIfTI masks while their frame_times said 0.0667 s
    frames = np.stack([np.full((32, 48, 3), 20 * t, np.uint8) for t in range(10)])
    write_container(tmp_path / "clip.gif", frames, "gif", "rgb8", Fraction(15))
    with load_video(tmp_path / "clip.gif") as video:
        assert video.frame_rate == pytest.approx(15, rel=0.01)
        assert video.frame_rate == pytest.approx((video.num_frames - 1) / video.frame_times[-1])
