"""Slices per second for a whole volume on the CPU: medsam2's pipeline vs the reference loop.

Both segment every slice of the shared CT lesion cases with a box (the ground-truth box where the
lesion is, a fixed central box elsewhere), so both do the same work:

- reference: the LiteMedSAM reference procedure, one slice at a time (preprocess, encode, decode),
  with the network as published (unfolded BatchNorm), the same numerics as the packaged code;
- medsam2: `LiteMedSAMPredictor` as the engine uses it: slices preprocessed and encoded in
  batches with BatchNorm folded into the convolutions, then decoded.

The masks of the two are compared too (they must agree: the optimisations are exact up to float
rounding).

    python benchmarks/speed_cpu.py [--repeats 2] [--batch 8]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from common import ct_lesion_cases
from medsam2.engine.models import LiteMedSAMPredictor, load_predictor
from medsam2.engine.prompts import box_from_mask
from medsam2.io import load_image
from medsam2.io.masks import stored_array
from medsam2.metrics import dice
from medsam2.models.lite_medsam import load_lite_medsam


def boxes_for(truth: np.ndarray) -> list[tuple[float, float, float, float]]:
    height, width = truth.shape[1:]
    central = (width * 0.4, height * 0.4, width * 0.6, height * 0.6)
    return [box_from_mask(plane) if plane.any() else central for plane in truth]


def reference_loop(predictor: LiteMedSAMPredictor, slices: np.ndarray, boxes) -> np.ndarray:
    masks = []
    for plane, box in zip(slices, boxes):
        embedding = predictor.encode(plane[None])[0]
        masks.append(predictor.predict(embedding, plane.shape[:2], box=box).logits > 0)
    return np.stack(masks)


def medsam2_pipeline(predictor: LiteMedSAMPredictor, slices: np.ndarray, boxes) -> np.ndarray:
    embeddings = predictor.encode(slices)
    return np.stack([predictor.predict(e, slices.shape[1:3], box=b).logits > 0 for e, b in zip(embeddings, boxes)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each (the best is kept)")
    parser.add_argument("--batch", type=int, default=2, help="medsam2's encoder batch size")
    args = parser.parse_args()
    reference = LiteMedSAMPredictor(load_lite_medsam(optimize=False), torch.device("cpu"), encode_batch=1)
    cases = []
    for path in ct_lesion_cases():
        volume = load_image(path)
        cases.append((volume.array, boxes_for(stored_array(volume, "gts") > 0)))
    total = sum(len(slices) for slices, _ in cases)
    print(f"{total} slices of 512x512 in {len(cases)} volumes; torch {torch.__version__}, {torch.get_num_threads()} threads")
    timings = {}
    outputs = {}
    # The reference runs first: `load_predictor` tunes the allocator for the whole process.
    for name, run in (("reference per-slice loop", reference_loop), ("medsam2", medsam2_pipeline)):
        predictor = reference if name != "medsam2" else load_predictor("lite-medsam")
        predictor.encode_batch = args.batch if name == "medsam2" else 1
        run(predictor, cases[0][0][:2], cases[0][1][:2])  # warm-up
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            outputs[name] = [run(predictor, slices, boxes) for slices, boxes in cases]
            best = min(best, time.perf_counter() - start)
        timings[name] = best
    print(f"{'pipeline':<26} {'seconds':>8} {'slices/s':>9}")
    for name, seconds in timings.items():
        print(f"{name:<26} {seconds:8.2f} {total / seconds:9.2f}")
    speedup = timings["reference per-slice loop"] / timings["medsam2"]
    agreement = min(dice(a, b) for a, b in zip(*outputs.values()) if a.any() or b.any())
    print(f"speed-up {speedup:.2f}x (target >= 3x); lowest per-volume Dice between the two: {agreement:.5f}")


if __name__ == "__main__":
    main()
