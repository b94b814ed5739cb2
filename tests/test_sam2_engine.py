"""SAM 2.1 / MedSAM2 in the engine: checkpoints of every variant, bad files, the model registry,
bounded memory on long sequences, corrections, and the command line.

Networks here have random weights (no published checkpoint is downloaded); agreement with Meta's
implementation is tested in test_sam2_reference.py. Small input sizes keep the runs short, and so
does one thread: at these sizes a second thread only waits at every op's barrier (ten times slower
than one thread when other processes share the two cores).
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch._dynamo.utils import counters as dynamo_counters

import sam2.build_sam  # noqa: F401  (registers Meta's configs with hydra)
from medsam2.engine.memory import MemoryBank, MemoryEntry
from medsam2.engine.models import load_predictor
from medsam2.engine.prompts import Prompt, box_from_mask
from medsam2.engine.registry import PRESETS, ModelChoice, config_file, resolve_model, sam2_predictor
from medsam2.engine.sam2_predictor import SAM2Predictor
from medsam2.engine.session import Session
from medsam2.engine.tracking import Run
from medsam2.errors import InputError
from medsam2.io import load_image
from medsam2.models.sam2 import VARIANTS, SAM2Config, SAM2Model, sam2_from_state
from medsam2.models.sam2.checkpoint import SAM2_1_ONLY_KEYS
from medsam2.models.weights import bundled_lite_medsam_checkpoint, read_state_dict
from medsam2.models.sam2.position_encoding import apply_rope, axial_rope_frequencies

META_CONFIGS = {"tiny": "t", "small": "s", "base-plus": "b+", "large": "l"}


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def random_sam2(image_size: int, seed: int = 0) -> SAM2Model:
    """Hiera-tiny with random weights whose object-score head says "present"."""
    torch.manual_seed(seed)
    model = SAM2Model(SAM2Config(image_size=image_size))
    with torch.no_grad():
        model.sam_mask_decoder.pred_obj_score_head.layers[2].bias.fill_(5.0)
    return model.eval()


def moving_disk(num_frames: int, size: int = 64) -> np.ndarray:
    """(N, size, size) uint8 frames of a bright disk drifting right over a dark gradient."""
    yy, xx = np.mgrid[:size, :size]
    frames = np.empty((num_frames, size, size), dtype=np.uint8)
    for t in range(num_frames):
        disk = (xx - size / 3 - t % 8) ** 2 + (yy - size / 2) ** 2 < (size / 6) ** 2
        frames[t] = np.where(disk, 220, 30 + xx // 2)
    return frames


@pytest.fixture(scope="module")
def small_predictor() -> SAM2Predictor:
    return SAM2Predictor(random_sam2(64), "cpu")


# -- checkpoints -------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_each_variant_loads_from_a_random_state_dict_with_metas_shapes(variant: str) -> None:
    config = compose(config_name=f"configs/sam2.1/sam2.1_hiera_{META_CONFIGS[variant]}.yaml")
    OmegaConf.resolve(config)
    reference = instantiate(config.model, _recursive_=True)  # Meta's model, for its shapes
    generator = torch.Generator().manual_seed(1)
    state = {key: torch.randn(tensor.shape, generator=generator) for key, tensor in reference.state_dict().items()}
    model = sam2_from_state(state, Path(f"random_{variant}.pt"), SAM2Config(image_size=512))
    assert model.config.variant == variant
    loaded = model.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[key], tensor) for key, tensor in state.items())


def test_unknown_truncated_and_foreign_checkpoints_give_one_line_errors(tmp_path: Path) -> None:
    state = random_sam2(64).state_dict()
    cases: dict[str, tuple[object, str]] = {
        "missing_tensor.pt": (
            {"model": {k: v for k, v in state.items() if k != "no_obj_ptr"}},
            "not a SAM 2.1 / MedSAM2 checkpoint \\(1 missing key, e.g. no_obj_ptr\\): give the model's published file",
        ),
        "extra_tensor.pt": ({"model": {**state, "extra.weight": torch.zeros(1)}}, "\\(1 unexpected key, e.g. extra.weight\\)"),
        "sam2_0.pt": (  # Meta's first release: the network SAM 2.1 grew from
            {"model": {k: v for k, v in state.items() if not k.startswith(("no_obj_embed_spatial", "obj_ptr_tpos_proj"))}},
            "a SAM 2.0 checkpoint .*; medsam2 runs SAM 2.1: use sam2.1_hiera_",
        ),
        "wide_trunk.pt": (
            {"model": {**state, "image_encoder.trunk.patch_embed.proj.weight": torch.zeros(80, 3, 7, 7)}},
            "no Hiera trunk of a known size",
        ),
        "foreign.pt": ({"model": {"backbone.conv1.weight": torch.zeros(8, 3, 3, 3)}}, "neither a LiteMedSAM nor a SAM 2.1"),
        "not_a_dict.pt": ([1, 2, 3], "not a state dict"),
    }
    for name, (content, message) in cases.items():
        torch.save(content, tmp_path / name)
    good = tmp_path / "good.pt"
    torch.save({"model": state}, good)
    (tmp_path / "truncated.pt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    cases["truncated.pt"] = (None, "an incomplete checkpoint")
    for name, (_, message) in cases.items():
        with pytest.raises(InputError, match=message) as raised:
            load_predictor(str(tmp_path / name))
        assert "\n" not in str(raised.value) and name in str(raised.value)
    lite_like = tmp_path / "lite_like.pt"
    torch.save({"image_encoder.neck.0.weight": torch.zeros(1)}, lite_like)
    with pytest.raises(InputError, match="not a SAM 2.1 / MedSAM2 checkpoint, which --model medsam2 needs"):
        load_predictor(f"medsam2={lite_like}")


# -- registry ----------------------------------------------------------------------------------------


def test_presets_resolve_through_the_environment_or_the_config_file(tmp_path: Path, monkeypatch) -> None:
    for variable in [preset.variable for preset in PRESETS.values()] + ["MEDSAM2_CONFIG"]:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert config_file() == tmp_path / "xdg" / "medsam2" / "config.toml"
    with pytest.raises(InputError, match="MEDSAM2_MODEL_MEDSAM2=/path/to/MedSAM2_latest.pt") as raised:
        resolve_model("medsam2")
    assert "\n" not in str(raised.value) and str(config_file()) in str(raised.value)

    weights = tmp_path / "MedSAM2_latest.pt"
    weights.write_bytes(b"")
    monkeypatch.setenv("MEDSAM2_MODEL_MEDSAM2", str(weights))
    choice = resolve_model("medsam2")
    assert choice.path == weights and choice.preset is not None and choice.preset.image_size == 512

    config = tmp_path / "custom.toml"
    config.write_text(f'[models]\n"sam2.1-large" = "{tmp_path / "missing.pt"}"\n')
    monkeypatch.setenv("MEDSAM2_CONFIG", str(config))
    assert PRESETS["sam2.1-large"].variable == "MEDSAM2_MODEL_SAM2_1_LARGE"
    with pytest.raises(InputError, match=r"\(from .*custom\.toml \[models\] sam2\.1-large\): .*missing\.pt does not exist"):
        resolve_model("sam2.1-large")
    # A relative path is the config file's neighbour, wherever the command runs.
    config.write_text('[models]\n"sam2.1-large" = "MedSAM2_latest.pt"\n')
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert resolve_model("sam2.1-large").path == weights
    # Mistakes in the file are named, not taken for "nothing configured".
    for content, message in [
        ("[models\n", "not a valid TOML config file"),
        ('[model]\nmedsam2 = "x.pt"\n', "unknown table or key 'model', did you mean 'models'?; the config file has [models]"),
        ('[models]\nmedsam = "x.pt"\n', "[models] medsam: not a preset, did you mean 'medsam2'? (presets: medsam2, sam2.1-tiny"),
        ("[models]\nmedsam2 = 42\n", "[models] medsam2: give the checkpoint's path as a string, not 42"),
    ]:
        config.write_text(content)
        with pytest.raises(InputError, match=re.escape(message)):
            resolve_model("sam2.1-large")
    monkeypatch.setenv("MEDSAM2_CONFIG", str(tmp_path / "none.toml"))
    with pytest.raises(InputError, match=r"^\$MEDSAM2_CONFIG=.*none\.toml: no such file$"):
        resolve_model("sam2.1-large")
    monkeypatch.setenv("MEDSAM2_CONFIG", str(tmp_path))
    with pytest.raises(InputError, match="a folder, not a config file"):
        resolve_model("sam2.1-large")

    assert resolve_model(f"sam2.1-small={weights}").preset == PRESETS["sam2.1-small"]
    assert resolve_model(str(weights)).preset is None
    for spec, message in [
        ("sam3", "neither a known model"),
        ("medsam", "nor an existing checkpoint file, did you mean 'medsam2'?"),
        ("medsam2=", "give the checkpoint file after '=' (medsam2=/path/to/MedSAM2_latest.pt)"),
        (f"medsam2={tmp_path}", "a folder, not a checkpoint file"),
        (str(tmp_path), "a folder, not a checkpoint file"),
    ]:
        with pytest.raises(InputError, match=re.escape(message)):
            resolve_model(spec)
    monkeypatch.setenv("MEDSAM2_MODEL_MEDSAM2", str(tmp_path))
    with pytest.raises(InputError, match=r"--model medsam2 \(from \$MEDSAM2_MODEL_MEDSAM2\): .* a folder, not a checkpoint file"):
        resolve_model("medsam2")


def test_a_bare_sam2_file_runs_with_metas_settings_and_a_preset_with_its_own(tmp_path: Path, caplog) -> None:
    """A bare file: Meta's settings, or those `medsam2 train` recorded in it; a preset's own
    otherwise, with a warning where the file is another variant or was trained otherwise. Each
    predictor says what it runs."""
    path = tmp_path / "finetuned.pt"
    state = random_sam2(64).state_dict()
    torch.save({"model": state}, path)
    bare = load_predictor(str(path))
    assert isinstance(bare, SAM2Predictor)
    assert (bare.model.config.variant, bare.model.image_size, bare.transform.resample) == ("tiny", 1024, "bicubic")
    assert bare.description == f"SAM 2.1 hiera-tiny at 1024 px with Meta's settings, from {path}"
    medsam2 = load_predictor(f"medsam2={path}")
    assert (medsam2.model.image_size, medsam2.transform.resample) == (512, "bilinear")
    assert medsam2.precision == "fp32" and "at 512 px with medsam2's settings" in medsam2.description
    assert not caplog.records
    load_predictor(f"sam2.1-large={path}")
    (warning,) = [record.getMessage() for record in caplog.records]
    assert f"{path}: a SAM 2.1 hiera-tiny checkpoint; --model sam2.1-large is hiera-large" in warning

    caplog.clear()
    trained = tmp_path / "trained.pt"  # as `medsam2 train` writes it
    torch.save({"model": state, "model_name": "sam2", "config": {"model": {"sam2_preset": "medsam2", "sam2_image_size": 128}}}, trained)
    for spec in (str(trained), f"medsam2={trained}"):
        predictor = load_predictor(spec)
        assert (predictor.model.image_size, predictor.transform.resample) == (128, "bilinear"), spec
    assert not caplog.records
    assert load_predictor(f"sam2.1-tiny={trained}").model.image_size == 1024  # as asked, with a word
    (warning,) = [record.getMessage() for record in caplog.records]
    assert "trained with medsam2's settings at 128 px; running it with --model sam2.1-tiny's (1024 px) as asked" in warning


# -- propagation -------------------------------------------------------------------------------------


def test_memory_stays_bounded_on_a_long_sequence(small_predictor: SAM2Predictor) -> None:
    frames = moving_disk(26)
    session = Session(frames, small_predictor)
    session.add_prompt(0, 1, box=(8, 18, 36, 46))
    held: list[int] = []

    def inspect(obj_id: int, index: int, logits: np.ndarray) -> None:
        held.append(len(session.tracker.banks[0].tensors()))
        assert len(session.embeddings) <= session.config.cache_slices

    session.propagate("forward", progress=False, on_slice=inspect)
    assert len(held) == 25
    config = small_predictor.model.config
    # the conditioning frame (memory + pointer), 6 recent spatial memories, 15 recent pointers
    bound = 2 + (config.num_maskmem - 1) + (config.max_obj_ptrs - 1)
    assert max(held) == held[-1] == bound
    bank = session.tracker.banks[0]
    assert len(bank.recent) == config.max_obj_ptrs - 1
    assert sum(entry.features is not None for entry in bank.recent.values()) == config.num_maskmem - 1
    assert all(entry.features.dtype == torch.bfloat16 for entry in bank.recent.values() if entry.features is not None)
    assert session.embeddings.encoded_count == len(frames)  # each frame encoded once


def test_masks_reach_the_host_a_chunk_behind_the_tracking(small_predictor: SAM2Predictor) -> None:
    """Masks go to the host a chunk of frames at a time, each chunk while the next one is tracked
    (on a GPU the host then only ever waits for finished work): the first 8 frames' masks arrive
    once frames 9 to 16 are tracked, the next 8 once the last 3 are."""
    tracker = small_predictor.tracker(moving_disk(20))
    _, anchor = tracker.segment_anchor(Prompt(0, box=(8, 18, 36, 46)), None, None)
    run = Run(obj_id=1, anchor=0, step=1, slices=range(1, 20), conditioning={0: anchor})
    latest_tracked = {frame: max(tracker.banks[0].recent) for _, frame, _ in tracker.follow([run])}
    assert small_predictor.output_chunk == 8
    assert latest_tracked == {frame: 16 if frame <= 8 else 19 for frame in range(1, 20)}


def test_bank_selection_follows_sam2_in_both_directions() -> None:
    def entry(frame: int) -> MemoryEntry:  # features and pointer hold the frame number
        return MemoryEntry(frame, torch.full((1, 1, 1, 1), float(frame)), torch.full((1, 1), float(frame)))

    for step in (1, -1):
        # a run from anchor 20 towards the next anchor 40 (forward) or 0 (backward), 9 frames in
        anchors = sorted([20, 20 + 20 * step])
        bank = MemoryBank([entry(20), entry(20 + 20 * step)], step, num_frames=60)
        for k in range(1, 10):
            bank.add(entry(20 + k * step))
        chosen = bank.select(20 + 10 * step)
        slots = [(int(features.item()), slot) for features, slot in chosen.spatial]
        # both anchors at slot 0, then the 6 most recent frames, the furthest first
        assert slots == [(anchors[0], 0), (anchors[1], 0)] + [(20 + k * step, k - 3) for k in range(4, 10)]
        pointers = [(int(pointer.item()), distance) for pointer, distance in chosen.pointers]
        # the anchor behind gives a pointer, the one ahead does not; then the recent frames
        assert pointers == [(20, 10)] + [(20 + k * step, 10 - k) for k in range(9, 0, -1)]
        assert chosen.max_pointer_distance == 15


def test_correction_repropagates_only_the_affected_range(small_predictor: SAM2Predictor) -> None:
    frames = moving_disk(12)
    session = Session(frames, small_predictor)
    session.add_prompt(2, 1, box=(8, 18, 36, 46))
    session.propagate(progress=False)
    before = session.result()
    assert before[:2].any() and before[3:].any()

    stepped: list[int] = []
    session.add_prompt(9, 1, box=(12, 18, 42, 46))
    session.propagate(progress=False, on_slice=lambda obj_id, index, logits: stepped.append(index))
    # the forward run of 2 now ends half-way (5); the new anchor covers 8..6 backwards and 10..11
    assert sorted(stepped) == [3, 4, 5, 6, 7, 8, 10, 11]
    after = session.result()
    np.testing.assert_array_equal(after[:2], before[:2])  # the backward run of 2 was not touched
    assert not session.objects[1].dirty_runs

    fresh = Session(frames, small_predictor)
    fresh.add_prompt(2, 1, box=(8, 18, 36, 46))
    fresh.add_prompt(9, 1, box=(12, 18, 42, 46))
    fresh.propagate(progress=False)
    np.testing.assert_array_equal(fresh.result(), after)  # incremental == from scratch

    session.remove_prompt(9, 1)
    session.propagate(progress=False)
    np.testing.assert_array_equal(session.result(), before)


def test_clicks_refine_a_prompted_slice_and_a_mask_prompt_is_kept_as_given(small_predictor: SAM2Predictor) -> None:
    frames = moving_disk(6)
    session = Session(frames, small_predictor)
    first = session.add_prompt(2, 1, box=(8, 18, 36, 46))
    refined = session.add_prompt(2, 1, points=[(22.0, 32.0)], labels=[1])
    assert session.objects[1].prompts[2].box == (8.0, 18.0, 36.0, 46.0)
    assert len(session.objects[1].prompts[2].points) == 1
    assert refined.shape == first.shape == frames.shape[1:]
    mask = np.zeros(frames.shape[1:], dtype=bool)
    mask[20:40, 10:30] = True
    np.testing.assert_array_equal(session.add_prompt(4, 2, mask=mask), mask)
    session.propagate(progress=False)
    assert set(np.unique(session.result())) <= {0, 1, 2}
    # An empty mask takes object 2 off frame 5: kept as given, its memory says the object is absent.
    assert (session.result()[5] == 2).any() and not session.add_prompt(5, 2, mask=np.zeros_like(mask)).any()
    session.propagate(progress=False)
    assert not (session.result()[5] == 2).any() and 5 not in session.objects[2].masks


def test_an_erased_frame_ends_the_object_past_it(small_predictor: SAM2Predictor) -> None:
    """Taking the object off a frame (where propagation ran past its end) empties the frames beyond
    it, as with LiteMedSAM: nothing is followed from there (the random model's memory of "absent"
    did not stop it). Frames back towards the box are still tracked; taking the erasure back
    restores everything."""
    frames = moving_disk(12)
    session = Session(frames, small_predictor)
    session.add_prompt(3, 1, box=(8, 18, 36, 46))
    session.propagate(progress=False)
    before = session.result()
    assert before.any(axis=(1, 2)).all()
    session.add_prompt(8, 1, mask=np.zeros(frames.shape[1:], dtype=bool))
    session.propagate(progress=False)
    after = session.result()
    assert not after[8:].any() and after[:8].any(axis=(1, 2)).all()
    np.testing.assert_array_equal(after[:4], before[:4])  # the box's backward run is untouched
    session.remove_prompt(8, 1)
    session.propagate(progress=False)
    np.testing.assert_array_equal(session.result(), before)


def test_bfloat16_autocast_runs_and_stays_close_to_float32() -> None:
    """The precision used on GPUs, run here through the CPU's autocast: every op must accept the
    mixed dtypes, and the masks must stay close to the float32 ones."""
    model = random_sam2(64)
    frames = moving_disk(6)
    results = {}
    for precision in ("fp32", "bf16"):
        session = Session(frames, SAM2Predictor(model, precision=precision))
        session.add_prompt(1, 1, box=(8, 18, 36, 46))
        session.add_prompt(4, 2, points=[(20.0, 30.0)], labels=[1])
        session.propagate(progress=False)
        results[precision] = session.result()
    assert set(np.unique(results["fp32"])) == {0, 1, 2}
    assert (results["fp32"] == results["bf16"]).mean() > 0.95


def test_bfloat16_steps_cast_the_weights_once_per_chunk_of_frames() -> None:
    """Under autocast each linear casts its float32 weights to bfloat16; the frames of a chunk share
    one autocast context, whose cache keeps those casts (a kernel each on a GPU), so a chunk of 8
    frames casts the weights once where a chunk of 1 casts them on every frame."""
    model = random_sam2(64)
    frames = moving_disk(17)
    memory_attention_weights = sum(1 for name, _ in model.memory_attention.named_parameters() if "norm" not in name)

    def casts(output_chunk: int) -> int:
        session = Session(frames, SAM2Predictor(model, precision="bf16", output_chunk=output_chunk))
        session.add_prompt(0, 1, box=(8, 18, 36, 46))
        with torch.profiler.profile() as profile:
            session.propagate("forward", progress=False)
        return sum(event.count for event in profile.key_averages() if event.key == "aten::_to_copy")

    saved_per_frame = (casts(1) - casts(8)) / (len(frames) - 1)
    assert saved_per_frame > memory_attention_weights  # the decoder's and memory encoder's weights too


@pytest.mark.filterwarnings("ignore:.*script_method.*:DeprecationWarning")  # torch's own, while compiling
def test_a_compiled_step_compiles_in_the_warm_up_and_tracks_as_the_eager_one(device: str) -> None:
    """A compiled predictor as `load_predictor(..., compiled=True)` makes it for a server (`medsam2
    serve --compile`): built from a checkpoint's state and warmed up there (MedSAM2's settings, at
    64 px so that it compiles in under a minute on a CPU). Compiled means inductor's CPU code here;
    on a GPU CUDA graphs, the encoder compiled too. After the warm-up a propagation of two objects
    both ways, and a correction's, compiles nothing more and gives the eager step's masks (fused kernels may round
    differently: on the CPU a boundary pixel in a thousand may flip; in bfloat16 on a GPU more). On
    a GPU it records no CUDA graph either: the encoder is given full batches only, the prompted
    frames' and the runs' last ones included."""
    model = random_sam2(64)
    frames = moving_disk(20)

    def propagate(predictor: SAM2Predictor) -> np.ndarray:
        session = Session(frames, predictor)
        session.add_prompt(10, 1, box=(8, 18, 36, 46))
        session.add_prompt(3, 2, points=[(20.0, 30.0)], labels=[1])
        session.propagate("both", progress=False)
        # A correction between two prompted slices: runs there attend to both, one of them ahead.
        session.add_prompt(14, 1, points=[(30.0, 30.0)], labels=[0])
        session.propagate("both", progress=False)
        return session.result()

    eager = propagate(SAM2Predictor(model, device))
    graphs = dynamo_counters["stats"]["unique_graphs"]
    small_medsam2 = ModelChoice(Path("random_medsam2.pt"), dataclasses.replace(PRESETS["medsam2"], image_size=64))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled = sam2_predictor(small_medsam2, model.state_dict(), torch.device(device), compiled=True)
    assert not [w.message for w in caught if "complex" in str(w.message)]  # the rotary encoding compiled in real arithmetic
    assert compiled.compiled and dynamo_counters["stats"]["unique_graphs"] > graphs
    graphs = dynamo_counters["stats"]["unique_graphs"]
    recorded = dynamo_counters["inductor"]["cudagraph_recorded_non_static_inputs"]
    result = propagate(compiled)
    assert dynamo_counters["stats"]["unique_graphs"] == graphs
    assert dynamo_counters["inductor"]["cudagraph_recorded_non_static_inputs"] == recorded
    assert set(np.unique(eager)) == {0, 1, 2}
    assert (result != eager).mean() < (1e-3 if device == "cpu" else 2e-2)


def test_the_rotary_encoding_compiled_rotates_as_the_eager_one() -> None:
    """Compiled, the rotary encoding runs in real arithmetic (inductor generates no code for complex
    numbers, and warns where it meets them): the same rotations as the eager complex product, on one
    grid of queries and on the keys of several memory frames."""
    rotations = torch.view_as_real(axial_rope_frequencies(256, 8, 8))
    compiled = torch.compile(apply_rope, fullgraph=True)
    for frames in (1, 3):
        tokens = torch.randn(2, 1, frames * 64, 256)
        torch.testing.assert_close(compiled(tokens, rotations), apply_rope(tokens, rotations), rtol=0, atol=1e-5)


# -- command line ------------------------------------------------------------------------------------


def test_cli_segments_a_ct_case_with_a_sam2_checkpoint(tmp_path: Path, ct_lesion_cases: list[Path]) -> None:
    """`segment --model medsam2` on four slices of a shared DeepLesion case, the preset's file given by
    its environment variable: a random-weight checkpoint, MedSAM2's settings (512 px)."""
    # imported here: the command line brings the server's and the annotation tool's libraries, which a
    # lent GPU machine lacks (benchmarks/gpu_checks.sh runs this file's other tests there)
    from typer.testing import CliRunner

    from medsam2.cli.main import app

    path = tmp_path / "random_medsam2.pt"
    torch.save({"model": random_sam2(64).state_dict()}, path)
    arrays = dict(np.load(ct_lesion_cases[1]))
    truth = arrays["gts"] > 0
    key = int(np.argmax(truth.sum(axis=(1, 2))))
    for name in ("imgs", "gts"):
        arrays[name] = arrays[name][key - 1 : key + 3]
    case = tmp_path / "four_slices.npz"
    np.savez_compressed(case, **arrays)
    x1, y1, x2, y2 = box_from_mask(truth[key])
    output = tmp_path / "mask.nii.gz"
    command = ["segment", str(case), "--model", "medsam2", "--box", f"1,{x1:g},{y1:g},{x2:g},{y2:g}", "-o", str(output)]
    result = CliRunner().invoke(app, command, env={"MEDSAM2_MODEL_MEDSAM2": str(path)})
    assert result.exit_code == 0, result.output
    assert f"model: SAM 2.1 hiera-tiny at 512 px with medsam2's settings, from {path}\n" in result.stderr
    scan, written = load_image(case), load_image(output)
    assert written.spacing == pytest.approx(scan.spacing) and written.origin == pytest.approx(scan.origin)
    labels = written.array
    assert labels.shape == scan.shape == (4, 512, 512) and set(np.unique(labels)) <= {0, 1} and labels[1].any()

    (tmp_path / "empty.toml").write_text("")
    missing = CliRunner().invoke(
        app, ["segment", str(case), "--model", "sam2.1-base-plus", "--box", "1,4,9,18,23", "-o", str(output)],
        env={"MEDSAM2_MODEL_SAM2_1_BASE_PLUS": "", "MEDSAM2_CONFIG": str(tmp_path / "empty.toml")},
    )
    assert missing.exit_code == 2
    assert missing.stderr.count("\n") == 1 and "MEDSAM2_MODEL_SAM2_1_BASE_PLUS=" in missing.stderr


