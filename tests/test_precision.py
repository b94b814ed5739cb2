"""LiteMedSAM in bfloat16 (`precision="bf16"`): masks as float32's on real CT lesion slices, the
CPU fallback, and `medsam2 segment --precision` end to end."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from typer.testing import CliRunner

from medsam2.cli.main import app
from medsam2.engine.models import LiteMedSAMPredictor, effective_precision, load_predictor, native_bf16_cpu
from medsam2.engine.prompts import box_from_mask
from medsam2.io import load_image
from medsam2.io.masks import stored_array
from medsam2.metrics import dice
from medsam2.models.lite_medsam import fused_parts, load_lite_medsam

CPU = torch.device("cpu")
runner = CliRunner()


@pytest.fixture(scope="module")
def lesion_slices(ct_lesion_cases: list[Path]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(slice, lesion mask) on each case's largest lesion slice."""
    pairs = []
    for path in ct_lesion_cases:
        volume = load_image(path)
        truth = stored_array(volume, "gts") > 0
        key = int(np.argmax(truth.sum(axis=(1, 2))))
        pairs.append((volume.array[key], truth[key]))
    return pairs


def test_bf16_masks_agree_with_fp32_on_real_lesions(lesion_slices) -> None:
    model = load_lite_medsam()
    fp32 = LiteMedSAMPredictor(model, CPU, fuse=False)
    bf16 = LiteMedSAMPredictor(model, CPU, precision="bf16")
    assert bf16.precision == ("bf16" if native_bf16_cpu() else "fp32")
    slices = np.stack([plane for plane, _ in lesion_slices])
    exact, fast = fp32.encode(slices), bf16.encode(slices)
    for (plane, truth), e32, e16 in zip(lesion_slices, exact, fast):
        assert e16.dtype == torch.float32 and e16.shape == e32.shape
        if bf16.precision == "bf16":
            # Really bf16 (not exact), yet close: bf16 keeps 8 bits of mantissa.
            assert 0 < (e16 - e32).abs().max() < 0.1
        box = box_from_mask(truth)
        mask32 = fp32.predict(e32, plane.shape, box=box).logits > 0
        mask16 = bf16.predict(e16, plane.shape, box=box).logits > 0
        assert dice(mask16, mask32) >= 0.97
        assert dice(mask16, truth) > 0.7
    # The float32 model is untouched by the bf16 copy.
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_bf16_falls_back_to_fp32_without_native_bf16(caplog) -> None:
    without = {"avx2": True, "avx512_f": True, "avx512_bf16": False}
    with caplog.at_level(logging.WARNING, logger="medsam2.engine.models"):
        assert effective_precision("bf16", CPU, without) == "fp32"
    assert "no native bfloat16" in caplog.text
    assert effective_precision("bf16", CPU, {"avx512_bf16": True}) == "bf16"
    assert effective_precision("fp32", CPU, {"avx512_bf16": True}) == "fp32"
    assert native_bf16_cpu({"amx_bf16": True}) and not native_bf16_cpu({})


def test_load_predictor_bf16_runs_fused_parts() -> None:
    predictor = load_predictor(precision="bf16")
    assert isinstance(predictor, LiteMedSAMPredictor)
    # Fused by oneDNN Graph (a TorchScript module), not the unfused fallback.
    assert isinstance(predictor.fused_encoder, torch.jit.ScriptModule)
    assert isinstance(predictor.fused_box_decoder, torch.jit.ScriptModule)
    assert predictor.fused_dtype == (torch.bfloat16 if native_bf16_cpu() else torch.float32)


def test_fused_bf16_box_decoder_agrees_with_float32_on_real_lesions(lesion_slices) -> None:
    model = load_lite_medsam()
    fp32 = LiteMedSAMPredictor(model, CPU, fuse=False)
    _, box_decoder = fused_parts(model, torch.bfloat16)
    for plane, truth in lesion_slices:
        embedding = fp32.encode(plane[None])[0]
        box = torch.as_tensor(fp32.transform.box_to_model(np.asarray(box_from_mask(truth)), plane.shape), dtype=torch.float32)[None]
        with torch.inference_mode():
            exact_logits, exact_iou = model.decode(embedding, boxes=box)
            logits, iou = box_decoder(embedding, box)
        assert logits.dtype == torch.float32 and logits.shape == exact_logits.shape
        assert (logits > 0).eq(exact_logits > 0).float().mean() > 0.995
        assert abs(float(iou) - float(exact_iou)) < 0.02


@pytest.fixture(scope="module")
def lesion_crop(tmp_path_factory, ct_lesion_cases: list[Path]) -> tuple[Path, np.ndarray, tuple[int, int, int, int, int]]:
    """Four slices of 160x160 around a real lesion as NIfTI, its truth and the key slice's box."""
    volume = load_image(ct_lesion_cases[1])
    truth = stored_array(volume, "gts") > 0
    key = int(np.argmax(truth.sum(axis=(1, 2))))
    rows, cols = np.nonzero(truth[key])
    top, left = max(int(rows.mean()) - 80, 0), max(int(cols.mean()) - 80, 0)
    window = (slice(key - 1, key + 3), slice(top, top + 160), slice(left, left + 160))
    path = tmp_path_factory.mktemp("crop") / "crop.nii.gz"
    image = sitk.GetImageFromArray(volume.array[window].astype(np.int16))
    image.SetSpacing(volume.spacing)
    sitk.WriteImage(image, str(path))
    crop_truth = truth[window]
    x1, y1, x2, y2 = box_from_mask(crop_truth[1])
    return path, crop_truth, (1, round(x1), round(y1), round(x2), round(y2))


def test_segment_precision_bf16_end_to_end(tmp_path: Path, lesion_crop) -> None:
    image, truth, box = lesion_crop
    out = tmp_path / "seg.nii.gz"
    result = runner.invoke(app, ["segment", str(image), "-o", str(out), "--box", ",".join(map(str, box)), "--precision", "bf16"])
    assert result.exit_code == 0, result.output
    assert dice(load_image(out).array > 0, truth) > 0.7


def test_segment_bad_precision_is_a_one_line_error(tmp_path: Path, lesion_crop) -> None:
    image, _, box = lesion_crop
    out = tmp_path / "seg.nii.gz"
    result = runner.invoke(app, ["segment", str(image), "-o", str(out), "--box", ",".join(map(str, box)), "--precision", "fp16"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--precision 'fp16'" in lines[0], result.stderr
    assert not out.exists()
