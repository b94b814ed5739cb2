"""Frames per second and peak memory of video segmentation on the CPU, embedded LiteMedSAM.

A synthetic 512x512 clip (a bright disc circling and pulsing on ultrasound-like speckle; its truth
is known) is written as an H.264 MP4, prompted with one box on its middle frame, segmented forward
and backward, and written out as `medsam2 segment` does (npz masks, overlay MP4, area CSV and plot).
Each clip length runs in a fresh process, whose peak resident memory is read from the kernel, so
the figures show how memory grows, or does not, with the number of frames.

The reference is Meta's SAM 2 video predictor, which MedSAM2 uses: `init_state` loads and normalises
every frame up front, as float32 at the model's input size, and keeps the features it computes, so
its memory grows with the clip. Its frame store alone is computed (not run) for MedSAM2's 512 px
input: 3 x 512 x 512 x 4 bytes = 3 MiB a frame.

    python benchmarks/video_speed.py [--frames 2000 500] [--chunk-frames 128] [--size 512]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from scipy import ndimage

REFERENCE_BYTES_PER_FRAME = 3 * 512 * 512 * 4  # MedSAM2: RGB float32 at 512 x 512


def disc(index: int, size: int) -> tuple[float, float, float]:
    """Centre (row, column) and radius of the disc on frame `index`."""
    angle = 2 * np.pi * index / 90
    return size / 2 + size / 5 * np.sin(angle), size / 2 + size / 5 * np.cos(angle), size / 9 * (1 + 0.15 * np.sin(2 * np.pi * index / 30))


def frame_and_truth(index: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(index)
    cy, cx, radius = disc(index, size)
    rows, cols = np.ogrid[:size, :size]
    truth = (rows - cy) ** 2 + (cols - cx) ** 2 <= radius**2
    speckle = ndimage.gaussian_filter(rng.rayleigh(1.0, (size, size)), 1.2)
    image = 55 + 20 * speckle
    image[truth] = 165 + 30 * speckle[truth]
    return np.clip(image, 0, 255).astype(np.uint8), truth


def write_clip(path: Path, frames: int, size: int) -> None:
    """The clip as H.264, generated and encoded frame by frame."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(30))
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}
        for index in range(frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame_and_truth(index, size)[0], format="gray")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def measure(frames: int, size: int, chunk_frames: int) -> dict:
    """One run in this process: segment and write a clip of `frames` frames; figures as a dict."""
    from medsam2.cli.video import VideoRequest, write_outputs
    from medsam2.engine.models import load_predictor
    from medsam2.engine.prompts import Prompt, box_from_mask
    from medsam2.engine.video import VideoConfig, segment_video
    from medsam2.io.video import load_video
    from medsam2.metrics import dice

    with tempfile.TemporaryDirectory() as folder:
        clip = Path(folder) / "clip.mp4"
        write_clip(clip, frames, size)
        predictor = load_predictor("lite-medsam")
        middle = frames // 2
        prompt = Prompt(middle, 1, box=box_from_mask(frame_and_truth(middle, size)[1]))
        config = VideoConfig(chunk_frames=chunk_frames)
        request = VideoRequest(clip, Path(folder) / "masks.npz", overlay=Path(folder) / "overlay.mp4", areas=Path(folder) / "areas.csv", config=config)
        start = time.perf_counter()
        with load_video(clip) as video, segment_video(video, [prompt], predictor, config, progress=False) as segmentation:
            write_outputs(segmentation, request)
            seconds = time.perf_counter() - start
            scores = [
                dice(labels[offset] == 1, frame_and_truth(first + offset, size)[1])
                for first, _, labels in segmentation.chunks()
                for offset in range(len(labels))
            ]
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"frames": frames, "seconds": seconds, "peak_mib": peak_mib, "min_dice": min(scores), "mean_dice": float(np.mean(scores))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, nargs="+", default=[2000], help="clip lengths, one fresh process each")
    parser.add_argument("--size", type=int, default=512, help="frame width and height")
    parser.add_argument("--chunk-frames", type=int, default=128, help="VideoConfig.chunk_frames (frames per window)")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a child process: one length
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.frames[0], args.size, args.chunk_frames)))
        return
    import torch

    print(f"{args.size}x{args.size} synthetic clip, H.264; chunk_frames {args.chunk_frames}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'frames':>7} {'seconds':>9} {'frames/s':>9} {'peak RSS MiB':>13} {'Dice min/mean':>14} {'reference frame store MiB':>26}")
    for frames in args.frames:
        command = [sys.executable, __file__, "--one", "--frames", str(frames), "--size", str(args.size), "--chunk-frames", str(args.chunk_frames)]
        figures = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        reference = frames * REFERENCE_BYTES_PER_FRAME / 2**20
        print(
            f"{frames:>7} {figures['seconds']:>9.1f} {frames / figures['seconds']:>9.2f} {figures['peak_mib']:>13.0f} "
            f"{figures['min_dice']:>6.3f}/{figures['mean_dice']:.3f} {reference:>26.0f}"
        )


if __name__ == "__main__":
    main()
