"""SAM 2.1 against Meta's reference implementation (`sam2==1.1.0`, installed for the tests only).

Both are built from the same random weights (hiera-tiny at 512 px, CPU, float32). Meta's video
predictor is driven as MedSAM2 drives it on a CT volume, per object: prompt the key frame, propagate
forward, reset, prompt again, propagate backward. Our session does the same with
`propagate(direction="both")`. Masks must be identical and logits within 1e-4 on every frame.
Then a correction (a second box for the first object, five frames on) re-propagates; between the
two prompted frames, where both implementations attend to both of them, the same holds.

One thread: at 512 px a second one gains little, and it loses much when other processes share the
two cores (both implementations run the same kernels either way).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sam2.build_sam import build_sam2_video_predictor
from sam2.modeling.position_encoding import PositionEmbeddingSine
from sam2.modeling.sam2_utils import get_1d_sine_pe

from medsam2.engine.sam2_predictor import SAM2Predictor
from medsam2.engine.session import Session
from medsam2.models.sam2 import SAM2Config, SAM2Model, load_sam2
from medsam2.models.sam2.memory_attention import KEY_BLOCK, RoPEAttention, attend_in_key_blocks
from medsam2.models.sam2.position_encoding import sine_code

META_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
IMAGE_SIZE = 512
NUM_FRAMES = 12
TOLERANCE = 1e-4
# Two objects: a disk moving right, prompted with a box on frame 4; a rectangle moving down,
# prompted with a click inside and one on the background on frame 8.
PROMPTS = {
    1: (4, {"box": [120.0, 152.0, 216.0, 248.0]}),
    2: (8, {"points": [[330.0, 210.0], [200.0, 420.0]], "labels": [1, 0]}),
}
CORRECTION = (9, {"box": [180.0, 152.0, 276.0, 248.0]})  # object 1 again, around the disk on frame 9


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def build_meta(checkpoint: Path | None = None) -> torch.nn.Module:
    """Meta's video predictor with every inference switch `build_sam2_video_predictor` sets, at 512
    px; hole filling off (its compiled extension is not built here)."""
    model = build_sam2_video_predictor(
        META_CONFIG,
        ckpt_path=None if checkpoint is None else str(checkpoint),
        device="cpu",
        hydra_overrides_extra=[f"++model.image_size={IMAGE_SIZE}"],
    )
    model.fill_hole_area = 0
    return model.eval()


def randomise(model: torch.nn.Module, seed: int = 0) -> None:
    """Perturb every parameter (layer scales replaced), so that no zero-initialised tensor hides a
    wrong path; the object-score bias is raised so the objects count as present."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            if name.endswith("gamma"):
                parameter.copy_(0.1 * noise)
            else:
                parameter.add_(0.05 * noise)
        model.sam_mask_decoder.pred_obj_score_head.layers[2].bias += 1.0


def synthetic_frames(folder: Path) -> np.ndarray:
    """12 grey frames with two moving objects, written as the JPEG folder Meta's predictor reads;
    returns the decoded (N, H, W, 3) uint8 pixels both implementations see."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:IMAGE_SIZE, :IMAGE_SIZE]
    background = 40 + 20 * np.sin(xx / 23.0) + 20 * np.cos(yy / 31.0) + rng.normal(0, 6, xx.shape)
    folder.mkdir()
    for t in range(NUM_FRAMES):
        frame = background.copy()
        frame[(xx - 120 - 12 * t) ** 2 + (yy - 200) ** 2 < 45**2] = 200
        frame[(abs(xx - 330) < 40) & (abs(yy - 90 - 15 * t) < 30)] = 150
        grey = np.clip(frame, 0, 255).astype(np.uint8)
        Image.fromarray(np.stack([grey] * 3, axis=-1)).save(folder / f"{t:05d}.jpg", quality=95)
    return np.stack([np.asarray(Image.open(folder / f"{t:05d}.jpg").convert("RGB")) for t in range(NUM_FRAMES)])


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, SAM2Model, Path]:
    """Meta's model with random weights, ours loaded from the checkpoint saved from it."""
    torch.manual_seed(0)
    meta = build_meta()
    randomise(meta)
    checkpoint = tmp_path_factory.mktemp("sam2") / "random_sam2.1_hiera_tiny.pt"
    torch.save({"model": meta.state_dict()}, checkpoint)
    ours = load_sam2(checkpoint, SAM2Config(image_size=IMAGE_SIZE))
    return meta, ours, checkpoint


