"""The sample a new user segments: a synthetic lesion built into the MNI152 T1 template that nilearn
ships, offered first by `medsam2 serve` (and `make serve`) and opened by the page on its key slice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from playwright.sync_api import Browser
from scipy import ndimage
from test_web_e2e import (  # noqa: F401 (browser: a fixture)
    IDLE,
    browser,
    drag,
    serving,
    shown_slice,
    start_page,
    wait_prompts,
)

from medsam2.cli.demo import key_slice_box
from medsam2.io import load_image
from medsam2.io.samples import (
    SyntheticLesion,
    mni152_brain,
    synthetic_lesion,
    write_synthetic_lesion,
)
from medsam2.metrics import dice
from medsam2.models.weights import cache_dir
from medsam2.server import ServerSettings, create_app

# From one key-slice box the engine gets Dice 0.873 against the truth (measured with the defaults);
# the floor leaves room for numerical differences between machines, not for a worse method.
DICE_FLOOR = 0.85


def test_the_lesion_is_built_deterministically_into_the_template(tmp_path: Path) -> None:
    image_path, truth_path = write_synthetic_lesion(tmp_path)
    written = image_path.stat().st_mtime_ns
    assert write_synthetic_lesion(tmp_path) == (image_path, truth_path)
    assert image_path.stat().st_mtime_ns == written  # built once, then reused

    image, truth = load_image(image_path), load_image(truth_path)
    rebuilt, rebuilt_truth = synthetic_lesion()
    np.testing.assert_array_equal(image.array, rebuilt.array)
    np.testing.assert_array_equal(truth.array, rebuilt_truth.array)
    template, _ = mni152_brain()
    assert (image.spacing, image.origin, image.direction) == (template.spacing, template.origin, template.direction)

    lesion = truth.array > 0
    _, pieces = ndimage.label(lesion)
    assert pieces == 1
    spec = SyntheticLesion()
    ellipsoid = 4 / 3 * np.pi * np.prod(spec.radii_mm)
    assert 0.8 * ellipsoid < lesion.sum() < 1.5 * ellipsoid
    assert np.abs(np.argwhere(lesion).mean(axis=0) - spec.centre).max() < 2  # roughening moves it a little
    # Dark like fluid inside, the template's white matter around it, the template kept away from it
    # (but for the soft edge's last grey level).
    ring = ndimage.binary_dilation(lesion, iterations=4) & ~ndimage.binary_dilation(lesion, iterations=2)
    assert image.array[lesion].mean() < 60 and image.array[ring].mean() > 150
    far = ~ndimage.binary_dilation(lesion, iterations=8)
    assert np.abs(image.array[far].astype(int) - template.array[far]).max() <= 1


def test_the_samples_come_first_beside_the_data_with_samples(tmp_path: Path) -> None:
    """`make serve` on a machine with the shared data: `--data FOLDER --samples` lists both."""
    write_synthetic_lesion(tmp_path / "scans")  # any scan serves as a data case
    with TestClient(create_app(ServerSettings(data_dir=tmp_path / "scans", with_samples=True)), base_url="http://127.0.0.1") as client:
        cases = client.get("/api/cases").json()
    assert [case["id"] for case in cases] == [
        "sample/synthetic_lesion", "sample/mni152_t1", "sample/ct_small",
        "data/synthetic_lesion_t1.nii.gz", "data/synthetic_lesion_t1_truth.nii.gz",
    ]
    _, truth_path = write_synthetic_lesion(cache_dir() / "samples")
    assert cases[0]["start_slice"] == key_slice_box(load_image(truth_path).array).slice_index
    assert all(case["start_slice"] is None for case in cases[1:])


def test_a_new_user_segments_the_sample_lesion_in_the_browser(browser: Browser, tmp_path: Path) -> None:  # noqa: F811
    """The server as a fresh machine's `make serve` runs it (no --data): the page opens the sample
    lesion on its key slice by itself; one box dragged there and Propagate segment it."""
    _, truth_path = write_synthetic_lesion(cache_dir() / "samples")
    truth = load_image(truth_path).array > 0
    prompt = key_slice_box(truth)
    x1, y1, x2, y2 = (int(v) for v in prompt.box)

    with serving(ServerSettings()) as url:
        page, problems = start_page(browser, url, f"document.querySelector('#status').textContent.includes('largest') && {IDLE}")
        assert page.input_value("#case-select") == "sample/synthetic_lesion"
        assert shown_slice(page) == prompt.slice_index
        assert f"Slice {prompt.slice_index} shows the lesion at its largest" in page.inner_text("#status")

        drag(page, (x1, y1), (x2, y2))
        wait_prompts(page, 1)
        page.click("#propagate")
        page.wait_for_function(f"document.querySelector('#status').textContent.startsWith('Propagated') && {IDLE}", timeout=600_000)
        with page.expect_download() as download:
            page.click("#download")
        mask_path = tmp_path / download.value.suggested_filename
        download.value.save_as(mask_path)

    assert mask_path.name == "synthetic_lesion_t1_mask.nii.gz"
    assert dice(load_image(mask_path).array > 0, truth) >= DICE_FLOOR
    assert problems == []
