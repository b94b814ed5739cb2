"""SAM 2.1 propagation: frames per second and peak memory, medsam2 vs Meta's video predictor.

Both run the same random weights (hiera-tiny, 512 px by default; speed does not depend on the
values), on the same synthetic video (a disk drifting over a textured background, read from the JPEG
folder Meta's predictor needs), from the same box on frame 0, forward to the last frame:

- meta: `sam2==1.1.0`'s `SAM2VideoPredictor` as `build_sam2_video_predictor` makes it (hole filling
  off: its compiled extension is not built); frames loaded by its `init_state` (not timed; the
  frame-0 features it caches are dropped, so that frame is encoded in the timed run as ours is);
- medsam2: `Session` with `SAM2Predictor`: frames encoded in batches, a bounded memory bank.

Timed: from the prompt to the last frame's mask on the host. With `--warm-up` each first propagates
untimed through `WARM_UP_FRAMES` frames (long enough for the memory bank to fill), so that CUDA's
first-use costs (and our compilation, with `--compile`) stay out of the figures. Each
(implementation, length, precision) runs in a process of its own, so each peak memory is its own:
peak GPU memory allocated by torch on CUDA, peak resident memory of the process on CPU. With `fp32`
the masks of the two must be identical.

    python benchmarks/sam2_speed.py                     # 200 and 800 frames; CUDA (bf16 and fp32) if present
    python benchmarks/sam2_speed.py --frames 20 40      # shorter, for a CPU
    python benchmarks/sam2_speed.py --warm-up --compile # steady state; ours compiled
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from common import checked_device, image_size

META_CONFIGS = {"tiny": "t", "small": "s", "base-plus": "b+", "large": "l"}
VIDEO_SIZE = 512  # frames of 512 x 512 pixels, whatever the model's image size
BOX = (40.0, 200.0, 170.0, 330.0)  # around the disk on frame 0, in video pixels
WARM_UP_FRAMES = 17  # SAM 2's bank is full from the 17th frame: 16 object pointers


def write_video(folder: Path, num_frames: int, size: int = VIDEO_SIZE) -> None:
    """`num_frames` JPEG frames of a disk drifting right and down over a textured background."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    background = 60 + 25 * np.sin(xx / 17.0) * np.cos(yy / 29.0) + rng.normal(0, 8, xx.shape)
    folder.mkdir(parents=True)
    for t in range(num_frames):
        cx, cy = 105 + (t % 200) * 1.5, 265 + (t % 120) * 0.5
        frame = np.where((xx - cx) ** 2 + (yy - cy) ** 2 < 60**2, 190 + rng.normal(0, 8, xx.shape), background)
        grey = np.clip(frame, 0, 255).astype(np.uint8)
        Image.fromarray(np.stack([grey] * 3, axis=-1)).save(folder / f"{t:05d}.jpg", quality=95)


def build_meta(variant: str, image_size: int, device: str, checkpoint: Path | None = None):
    from sam2.build_sam import build_sam2_video_predictor

    model = build_sam2_video_predictor(
        f"configs/sam2.1/sam2.1_hiera_{META_CONFIGS[variant]}.yaml",
        ckpt_path=None if checkpoint is None else str(checkpoint),
        device=device,
        hydra_overrides_extra=[f"++model.image_size={image_size}"],
    )
    model.fill_hole_area = 0
    return model


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_meta(args: argparse.Namespace, num_frames: int) -> np.ndarray:
    meta = build_meta(args.variant, args.image_size, args.device, args.checkpoint)
    masks = np.zeros((num_frames, VIDEO_SIZE, VIDEO_SIZE), dtype=bool)
    autocast = torch.autocast(torch.device(args.device).type, dtype=torch.bfloat16, enabled=args.precision == "bf16")
    with torch.inference_mode(), autocast:
        state = meta.init_state(str(args.frames_dir))
        if args.warm_up:
            meta.add_new_points_or_box(state, 0, 1, box=list(BOX))
            for _ in meta.propagate_in_video(state, max_frame_num_to_track=WARM_UP_FRAMES - 1):
                pass
            meta.reset_state(state)
        # init_state encodes frame 0 ahead (a cache of one frame): leave that to the timed run, as ours
        state["cached_features"].clear()
        start(args)
        meta.add_new_points_or_box(state, 0, 1, box=list(BOX))
        for frame, _, logits in meta.propagate_in_video(state):
            masks[frame] = (logits[0, 0] > 0).cpu().numpy()
    return masks


def run_ours(args: argparse.Namespace, num_frames: int) -> np.ndarray:
    from medsam2.engine.sam2_predictor import SAM2Predictor
    from medsam2.engine.session import Session
    from medsam2.models.sam2 import SAM2Config, load_sam2

    frames = np.stack([np.asarray(Image.open(path).convert("RGB")) for path in sorted(args.frames_dir.glob("*.jpg"))])
    model = load_sam2(args.checkpoint, SAM2Config(image_size=args.image_size), args.device)
    predictor = SAM2Predictor(
        model, args.device, resample="bicubic", precision=args.precision, encode_batch=args.encode_batch, compiled=args.compile
    )
    if args.warm_up:
        predictor.warm_up(WARM_UP_FRAMES)
    session = Session(frames, predictor)
    start(args)
    session.add_prompt(0, 1, box=BOX)
    session.propagate("forward", progress=False)
    empty = np.zeros(frames.shape[1:3], dtype=bool)
    return np.stack([session.objects[1].masks.get(index, empty) for index in range(num_frames)])


