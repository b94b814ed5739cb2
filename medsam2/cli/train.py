"""`medsam2 train`: fine-tune LiteMedSAM (or SAM 2.1 / MedSAM2) on your own images and masks."""

from __future__ import annotations

import dataclasses
import shlex
import typing
from pathlib import Path

import typer

from medsam2.cli.errors import fail, reports_input_errors
from medsam2.errors import InputError
from medsam2.io.training_set import MANIFEST_NAME
from medsam2.io.volume import parse_modality
from medsam2.preprocess import DEFAULT_CT_WINDOW

TRAIN_EXTRA_HINT = "pip install 'medsam2[train]'"


def training_module():
    """`medsam2.train`, imported on use: it needs the `train` extra (PyYAML, TensorBoard), which
    the other commands do not."""
    try:
        import medsam2.train.config as config_module
    except ModuleNotFoundError as error:
        raise InputError(f"medsam2 train needs {error.name}: {TRAIN_EXTRA_HINT}") from None
    return config_module


def show_example_config(value: bool) -> None:
    if value:
        try:
            typer.echo(training_module().example_config(), nl=False)
        except InputError as error:
            fail(str(error))
        raise typer.Exit()


def data_source(path: Path):
    """What `--data PATH` names: a training-set manifest (or its folder), an npz file, or a folder of npz."""
    path = path.expanduser().resolve()
    source = training_module().DataSource
    if path.suffix == ".json" or (path / MANIFEST_NAME).is_file():
        return source(manifest=str(path))
    if path.suffix == ".npz" or (path.is_dir() and any(path.glob("*.npz"))):
        return source(npz=str(path))
    if not path.exists():
        raise InputError(f"--data {path}: no such file or folder")
    raise InputError(
        f"--data {path}: neither a training-set manifest ({MANIFEST_NAME}) nor MedSAM .npz files; "
        "for folders of images and masks use --images and --masks"
    )


def with_overrides(config, **sections: dict):
    """`config` with the given (non-None) values replaced, section by section."""
    changes = {}
    for name, values in sections.items():
        given = {key: value for key, value in values.items() if value is not None}
        if given:
            changes[name] = dataclasses.replace(getattr(config, name), **given)
    return dataclasses.replace(config, **changes)


