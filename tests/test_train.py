"""`medsam2 train` for LiteMedSAM: learning, exact resumption, DDP, the checkpoint in `segment`,
and bad configs failing before any training.

The data are small synthetic CT-like volumes with known truth (a textured ellipse on a noisy
background), the model the real embedded LiteMedSAM with its image encoder frozen, so a step costs
only the decoder.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from typer.testing import CliRunner

from medsam2.cli.main import app
from medsam2.engine.models import load_predictor
from medsam2.engine.prompts import box_from_mask
from medsam2.errors import InputError
from medsam2.io import load_image
from medsam2.io.training_set import TrainingCase, file_sha256, write_manifest
from medsam2.metrics import dice
from medsam2.models.sam2 import SAM2Config, SAM2Model
from medsam2.models.weights import bundled_lite_medsam_checkpoint
from medsam2.train import config_from_dict, example_config, load_config, train
from medsam2.train.config import DataConfig
from medsam2.train.data import prepare_data
from medsam2.train import trainer
from medsam2.train.trainer import no_validation_reason
from medsam2.train.lite_medsam import LiteMedSAMTask
from medsam2.train.sam2 import SAM2Task

runner = CliRunner()
STEPS = 4


def write_case(folder: Path, name: str, labelled: list[int], seed: int, slices: int = 2, size: int = 64) -> None:
    """An image of `slices` slices with one textured ellipsoidal object across the `labelled`
    ones (a little smaller on each), and its mask."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:size, :size]
    image = rng.normal(60, 12, (slices, size, size))
    mask = np.zeros((slices, size, size), np.uint8)
    centre_y, centre_x = rng.uniform(26, 38, 2)
    radius_y, radius_x = rng.uniform(9, 14, 2)
    for shrink, index in enumerate(labelled):
        scale = 1.0 - 0.1 * shrink
        inside = ((rows - centre_y) / (radius_y * scale)) ** 2 + ((cols - centre_x) / (radius_x * scale)) ** 2 < 1
        mask[index][inside] = 1
        image[index][inside] += 70 + rng.normal(0, 20, inside.sum())
    for array, kind in ((np.clip(image, 0, 255).astype(np.uint8), "images"), (mask, "masks")):
        picture = sitk.GetImageFromArray(array)
        picture.SetSpacing((0.8, 0.8, 5.0))
        sitk.WriteImage(picture, str(folder / kind / f"{name}.nii.gz"))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train_data")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    write_case(root, "case0", [1], seed=0)
    write_case(root, "case1", [0], seed=1)
    write_case(root, "val0", [0, 1], seed=2)
    return root


def settings(dataset: Path, out: Path, **changes) -> dict:
    """The tests' config: 4 steps of 2 micro-batches of 1 sample, frozen encoder, validation only at
    the end."""
    document = {
        "model": {"freeze_image_encoder": True},
        "data": {"sources": [{"images": str(dataset / "images"), "masks": str(dataset / "masks")}], "val_cases": ["val0"]},
        "optimizer": {"lr": 2e-4, "warmup_steps": 1},
        "training": {"steps": STEPS, "batch_size": 1, "accumulate": 2, "device": "cpu"},
        "output": {"dir": str(out), "checkpoint_every": 2, "validate_every": 100, "validate_at_start": False, "log_every": 1},
    }
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        document.setdefault(section, {})[key] = value
    return document


def write_config(path: Path, document: dict) -> Path:
    path.write_text(yaml.safe_dump(document))
    return path