def test_info_tells_what_a_checkpoint_is_and_how_it_runs(tmp_path: Path) -> None:
    """`medsam2 info FILE.pt`: the family and variant from the tensors, the settings `--model FILE`
    runs it with (those `medsam2 train` recorded, else Meta's); a file `--model` would refuse (SAM
    2.0, a tensor short) is refused here too (was described as runnable)."""
    import json

    from typer.testing import CliRunner

    from medsam2.cli.main import app

    state = random_sam2(64).state_dict()
    torch.save({"model": state, "model_name": "sam2", "step": 3, "config": {"model": {"sam2_preset": "medsam2", "sam2_image_size": 128}}}, tmp_path / "trained.pt")
    torch.save(state, tmp_path / "plain.pth")
    described = {name: CliRunner().invoke(app, ["info", str(tmp_path / name), "--json"]) for name in ("trained.pt", "plain.pth")}
    trained, plain = (json.loads(result.stdout) for result in described.values())
    assert (trained["family"], trained["variant"], trained["memory_slots"]) == ("SAM 2.1 / MedSAM2", "hiera-tiny", 7)
    assert trained["parameters"] == sum(t.numel() for t in state.values()) and trained["trained"] == {"model_name": "sam2", "step": 3}
    assert trained["runs_as"].startswith("hiera-tiny at 128 px with medsam2's settings as --model FILE")
    assert plain["runs_as"].startswith("hiera-tiny at 1024 px with Meta's settings") and "trained" not in plain
    torch.save({"model": {"backbone.weight": torch.zeros(1)}}, tmp_path / "other.pt")
    foreign = CliRunner().invoke(app, ["info", str(tmp_path / "other.pt")])
    assert foreign.exit_code == 2 and "neither a LiteMedSAM nor a SAM 2.1 / MedSAM2 checkpoint (1 tensor, e.g. backbone.weight)" in foreign.stderr
    sam2_0 = {key: tensor for key, tensor in state.items() if key not in SAM2_1_ONLY_KEYS}
    short = {key: tensor for key, tensor in state.items() if key != "memory_encoder.fuser.layers.0.gamma"}
    for name, tensors, message in [
        ("sam2_0.pt", sam2_0, "a SAM 2.0 checkpoint (without SAM 2.1's no_obj_embed_spatial"),
        ("short.pt", short, "not a SAM 2.1 / MedSAM2 checkpoint (1 missing key, e.g. memory_encoder.fuser.layers.0.gamma)"),
        ("lite.pth", {**read_state_dict(bundled_lite_medsam_checkpoint()), "mask_decoder.extra": torch.zeros(1)}, "not a LiteMedSAM checkpoint (1 unexpected key, e.g. mask_decoder.extra)"),
    ]:
        torch.save({"model": tensors}, tmp_path / name)
        refused = CliRunner().invoke(app, ["info", str(tmp_path / name)])
        assert refused.exit_code == 2 and message in refused.stderr, refused.output