@reports_input_errors
def train_command(
    config_file: Path | None = typer.Argument(None, metavar="CONFIG", help="YAML config (see --example-config); flags override its values."),
    data: list[Path] = typer.Option([], "--data", help="Training data: a training-set manifest (annotate export) or its folder, an npz file, or a folder of MedSAM npz. Repeatable; replaces the config's sources."),
    images: Path | None = typer.Option(None, "--images", help="Folder of images (any format medsam2 reads; DICOM series as sub-folders)..."),
    masks: Path | None = typer.Option(None, "--masks", help="...and the folder of their label maps, matched by file name (CASE_0000 images match CASE masks)."),
    out: Path | None = typer.Option(None, "-o", "--out", help="Output folder: model.pt, best.pt, last.pt, train_log.csv, tensorboard/."),
    model: str | None = typer.Option(None, "--model", help="lite-medsam (default) or sam2."),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="Starting weights (default: the embedded LiteMedSAM; required for sam2)."),
    steps: int | None = typer.Option(None, "--steps", min=1, help="Optimizer steps."),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="Samples per process and micro-batch."),
    accumulate: int | None = typer.Option(None, "--accumulate", min=1, help="Micro-batches per optimizer step."),
    lr: float | None = typer.Option(None, "--lr", help="Peak learning rate (AdamW, warm-up then cosine)."),
    freeze_image_encoder: bool | None = typer.Option(None, "--freeze-encoder/--train-encoder", help="Keep the image encoder fixed (much faster; embeddings are computed once)."),
    val_fraction: float | None = typer.Option(None, "--val-fraction", help="Share of cases held out for validation."),
    device: str | None = typer.Option(None, "--device", help="auto, cpu or cuda."),
    seed: int | None = typer.Option(None, "--seed", min=0, help="Seed of the split, the samples and the prompts."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in the output folder exactly where its last.pt left it (without CONFIG: with the settings the run saved there, so --out RUN --resume is enough)."),
    stop_at: int | None = typer.Option(None, "--stop-at", min=1, help="Stop (with a checkpoint) once this many steps are done; continue later with --resume."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar."),
    example: bool = typer.Option(False, "--example-config", callback=show_example_config, is_eager=True, help="Print a config file with every setting at its default, and exit."),
) -> None:
    """Fine-tune a model on your images and masks; write a checkpoint for `segment --model`.

    Every labelled object becomes training samples: for LiteMedSAM, 2D slices with a jittered box
    (and optional clicks); for SAM 2.1 / MedSAM2 (--model sam2), clips of consecutive slices
    prompted on one and trained through the memory. Cases are split into training and validation
    by case; validation propagates one box per object through each validation case and scores the
    3D Dice. Slices get the same windowing as in `segment` (data.window, data.axis in the config).

    Under torchrun every GPU trains its share (DDP): torchrun --nproc-per-node 4 -m medsam2.cli train CONFIG

    Examples:

      medsam2 train --example-config > finetune.yaml

      medsam2 train finetune.yaml

      medsam2 train --images imagesTr/ --masks labelsTr/ --out runs/liver --steps 2000 --freeze-encoder

      medsam2 segment scan.nii.gz --box 42,120,88,160,131 --model runs/liver/model.pt -o liver.nii.gz
    """
    settings = training_module()
    from medsam2.train.trainer import CONFIG_NAME, train

    if config_file is None and resume and out is not None and (out.expanduser() / CONFIG_NAME).is_file():
        config_file = out.expanduser() / CONFIG_NAME  # the run's own settings: `--out RUN --resume` is enough
    config = settings.load_config(config_file) if config_file is not None else settings.TrainConfig()
    if (images is None) != (masks is None):
        raise InputError("--images and --masks go together")
    if model is not None and model not in typing.get_args(settings.ModelName):
        raise InputError(f"--model {model!r}: choose lite-medsam or sam2 (a checkpoint to start from goes to --checkpoint)")
    sources = [data_source(path) for path in data]
    if images is not None:
        sources.append(settings.DataSource(images=str(images.expanduser().resolve()), masks=str(masks.expanduser().resolve())))
    config = with_overrides(
        config,
        data={"sources": tuple(sources) or None, "val_fraction": val_fraction},
        model={
            "name": model,
            "checkpoint": None if checkpoint is None else str(checkpoint.expanduser().resolve()),
            "freeze_image_encoder": freeze_image_encoder,
        },
        training={"steps": steps, "batch_size": batch_size, "accumulate": accumulate, "device": device, "seed": seed},
        optimizer={"lr": lr},
        output={"dir": None if out is None else str(out.expanduser().resolve())},
    )
    settings.validate(config, str(config_file) if config_file else "options")
    summary = train(config, resume=resume, stop_at=stop_at, progress=progress, report=lambda line: typer.echo(line, err=True))
    if not summary.main_process:
        return
    if summary.finished and summary.start_step == summary.step:
        typer.echo(f"nothing to do: the run in {summary.out_dir} finished at step {summary.step}")
        return
    if summary.start_step == summary.step:  # resumed at its --stop-at already
        typer.echo(f"nothing to do: the run in {summary.out_dir} is at step {summary.step} of {config.training.steps} "
                   f"already; continue with --resume (a later --stop-at, or none)")
        return
    loss = "n/a" if summary.train_loss is None else f"{summary.train_loss:.4f}"
    if not summary.finished:
        typer.echo(f"stopped at step {summary.step} of {config.training.steps} (train loss {loss}); continue with --resume")
        return
    typer.echo(f"wrote {summary.model_path} (step {summary.step}, train loss {loss})")
    if summary.best_val_dsc is not None:
        typer.echo(
            f"validation DSC {summary.val_dsc:.4f} at the end; best {summary.best_val_dsc:.4f} at step "
            f"{summary.best_step}: {summary.best_path}"
        )
    else:
        typer.echo(f"no validation case, so no {summary.best_path.name}: the model is {summary.model_path.name}")
    # The checkpoint records the settings it was trained with (a SAM 2.1 one its preset and input size),
    # but not how slices are made from an image: segment must be told the same window and axis.
    # data.modality has no segment option: a CT it names (without a window) was windowed as CT by default.
    named_ct = config.data.modality is not None and parse_modality(config.data.modality) == "CT"
    window = config.data.window or (DEFAULT_CT_WINDOW if named_ct else None)
    # Quoted for a shell: an output folder with a space (or a window written "400, 40") still pastes.
    window = f" --window {shlex.quote(str(window))}" if window else ""
    axis = f" --axis {config.data.axis}" if config.data.axis != "axial" else ""
    typer.echo(f"use it with: medsam2 segment IMAGE --box Z,X1,Y1,X2,Y2 --model {shlex.quote(str(summary.model_path))}{window}{axis}")
