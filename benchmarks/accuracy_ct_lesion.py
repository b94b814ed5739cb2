"""One-box 3D accuracy on the shared CT lesion cases.

For each case: the ground-truth box on the slice where the lesion is largest, nothing else; the
lesion is propagated through the volume with the embedded LiteMedSAM. Prints per-case and mean DSC
and NSD (2 mm) beside the reference figures of the shared data's README (the packaged LiteMedSAM
reference code, measured by its authors).

    python benchmarks/accuracy_ct_lesion.py [--precision bf16] [--axis coronal]

With `--axis coronal` or `sagittal` the box is drawn on the largest slice of that view and the lesion
propagated through those slices (the reference figures stay the axial ones: the packaged code has no
other view).
"""

from __future__ import annotations

import argparse

import numpy as np

from common import ct_lesion_cases
from medsam2.engine.api import segment_volume
from medsam2.engine.models import load_predictor
from medsam2.engine.prompts import Prompt, box_from_mask
from medsam2.io import load_image, slicing_axis_index, to_slices
from medsam2.io.masks import stored_array
from medsam2.metrics import evaluate

# From ../shared/data/README.md: (GT box on every slice, naive box-from-previous-mask loop).
REFERENCE = {
    "000001": (0.943, 0.834),
    "000002": (0.858, 0.783),
    "000015": (0.838, 0.772),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="lite-medsam")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default=None, help="default: the model's (fp32 for lite-medsam)")
    parser.add_argument("--axis", choices=["axial", "coronal", "sagittal"], default="axial", help="the view prompted and propagated through")
    args = parser.parse_args()
    predictor = load_predictor(args.model, precision=args.precision)
    print(f"model {args.model}, precision {getattr(predictor, 'precision', args.precision)}, {args.axis} slices")
    print(f"{'case':<38} {'DSC':>6} {'NSD2mm':>7}   {'ref: GT box every slice':>24} {'ref: naive loop':>16}")
    scores = []
    for path in ct_lesion_cases():
        volume = load_image(path)
        truth = stored_array(volume, "gts") > 0
        truth_slices = to_slices(truth, slicing_axis_index(volume, args.axis))
        key = int(np.argmax(truth_slices.reshape(truth_slices.shape[0], -1).sum(axis=1)))
        prompt = Prompt(key, 1, box=box_from_mask(truth_slices[key]))
        result = segment_volume(volume, [prompt], predictor, axis=args.axis, progress=False)
        (score,) = evaluate(result.labels.array > 0, truth, spacing=volume.spacing, tolerance_mm=2.0)
        scores.append((score.dice, score.nsd))
        every, naive = REFERENCE[path.name.split("_")[2]]
        print(f"{path.name:<38} {score.dice:6.3f} {score.nsd:7.3f}   {every:24.3f} {naive:16.3f}")
    dsc, nsd = np.mean(scores, axis=0)
    every, naive = np.mean(list(REFERENCE.values()), axis=0)
    print(f"{'mean':<38} {dsc:6.3f} {nsd:7.3f}   {every:24.3f} {naive:16.3f}")
    target = "target: mean >= 0.82, none below 0.6" if args.axis == "axial" else "the target and references are axial"
    print(f"min DSC {min(s[0] for s in scores):.3f} ({target})")


if __name__ == "__main__":
    main()
