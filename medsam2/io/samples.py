"""Sample scans that registry packages ship, for the demo on a machine with no data of its own.

nilearn ships the MNI152 2009a symmetric T1 template (ICBM 152 nonlinear) (1 mm, 197x233x189) with grey- and
white-matter probability maps. We read the files through package metadata and never import nilearn
(its import pulls scikit-learn and pandas).
"""

from __future__ import annotations

import numpy as np

from medsam2.resources import packaged_file
from medsam2.io.readers import load_image
from medsam2.io.volume import Volume

MNI_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}


def mni152_brain() -> tuple[Volume, Volume]:
    """The MNI152 T1 template and a brain mask (grey + white matter probability > 0.5) in its geometry."""
    hint = "pip install --no-deps nilearn==0.14.1"
    t1 = load_image(packaged_file("nilearn", MNI_FILES["t1"], hint))
    grey = load_image(packaged_file("nilearn", MNI_FILES["gm"], hint)).array
    white = load_image(packaged_file("nilearn", MNI_FILES["wm"], hint)).array
    # The maps are probabilities scaled to 0-255.
    brain = ((grey.astype(np.float32) + white.astype(np.float32)) > 127.5).astype(np.uint8)
    return t1, t1.with_array(brain)
