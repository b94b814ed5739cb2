"""medsam2: promptable segmentation of 3D medical images and medical videos.

Start from `medsam2.io` (`load_image`, `load_mask`, `save_mask`, `Volume`), `medsam2.engine.api`
(`segment_volume`, `prepare_slices`), `medsam2.engine.models` (`load_predictor`) and
`medsam2.engine.session` (`Session`, interactive). Every error caused by input is an `InputError`
with a one-line message.
"""

from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version

from medsam2.errors import InputError

try:
    __version__ = _version("medsam2")
except _PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = ["InputError", "__version__"]