def start(args: argparse.Namespace) -> None:
    """Start the clock (and the peak-memory count on CUDA) once the model and frames are loaded."""
    synchronize(args.device)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    args.started = time.perf_counter()


def worker(args: argparse.Namespace) -> None:
    """One measurement, in this process; prints a JSON line."""
    # Both implementations' libraries are loaded in every worker, so that on a CPU the peak resident
    # memory compares the work and not the import footprints.
    import sam2.build_sam  # noqa: F401
    import medsam2.engine.session  # noqa: F401

    if args.precision == "fp32":
        # The fp32 reference in full fp32: cuDNN's default TF32 convolutions round differently with
        # the batch size, and we encode frames in batches where Meta encodes one at a time.
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    num_frames = len(list(args.frames_dir.glob("*.jpg")))
    masks = (run_meta if args.implementation == "meta" else run_ours)(args, num_frames)
    synchronize(args.device)
    seconds = time.perf_counter() - args.started
    if args.device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    np.save(args.masks, np.packbits(masks))
    print(json.dumps({"fps": num_frames / seconds, "peak_mib": peak, "frames_with_mask": int(masks.any(axis=(1, 2)).sum())}))


def measure(args: argparse.Namespace, implementation: str, folder: Path, precision: str, masks: Path) -> dict:
    command = [
        sys.executable, __file__, "--worker", implementation, "--frames-dir", str(folder), "--checkpoint", str(args.checkpoint),
        "--device", args.device, "--precision", precision, "--image-size", str(args.image_size),
        "--variant", args.variant, "--masks", str(masks),
    ] + ([] if args.encode_batch is None else ["--encode-batch", str(args.encode_batch)])  # fmt: skip
    command += [flag for flag, wanted in (("--warm-up", args.warm_up), ("--compile", args.compile)) if wanted]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{implementation} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def read_masks(path: Path, shape: tuple[int, int, int]) -> np.ndarray:
    """The boolean masks a worker saved (bit-packed) at `path`."""
    return np.unpackbits(np.load(path))[: np.prod(shape)].reshape(shape).astype(bool)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, nargs="+", default=[200, 800], help="sequence lengths")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", nargs="+", choices=["fp32", "bf16"], help="default: bf16 and fp32 on CUDA, fp32 on CPU")
    parser.add_argument("--image-size", type=image_size, default=512)
    parser.add_argument("--variant", choices=list(META_CONFIGS), default="tiny")
    parser.add_argument(
        "--encode-batch", type=int, help="frames our encoder takes at once (default: the predictor's, 8 on CUDA, 1 on CPU); "
        "Meta's encodes one: 1 tells whether batching alone makes fp32 masks differ"
    )
    parser.add_argument("--warm-up", action="store_true", help=f"both propagate {WARM_UP_FRAMES} frames untimed first")
    parser.add_argument("--compile", action="store_true", help="ours compiled: the per-frame step, and on a GPU the encoder, as CUDA graphs; use with --warm-up")
    parser.add_argument("--worker", choices=["meta", "ours"], dest="implementation", help=argparse.SUPPRESS)
    parser.add_argument("--frames-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--masks", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    checked_device(args.device)
    if args.implementation:
        args.precision = args.precision[0]
        worker(args)
        return
    precisions = args.precision or (["bf16", "fp32"] if args.device.startswith("cuda") else ["fp32"])
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        torch.manual_seed(0)
        meta = build_meta(args.variant, args.image_size, "cpu")
        with torch.no_grad():  # objects present on every frame, so both track the whole way
            meta.sam_mask_decoder.pred_obj_score_head.layers[2].bias += 5.0
        args.checkpoint = work / "random.pt"
        torch.save({"model": meta.state_dict()}, args.checkpoint)
        del meta
        device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} thread(s)"
        settings = "".join(note for note, wanted in ((", warmed up", args.warm_up), (", ours compiled", args.compile)) if wanted)
        print(f"SAM 2.1 hiera-{args.variant}, {args.image_size} px, one object, forward propagation{settings}; {device_name}")
        print(f"{'frames':>6} {'precision':>9} | {'Meta fps':>8} {'ours fps':>8} {'speed-up':>8} | "
              f"{'Meta peak MiB':>13} {'ours peak MiB':>13} | masks")  # fmt: skip
        for num_frames in args.frames:
            folder = work / f"video_{num_frames}"
            write_video(folder, num_frames)
            for precision in precisions:
                meta_masks, our_masks = work / "meta_masks.npy", work / "our_masks.npy"
                meta_result = measure(args, "meta", folder, precision, meta_masks)
                our_result = measure(args, "ours", folder, precision, our_masks)
                shape = (num_frames, VIDEO_SIZE, VIDEO_SIZE)
                different = read_masks(meta_masks, shape) != read_masks(our_masks, shape)
                where = f"{int(different.any(axis=(1, 2)).sum())} frames, {int(different.sum())} pixels differ"
                verdict = "identical" if not different.any() else (f"DIFFERENT: {where}" if precision == "fp32" else f"bf16: {where}")
                print(
                    f"{num_frames:>6} {precision:>9} | {meta_result['fps']:>8.2f} {our_result['fps']:>8.2f} "
                    f"{our_result['fps'] / meta_result['fps']:>7.2f}x | {meta_result['peak_mib']:>13.0f} "
                    f"{our_result['peak_mib']:>13.0f} | {verdict}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