def log_rows(out: Path) -> list[dict]:
    with (out / "train_log.csv").open() as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def uninterrupted(dataset: Path, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "uninterrupted"
    return train(config_from_dict(settings(dataset, out)), progress=False)


def first_batch_losses(dataset: Path, trained: Path, samples: int = 2, **changes) -> tuple[float, float]:
    """The training loss on the run's first `samples` samples with the starting weights and with
    `trained` (`changes` as in `settings`: those of the run)."""
    config = config_from_dict(settings(dataset, dataset / "unused", **changes))
    data = prepare_data(config.data, seed=0, context=0, progress=False)
    task = LiteMedSAMTask(config, data.train, torch.device("cpu"))
    batch = task.batch(list(range(samples)))
    with torch.no_grad():
        before = float(task.step_module.train()(batch)["loss"])
        task.network.load_state_dict(torch.load(trained, weights_only=True)["model"])
        return before, float(task.step_module(batch)["loss"])


def test_a_short_run_lowers_the_loss_and_records_itself(dataset: Path, uninterrupted) -> None:
    out = uninterrupted.out_dir
    assert uninterrupted.finished and uninterrupted.step == STEPS
    before, after = first_batch_losses(dataset, out / "model.pt")
    assert after < 0.9 * before, (before, after)

    rows = log_rows(out)
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert all(float(r["train_loss"]) > 0 and float(r["lr"]) > 0 for r in rows)
    assert rows[-1]["val_dsc"] and 0.0 <= float(rows[-1]["val_dsc"]) <= 1.0
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))

    checkpoint = torch.load(out / "model.pt", weights_only=True)
    assert checkpoint["model_name"] == "lite-medsam" and checkpoint["step"] == STEPS
    assert checkpoint["config"]["optimizer"]["lr"] == 2e-4
    manifest = (out / "data_manifest.json").read_text()
    assert checkpoint["data_sha256"] in manifest and '"split": "val"' in manifest
    assert checkpoint["metrics"]["val_dsc"] == pytest.approx(float(rows[-1]["val_dsc"]))
    assert (out / "best.pt").is_file() and (out / "last.pt").is_file()
    # `info` says which file continues the run (last.pt looked like any other checkpoint).
    described = {name: runner.invoke(app, ["info", str(out / name), "--json"]) for name in ("last.pt", "model.pt")}
    state, model = (json.loads(result.stdout) for result in described.values())
    assert state["training_state"].endswith(f"medsam2 train --out {out} --resume continues the run")
    assert f"at step {STEPS}" in state["training_state"] and "training_state" not in model


def test_cli_resume_is_bit_identical_and_the_model_segments(dataset: Path, uninterrupted, tmp_path: Path) -> None:
    out = tmp_path / "resumed"
    config = write_config(tmp_path / "train.yaml", settings(dataset, out))
    stopped = runner.invoke(app, ["train", str(config), "--stop-at", "2", "--no-progress"])
    assert stopped.exit_code == 0, stopped.output
    assert "stopped at step 2" in stopped.stdout
    assert (out / "last.pt").is_file() and not (out / "model.pt").exists()

    # A --stop-at the run has reached said "stopped at step 2 ... (train loss n/a)" as if it had
    # trained, and one it is past did the same; now: nothing to do, and a one-line error.
    before = {path: path.stat().st_mtime_ns for path in out.rglob("*")}
    same = runner.invoke(app, ["train", str(config), "--resume", "--stop-at", "2", "--no-progress"])
    assert same.exit_code == 0 and f"nothing to do: the run in {out} is at step 2 of" in same.stdout, same.output
    assert "n/a" not in same.stdout
    past = runner.invoke(app, ["train", str(config), "--resume", "--stop-at", "1", "--no-progress"])
    assert past.exit_code == 2 and past.stdout == "", past.output
    assert past.stderr == f"error: stop at step 1: {out / 'last.pt'} already holds step 2; give a later step, or none to finish the run\n"
    assert {path: path.stat().st_mtime_ns for path in out.rglob("*")} == before

    # The output folder alone resumes the run: it saved its settings (a run started from flags has no config file).
    resumed = runner.invoke(app, ["train", "--out", str(out), "--resume", "--no-progress"])
    assert resumed.exit_code == 0, resumed.output
    assert "resuming" in resumed.stderr and f"wrote {out / 'model.pt'}" in resumed.stdout
    ours = torch.load(out / "model.pt", weights_only=True)["model"]
    reference = torch.load(uninterrupted.out_dir / "model.pt", weights_only=True)["model"]
    assert ours.keys() == reference.keys()
    assert all(torch.equal(ours[key], reference[key]) for key in ours)
    assert [r["train_loss"] for r in log_rows(out)] == [r["train_loss"] for r in log_rows(uninterrupted.out_dir)]

    # Resuming the finished run again has nothing to do and touches none of its files.
    before = {path: path.stat().st_mtime_ns for path in out.rglob("*")}
    again = runner.invoke(app, ["train", str(config), "--resume", "--no-progress"])
    assert again.exit_code == 0 and f"nothing to do: the run in {out} finished at step" in again.stdout, again.output
    assert {path: path.stat().st_mtime_ns for path in out.rglob("*")} == before

    image = dataset / "images" / "val0.nii.gz"
    truth = load_image(dataset / "masks" / "val0.nii.gz").array > 0
    x1, y1, x2, y2 = box_from_mask(truth[0])
    segmented = runner.invoke(
        app, ["segment", str(image), "--box", f"0,{x1:g},{y1:g},{x2:g},{y2:g}", "--model", str(out / "model.pt"), "-o", str(tmp_path / "val0_seg.nii.gz")]
    )
    assert segmented.exit_code == 0, segmented.output
    assert dice(load_image(tmp_path / "val0_seg.nii.gz").array > 0, truth) > 0.7


