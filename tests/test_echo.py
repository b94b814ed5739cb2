"""Echo measurements on masks with known truth: Simpson volumes of rasterised ellipses against the
prolate spheroid they are sections of, ED/ES frames of area curves, EF against its analytic value."""

from __future__ import annotations

import numpy as np
import pytest

from medsam2.errors import InputError
from medsam2.measure.echo import cardiac_phases, measure_echo, simpson_volume


def ellipse(shape, centre, semi_axes, angle, pixel_spacing=(1.0, 1.0)) -> np.ndarray:
    """Pixels whose centres lie in an ellipse given in mm: semi-axes (long, short), long axis at
    `angle` radians from the image's vertical."""
    (cy, cx), (a, b) = centre, semi_axes
    sx, sy = pixel_spacing
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    x, y = cols * sx - cx, rows * sy - cy
    along = x * np.sin(angle) + y * np.cos(angle)
    across = x * np.cos(angle) - y * np.sin(angle)
    return (along / a) ** 2 + (across / b) ** 2 <= 1


def spheroid_volume(a: float, b: float) -> float:
    """The prolate spheroid an ellipse sweeps turning about its long axis: what Simpson's disks estimate."""
    return 4 / 3 * np.pi * a * b * b


@pytest.mark.parametrize(("a", "b", "angle"), [(60, 35, 0.0), (60, 35, 0.7), (30, 18, 1.2), (45, 40, 2.5)])
def test_simpson_volume_of_an_ellipse_is_its_spheroid(a, b, angle) -> None:
    mask = ellipse((200, 200), (100, 100), (a, b), angle)
    assert simpson_volume(mask) == pytest.approx(spheroid_volume(a, b), rel=0.02)


def test_simpson_volume_uses_the_pixel_spacing() -> None:
    # The same 50 x 28 mm ellipse drawn on square 0.5 mm pixels and on 0.3 x 0.6 mm pixels.
    square = ellipse((240, 240), (60, 60), (50, 28), 0.4, (0.5, 0.5))
    oblong = ellipse((200, 400), (60, 60), (50, 28), 0.4, (0.3, 0.6))
    truth = spheroid_volume(50, 28)
    assert simpson_volume(square, (0.5, 0.5)) == pytest.approx(truth, rel=0.02)
    assert simpson_volume(oblong, (0.3, 0.6)) == pytest.approx(truth, rel=0.02)
    assert simpson_volume(np.zeros((8, 8), bool)) == 0.0


def beating_ellipses(frames: int, period: float, first_ed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LV masks over a clip: semi-axes shrink from (40, 22) mm at ED to (33, 15) at ES, smoothly."""
    t = np.arange(frames)
    contraction = (1 - np.cos(2 * np.pi * (t - first_ed) / period)) / 2  # 0 at ED, 1 at ES
    a, b = 40 - 7 * contraction, 22 - 7 * contraction
    spacing = (0.4, 0.4)
    masks = np.stack([ellipse((260, 200), (52, 40), (a[k], b[k]), 0.25, spacing) for k in t])  # 104 x 80 mm
    return masks, a, b


def test_ed_es_frames_and_ef_of_beating_ellipses() -> None:
    masks, a, b = beating_ellipses(frames=34, period=16, first_ed=5)  # ED 5, 21; ES 13, 29
    measurement = measure_echo(masks.sum(axis=(1, 2)), lambda frame: simpson_volume(masks[frame], (0.4, 0.4)))
    assert measurement.ed_frames == [5, 21]
    assert measurement.es_frames == [13, 29]
    assert [(beat.ed_frame, beat.es_frame) for beat in measurement.beats] == [(5, 13), (21, 29)]
    assert sorted(measurement.volumes) == [5, 13, 21, 29]  # volumes only where they are needed
    analytic = 100 * (1 - spheroid_volume(a[13], b[13]) / spheroid_volume(a[5], b[5]))
    assert measurement.ejection_fraction == pytest.approx(analytic, abs=2.0)
    assert measurement.edv == pytest.approx(spheroid_volume(a[5], b[5]), rel=0.02)  # mm^3
    assert measurement.esv == pytest.approx(spheroid_volume(a[13], b[13]), rel=0.03)


def test_a_half_cycle_from_ed_to_es_as_camus_stores_it() -> None:
    masks, a, b = beating_ellipses(frames=9, period=16, first_ed=0)  # frames 0 (ED) .. 8 (ES)
    measurement = measure_echo(masks.sum(axis=(1, 2)), lambda frame: simpson_volume(masks[frame], (0.4, 0.4)))
    assert (measurement.ed_frames, measurement.es_frames) == ([0], [8])
    analytic = 100 * (1 - spheroid_volume(a[8], b[8]) / spheroid_volume(a[0], b[0]))
    assert measurement.ejection_fraction == pytest.approx(analytic, abs=2.0)


def test_a_clip_ending_in_systole_after_its_last_ed_reports_the_frames_its_beat_uses() -> None:
    """No ES after the ED (frame 3; the trough at 1 comes before it): the fallback beat pairs the
    largest and smallest area, and those frames are the ED and ES the table and plot mark."""
    area = np.array([20, 15, 25, 34, 30, 22, 12], dtype=float)
    measurement = measure_echo(area, lambda frame: area[frame] * 10)
    assert [(beat.ed_frame, beat.es_frame) for beat in measurement.beats] == [(3, 6)]
    assert (measurement.ed_frames, measurement.es_frames) == ([3], [1, 6])
    assert measurement.ejection_fraction == pytest.approx(100 * (34 - 12) / 34)


def test_noise_is_not_a_beat() -> None:
    t = np.arange(60)
    area = 1000 + 300 * np.cos(2 * np.pi * (t - 10) / 25) + np.random.default_rng(3).normal(0, 15, t.size)
    area[[10, 35]] += 100  # make the true ED frames unambiguous under the noise
    area[[22, 47]] -= 100
    ed, es = cardiac_phases(area)
    assert ed == [10, 35] and es == [22, 47]


def test_measurement_errors() -> None:
    with pytest.raises(InputError, match="does not change"):
        measure_echo(np.full(10, 500.0), lambda frame: 9000.0)
    # A still object whose segmentation wiggles by 1.3% (an audit's disc): no beats, EF -0.1% and 0.8%
    # were reported from it.
    wiggle = np.array([700, 692, 701, 695, 692, 700, 696, 693, 701, 694, 699, 692], dtype=float)
    with pytest.raises(InputError, match=r"changes by 1\.3% over the clip, less than 5%: no cardiac cycle"):
        measure_echo(wiggle, lambda frame: wiggle[frame] * 10)
    area = np.array([900, 800, 600, 0, 650, 850, 900], dtype=float)  # the LV lost at the ES frame
    with pytest.raises(InputError, match=r"missing on frame\(s\) \[3\]"):
        measure_echo(area, lambda frame: area[frame] * 10)
