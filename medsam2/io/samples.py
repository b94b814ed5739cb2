"""Sample scans that registry packages ship, for the demo and the web app on a machine with no data
of its own, and a synthetic lesion built from them (no registry package ships a scan with a lesion).

nilearn ships the MNI152 2009a symmetric T1 template (ICBM 152 nonlinear) (1 mm, 197x233x189) with grey- and
white-matter probability maps. We read the files through package metadata and never import nilearn
(its import pulls scikit-learn and pandas).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medsam2.io.readers import load_image
from medsam2.io.volume import Volume
from medsam2.io.writers import save_mask
from medsam2.resources import packaged_file

MNI_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}


def mni152_brain() -> tuple[Volume, Volume]:
    """The MNI152 T1 template and a brain mask (grey + white matter probability > 0.5) in its geometry.

    The reference is the brain parenchyma: voxels more likely grey or white matter than not. nilearn
    ships no CSF map, so the ventricles and sulci (CSF) are outside it, as is the rest of the
    skull-stripped template. Other structures were tried as the demo's target and segmented worse
    (README, "Set-up: two commands")."""
    hint = "pip install --no-deps nilearn==0.14.1"
    t1 = load_image(packaged_file("nilearn", MNI_FILES["t1"], hint))
    grey = load_image(packaged_file("nilearn", MNI_FILES["gm"], hint)).array
    white = load_image(packaged_file("nilearn", MNI_FILES["wm"], hint)).array
    # The maps are probabilities scaled to 0-255.
    brain = ((grey.astype(np.float32) + white.astype(np.float32)) > 127.5).astype(np.uint8)
    return t1, t1.with_array(brain)


@dataclass(frozen=True)
class SyntheticLesion:
    """Where and how the synthetic lesion sits in the MNI152 T1 template (all deterministic)."""

    # (k, j, i) voxel; RAS (-30, -8, 28) mm, the left corona radiata, the template's deepest white matter.
    centre: tuple[int, int, int] = (100, 126, 68)
    # (z, y, x) semi-axes of the ellipsoid before roughening: 12 axial slices keep the test's propagation short.
    radii_mm: tuple[float, float, float] = (6.0, 15.0, 12.0)
    roughness: float = 0.08  # amplitude of the smooth noise that makes the outline irregular
    edge_mm: float = 0.3  # scale of the soft (logistic) edge
    intensity: float = 30.0  # dark like fluid (a cystic lesion) against white matter (about 210 here)
    texture: float = 10.0  # standard deviation of the smooth texture inside
    seed: int = 2009


SYNTHETIC_LESION_FILES = ("synthetic_lesion_t1.nii.gz", "synthetic_lesion_t1_truth.nii.gz")


def synthetic_lesion(spec: SyntheticLesion = SyntheticLesion()) -> tuple[Volume, Volume]:
    """The MNI152 T1 template with a hypointense lesion blended in, and the lesion's ground truth.

    No registry package ships a CT or MRI with a real lesion, so the web app's sample is built: an
    ellipsoid whose outline is roughened by smooth noise, filled with a smooth texture around
    `spec.intensity`, blended into the template through a soft (logistic) edge. The truth is where the
    blend weight exceeds one half.
    """
    from scipy import ndimage  # scipy is slow to import and only the builders need it

    t1, _ = mni152_brain()
    rng = np.random.default_rng(spec.seed)
    spacing_zyx = np.asarray(t1.spacing[::-1])
    half = np.ceil(np.asarray(spec.radii_mm) * (1 + 2 * spec.roughness) / spacing_zyx).astype(int) + 3
    window = tuple(slice(c - h, c + h + 1) for c, h in zip(spec.centre, half))
    grid = np.meshgrid(*(np.arange(-h, h + 1) * s for h, s in zip(half, spacing_zyx)), indexing="ij")
    radius = np.sqrt(sum((axis / r) ** 2 for axis, r in zip(grid, spec.radii_mm)))
    shape = radius.shape
    outline = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=4.0)
    radius = radius * (1 + spec.roughness * outline / outline.std())
    weight = 1 / (1 + np.exp((radius - 1) * min(spec.radii_mm) / spec.edge_mm))
    texture = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=1.5)
    lesion = spec.intensity + spec.texture * texture / texture.std()
    image = t1.array.astype(np.float32)
    image[window] = (1 - weight) * image[window] + weight * lesion
    truth = np.zeros(t1.shape, dtype=np.uint8)
    truth[window] = weight > 0.5
    return t1.with_array(np.clip(np.round(image), 0, 255).astype(np.uint8)), t1.with_array(truth)


def write_synthetic_lesion(folder: Path, spec: SyntheticLesion = SyntheticLesion()) -> tuple[Path, Path]:
    """The synthetic lesion sample and its truth as NIfTI files in `folder`, written (atomically) only
    when missing; returns (image, truth)."""
    image_path, truth_path = (folder / name for name in SYNTHETIC_LESION_FILES)
    if not (image_path.is_file() and truth_path.is_file()):
        image, truth = synthetic_lesion(spec)
        save_mask(truth.array, like=truth, path=truth_path)
        # A uint8 image is stored exactly as a uint8 label map is: the mask writer serves both.
        save_mask(image.array, like=image, path=image_path)
    return image_path, truth_path