def tensorboard_scalars(events: Path) -> dict[str, list[tuple[int, float]]]:
    """(step, value) of every scalar tag, as TensorBoard shows them (a folder: its event files
    in order, events a restart purged left out; or one file)."""
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def test_a_fresh_run_in_a_stopped_runs_folder_starts_its_logs_over(tmp_path: Path) -> None:
    """A run stopped before its first checkpoint says "nothing to resume, run it again"; running it
    again rewrote train_log.csv but kept the stopped run's TensorBoard events, so TensorBoard
    showed both runs' values at the same steps. A fresh run now starts both logs over."""
    from medsam2.train.logs import RunLog

    stopped = RunLog(tmp_path, ["train_loss"], None, True)
    for step in (1, 2, 3):
        stopped.write(step, {"train_loss": 9.0})
    stopped.close()
    again = RunLog(tmp_path, ["train_loss"], None, True)
    again.write(1, {"train_loss": 0.5})
    again.close()
    assert tensorboard_scalars(tmp_path / "tensorboard") == {"train/loss": [(1, 0.5)]}
    assert [row["train_loss"] for row in log_rows(tmp_path)] == ["0.5"]


def test_a_resumed_run_logs_each_step_once(dataset: Path, uninterrupted, tmp_path: Path) -> None:
    """A run killed after logging steps 3 and 4 but before checkpointing them (its last.pt is
    from step 2) is resumed: the CSV and the TensorBoard events hold each step once, with the
    values of the uninterrupted run."""
    out = tmp_path / "killed"
    shutil.copytree(uninterrupted.out_dir, out)
    stopped = train(config_from_dict(settings(dataset, tmp_path / "stopped")), stop_at=2, progress=False)
    shutil.copy(stopped.out_dir / "last.pt", out / "last.pt")  # the same run's step-2 state (deterministic)
    old_events = tensorboard_scalars(next((out / "tensorboard").glob("events.out.tfevents.*")))
    assert [step for step, _ in old_events["train/loss"]] == [1, 2, 3, 4]  # what the resumption must drop

    train(config_from_dict(settings(dataset, out)), resume=True, progress=False)
    rows = log_rows(out)
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert [r["train_loss"] for r in rows] == [r["train_loss"] for r in log_rows(uninterrupted.out_dir)]
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 2  # the old file is still there
    scalars = tensorboard_scalars(out / "tensorboard")
    assert {"train/loss", "train/dice", "lr", "grad_norm", "samples_per_s", "val/dsc"} <= set(scalars)
    for tag, column in (("train/loss", "train_loss"), ("lr", "lr"), ("val/dsc", "val_dsc")):
        logged = [(int(r["step"]), float(r[column])) for r in rows if r[column]]
        assert [step for step, _ in scalars[tag]] == [step for step, _ in logged], tag
        assert [value for _, value in scalars[tag]] == pytest.approx([value for _, value in logged], rel=1e-6), tag


@pytest.mark.parametrize(("interrupted_at", "said"), [(3, "stopped at step 2 of 4: {out}/last.pt holds step 2; continue with --resume"),
                                                       (1, "stopped at step 0 of 4, before the first checkpoint (every 2 steps, output.checkpoint_every): nothing to resume, run it again")])
def test_a_run_stopped_by_a_signal_says_what_it_keeps(dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interrupted_at: int, said: str) -> None:
    """Ctrl-C or a SIGTERM (SystemExit in the medsam2 command) mid-run ended it without a word on
    what last.pt held or how to go on."""
    steps = 0
    optimizer_step = trainer._Loop._optimizer_step

    def interrupted(loop):
        nonlocal steps
        steps += 1
        if steps == interrupted_at:
            raise SystemExit(143)
        return optimizer_step(loop)

    monkeypatch.setattr(trainer._Loop, "_optimizer_step", interrupted)
    out, lines = tmp_path / "run", []
    with pytest.raises(SystemExit):
        train(config_from_dict(settings(dataset, out)), progress=False, report=lines.append)
    assert lines[-1] == said.format(out=out)


