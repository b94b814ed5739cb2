"""Frames per second and peak memory of video segmentation, embedded LiteMedSAM, on the CPU (all
its cores) or a CUDA GPU.

A synthetic clip (a bright disc circling and pulsing on ultrasound-like speckle; its truth is known)
is written once, as an H.264 MP4 when PyAV is installed or else as a folder of PNG frames (both are
inputs users give `medsam2 segment`, read frame range by frame range), prompted with one box on its
middle frame, segmented forward and backward, and written out as `medsam2 segment` does (npz masks,
area CSV and plot, and the overlay MP4 when PyAV is installed). Each row (clip length x device) runs
in a fresh process, whose peak resident memory is read from the kernel, so the figures show how
memory grows, or does not, with the number of frames; on CUDA the peak GPU memory torch allocated
is shown too.

The reference is Meta's SAM 2 video predictor, which MedSAM2 uses: `init_state` loads and normalises
every frame up front, as float32 at the model's input size, and keeps the features it computes, so
its memory grows with the clip. Its frame store alone is computed (not run) for MedSAM2's 512 px
input: 3 x 512 x 512 x 4 bytes = 3 MiB a frame.

    python benchmarks/video_speed.py [--frames 2000 500] [--device cpu cuda] [--precision fp32|bf16]
                                     [--chunk-frames 128] [--size 512] [--clip mp4|png] [--threads N]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from functools import partial
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from common import checked_device
from PIL import Image
from scipy import ndimage

REFERENCE_BYTES_PER_FRAME = 3 * 512 * 512 * 4  # MedSAM2: RGB float32 at 512 x 512
HAVE_PYAV = importlib.util.find_spec("av") is not None


def disc(index: int, size: int) -> tuple[float, float, float]:
    """Centre (row, column) and radius of the disc on frame `index`."""
    angle = 2 * np.pi * index / 90
    return size / 2 + size / 5 * np.sin(angle), size / 2 + size / 5 * np.cos(angle), size / 9 * (1 + 0.15 * np.sin(2 * np.pi * index / 30))


def truth(index: int, size: int) -> np.ndarray:
    cy, cx, radius = disc(index, size)
    rows, cols = np.ogrid[:size, :size]
    return (rows - cy) ** 2 + (cols - cx) ** 2 <= radius**2


def frame(index: int, size: int) -> np.ndarray:
    """Frame `index`: the disc, brighter, over speckle (its own random stream, so frames can be made
    in any order and in parallel)."""
    speckle = ndimage.gaussian_filter(np.random.default_rng(index).rayleigh(1.0, (size, size)), 1.2)
    inside = truth(index, size)
    image = 55 + 20 * speckle
    image[inside] = 165 + 30 * speckle[inside]
    return np.clip(image, 0, 255).astype(np.uint8)


def save_png_frame(index: int, folder: Path, size: int) -> None:
    Image.fromarray(frame(index, size)).save(folder / f"frame_{index:05d}.png", compress_level=1)


def write_clip(folder: Path, kind: str, frames: int, size: int, workers: int) -> Path:
    """The clip as H.264 (encoded as frames are made) or a PNG folder; frames made by `workers`
    processes."""
    with Pool(workers) as pool:
        if kind == "png":
            clip = folder / "frames"
            clip.mkdir()
            pool.map(partial(save_png_frame, folder=clip, size=size), range(frames), chunksize=16)
            return clip
        import av

        clip = folder / "clip.mp4"
        with av.open(str(clip), "w") as container:
            stream = container.add_stream("libx264", rate=Fraction(30))
            stream.width = stream.height = size
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": "18", "preset": "veryfast"}
            for image in pool.imap(partial(frame, size=size), range(frames), chunksize=16):
                for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="gray")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        return clip


def measure(clip: Path, frames: int, size: int, chunk_frames: int, device: str, precision: str | None, threads: int) -> dict:
    """One row in this process: segment `clip` and write the outputs; figures as a dict."""
    import torch

    from medsam2.cli.video import VideoRequest, write_outputs
    from medsam2.engine.models import load_predictor
    from medsam2.engine.prompts import Prompt, box_from_mask
    from medsam2.engine.video import VideoConfig, segment_video
    from medsam2.io.video import load_video
    from medsam2.metrics import dice

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as folder:
        predictor = load_predictor("lite-medsam", device=device, precision=precision)
        middle = frames // 2
        prompt = Prompt(middle, 1, box=box_from_mask(truth(middle, size)))
        config = VideoConfig(chunk_frames=chunk_frames)
        overlay = Path(folder) / "overlay.mp4" if HAVE_PYAV else None
        request = VideoRequest(clip, Path(folder) / "masks.npz", overlay=overlay, areas=Path(folder) / "areas.csv", config=config)
        start = time.perf_counter()
        with load_video(clip) as video, segment_video(video, [prompt], predictor, config, progress=False) as segmentation:
            segmented = time.perf_counter() - start
            write_outputs(segmentation, request)
            seconds = time.perf_counter() - start
            scores = [
                dice(segmentation.labels(index, index + 1)[0] == 1, truth(index, size)) for index in range(frames)
            ]
    figures = {
        "seconds": seconds,
        "segment_seconds": segmented,
        "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
        "min_dice": min(scores),
        "mean_dice": float(np.mean(scores)),
        "precision": predictor.precision,
    }
    if device.startswith("cuda"):
        figures["gpu_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return figures


def describe(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, nargs="+", default=[2000], help="clip lengths, one clip and fresh process each")
    parser.add_argument("--device", nargs="+", default=["cpu"], help="cpu and/or cuda[:N], one row each")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default=None, help="image encoder precision (default: the model's, fp32)")
    parser.add_argument("--size", type=int, default=512, help="frame width and height")
    parser.add_argument("--chunk-frames", type=int, default=128, help="VideoConfig.chunk_frames (frames per window)")
    parser.add_argument("--clip", choices=["mp4", "png"], default="mp4" if HAVE_PYAV else "png", help="H.264 MP4 (needs PyAV) or a PNG folder")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads (default: every core)")
    parser.add_argument("--one", type=Path, help=argparse.SUPPRESS)  # a child process: one row, this clip
    args = parser.parse_args()
    if args.clip == "mp4" and not HAVE_PYAV:
        parser.error("--clip mp4 needs PyAV (pip install av); use --clip png")
    if args.one is not None:
        figures = measure(args.one, args.frames[0], args.size, args.chunk_frames, args.device[0], args.precision, args.threads)
        print(json.dumps(figures))
        return
    import torch

    for device in args.device:
        checked_device(device)

    print(
        f"{args.size}x{args.size} synthetic clip as {'H.264 MP4' if args.clip == 'mp4' else 'a PNG folder'}; chunk_frames "
        f"{args.chunk_frames}; torch {torch.__version__}, {args.threads} threads on {len(os.sched_getaffinity(0))} cores; "
        f"outputs: npz, CSV, plot{', overlay MP4' if HAVE_PYAV else ' (no overlay: PyAV not installed)'}",
        flush=True,
    )
    print(
        f"{'device':<28} {'precision':>9} {'frames':>7} {'seconds':>9} {'of which segmenting':>20} {'frames/s':>9} {'peak RSS MiB':>13} {'peak GPU MiB':>13} "
        f"{'Dice min/mean':>14} {'reference frame store MiB':>26}",
        flush=True,
    )
    for frames in args.frames:
        with tempfile.TemporaryDirectory() as folder:
            clip = write_clip(Path(folder), args.clip, frames, args.size, args.threads)
            for device in args.device:
                command = [
                    sys.executable, __file__, "--one", str(clip), "--frames", str(frames), "--device", device, "--size", str(args.size),
                    "--chunk-frames", str(args.chunk_frames), "--threads", str(args.threads), "--clip", args.clip,
                ]
                if args.precision:
                    command += ["--precision", args.precision]
                child = subprocess.run(command, capture_output=True, text=True, check=False)  # a failed row is reported, the others run
                if child.returncode != 0:
                    print(f"{device} {frames} frames failed:\n{child.stderr[-3000:]}", flush=True)
                    continue
                figures = json.loads(child.stdout.strip().splitlines()[-1])
                reference = frames * REFERENCE_BYTES_PER_FRAME / 2**20
                gpu = f"{figures['gpu_peak_mib']:.0f}" if "gpu_peak_mib" in figures else "-"
                print(
                    f"{describe(device):<28} {figures['precision']:>9} {frames:>7} {figures['seconds']:>9.1f} {figures['segment_seconds']:>20.1f} {frames / figures['seconds']:>9.2f} "
                    f"{figures['peak_mib']:>13.0f} {gpu:>13} {figures['min_dice']:>6.3f}/{figures['mean_dice']:.3f} {reference:>26.0f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
