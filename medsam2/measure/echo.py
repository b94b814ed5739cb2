"""Left-ventricle function from an apical echocardiography view: end-diastolic (ED) and end-systolic
(ES) frames, volumes by the single-plane method of disks (Simpson), ejection fraction.

Method (ASE/EACVI chamber quantification, single plane):

- ED and ES are the frames where the LV cavity's area is largest and smallest within each beat:
  the interior peaks and troughs of the area curve whose prominence is at least `MIN_PROMINENCE` of
  the curve's range and `MIN_AREA_CHANGE` of its largest area (a curve that changes less than that
  holds no cycle). A clip without an interior peak (a half cycle, as CAMUS' ED-to-ES sequences)
  takes its largest-area frame as ED; likewise for ES. A peak must stand out on both sides, so one in
  the last frames of a clip, before the area has fallen far enough, is not taken. Each ED is paired
  with the next ES (one beat); volumes are computed on the ED and ES frames only.
- Volume of one frame: the cavity's long axis is its principal axis (in mm, so anisotropic pixels
  count right); the cavity is cut into `DISKS` slabs of equal height h perpendicular to it; each slab
  is a disk whose diameter d is the slab's area divided by h; V = sum(pi / 4 * d^2 * h).
- EF = (EDV - ESV) / EDV, per beat; the reported EF is the mean over beats.

Limits: one plane (the biplane method with a second, orthogonal view is the clinical reference);
the long axis is the mask's principal axis, not the apex-to-mitral-annulus line a sonographer draws,
so a foreshortened view or a mask that spills into the left atrium biases the volumes; the masks
are whatever the segmentation gave (check them on the overlay). Volumes are in mm^3 with the pixel
spacing in mm, in cubic pixels without it (EF, a ratio, is valid either way).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from medsam2.errors import InputError

DISKS = 20
# Each pixel is sampled at SUBSAMPLES x SUBSAMPLES points, so a disk a pixel or two high still gets
# its share of every pixel it cuts through.
SUBSAMPLES = 4
MIN_PROMINENCE = 0.2  # of the area curve's range: smaller wiggles are not ED or ES
# Of the largest area: a curve that changes less is segmentation noise, not a heartbeat (even a
# severely failing ventricle changes its area by some 10% over a cycle).
MIN_AREA_CHANGE = 0.05


def simpson_volume(mask: np.ndarray, pixel_spacing: tuple[float, float] | None = None, disks: int = DISKS) -> float:
    """Volume of an LV cavity mask (H, W) by the single-plane method of disks; mm^3 with
    `pixel_spacing` (sx, sy) in mm, cubic pixels without. 0 for an empty mask."""
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return 0.0
    sx, sy = pixel_spacing or (1.0, 1.0)
    offsets = (np.arange(SUBSAMPLES) + 0.5) / SUBSAMPLES - 0.5
    x = ((cols[:, None] + offsets[None, :]) * sx)[:, None, :].repeat(SUBSAMPLES, axis=1).ravel()
    y = ((rows[:, None] + offsets[None, :]) * sy)[:, :, None].repeat(SUBSAMPLES, axis=2).ravel()
    points = np.stack([x, y], axis=1)
    centred = points - points.mean(axis=0)
    eigenvalues, eigenvectors = np.linalg.eigh(centred.T @ centred)
    long_axis = eigenvectors[:, np.argmax(eigenvalues)]
    along = centred @ long_axis
    half_sample = 0.5 / SUBSAMPLES * (abs(long_axis[0]) * sx + abs(long_axis[1]) * sy)
    low, high = along.min() - half_sample, along.max() + half_sample
    height = (high - low) / disks
    counts, _ = np.histogram(along, bins=disks, range=(low, high))
    diameters = counts * (sx * sy / SUBSAMPLES**2) / height
    return float(np.sum(np.pi / 4 * diameters**2 * height))


def cardiac_phases(area: np.ndarray, min_prominence: float = MIN_PROMINENCE) -> tuple[list[int], list[int]]:
    """(ED frames, ES frames) of an LV area curve (one value per frame), by the rule in the module doc."""
    from scipy.signal import find_peaks  # scipy.signal takes half a second to import: only --echo needs it

    area = np.asarray(area, dtype=float)
    span = float(area.max() - area.min()) if area.size else 0.0
    if area.size < 2 or span <= 0:
        raise InputError("the left ventricle's area does not change over the clip: no cardiac cycle to measure")
    if span < MIN_AREA_CHANGE * area.max():
        raise InputError(
            f"the left ventricle's area changes by {100 * span / area.max():.1f}% over the clip, less than "
            f"{100 * MIN_AREA_CHANGE:.0f}%: no cardiac cycle to measure (is the object the LV cavity?)"
        )
    prominence = max(min_prominence * span, MIN_AREA_CHANGE * float(area.max()))
    ed = find_peaks(area, prominence=prominence)[0].tolist() or [int(np.argmax(area))]
    es = find_peaks(-area, prominence=prominence)[0].tolist() or [int(np.argmin(area))]
    return ed, es


@dataclass(frozen=True)
class Beat:
    """One systole: from an ED frame to the next ES frame, volumes in the unit they were given in."""

    ed_frame: int
    es_frame: int
    edv: float
    esv: float

    @property
    def ejection_fraction(self) -> float:
        """EF in percent."""
        return 100.0 * (self.edv - self.esv) / self.edv


@dataclass(frozen=True)
class EchoMeasurement:
    """ED/ES frames of a clip, the LV volume on each, and its beats; `ejection_fraction` is their
    mean (percent)."""

    ed_frames: list[int]
    es_frames: list[int]
    volumes: dict[int, float]  # ED or ES frame -> LV volume
    beats: list[Beat]

    @property
    def ejection_fraction(self) -> float:
        return float(np.mean([beat.ejection_fraction for beat in self.beats]))

    @property
    def edv(self) -> float:
        return float(np.mean([beat.edv for beat in self.beats]))

    @property
    def esv(self) -> float:
        return float(np.mean([beat.esv for beat in self.beats]))


def measure_echo(
    area: np.ndarray, volume_at: Callable[[int], float], min_prominence: float = MIN_PROMINENCE
) -> EchoMeasurement:
    """ED/ES frames from the LV `area` curve (one value per frame) and EF from `volume_at(frame)`,
    the LV volume of a frame (`simpson_volume` of its mask), asked for the ED and ES frames only.
    An `InputError` if the LV is missing on an ED or ES frame or its area never changes."""
    area = np.asarray(area, dtype=float)
    ed_frames, es_frames = cardiac_phases(area, min_prominence)
    pairs = []
    for position, ed in enumerate(ed_frames):
        following = ed_frames[position + 1] if position + 1 < len(ed_frames) else len(area)
        es = next((frame for frame in es_frames if ed < frame < following), None)
        if es is not None:
            pairs.append((ed, es))
    if not pairs:  # no ES after an ED (a clip from ES to ED): the largest and smallest area, reported as ED and ES too
        pairs.append((int(np.argmax(area)), int(np.argmin(area))))
        ed_frames, es_frames = sorted({*ed_frames, pairs[0][0]}), sorted({*es_frames, pairs[0][1]})
    measured = sorted({*ed_frames, *es_frames})
    missing = [frame for frame in measured if area[frame] <= 0]
    if missing:
        raise InputError(f"the left ventricle is missing on frame(s) {missing}, where its ED/ES would be")
    volumes = {frame: float(volume_at(frame)) for frame in measured}
    beats = [Beat(ed, es, volumes[ed], volumes[es]) for ed, es in pairs]
    return EchoMeasurement(ed_frames, es_frames, volumes, beats)