def test_training_the_image_encoder_moves_it_and_lowers_the_loss(dataset: Path, tmp_path: Path) -> None:
    """`freeze_image_encoder: false`: one step of one sample through the whole model, the TinyViT
    encoder at 256x256 with autograd (the costly part on a CPU; no validation). Without weight
    decay a weight moves only if its gradient is non-zero: every encoder parameter moves, its
    BatchNorm statistics stay as pretrained, and the loss on that sample goes down. The learning
    rate is small: Adam's first step moves every weight by about lr, and at the decoder's 2e-4 so
    large a move of the whole encoder raised the loss."""
    run = {"model__freeze_image_encoder": False, "data__val_cases": [], "data__val_fraction": 0.0}
    config = config_from_dict(
        settings(dataset, tmp_path / "encoder", training__steps=1, training__accumulate=1, optimizer__lr=1e-5, optimizer__weight_decay=0.0, **run)
    )
    summary = train(config, progress=False)
    assert summary.finished and summary.val_dsc is None

    start = torch.load(bundled_lite_medsam_checkpoint(), weights_only=True)
    trained = torch.load(summary.model_path, weights_only=True)["model"]
    task = LiteMedSAMTask(config, [], torch.device("cpu"))
    encoder = task.network.image_encoder
    parameters = [f"image_encoder.{name}" for name, _ in encoder.named_parameters()]
    statistics = [f"image_encoder.{name}" for name, _ in encoder.named_buffers() if "running_" in name]
    assert parameters and statistics
    assert [name for name in parameters if torch.equal(start[name], trained[name])] == []
    assert all(torch.equal(start[name], trained[name]) for name in statistics)
    before, after = first_batch_losses(dataset, summary.model_path, samples=1, **run)
    assert after < before, (before, after)


def test_a_run_without_validation_says_so_and_why(tmp_path: Path) -> None:
    """One case leaves none to hold out: a run without validation writes no best.pt, which is said
    at the start and at the end, not left for the user to find out; so are the other reasons."""
    for kind in ("images", "masks"):
        (tmp_path / kind).mkdir()
    write_case(tmp_path, "only", [0], seed=3, slices=1, size=32)
    common = ["train", "--images", str(tmp_path / "images"), "--masks", str(tmp_path / "masks"), "--steps", "1", "--batch-size", "1", "--no-progress"]
    one_case = runner.invoke(app, [*common, "--out", str(tmp_path / "one")])
    assert one_case.exit_code == 0, one_case.output
    assert "no validation: one case, none left to hold out (give two or more, or data.val_cases); best.pt is not written" in one_case.stderr
    assert one_case.stdout.splitlines()[1] == "no validation case, so no best.pt: the model is model.pt"
    assert sorted(p.name for p in (tmp_path / "one").glob("*.pt")) == ["last.pt", "model.pt"]
    assert no_validation_reason(DataConfig(val_fraction=0.0), 2) == "data.val_fraction is 0"
    assert no_validation_reason(DataConfig(), 3) == "the validation cases have no labelled voxel"


def test_the_closing_hint_names_the_window_and_axis_the_model_was_trained_with(dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checkpoint does not record how slices are cut from an image, so the printed segment
    command must carry the training's --window and --axis (a coronal run's hint left --axis out).
    The training itself is replaced: the hint is what is tested."""
    out = tmp_path / "run"
    done = trainer.TrainingSummary(out, 0, 1, True, 0.5, None, None, None, [], True)
    monkeypatch.setattr(trainer, "train", lambda config, **options: done)
    config = write_config(tmp_path / "c.yaml", settings(dataset, out, data__axis="coronal", data__window="400,40"))
    result = runner.invoke(app, ["train", str(config), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1].endswith(f"--model {out / 'model.pt'} --window 400,40 --axis coronal"), result.stdout
    axial = runner.invoke(app, ["train", str(write_config(tmp_path / "a.yaml", settings(dataset, out))), "--no-progress"])
    assert axial.stdout.splitlines()[-1].endswith(f"--model {out / 'model.pt'}"), axial.stdout
    # Files read as CT by data.modality, and no window: CT's default window, which segment has no modality option to repeat.
    named_ct = runner.invoke(app, ["train", str(write_config(tmp_path / "m.yaml", settings(dataset, out, data__modality="ct"))), "--no-progress"])
    assert named_ct.stdout.splitlines()[-1].endswith(f"--model {out / 'model.pt'} --window soft_tissue"), named_ct.stdout


def test_the_closing_hint_is_quoted_for_the_shell(dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The printed segment command is meant to be pasted: an output folder with a space or
    parentheses in its name was printed bare, so the shell split the --model path (or choked on
    the parenthesis). It is now quoted, and splitting it as a shell does gives the path back."""
    out = tmp_path / "my runs" / "liver (v2)"
    done = trainer.TrainingSummary(out, 0, 1, True, 0.5, None, None, None, [], True)
    monkeypatch.setattr(trainer, "train", lambda config, **options: done)
    config = write_config(tmp_path / "c.yaml", settings(dataset, out, data__window="400,40"))
    result = runner.invoke(app, ["train", str(config), "--no-progress"])
    assert result.exit_code == 0, result.output
    hint = result.stdout.splitlines()[-1]
    words = shlex.split(hint.removeprefix("use it with: "))
    assert words[words.index("--model") + 1] == str(out / "model.pt"), hint
    assert words[words.index("--window") + 1] == "400,40", hint