def test_state_dicts_load_both_ways(models, tmp_path: Path) -> None:
    meta, ours, _ = models
    assert ours.config.variant == "tiny"  # detected from the shapes
    assert ours.state_dict().keys() == meta.state_dict().keys()
    saved = tmp_path / "ours.pt"
    torch.save({"model": ours.state_dict()}, saved)
    reloaded = build_meta(saved)  # Meta's loader fails on any missing or unexpected key
    for key, tensor in meta.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], tensor), key
    result = SAM2Model(SAM2Config(image_size=IMAGE_SIZE)).load_state_dict(reloaded.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def meta_state(meta: torch.nn.Module, folder: Path) -> dict:
    """Meta's inference state for the JPEG folder, every frame's features cached: Meta's predictor
    keeps one frame's features; giving it all of them (its own encoder's output) spares the test
    re-encoding frames in every pass."""
    state = meta.init_state(str(folder))
    for frame in range(NUM_FRAMES):
        image = state["images"][frame].float().unsqueeze(0)
        state["cached_features"][frame] = (image, meta.forward_image(image))
    return state


def meta_both_ways(meta: torch.nn.Module, state: dict) -> dict[tuple[int, int], np.ndarray]:
    """(object, frame) -> video-resolution logits from Meta's predictor, MedSAM2's procedure."""
    logits: dict[tuple[int, int], np.ndarray] = {}
    for obj_id, (key_frame, prompt) in PROMPTS.items():
        for reverse in (False, True):
            meta.reset_state(state)
            _, _, masks = meta.add_new_points_or_box(state, key_frame, obj_id, **prompt)
            logits[obj_id, key_frame] = masks[0, 0].numpy()
            for frame, _, masks in meta.propagate_in_video(state, start_frame_idx=key_frame, reverse=reverse):
                if frame != key_frame:
                    logits[obj_id, frame] = masks[0, 0].numpy()
    return logits


def meta_between_two_prompts(meta: torch.nn.Module, state: dict) -> dict[int, np.ndarray]:
    """frame -> logits of object 1 prompted on its key frame and on the correction's frame: the
    prompted frames, then forward from the first and backward from the second up to half-way."""
    (first, prompt), (second, correction) = PROMPTS[1], CORRECTION
    half = (second - first) // 2
    logits: dict[int, np.ndarray] = {}
    for start, reverse in ((first, False), (second, True)):
        meta.reset_state(state)
        meta.add_new_points_or_box(state, first, 1, **prompt)
        _, _, masks = meta.add_new_points_or_box(state, second, 1, **correction)
        logits[second] = masks[0, 0].numpy()
        span = second - first - 1 - half if reverse else half
        for frame, _, masks in meta.propagate_in_video(state, start, max_frame_num_to_track=span, reverse=reverse):
            if frame != start:
                logits[frame] = masks[0, 0].numpy()
    return logits


def test_propagation_and_a_correction_match_meta_video_predictor(models, tmp_path: Path) -> None:
    meta, ours, _ = models
    frames = synthetic_frames(tmp_path / "frames")
    with torch.inference_mode():
        state = meta_state(meta, tmp_path / "frames")
        expected = meta_both_ways(meta, state)
        expected_corrected = meta_between_two_prompts(meta, state)

    predictor = SAM2Predictor(ours, "cpu", precision="fp32")
    session = Session(frames, predictor)
    got: dict[tuple[int, int], np.ndarray] = {}
    for obj_id, (key_frame, prompt) in PROMPTS.items():
        mask = session.add_prompt(key_frame, obj_id, **prompt)
        got[obj_id, key_frame] = anchor_logits(session, predictor, obj_id, key_frame)
        np.testing.assert_array_equal(mask, got[obj_id, key_frame] > 0)
    session.propagate("both", progress=False, on_slice=lambda obj_id, frame, logits: got.__setitem__((obj_id, frame), logits))

    assert got.keys() == expected.keys() == {(obj, frame) for obj in PROMPTS for frame in range(NUM_FRAMES)}
    assert_same(got, expected)
    for (obj_id, frame), logits in expected.items():
        np.testing.assert_array_equal(session.objects[obj_id].masks.get(frame, np.zeros_like(logits, bool)), logits > 0)
    # The random network must give masks worth comparing: neither empty nor full on the tracked frames.
    fractions = [float((logits > 0).mean()) for (_, frame), logits in expected.items()]
    assert 0.05 < np.median(fractions) < 0.95

    # The correction: only object 1's runs next to the new prompt are recomputed.
    second, correction = CORRECTION
    session.add_prompt(second, 1, **correction)
    corrected = {second: anchor_logits(session, predictor, 1, second)}
    stepped: list[tuple[int, int]] = []

    def keep(obj_id: int, frame: int, logits: np.ndarray) -> None:
        stepped.append((obj_id, frame))
        corrected[frame] = logits

    session.propagate("both", progress=False, on_slice=keep)
    first = PROMPTS[1][0]
    assert sorted(stepped) == [(1, frame) for frame in range(first + 1, NUM_FRAMES) if frame != second]
    # Past the second prompt Meta's frames attend to every prompted frame, ours to the nearest
    # behind (README: deliberate differences); between the two both attend to both.
    assert expected_corrected.keys() == set(range(first + 1, second + 1))
    assert_same({key: corrected[key] for key in expected_corrected}, expected_corrected)


def anchor_logits(session: Session, predictor: SAM2Predictor, obj_id: int, frame: int) -> np.ndarray:
    """The video-resolution logits of a prompted frame."""
    low_res = session.objects[obj_id].anchor_states[frame].low_res_logits[0, 0]
    return predictor.transform.logits_to_image(low_res, session.slice_hw).numpy()


def assert_same(got: dict, expected: dict) -> None:
    """Logits within the tolerance and identical masks, key by key."""
    worst = max(float(np.abs(got[key] - expected[key]).max()) for key in expected)
    assert worst <= TOLERANCE
    for key, logits in expected.items():
        np.testing.assert_array_equal(got[key] > 0, logits > 0, err_msg=f"at {key}")


def test_position_codes_are_computed_on_the_device_as_sam2_computes_them(device: str) -> None:
    """SAM 2 computes its sine position maps and pointer codes on the device it runs on (on a GPU
    machine, even at construction); a model built for a device holds the same values, bit for bit
    (on CUDA, sin, cos and pow round differently from the CPU)."""
    grid = IMAGE_SIZE // 16
    model = SAM2Model(SAM2Config(image_size=IMAGE_SIZE), device=device)
    for ours, channels in ((model.vision_pos, 256), (model.memory_pos, 64)):
        meta = PositionEmbeddingSine(channels, warmup_cache=False)._pe(1, torch.device(device), grid, grid)
        assert ours.device.type == device and torch.equal(ours, meta)
    distances = torch.arange(1, 17, dtype=torch.float32, device=device) / 15
    assert torch.equal(sine_code(distances, 256), get_1d_sine_pe(distances, dim=256))


# Where the split attention runs: compiled on a GPU in half precision; on the CPU its arithmetic is checked.
SPLIT_ATTENTION_CASES = [("cpu", torch.float32), ("cpu", torch.bfloat16)] + (
    [("cuda", torch.bfloat16)] if torch.cuda.is_available() else []
)


@pytest.mark.parametrize(("device", "dtype"), SPLIT_ATTENTION_CASES)
def test_cross_attention_in_key_blocks_is_attention_over_all_keys(device: str, dtype: torch.dtype) -> None:
    """Compiled on a GPU in bfloat16, the memory cross-attention runs over blocks of keys side by
    side, merged by their log-sum-exps: with a full bank at 512 px (7 frames of 1024 keys, 16
    pointers of 4 tokens), the same as one attention over all keys, to float32 rounding in float32
    and within twice plain bfloat16 attention's error in bfloat16. On a GPU the compiled layer
    takes that path."""
    torch.manual_seed(0)
    spatial = 7 * (IMAGE_SIZE // 16) ** 2
    q = torch.randn(1, 1, 1024, 256, device=device)
    k = 2 * torch.randn(1, 1, spatial + 64, 256, device=device)
    v = torch.randn_like(k)
    exact = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    blocked = attend_in_key_blocks(q, k, v, spatial, KEY_BLOCK).float()
    plain = torch.nn.functional.scaled_dot_product_attention(q, k, v).float()
    tolerance = 1e-5 if dtype == torch.float32 else 2 * float((plain - exact).abs().max())
    assert float((blocked - exact).abs().max()) <= tolerance
    if device == "cuda":
        layer = RoPEAttention(256, IMAGE_SIZE // 16, kv_in_dim=64).to(device).eval()
        queries = torch.randn(1, 1024, 256, device=device)
        memory = torch.randn(1, spatial + 64, 64, device=device)
        with torch.no_grad():
            whole = layer(queries, memory, memory, num_k_exclude_rope=64)  # float32: not split
            with torch.autocast("cuda", dtype=torch.bfloat16):
                split = torch.compile(layer)(queries, memory, memory, num_k_exclude_rope=64).float()
        assert float((split - whole).abs().max()) <= 0.05 * float(whole.abs().max())
