"""Slices per second for a whole volume on the CPU: medsam2's pipeline vs the reference loop.

Both segment every slice of the shared CT lesion cases with a box (the ground-truth box where the
lesion is, a fixed central box elsewhere), so both do the same work:

- reference: the LiteMedSAM reference procedure as published, one slice at a time (preprocess,
  encode, decode, logits to the slice's size), with the network as published (unfolded BatchNorm);
- medsam2: `LiteMedSAMPredictor` as the engine uses it: slices preprocessed in batches, encoded,
  then decoded one by one, as propagation needs (each prompt comes from the previous slice's mask);
  encoder (BatchNorm folded into the convolutions) and box decoder fused by oneDNN Graph.
  `--unfused` adds a row for medsam2 on plain torch;
- medsam2 (bf16): the same predictor with `precision="bf16"`: the image encoder and box decoder in
  bfloat16, fused by oneDNN Graph (skipped, with a note, on a CPU without native bfloat16).

The pipelines run in one process with the same allocator and thread settings, their repeats
alternating so that a change of load on the machine affects all. The masks are compared with the
reference's too: the float32 optimisations are exact up to float rounding, so they must agree
(Dice 1.0 up to a few pixels); bf16 is not exact, its lowest Dice shows by how much it differs.

    python benchmarks/speed_cpu.py [--repeats 2] [--unfused]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch

from common import ct_lesion_cases
from medsam2.allocator import keep_large_allocations
from medsam2.engine.models import LiteMedSAMPredictor, load_predictor, native_bf16_cpu
from medsam2.engine.prompts import box_from_mask
from medsam2.io import load_image
from medsam2.io.masks import stored_array
from medsam2.metrics import dice
from medsam2.models.lite_medsam import LiteMedSAM, load_lite_medsam
from medsam2.preprocess.resize import LongestSideResize

Boxes = list[tuple[float, float, float, float]]


def boxes_for(truth: np.ndarray) -> Boxes:
    height, width = truth.shape[1:]
    central = (width * 0.4, height * 0.4, width * 0.6, height * 0.6)
    return [box_from_mask(plane) if plane.any() else central for plane in truth]


def reference_loop(model: LiteMedSAM) -> Callable[[np.ndarray, Boxes], np.ndarray]:
    transform = LongestSideResize(model.image_size)

    @torch.inference_mode()
    def run(slices: np.ndarray, boxes: Boxes) -> np.ndarray:
        masks = []
        for plane, box in zip(slices, boxes):
            embedding = model.encode_image(transform.prepare(plane)[None])
            model_box = torch.as_tensor(transform.box_to_model(np.asarray(box), plane.shape), dtype=torch.float32)
            low_res, _ = model.decode(embedding, boxes=model_box[None])
            masks.append(transform.logits_to_image(low_res[0, 0], plane.shape).numpy() > 0)
        return np.stack(masks)

    return run


def medsam2_pipeline(predictor: LiteMedSAMPredictor) -> Callable[[np.ndarray, Boxes], np.ndarray]:
    def run(slices: np.ndarray, boxes: Boxes) -> np.ndarray:
        embeddings = predictor.encode(slices)
        hw = slices.shape[1:3]
        return np.stack([predictor.predict(e, hw, box=b).logits > 0 for e, b in zip(embeddings, boxes)])

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each (the best is kept)")
    parser.add_argument("--unfused", action="store_true", help="also time medsam2 on plain torch (float32, BatchNorm folded)")
    args = parser.parse_args()
    keep_large_allocations()  # for every pipeline alike: the process's allocator is shared
    predictor = load_predictor("lite-medsam")
    pipelines = {"reference per-slice loop": reference_loop(load_lite_medsam(optimize=False))}
    pipelines["medsam2 (fp32, fused)"] = medsam2_pipeline(predictor)
    if args.unfused:
        pipelines["medsam2 (fp32, torch)"] = medsam2_pipeline(LiteMedSAMPredictor(predictor.model, predictor.device, fuse=False))
    if native_bf16_cpu():
        pipelines["medsam2 (bf16, fused)"] = medsam2_pipeline(LiteMedSAMPredictor(predictor.model, predictor.device, precision="bf16"))
    else:
        print("no bf16 row: this CPU has no native bfloat16")
    cases = []
    for path in ct_lesion_cases():
        volume = load_image(path)
        cases.append((volume.array, boxes_for(stored_array(volume, "gts") > 0)))
    total = sum(len(slices) for slices, _ in cases)
    print(f"{total} slices of 512x512 in {len(cases)} volumes; torch {torch.__version__}, {torch.get_num_threads()} threads")
    for run in pipelines.values():
        run(cases[0][0][:2], cases[0][1][:2])  # warm-up
    seconds: dict[str, list[float]] = {name: [] for name in pipelines}
    masks = {}
    for _ in range(args.repeats):
        for name, run in pipelines.items():
            start = time.perf_counter()
            masks[name] = [run(slices, boxes) for slices, boxes in cases]
            seconds[name].append(time.perf_counter() - start)
    reference = next(iter(pipelines))
    print(f"{'pipeline':<34} {'seconds':>8} {'slices/s':>9} {'speed-up':>9}   {'agreement (lowest Dice)':>23}")
    for name, times in seconds.items():
        best = min(times)
        ratios = [r / t for r, t in zip(seconds[reference], times)]
        agreement = min(dice(a, b) for a, b in zip(masks[reference], masks[name]) if a.any() or b.any())
        print(
            f"{name:<34} {best:8.2f} {total / best:9.2f} {min(seconds[reference]) / best:8.2f}x"
            f"   {agreement:23.5f}   per repeat: {', '.join(f'{r:.2f}x' for r in ratios)}"
        )
    print("speed-up: best time of the reference / best time of the pipeline (target >= 3x)")


if __name__ == "__main__":
    main()