def test_ddp_under_torchrun_matches_one_process(dataset: Path, uninterrupted, tmp_path: Path) -> None:
    """Two gloo processes of one sample each take the same optimizer steps as one process that
    accumulates two micro-batches of one: DDP and gradient accumulation both check out."""
    out = tmp_path / "ddp"
    config = write_config(tmp_path / "ddp.yaml", settings(dataset, out, training__accumulate=1))
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "medsam2.cli", "train", str(config), "--no-progress"]
    finished = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert finished.stdout.count("wrote ") == 1  # only rank 0 reports and writes
    assert [int(r["step"]) for r in log_rows(out)] == [1, 2, 3, 4]
    losses = [float(r["train_loss"]) for r in log_rows(out)]
    assert losses == pytest.approx([float(r["train_loss"]) for r in log_rows(uninterrupted.out_dir)], rel=1e-4)
    # Weights agree up to float noise, which Adam turns into full-size steps on parameters whose
    # gradient is zero but for rounding (key biases of softmax attention): compare the whole update.
    ours = torch.load(out / "model.pt", weights_only=True)
    reference = torch.load(uninterrupted.out_dir / "model.pt", weights_only=True)
    start = torch.load(bundled_lite_medsam_checkpoint(), weights_only=True)
    difference = sum(float((ours["model"][k] - v).square().sum()) for k, v in reference["model"].items())
    update = sum(float((start[k] - v).square().sum()) for k, v in reference["model"].items())
    assert difference < (0.01**2) * update, (difference, update)
    assert ours["metrics"]["val_dsc"] == pytest.approx(reference["metrics"]["val_dsc"], abs=0.02)


def break_dataset(tmp_path: Path, dataset: Path, how: str) -> dict:
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    for kind in ("images", "masks"):
        for file in (dataset / kind).glob("case*.nii.gz"):
            (tmp_path / kind / file.name).write_bytes(file.read_bytes())
    if how == "shape":
        sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 64, 60), np.uint8)), str(masks / "case1.nii.gz"))
    elif how == "empty":
        for file in masks.glob("*.nii.gz"):
            sitk.WriteImage(sitk.ReadImage(str(file)) * 0, str(file))
    elif how == "unpaired":
        (masks / "case1.nii.gz").unlink()
    return {"data": {"sources": [{"images": str(images), "masks": str(masks)}], "val_fraction": 0.0}}


@pytest.mark.parametrize(
    "how, fragments",
    [
        ("missing", ["images source", "nowhere: no such folder"]),
        ("relative npz", ["npz source /", "/npz/missing: no such file or folder"]),  # resolved from the config's folder, tidied
        ("unknown val case", ["no case with id 'nope' (ids: case0, case1, val0)"]),
        ("shape", ["case1.nii.gz", "shape (Z, Y, X) differs: (2, 64, 60) vs"]),  # the mask's first, as named
        ("empty", ["no training case has a labelled voxel (2 cases read): nothing to learn from"]),
        ("unpaired", ["case1.nii.gz: no mask named case1"]),
        ("unknown key", ["train.yaml", "unknown key 'optimizer.learning_rate'"]),
        ("bad value", ["train.yaml", "training.steps must be >= 1"]),
        ("existing run", ["already holds a training run", "--resume"]),
        ("changed settings", ["optimizer.lr was 0.0002, now 0.001", "resuming needs the same settings"]),
        ("output is a file", ["out: cannot use as the output folder (a file is there)"]),
        ("model option", ["--model 'sam3': choose lite-medsam or sam2"]),
        ("foreign checkpoint", ["foreign.pt: not a LiteMedSAM checkpoint"]),
        ("config is a folder", ["is a folder; CONFIG is a YAML file"]),
        ("key twice", ["train.yaml: not valid YAML (key 'training' given twice (line"]),  # the last one won
        ("modality", ["train.yaml: data.modality 'PETT': choose one of CT, MR, MRI, PT, PET"]),  # named a data file
        ("window", ["train.yaml: data.window 'nonsense': expected one of soft_tissue"]),  # named no file
    ],
)
def test_bad_configs_fail_in_one_line_before_training(dataset: Path, uninterrupted, tmp_path: Path, how, fragments) -> None:
    out = tmp_path / "out"
    document = settings(dataset, out)
    extra: list[str] = []
    if how == "missing":
        document["data"] = {"sources": [{"images": str(tmp_path / "nowhere"), "masks": str(tmp_path)}]}
    elif how == "relative npz":
        document["data"] = {"sources": [{"npz": "sub/../npz/missing"}]}
    elif how == "unknown val case":
        document["data"]["val_cases"] = ["nope"]
    elif how in ("shape", "empty", "unpaired"):
        document["data"] = break_dataset(tmp_path, dataset, how)["data"]
    elif how == "unknown key":
        document["optimizer"]["learning_rate"] = 1e-3
    elif how == "bad value":
        document["training"]["steps"] = 0
    elif how == "modality":
        document["data"]["modality"] = "PETT"
    elif how == "window":
        document["data"]["window"] = "nonsense"
    elif how in ("existing run", "changed settings"):
        out = uninterrupted.out_dir
        document["output"]["dir"] = str(out)
        if how == "changed settings":
            document["optimizer"]["lr"] = 1e-3
            extra = ["--resume"]
    elif how == "output is a file":
        out.write_text("a file, not a folder")
    elif how == "model option":
        extra = ["--model", "sam3"]
    elif how == "foreign checkpoint":  # found only when the model is built, after the data are read
        torch.save({"a": torch.zeros(2)}, tmp_path / "foreign.pt")
        extra = ["--checkpoint", str(tmp_path / "foreign.pt")]
    before = sorted(out.rglob("*")) if out.is_dir() else []
    config = tmp_path if how == "config is a folder" else write_config(tmp_path / "train.yaml", document)
    if how == "key twice":
        config.write_text(config.read_text() + "training: {steps: 3}\n")
    result = runner.invoke(app, ["train", str(config), "--no-progress", *extra])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert all(fragment in lines[0] for fragment in fragments), lines[0]
    assert "/../" not in lines[0]
    assert (sorted(out.rglob("*")) if out.is_dir() else []) == before  # nothing written
    assert out.exists() == (how in ("existing run", "changed settings", "output is a file"))  # no folder made either