def test_a_loaded_label_map_conditions_propagation_as_mask_prompts_do(small_predictor: SAM2Predictor) -> None:
    """Slices of a loaded label map act as mask prompts whose memory is made only when a run needs it:
    a box past the map's last slice propagates as it would from mask prompts given one by one."""
    frames = moving_disk(12)
    disk = frames > 200
    labels = np.zeros(frames.shape, dtype=np.uint8)
    labels[3:6][disk[3:6]] = 1
    session = Session(frames, small_predictor)
    session.load_labels(labels)
    session.add_prompt(5, 1, box=box_from_mask(disk[5]))  # replaces the mask on 5, refines nothing
    session.propagate(progress=False)
    assert sorted(session.objects[1].anchor_states) == [5]  # 3 and 4 were needed by no run

    given = Session(frames, small_predictor)
    for index in (3, 4):
        given.add_prompt(index, 1, mask=disk[index])
    given.add_prompt(5, 1, box=box_from_mask(disk[5]))
    given.propagate(progress=False)
    np.testing.assert_array_equal(session.result()[3:], given.result()[3:])
    np.testing.assert_array_equal(session.result()[3:5], labels[3:5])
    assert not session.result()[:3].any()  # the backward run from 3 was never asked for

    session.remove_prompt(4, 1)  # now the runs of 3 and 5 meet on 4: 3's memory is made for them
    session.propagate(progress=False)
    assert sorted(session.objects[1].anchor_states) == [3, 5] and session.result()[4].any()
