"""medsam2: promptable segmentation of 3D medical images and medical videos."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("medsam2")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"
