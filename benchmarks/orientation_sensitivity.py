"""Does the order a file stores its axes in change the mask? One-box axial segmentation of the same
scans stored in several orders.

The model sees each axial slice as the file stores it (as MedSAM2 and LiteMedSAM do), while people
see it turned to the radiological view (`medsam2.io.volume.slice_display`). Each scan is rewritten
in other storage orders (SimpleITK's DICOMOrient: the same voxels, permuted and flipped), read back
as a user's file would be, prompted with the ground truth's box on its largest axial slice and
propagated with the defaults; the mask is turned back and scored against the ground truth. "LPS"
stores axial slices exactly as they are shown, so its row is what feeding the model the shown
slices would give for every storage order.

    python benchmarks/orientation_sensitivity.py [--model lite-medsam]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from common import ct_lesion_cases
from medsam2.engine.api import segment_volume
from medsam2.engine.models import load_predictor
from medsam2.engine.predictor import SlicePredictor
from medsam2.engine.prompts import Prompt, box_from_mask
from medsam2.io import Volume, load_image, slicing_axis_index, to_slices
from medsam2.io.masks import stored_array
from medsam2.io.samples import mni152_brain
from medsam2.io.volume import orientation_code
from medsam2.metrics import dice

# DICOM's order (axial slices stored as shown), NIfTI's usual RAS, and a sagittal acquisition's.
STORAGES = ("LPS", "RAS", "PIR")


def as_image(volume: Volume, array: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(volume.spacing)
    image.SetOrigin(volume.origin)
    image.SetDirection(volume.direction)
    return image


def stored_as(volume: Volume, truth: np.ndarray, code: str, folder: Path) -> tuple[Volume, np.ndarray]:
    """`volume` written as a NIfTI stored in `code` order and read back, with `truth` turned alike."""
    path = folder / f"{code}.nii.gz"
    sitk.WriteImage(sitk.DICOMOrient(as_image(volume, volume.array), code), str(path))
    turned_truth = sitk.GetArrayFromImage(sitk.DICOMOrient(as_image(volume, truth.astype(np.uint8)), code))
    return load_image(path), turned_truth


def one_box_dice(volume: Volume, truth: np.ndarray, original: Volume, original_truth: np.ndarray, predictor: SlicePredictor) -> float:
    """Segment `volume` from the box of `truth` on its largest axial slice; Dice in `original`'s order."""
    axis_index = slicing_axis_index(volume, "axial")
    slices = to_slices(truth, axis_index)
    key = int(np.argmax(slices.reshape(slices.shape[0], -1).sum(axis=1)))
    result = segment_volume(volume, [Prompt(key, 1, box=box_from_mask(slices[key]))], predictor, axis="axial", progress=False)
    back = sitk.DICOMOrient(as_image(volume, result.labels.array.astype(np.uint8)), orientation_code(original))
    return dice(sitk.GetArrayFromImage(back) > 0, original_truth)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="lite-medsam")
    args = parser.parse_args()
    predictor = load_predictor(args.model)
    cases: list[tuple[str, Volume, np.ndarray]] = []
    for path in ct_lesion_cases():
        volume = load_image(path)
        cases.append((path.name, volume, stored_array(volume, "gts") > 0))
    brain, brain_mask = mni152_brain()
    cases.append(("MNI152 T1 brain (demo)", brain, brain_mask.array > 0))

    print(f"model {args.model}: one-box axial DSC by storage order (the file's own order first)")
    print(f"{'case':<38} {'as stored':>14} " + " ".join(f"{code:>7}" for code in STORAGES))
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name, volume, truth in cases:
            own = one_box_dice(volume, truth, volume, truth, predictor)
            turned = [one_box_dice(*stored_as(volume, truth, code, Path(folder)), volume, truth, predictor) for code in STORAGES]
            rows.append([own, *turned])
            print(f"{name:<38} {orientation_code(volume) + f' {own:.3f}':>14} " + " ".join(f"{value:7.3f}" for value in turned))
    table = np.array(rows)
    print(f"{'mean':<38} {table[:, 0].mean():14.3f} " + " ".join(f"{value:7.3f}" for value in table[:, 1:].mean(axis=0)))
    spread = table.max(axis=1) - table.min(axis=1)
    print(f"largest spread of one case's DSC across storage orders: {spread.max():.3f}")


if __name__ == "__main__":
    main()
