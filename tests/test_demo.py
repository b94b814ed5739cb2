"""The default `medsam2 demo` end to end: the packaged MNI152 template, no data of our own."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from medsam2.cli.main import app
from medsam2.io import load_image, save_mask
from medsam2.io.samples import mni152_brain
from medsam2.metrics import dice

# The default demo measured Dice 0.635 (README, "Set-up: two commands"); the floor sits just under it.
DEMO_DICE_FLOOR = 0.62


def test_default_demo_writes_the_mask_and_overlay_and_prints_their_dice(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    template, reference = mni152_brain()
    mask = load_image(tmp_path / "mni152_brain_mask.nii.gz")
    assert mask.shape == template.shape
    assert mask.spacing == template.spacing and mask.origin == template.origin and mask.direction == template.direction
    with Image.open(tmp_path / "mni152_brain_overlay.png") as overlay:
        assert overlay.format == "PNG" and min(overlay.size) > 100
    printed = float(result.stdout.split("Dice ")[1].split()[0])
    assert abs(printed - dice(mask.array > 0, reference.array > 0)) <= 5e-4  # printed to 3 decimals
    assert printed >= DEMO_DICE_FLOOR


def test_demo_bad_reference_and_output_fail_in_one_line_before_the_model(tmp_path: Path, shared_data: Path) -> None:
    """An empty reference mask gives no box to prompt with, and a file where the output folder
    should be cannot hold the mask: both are said at once, and nothing is written."""
    case = shared_data / "ct_lesion" / "CT_Lesion_000002_03_01_035-047.npz"
    volume = load_image(case)
    empty = save_mask(np.zeros(volume.shape, np.uint8), like=volume, path=tmp_path / "empty.nii.gz")
    (tmp_path / "taken").write_text("a file")
    runner = CliRunner()
    for args, message in [
        (["--case", case, "--reference", empty, "--out", tmp_path / "out"], "empty.nii.gz: the reference mask is empty; give --box"),
        (["--case", case, "--out", tmp_path / "taken"], "taken: a file is there; the demo writes its mask and overlay into a folder"),
    ]:
        result = runner.invoke(app, ["demo", *map(str, args)])
        assert result.exit_code == 2, result.output
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith("error: ") and line.endswith(f"{tmp_path}/{message}"), line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.nii.gz", "taken"]
