"""LiteMedSAM in bf16 vs fp32 on one device: encoder time per slice and mask agreement.

On each shared CT lesion case the slices that hold the lesion are encoded by the predictor in fp32 and
in bf16 (CPU: a bfloat16 encoder copy; CUDA: bf16 autocast), then decoded from the ground-truth box;
prints the best encoding time of each (repeats alternating) and the Dice between their masks, per
case and per slice (tiny lesions at a lesion's ends can differ much on a single slice).

    python benchmarks/precision_check.py [--device cuda] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from common import checked_device, ct_lesion_cases
from medsam2.engine.models import load_predictor
from medsam2.engine.prompts import box_from_mask
from medsam2.io import load_image
from medsam2.io.masks import stored_array
from medsam2.metrics import dice


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    checked_device(args.device)
    predictors = {precision: load_predictor(device=args.device, precision=precision) for precision in ("fp32", "bf16")}
    cases = []
    for path in ct_lesion_cases():
        volume = load_image(path)
        truth = stored_array(volume, "gts") > 0
        lesion = np.flatnonzero(truth.any(axis=(1, 2)))
        cases.append((volume.array[lesion], truth[lesion]))
    total = sum(len(slices) for slices, _ in cases)
    seconds: dict[str, list[float]] = {name: [] for name in predictors}
    embeddings: dict[str, list[list[torch.Tensor]]] = {}
    for name, predictor in predictors.items():
        predictor.encode(cases[0][0][:2])  # warm-up
    for _ in range(args.repeats):
        for name, predictor in predictors.items():
            synchronize(args.device)
            start = time.perf_counter()
            embeddings[name] = [predictor.encode(slices) for slices, _ in cases]
            synchronize(args.device)
            seconds[name].append(time.perf_counter() - start)
    per_case, per_slice = [], []  # Dice between the fp32 and bf16 masks; (Dice, lesion pixels)
    for index, (slices, truth) in enumerate(cases):
        masks = {name: [] for name in predictors}
        for k, plane in enumerate(truth):
            for name, predictor in predictors.items():
                masks[name].append(predictor.predict(embeddings[name][index][k], plane.shape, box=box_from_mask(plane)).logits > 0)
            if masks["fp32"][-1].any() or masks["bf16"][-1].any():
                per_slice.append((dice(masks["fp32"][-1], masks["bf16"][-1]), int(plane.sum())))
        per_case.append(dice(np.stack(masks["fp32"]), np.stack(masks["bf16"])))
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    print(f"{total} lesion slices of 512x512; torch {torch.__version__}; {device}")
    for name, times in seconds.items():
        print(f"{name}: encoder {min(times) / total * 1000:.1f} ms/slice (best of {len(times)})  precision in use: {predictors[name].precision}")
    worst, pixels = min(per_slice)
    print(f"bf16 vs fp32: {min(seconds['fp32']) / min(seconds['bf16']):.2f}x encoder speed-up")
    print(f"Dice between their masks: lowest per case {min(per_case):.4f}; median per slice {np.median([d for d, _ in per_slice]):.4f}, lowest {worst:.4f} (a lesion of {pixels} pixels)")


if __name__ == "__main__":
    main()
