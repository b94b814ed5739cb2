"""One-prompt segmentation on the shared CT lesion cases, beside ordered 3D propagation.

Each case in turn is the reference: its key slice (where the lesion is largest) with the
ground-truth mask. Targets: every other lesion slice of that case, shuffled, then the lesion slices
of the two other cases (other patients, other lesions). Printed per reference: the mean 2D DSC and
mean confidence of the one-prompt results per target set, and beside them the ordered 3D
propagation from the same prompt (`segment_volume` with the key slice's ground-truth box): its mean
2D DSC on the same slices and its 3D DSC over the whole volume.

    python benchmarks/one_prompt.py                 # embedded LiteMedSAM
    python benchmarks/one_prompt.py --no-refine     # without the refinement pass
    python benchmarks/one_prompt.py --points --refine-mask  # with PerSAM's clicks and the dense-prompt refinement
    python benchmarks/one_prompt.py --references 1  # the first case as reference only (a third of the work)
    python benchmarks/one_prompt.py --sam2-random   # random-weight SAM 2.1: checks the memory path runs

`--sam2-random` runs the same protocol with a random-weight SAM 2.1 hiera-tiny (512 px) and the
confidence-weighted bank, and the ordered propagation with SAM 2's recent-frames bank: the figures
mean nothing (no trained weights), the run shows that both memory paths work end to end.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from common import ct_lesion_cases

from medsam2.engine.api import segment_volume
from medsam2.engine.models import load_predictor
from medsam2.engine.one_prompt import OnePromptConfig, segment_one_prompt
from medsam2.engine.prompts import Prompt, box_from_mask
from medsam2.engine.sam2_predictor import SAM2Predictor
from medsam2.io import load_image
from medsam2.io.masks import stored_array
from medsam2.metrics import dice
from medsam2.models.sam2 import SAM2Config, SAM2Model


def random_sam2(image_size: int = 512, device: str = "cpu") -> SAM2Predictor:
    """SAM 2.1 hiera-tiny with random weights (seeded) whose object-score head says "present" (else
    it finds nothing anywhere), preprocessing as MedSAM2's."""
    torch.manual_seed(0)
    model = SAM2Model(SAM2Config(image_size=image_size))
    with torch.no_grad():
        model.sam_mask_decoder.pred_obj_score_head.layers[2].bias.fill_(5.0)
    return SAM2Predictor(model.eval(), device, resample="bilinear")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-refine", dest="refine", action="store_false", help="LiteMedSAM: skip the refinement pass")
    parser.add_argument("--points", action="store_true", help="LiteMedSAM: PerSAM's clicks with every box")
    parser.add_argument("--refine-mask", action="store_true", help="LiteMedSAM: refine with the mask's logits as dense prompt too")
    parser.add_argument("--sam2-random", action="store_true", help="random-weight SAM 2.1 instead of LiteMedSAM")
    parser.add_argument("--seed", type=int, default=0, help="shuffling of the targets")
    parser.add_argument("--references", type=int, default=0, help="only the first N cases serve as reference (0: all)")
    args = parser.parse_args()
    predictor = random_sam2() if args.sam2_random else load_predictor("lite-medsam")
    config = OnePromptConfig(points=args.points, refine=args.refine, refine_mask=args.refine_mask)
    rng = np.random.default_rng(args.seed)
    cases = []
    for path in ct_lesion_cases():
        volume = load_image(path)
        truth = stored_array(volume, "gts") > 0
        areas = truth.reshape(len(truth), -1).sum(axis=1)
        cases.append((path.name.split("_")[2], volume, truth, int(np.argmax(areas)), np.flatnonzero(areas)))

    print(
        f"model: {'random-weight SAM 2.1 hiera-tiny' if args.sam2_random else 'LiteMedSAM'}, "
        f"clicks: {args.points}, refine: {args.refine}, refine with the mask: {args.refine_mask}"
    )
    header = f"{'reference':>9} {'targets':<22} {'n':>3} {'one-prompt DSC':>14} {'confidence':>10}   {'3D propagation DSC (same slices / 3D)':>37}"
    print(header)
    totals: dict[str, list[float]] = {"same": [], "other": [], "ordered": [], "volume": []}
    started = time.perf_counter()
    for name, volume, truth, key, lesion in cases[: args.references or None]:
        same = [z for z in rng.permutation(lesion) if z != key]
        targets = [(volume.array[z], truth[z]) for z in same]
        others = [(other.array[z], other_truth[z]) for other_name, other, other_truth, _, other_lesion in cases if other_name != name for z in other_lesion]
        results = segment_one_prompt(volume.array[key], truth[key], [image for image, _ in targets + others], predictor, config)
        scores = [dice(result.mask, gt) for result, (_, gt) in zip(results, targets + others)]
        confidences = [result.confidence for result in results]
        ordered = segment_volume(volume, [Prompt(key, 1, box=box_from_mask(truth[key]))], predictor, progress=False)
        propagated = ordered.labels.array > 0
        ordered_scores = [dice(propagated[z], truth[z]) for z in same]
        volume_score = dice(propagated, truth)
        count = len(targets)
        print(
            f"{name:>9} {'same case, shuffled':<22} {count:3d} {np.mean(scores[:count]):14.3f} {np.mean(confidences[:count]):10.3f}"
            f"   {np.mean(ordered_scores):18.3f} / {volume_score:.3f}"
        )
        print(f"{'':>9} {'other cases':<22} {len(others):3d} {np.mean(scores[count:]):14.3f} {np.mean(confidences[count:]):10.3f}")
        totals["same"] += scores[:count]
        totals["other"] += scores[count:]
        totals["ordered"] += ordered_scores
        totals["volume"].append(volume_score)
    print(
        f"{'all':>9} {'same case, shuffled':<22} {len(totals['same']):3d} {np.mean(totals['same']):14.3f} {'':>10}"
        f"   {np.mean(totals['ordered']):18.3f} / {np.mean(totals['volume']):.3f}"
    )
    print(f"{'':>9} {'other cases':<22} {len(totals['other']):3d} {np.mean(totals['other']):14.3f}")
    print(f"wall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