def test_config_files_flags_and_the_example(tmp_path: Path) -> None:
    example = tmp_path / "example.yaml"
    example.write_text(example_config())
    assert load_config(example).optimizer == config_from_dict({}).optimizer
    relative = write_config(tmp_path / "rel.yaml", {"data": {"sources": [{"npz": "cases/"}]}, "output": {"dir": "runs/a"}})
    loaded = load_config(relative)
    assert loaded.data.sources[0].npz == str(tmp_path / "cases") and loaded.output.dir == str(tmp_path / "runs" / "a")
    for document, fragment in [
        ({"data": {"sources": [{"images": "a"}]}}, "images and masks go together"),
        ({"data": {"sources": [{"npz": "a", "manifest": "b"}]}}, "give exactly one of"),
        ({"model": {"name": "sam3"}}, "model.name is 'sam3'; choose one of lite-medsam, sam2"),
        ({"model": {"name": "sam2"}}, "model.checkpoint is required for sam2"),
        ({"optimizer": {"betas": [0.9]}}, "optimizer.betas must be a list of 2 values"),
        ({"training": {"batch_size": 2.5}}, "training.batch_size must be a whole number"),
        *([({"training": {"device": "cuda"}}, "training.device (or --device) cuda: no CUDA GPU is available here")] if not torch.cuda.is_available() else []),
    ]:
        result = runner.invoke(app, ["train", str(write_config(tmp_path / "c.yaml", document))])
        assert result.exit_code == 2 and fragment in result.stderr, (fragment, result.stderr)
    flags = runner.invoke(app, ["train", "--images", str(tmp_path)])
    assert flags.exit_code == 2 and "--images and --masks go together" in flags.stderr
    no_data = runner.invoke(app, ["train", "--data", str(tmp_path)])
    assert no_data.exit_code == 2 and "neither a training-set manifest" in no_data.stderr


