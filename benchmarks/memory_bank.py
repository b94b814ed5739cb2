"""Memory-bank comparison on the 3D task: SAM 2's recent-frames bank against the confidence-weighted
bank (`--memory confidence`), the same prompt, the same model.

For each shared CT lesion case: the ground-truth box on the key slice (where the lesion is
largest), propagated both ways through the volume (MedSAM2's CT procedure) once with each bank.
Printed side by side per case: 3D DSC and propagation time of each bank.

    python benchmarks/memory_bank.py                          # random-weight SAM 2.1 hiera-tiny, 512 px
    python benchmarks/memory_bank.py --image-size 256         # the same, faster (a smoke run)
    python benchmarks/memory_bank.py --model medsam2          # a real checkpoint (see README: models)

With random weights the DSC figures mean nothing: the run shows that both banks work end to end
and what the confidence bank costs. Real-weight comparisons need a SAM 2.1 / MedSAM2 checkpoint.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import checked_device, ct_lesion_cases, image_size
from one_prompt import random_sam2

from medsam2.engine.api import segment_volume
from medsam2.engine.models import load_predictor
from medsam2.engine.prompts import Prompt, box_from_mask
from medsam2.engine.sam2_predictor import SAM2Predictor, memory_propagation
from medsam2.io import load_image
from medsam2.io.masks import stored_array
from medsam2.metrics import dice

BANKS = ("recent", "confidence")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a SAM 2.1 / MedSAM2 preset or checkpoint; default: random weights")
    parser.add_argument("--image-size", type=image_size, default=512, help="input size of the random-weight model")
    parser.add_argument("--cases", type=int, default=0, help="only the first N cases (0: all)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    checked_device(args.device)
    predictor = load_predictor(args.model, args.device) if args.model else random_sam2(args.image_size, args.device)
    if not isinstance(predictor, SAM2Predictor):
        parser.error(f"{args.model}: not a memory model; the banks are SAM 2.1 / MedSAM2's")
    described = args.model or f"random-weight SAM 2.1 hiera-tiny, {args.image_size} px"
    print(f"model: {described}; prompt: ground-truth box on the key slice, propagated both ways")
    print(f"{'case':>8} {'slices':>6}   {'3D DSC recent':>13} {'confidence':>10}   {'s recent':>8} {'confidence':>10}")
    scores: dict[str, list[float]] = {bank: [] for bank in BANKS}
    seconds: dict[str, list[float]] = {bank: [] for bank in BANKS}
    for path in ct_lesion_cases()[: args.cases or None]:
        volume = load_image(path)
        truth = stored_array(volume, "gts") > 0
        key = int(np.argmax(truth.reshape(len(truth), -1).sum(axis=1)))
        prompt = Prompt(key, 1, box=box_from_mask(truth[key]))
        for bank in BANKS:
            started = time.perf_counter()
            result = segment_volume(volume, [prompt], predictor, config=memory_propagation(bank), progress=False)
            seconds[bank].append(time.perf_counter() - started)
            scores[bank].append(dice(result.labels.array > 0, truth))
        print(
            f"{path.name.split('_')[2]:>8} {len(truth):6d}   {scores['recent'][-1]:13.3f} {scores['confidence'][-1]:10.3f}"
            f"   {seconds['recent'][-1]:8.1f} {seconds['confidence'][-1]:10.1f}"
        )
    print(
        f"{'mean':>8} {'':>6}   {np.mean(scores['recent']):13.3f} {np.mean(scores['confidence']):10.3f}"
        f"   {np.mean(seconds['recent']):8.1f} {np.mean(seconds['confidence']):10.1f}"
    )


if __name__ == "__main__":
    main()