def test_sam2_trains_through_the_memory_on_clips(dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A random-weight SAM 2.1 (hiera-tiny at 128 px) fine-tuned on 2-slice clips: the prompted
    slice and one tracked through the memory; the loss on the clips it trained on goes down and
    the checkpoint loads into a SAM 2.1 model (strictly)."""
    torch.manual_seed(0)
    start = tmp_path / "random_sam2.pt"
    torch.save({"model": SAM2Model(SAM2Config(image_size=128)).state_dict()}, start)
    document = settings(dataset, tmp_path / "sam2", training__steps=2, training__accumulate=1)
    document["model"] = {"name": "sam2", "checkpoint": str(start), "sam2_image_size": 128, "clip_length": 2, "freeze_image_encoder": True}
    document["optimizer"]["lr"] = 1e-3
    config = config_from_dict(document)
    summary = train(config, progress=False)
    assert summary.finished and 0.0 <= summary.val_dsc <= 1.0
    assert {"train_object_score", "train_dice"} <= set(log_rows(summary.out_dir)[0])

    data = prepare_data(config.data, seed=0, context=1, progress=False)
    task = SAM2Task(config, data.train, torch.device("cpu"))
    clips = task.batch([0, 1])
    assert all(len(clip.features) == 2 and clip.targets[0].any() for clip in clips)  # prompted frame holds the object
    losses = []
    for weights in (start, summary.model_path):
        checkpoint = torch.load(weights, weights_only=True)
        task.network.load_state_dict(checkpoint["model"])  # strict: every SAM 2.1 key, nothing else
        torch.manual_seed(0)  # the same dropout in the memory attention for both
        with torch.no_grad():
            losses.append(float(task.step_module.train()(clips)["loss"]))
    assert losses[1] < losses[0], losses
    assert checkpoint["model_name"] == "sam2" and checkpoint["config"]["model"]["clip_length"] == 2
    # The starting weights may be named as --model names them: a preset (its configured file) or PRESET=FILE.
    monkeypatch.setenv("MEDSAM2_MODEL_MEDSAM2", str(start))
    for given in ("medsam2", f"medsam2={start}"):
        named = dataclasses.replace(config, model=dataclasses.replace(config.model, checkpoint=given))
        torch.testing.assert_close(SAM2Task(named, data.train, torch.device("cpu")).network.state_dict(), torch.load(start)["model"])
    other = dataclasses.replace(config, model=dataclasses.replace(config.model, checkpoint=f"sam2.1-tiny={start}"))
    with pytest.raises(InputError, match="names preset sam2.1-tiny, model.sam2_preset is medsam2 .*: set model.sam2_preset: sam2.1-tiny"):
        SAM2Task(other, data.train, torch.device("cpu"))
    # A checkpoint this command wrote goes on with the preset it was trained with, not silently another's.
    tuned_again = dataclasses.replace(config, model=dataclasses.replace(config.model, checkpoint=str(summary.model_path), sam2_preset="sam2.1-tiny"))
    with pytest.raises(InputError, match="model.pt: trained by medsam2 train with preset medsam2, model.sam2_preset is sam2.1-tiny: set model.sam2_preset: medsam2"):
        SAM2Task(tuned_again, data.train, torch.device("cpu"))
    # `--model FILE` runs it as it was trained: MedSAM2's settings (the default preset) at 128 px.
    trained = load_predictor(str(summary.model_path))
    assert (trained.model.image_size, trained.transform.resample) == (128, "bilinear")


def test_a_sam2_file_of_another_trunk_than_the_preset_is_trained_with_a_warning(
    dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Meta's hiera-small file under the default preset (MedSAM2's, hiera-tiny at 512 px) trains
    with a warning naming both and the preset that fits the file; a tiny file, none."""
    config = config_from_dict(settings(dataset, tmp_path / "run"))
    data = prepare_data(config.data, seed=0, context=1, progress=False)
    for variant, warned in (("small", True), ("tiny", False)):
        torch.manual_seed(0)
        start = tmp_path / f"sam2.1_hiera_{variant}.pt"
        torch.save({"model": SAM2Model(SAM2Config(variant=variant, image_size=64)).state_dict()}, start)
        model = {"name": "sam2", "checkpoint": str(start), "sam2_image_size": 64, "freeze_image_encoder": True}
        caplog.clear()
        SAM2Task(dataclasses.replace(config, model=config_from_dict({"model": model}).model), data.train, torch.device("cpu"))
        expected = (
            f"{start}: a SAM 2.1 hiera-small checkpoint; model.sam2_preset medsam2 is hiera-tiny (MedSAM2_latest.pt): "
            "training it with that preset's settings (for its own: model.sam2_preset: sam2.1-small)"
        )
        assert [m for m in caplog.messages if "sam2_preset" in m] == ([expected] if warned else []), caplog.messages


def test_cases_without_labels_are_left_out_before_the_split(tmp_path: Path) -> None:
    """An empty mask is left out before the validation cases are drawn: whichever the seed, one of
    the labelled cases validates (an empty case drawn for validation left none, and drawn for
    training, with two cases, none to train on)."""
    for kind in ("images", "masks"):
        (tmp_path / kind).mkdir()
    for name, labelled, seed in (("empty", [], 0), ("first", [0, 1], 1), ("second", [1], 2)):
        write_case(tmp_path, name, labelled, seed)
    sources = [{"images": str(tmp_path / "images"), "masks": str(tmp_path / "masks")}]
    for seed in range(4):
        data = prepare_data(config_from_dict({"data": {"sources": sources, "val_fraction": 0.5}}).data, seed=seed, context=0, progress=False)
        assert len(data.train) == len(data.val) == 1 and {c.id for c in data.train + data.val} == {"first", "second"}
        assert data.skipped == [f"{tmp_path / 'masks' / 'empty.nii.gz'}: case empty has no labelled voxel; left out"]
    with pytest.raises(InputError, match="data.val_cases: case 'empty' has no labelled voxel to validate on"):
        prepare_data(config_from_dict({"data": {"sources": sources, "val_cases": ["empty"]}}).data, seed=0, context=0, progress=False)


def test_every_kind_of_source_is_read_and_split_by_case(dataset: Path, ct_lesion_cases, tmp_path: Path) -> None:
    """A training-set manifest (annotate export's format), a MedSAM npz and image/mask folders
    together; the data checksum follows the contents, not where they are."""
    exported = tmp_path / "exported"
    (exported / "images").mkdir(parents=True)
    (exported / "masks").mkdir()
    for kind in ("images", "masks"):
        shutil.copy(dataset / kind / "case0.nii.gz", exported / kind / "exported0.nii.gz")
    mask_sha = file_sha256(exported / "masks" / "exported0.nii.gz")
    write_manifest(exported, [TrainingCase("exported0", "images/exported0.nii.gz", "masks/exported0.nii.gz", {"1": "lesion"}, mask_sha)])
    document = {
        "data": {
            "sources": [
                {"manifest": str(exported)},
                {"npz": str(ct_lesion_cases[1])},
                {"images": str(dataset / "images"), "masks": str(dataset / "masks")},
            ],
            "val_fraction": 0.25,
        }
    }
    data = prepare_data(config_from_dict(document).data, seed=0, context=0, progress=False)
    ids = sorted(case.id for case in data.train + data.val)
    assert ids == sorted(["exported0", ct_lesion_cases[1].stem, "case0", "case1", "val0"])
    assert len(data.val) == 1 and not {c.id for c in data.val} & {c.id for c in data.train}
    lesion = next(case for case in data.train + data.val if case.id == ct_lesion_cases[1].stem)
    assert list(lesion.objects) == [1] and lesion.slices.dtype == np.uint8 and lesion.slices.shape[1:] == (512, 512)
    if lesion in data.train:  # training cases keep only the labelled slices (the LiteMedSAM sampler's context)
        assert len(lesion.slices) == len(lesion.objects[1])

    moved = tmp_path / "moved"
    shutil.move(exported, moved)
    document["data"]["sources"][0] = {"manifest": str(moved / "manifest.json")}
    assert prepare_data(config_from_dict(document).data, seed=0, context=0, progress=False).sha256 == data.sha256


@pytest.mark.parametrize("warmup,total", [(0, 1), (3, 4), (3, 5), (2, 10)])
def test_learning_rate_schedule_ends_at_its_floor(warmup, total):
    # One step after the warmup used to keep the full rate: the schedule never decayed.
    factors = [trainer.warmup_cosine(step, warmup, total, 0.1) for step in range(total)]
    assert factors[-1] == pytest.approx(0.1)
    assert all(earlier >= later for earlier, later in zip(factors[warmup:], factors[warmup + 1 :]))
    assert all(0 < factor <= 1 for factor in factors)


def test_a_full_disk_at_a_checkpoint_is_one_line_and_keeps_the_state_to_resume_from(dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.save reports a full disk as a RuntimeError ('[enforce fail at inline_container.cc:672]
    . unexpected pos 704 vs 598'), which `train` let out as a traceback; now the one-line error says
    the disk is full, and the earlier last.pt (step 2) is kept: the run resumes from it."""
    from medsam2.io import atomic
    from medsam2.train import checkpoints

    out = tmp_path / "run"
    config = write_config(tmp_path / "train.yaml", settings(dataset, out))
    real_save, saves = torch.save, []

    def full_at_the_second(document, target, *args, **kwargs):
        if Path(target).name.startswith(".last.pt."):
            saves.append(target)
        if len(saves) == 2 and Path(target).name.startswith(".last.pt."):  # step 4's last.pt: half written, then the disk is full
            Path(target).write_bytes(b"PK\x03\x04 half")
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
        return real_save(document, target, *args, **kwargs)

    monkeypatch.setattr(checkpoints.torch, "save", full_at_the_second)
    monkeypatch.setattr(atomic, "disk_full", lambda _folder: True, raising=False)
    failed = runner.invoke(app, ["train", str(config), "--no-progress"])
    assert failed.exit_code == 2, failed.output
    assert "Traceback" not in failed.output and failed.exception is None or isinstance(failed.exception, SystemExit)
    assert failed.stderr.strip().splitlines()[-1] == f"error: {out / 'last.pt'}: cannot write (No space left on device)"
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 2
    assert not [path for path in out.iterdir() if path.name.startswith(".")]  # no temporary left
    monkeypatch.undo()
    resumed = runner.invoke(app, ["train", str(config), "--resume", "--no-progress"])
    assert resumed.exit_code == 0, resumed.output
    assert torch.load(out / "model.pt", weights_only=True)["step"] == STEPS
