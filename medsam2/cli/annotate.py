"""`medsam2 annotate`: human-in-the-loop annotation projects from the command line."""

from __future__ import annotations

import getpass
import os
import shlex
from pathlib import Path

import numpy as np
import typer
from sqlalchemy import select
from sqlalchemy.orm import defer
from rich.table import Column, Table

from medsam2.annotate import (
    EXPORT_FORMATS,
    CaseModel,
    Predictors,
    ProjectSettings,
    WorkSession,
    effort_report,
    export_training_set,
    import_cases,
    init_project,
    open_project,
    presegment,
    read_snapshot,
    reject,
    release,
    relocate,
    write_report,
)
from medsam2.annotate.images import load_case_image
from medsam2.annotate.leases import lease_next_openable, left_by_another, left_by_words, running_lease
from medsam2.annotate.project import DEFAULT_DB, DEFAULT_MODEL, Project
from medsam2.annotate.schema import InteractionRow
from medsam2.cli.console import StdoutConsole
from medsam2.cli.errors import EXIT_SOME_FAILED, reports_input_errors
from medsam2.engine.prompt_sources import PromptSources, check_one_region_each, prompts_from_flags
from medsam2.engine.prompts import MAX_OBJECT_ID
from medsam2.errors import InputError
from medsam2.io import Volume, check_same_geometry, save_mask, slicing_axis_index, to_slices
from medsam2.io.atomic import make_output_folder, outputs_together
from medsam2.io.masks import load_mask
from medsam2.io.overlay import check_overlay_output, save_overlay_montage
from medsam2.io.volume import slice_pixel_spacing
from medsam2.io.writers import check_mask_output
from medsam2.wording import counted

app = typer.Typer(
    name="annotate",
    help=(
        "Human-in-the-loop annotation projects: the model pre-segments, annotators correct, accepted "
        "masks become a training set for fine-tuning, and the effort is measured round by round.\n\n"
        "A round, from the command line (`medsam2 serve --annotate PROJECT` gives the same in the "
        "browser):\n\n"
        "  medsam2 annotate init lesions/ --label 1=lesion\n\n"
        "  medsam2 annotate import lesions/ scans/\n\n"
        "  medsam2 annotate presegment lesions/\n\n"
        "  medsam2 annotate queue lesions/ -a alice -o current.nii.gz\n\n"
        "  medsam2 annotate prompt lesions/ CASE -a alice --box 40,120,88,160,131\n\n"
        "  medsam2 annotate accept lesions/ CASE -a alice\n\n"
        "  medsam2 annotate report lesions/ --out effort/\n\n"
        "  medsam2 annotate export lesions/ trainset/\n\n"
        "  medsam2 annotate round lesions/ --model finetuned.pth"
    ),
    no_args_is_help=True,
    rich_markup_mode="markdown",  # paragraphs rewrapped to the terminal, `code` shown as such
)

PROJECT_ARGUMENT = typer.Argument(..., metavar="PROJECT", help="The project folder (made by `medsam2 annotate init`).")
CASE_ARGUMENT = typer.Argument(..., metavar="CASE", help="The case's name (see `medsam2 annotate status --cases`).")
ANNOTATOR_OPTION = typer.Option(
    None, "--annotator", "-a", envvar="MEDSAM2_ANNOTATOR", help="Who is working. Default: $MEDSAM2_ANNOTATOR, else your user name."
)
DEVICE_OPTION = typer.Option("cpu", "--device", help="cpu or cuda, for the model.")
OUTPUT_OPTION = typer.Option(None, "-o", "--output", help="Also write the case's current mask here (.nii.gz, .nrrd, .mha, .npz...).")
OVERLAY_OPTION = typer.Option(None, "--overlay", help="Also write a PNG montage of the segmented slices.")


def annotator_name(value: str | None) -> str:
    # An empty -a (a script's unset variable) is refused as a name, not taken for the login's: work
    # recorded under a shared login's name is no one's, and everyone on it would share its leases.
    if value is not None:
        return value
    return os.environ.get("MEDSAM2_ANNOTATOR") or getpass.getuser()


def check_views(output: Path | None, overlay: Path | None, image: Volume | None = None) -> None:
    """Refuse output names `show_views` cannot write before the case is looked up; again with the
    case's `image`, also those its format cannot hold (a DICOM-SEG of a NIfTI, a PNG of a scan),
    before an action is recorded (a rerun with a better name would record it twice)."""
    if output is not None:
        check_mask_output(output, image)
    if overlay is not None:
        check_overlay_output(overlay)


def show_views(model: CaseModel, output: Path | None, overlay: Path | None) -> None:
    """Write what the annotator looks at: the current mask and/or an overlay montage."""
    with outputs_together([output, overlay]) as (mask_target, overlay_target):
        if mask_target is not None:
            names = {int(value): name for value, name in model.project.settings.labels.items()}  # a SEG's segment labels
            save_mask(model.labels(), like=model.volume, path=mask_target, names=names)
        if overlay_target is not None:
            save_overlay_montage(
                model.slices,
                model.slice_labels(),
                overlay_target,
                display=model.display,
                pixel_spacing=slice_pixel_spacing(model.volume, model.axis_index),
            )
    for path in (output, overlay):
        if path is not None:
            typer.echo(f"wrote {path}")


def say_next(step: str, **paths: Path) -> None:
    """The command a round goes on with, so that each step's output teaches the next: `step` with
    `paths` filled in, quoted so that the line pastes into a shell (a folder named "my project/")."""
    typer.echo("next: " + step.format(**{name: shlex.quote(str(path)) for name, path in paths.items()}))


def describe(model: CaseModel) -> str:
    labels = model.slice_labels()
    parts = []
    for obj_id in (int(v) for v in np.unique(labels) if v):
        slices = np.flatnonzero((labels == obj_id).reshape(labels.shape[0], -1).any(axis=1))
        parts.append(f"object {obj_id}: slices {slices[0]}-{slices[-1]}, {counted(int(np.count_nonzero(labels == obj_id)), 'voxel')}")
    return "; ".join(parts) or "empty mask"


def work_session(project: Project, case: str, annotator: str | None, device: str, image: Volume | None = None) -> WorkSession:
    return WorkSession(project, case, annotator_name(annotator), Predictors(device), progress=True, volume=image)


def case_image(project: Project, case: str) -> Volume:
    """The image of `case`, read to check an action's input before the case is rebuilt (seconds to
    minutes: every recorded prompt is replayed)."""
    with project.transaction() as session:
        row = project.case(session, case)
    return load_case_image(row)


def edited_mask(project: Project, image: Volume, mask: Path) -> np.ndarray:
    """`mask` (a case's mask edited in another tool) as a label map, checked against the case's
    `image` and the project's labels."""
    edited = load_mask(mask, like=image)
    check_same_geometry(edited, image, f"{mask} vs {image.source}")
    for value in np.unique(edited.array):
        if value:
            project.settings.check_label(int(value), str(mask))
    return edited.array


@app.command("init")
@reports_input_errors
def init_command(
    project: Path = typer.Argument(..., metavar="PROJECT", help="Folder for the project (created; must not hold one yet)."),
    db: str = typer.Option(DEFAULT_DB, "--db", help="SQLite file (relative to PROJECT) or URL: sqlite:///FILE, postgresql://USER@HOST[:PORT]/DB (password via PGPASSWORD or ~/.pgpass)."),
    name: str | None = typer.Option(None, "--name", help="Project name in the database. Default: the folder's name."),
    model: str = typer.Option(DEFAULT_MODEL, "--model", help="Model of round 1: lite-medsam (embedded), a preset or a checkpoint path."),
    axis: str = typer.Option("axial", "--axis", help="Slicing axis of every prompt: axial, coronal or sagittal."),
    window: str | None = typer.Option(None, "--window", help="CT window for the model (preset or W,L). Default: by modality."),
    label: list[str] = typer.Option([], "--label", help="A label's name, VALUE=NAME (e.g. 1=lesion); repeat for several."),
    lease_minutes: float = typer.Option(30.0, "--lease-minutes", help="A case stays an annotator's this long after their last action (fixed for the project's life; one second to a year)."),
) -> None:
    """Create an annotation project: a folder for its masks and a database (SQLite or PostgreSQL).

    Several annotators on several machines share one project through a PostgreSQL database and the
    project folder on a shared drive. The schema is created and later upgraded automatically.

    Example: medsam2 annotate init lesions/ --db postgresql://annotator@dbhost/medsam2 --label 1=lesion
    """
    labels = {}
    for text in label:
        value, separator, label_name = text.partition("=")
        if not separator or not value.strip().isdigit() or not 1 <= int(value) <= MAX_OBJECT_ID or not label_name.strip():
            raise InputError(f"--label {text!r}: expected VALUE=NAME with VALUE a whole number from 1 to {MAX_OBJECT_ID}, e.g. 1=lesion")
        if str(int(value)) in labels:
            raise InputError(f"--label {text!r}: label {int(value)} is already named {labels[str(int(value))]!r}")
        labels[str(int(value))] = label_name.strip()
    settings = ProjectSettings(axis=axis, window=window, labels=labels, lease_minutes=lease_minutes)  # type: ignore[arg-type]
    created = init_project(project, db, name, settings, model)
    status = created.status()
    typer.echo(f"created project {created.name} in {created.folder} (database {status.database}; round 1: {status.rounds[0].model_version})")
    say_next("medsam2 annotate import {project} SCANS... [--masks MASKS/]", project=project)


@app.command("import")
@reports_input_errors
def import_command(
    project: Path = PROJECT_ARGUMENT,
    paths: list[Path] = typer.Argument(..., metavar="PATHS", help="Image files, DICOM series folders, or folders holding them."),
    masks: Path | None = typer.Option(None, "--masks", help="Masks to review: a file (one image) or a folder of files named like the images."),
    box: list[str] = typer.Option([], "--box", help="Hint Z,X1,Y1,X2,Y2[,ID] to pre-segment from (one image only)."),
    point: list[str] = typer.Option([], "--point", help="Hint click Z,X,Y[,LABEL[,ID]] (one image only)."),
    recist: list[str] = typer.Option([], "--recist", help="Hint RECIST line Z,X1,Y1,X2,Y2[,ID] (one image only)."),
    prompts: Path | None = typer.Option(None, "--prompts", help="Hints as a prompts JSON file (one image only)."),
    recursive: bool = typer.Option(
        False, "--recursive", "-r",
        help="Take images and DICOM series from every folder below each folder given (a PACS export), each case named "
        "after its path below it: PATIENT/STUDY/CT becomes PATIENT_STUDY_CT (masks named so too).",
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Add cases to a project; importing the same images again adds only the new ones.

    A case with a mask (--masks) starts pre-segmented: the annotator reviews that mask. A MedSAM npz
    holding a `recist` marker, or an image given with --box/--point/--recist/--prompts, carries hints
    the model pre-segments it from (`medsam2 annotate presegment`). Other cases start from the
    annotator's first prompt.

    Example: medsam2 annotate import lesions/ scans/ --masks old_masks/
    """
    sources = PromptSources(tuple(box), tuple(point), tuple(recist), prompts)
    summary = import_cases(open_project(project), paths, masks=masks, prompts=sources, progress=progress, recursive=recursive)
    typer.echo(f"imported {len(summary.imported)} case(s)" + (f", {len(summary.skipped)} already in the project" if summary.skipped else ""))
    if summary.without_mask:
        typer.echo(f"warning: no mask in {masks} for {len(summary.without_mask)} case(s), imported without one: {', '.join(summary.without_mask)}", err=True)
    if summary.duplicates:
        typer.echo(
            "warning: not imported, the same image as a case already in the project (if the data moved: medsam2 annotate relocate): "
            + ", ".join(f"{image} (case {name})" for image, name in summary.duplicates.items()),
            err=True,
        )
    if summary.hints_not_used:
        typer.echo(
            "warning: already in the project, so kept as imported (the masks and prompt hints given now are not used; "
            f"prompt a case with `medsam2 annotate prompt`): {', '.join(summary.hints_not_used)}",
            err=True,
        )
    if summary.imported:
        say_next("medsam2 annotate presegment {project} (the cases with hints), then medsam2 annotate queue {project} -a NAME", project=project)


@app.command("presegment")
@reports_input_errors
def presegment_command(
    project: Path = PROJECT_ARGUMENT,
    case: list[str] = typer.Option([], "--case", help="Only these cases (repeat). Default: every new case with hints."),
    device: str = DEVICE_OPTION,
) -> None:
    """Pre-segment new cases from their hints with the model of the current round.

    Several processes (or machines, on PostgreSQL) may run this at once: each case is claimed first.
    A case the model finds nothing in stays new, for an annotator to start by hand.

    Example: medsam2 annotate presegment lesions/ --device cuda
    """
    report = presegment(open_project(project), Predictors(device), names=case or None)
    typer.echo(f"pre-segmented {len(report.done)} case(s)")
    for name, why in report.failed.items():
        typer.echo(f"not pre-segmented: {name}: {why}", err=True)
    say_next("medsam2 annotate queue {project} -a NAME (or, in a browser: medsam2 serve --annotate {project})", project=project)
    if report.failed:
        raise typer.Exit(EXIT_SOME_FAILED)


@app.command("queue")
@reports_input_errors
def queue_command(
    project: Path = PROJECT_ARGUMENT,
    annotator: str | None = ANNOTATOR_OPTION,
    output: Path | None = OUTPUT_OPTION,
    overlay: Path | None = OVERLAY_OPTION,
    device: str = DEVICE_OPTION,
) -> None:
    """Lease the next case to an annotator (the one they hold, if any).

    Pre-segmented cases come first, then new ones. The lease runs out after the project's lease
    time without an action; the case then goes to the next annotator with everything recorded on it.
    A case whose image is missing or changed is given back and passed over, with a warning naming
    it. Exit status 1 when no case is free.

    Example: medsam2 annotate queue lesions/ -a alice -o current.nii.gz --overlay current.png
    """
    check_views(output, overlay)
    opened = open_project(project)
    who = annotator_name(annotator)
    if output is None and overlay is None:
        leased = lease_next_openable(opened, who, load_case_image)
    else:
        leased = lease_next_openable(opened, who, lambda case: WorkSession(opened, case.name, who, Predictors(device), progress=True))
    if leased is None:
        typer.echo("no case is free")
        raise typer.Exit(1)
    for passed_over in leased.passed_over:
        typer.echo(f"warning: passed over {passed_over}", err=True)
    case = leased.case
    typer.echo(f"{case.name}: leased to {who} until {case.lease_expires:%Y-%m-%d %H:%M} UTC ({case.image})")
    if (left := left_by_another(opened, case, who)) is not None:
        typer.echo(f"{case.name}: {left_by_words(left)}")
    if isinstance(leased.opened, WorkSession):
        leased.opened.model.remember()
        typer.echo(describe(leased.opened.model))
        show_views(leased.opened.model, output, overlay)


@app.command("show")
@reports_input_errors
def show_command(
    project: Path = PROJECT_ARGUMENT,
    case: str = CASE_ARGUMENT,
    output: Path | None = OUTPUT_OPTION,
    overlay: Path | None = OVERLAY_OPTION,
    device: str = DEVICE_OPTION,
) -> None:
    """Print a case's record (state, lease, every interaction with its box, clicks or reason); with
    -o/--overlay also rebuild and write its current mask (no lease needed: nothing is recorded).

    Example: medsam2 annotate show lesions/ CT_Lesion_000002 --overlay case.png
    """
    check_views(output, overlay)
    opened = open_project(project)
    with opened.transaction() as session:
        row = opened.case(session, case)
        snapshot = read_snapshot(opened, session, row)
        history = list(
            session.scalars(
                select(InteractionRow)
                .where(InteractionRow.case_id == row.id)
                .order_by(InteractionRow.id)
                .options(defer(InteractionRow.mask))
            )
        )
    held = running_lease(row, opened.clock())
    lease = f", leased to {held[0]} until {held[1]:%Y-%m-%d %H:%M} UTC" if held else ""
    typer.echo(f"{row.name}: {row.state}{lease}; image {row.image}; pre-segmentation: {row.preseg_source or 'none'} ({row.model_version or '-'})")
    for item in history:
        where = f" slice {item.slice_index} object {item.obj_id}" if item.slice_index is not None else ""
        undone = f" (undoes #{item.undoes_id})" if item.undoes_id else ""
        typer.echo(f"  #{item.id} {item.created_at:%Y-%m-%d %H:%M:%S} {item.annotator}: {item.kind}{where}{undone}{interaction_details(item.data)}")
    if output is not None or overlay is not None:
        model = CaseModel(opened, snapshot, Predictors(device), progress=True)
        model.remember()
        typer.echo(describe(model))
        show_views(model, output, overlay)


def interaction_details(data: dict) -> str:
    """What an interaction's record adds to its line: a prompt's box and clicks (as `prompt` takes
    them, + for the object, - for background), a rejection's reason."""
    parts = []
    if box := data.get("box"):
        parts.append("box " + ",".join(f"{v:g}" for v in box))
    if points := data.get("points"):
        parts.append("clicks " + " ".join(f"{x:g},{y:g}{'+' if label else '-'}" for (x, y), label in zip(points, data.get("labels", []))))
    if reason := data.get("reason"):
        parts.append(f"reason: {reason}")
    return "".join(f"; {part}" for part in parts)


@app.command("prompt")
@reports_input_errors
def prompt_command(
    project: Path = PROJECT_ARGUMENT,
    case: str = CASE_ARGUMENT,
    box: list[str] = typer.Option([], "--box", help="Box Z,X1,Y1,X2,Y2[,ID] on slice Z (X column, Y row)."),
    point: list[str] = typer.Option([], "--point", help="Click Z,X,Y[,LABEL[,ID]]; LABEL 1 = object (default), 0 = background."),
    recist: list[str] = typer.Option([], "--recist", help="RECIST line Z,X1,Y1,X2,Y2[,ID]; becomes a square box."),
    annotator: str | None = ANNOTATOR_OPTION,
    output: Path | None = OUTPUT_OPTION,
    overlay: Path | None = OVERLAY_OPTION,
    device: str = DEVICE_OPTION,
) -> None:
    """Prompt the model on a leased case; it re-segments the slice and re-propagates. Each prompt
    is recorded as one interaction. Coordinates as in `medsam2 segment`, along the project's axis.

    Example: medsam2 annotate prompt lesions/ CT_Lesion_000002 --box 6,246,273,276,322 -o current.nii.gz
    """
    check_views(output, overlay)
    opened = open_project(project)
    image = case_image(opened, case)
    check_views(output, overlay, image)
    depth, height, width = to_slices(np.empty(image.shape, np.uint8), slicing_axis_index(image, opened.settings.axis)).shape
    prompts = check_one_region_each(prompts_from_flags(box, point, recist, height, width))
    if not prompts:
        raise InputError("give at least one --box, --point or --recist")
    for prompt in prompts:  # before the case is replayed (minutes on a large scan), not after
        prompt.validate(depth, height, width)
        opened.settings.check_label(prompt.obj_id, f"prompt on slice {prompt.slice_index}")
    work = work_session(opened, case, annotator, device, image)
    for prompt in prompts:
        work.add_prompt(prompt.slice_index, prompt.obj_id, box=prompt.box, points=list(prompt.points), labels=list(prompt.labels))
    work.model.remember()
    typer.echo(f"{case}: recorded {len(prompts)} prompt(s); {describe(work.model)}")
    show_views(work.model, output, overlay)


@app.command("correct")
@reports_input_errors
def correct_command(
    project: Path = PROJECT_ARGUMENT,
    case: str = CASE_ARGUMENT,
    mask: Path = typer.Option(..., "--mask", help="The case's mask as edited in another tool, in the image's geometry."),
    slice_: list[int] = typer.Option([], "--slice", help="Take only these slices of it (repeat). Default: every slice that differs."),
    annotator: str | None = ANNOTATOR_OPTION,
    output: Path | None = OUTPUT_OPTION,
    overlay: Path | None = OVERLAY_OPTION,
    device: str = DEVICE_OPTION,
) -> None:
    """Record hand-drawn slices: where the edited mask differs from the current one, its slice
    replaces the model's (one interaction per slice and object). A later prompt on a slice hands it
    back to the model.

    Example: medsam2 annotate correct lesions/ CT_Lesion_000002 --mask edited.nii.gz --slice 7
    """
    check_views(output, overlay)
    opened = open_project(project)
    image = case_image(opened, case)
    check_views(output, overlay, image)
    edited = edited_mask(opened, image, mask)
    work = work_session(opened, case, annotator, device, image)
    recorded = work.apply_edit(edited, slice_ or None)
    work.model.remember()
    typer.echo(f"{case}: recorded {recorded} correction(s); {describe(work.model)}")
    if not recorded:
        where = f"{mask}, {'slice' if len(slice_) == 1 else 'slices'} {', '.join(map(str, slice_))}" if slice_ else str(mask)
        typer.echo(f"warning: {where}: the same as the case's current mask, nothing to record (another slice meant?)", err=True)
    show_views(work.model, output, overlay)


@app.command("undo")
@reports_input_errors
def undo_command(
    project: Path = PROJECT_ARGUMENT,
    case: str = CASE_ARGUMENT,
    annotator: str | None = ANNOTATOR_OPTION,
    output: Path | None = OUTPUT_OPTION,
    overlay: Path | None = OVERLAY_OPTION,
    device: str = DEVICE_OPTION,
) -> None:
    """Take back the latest prompt or correction still in force on a leased case (recorded too).

    Example: medsam2 annotate undo lesions/ CT_Lesion_000002 -o current.nii.gz
    """
    check_views(output, overlay)
    opened = open_project(project)
    image = case_image(opened, case)
    check_views(output, overlay, image)
    work = work_session(opened, case, annotator, device, image)
    undone = work.undo()
    work.model.remember()
    typer.echo(f"{case}: undid a {undone.data['undoes']} on slice {undone.slice_index}; {describe(work.model)}")
    show_views(work.model, output, overlay)


@app.command("accept")
@reports_input_errors
def accept_command(
    project: Path = PROJECT_ARGUMENT,
    case: str = CASE_ARGUMENT,
    mask: Path | None = typer.Option(None, "--mask", help="Accept this edited mask instead (its changed slices are recorded as corrections)."),
    annotator: str | None = ANNOTATOR_OPTION,
    device: str = DEVICE_OPTION,
) -> None:
    """Accept a leased case's current mask: it is stored with its SHA-256 and goes into the export.

    Example: medsam2 annotate accept lesions/ CT_Lesion_000002
    """
    opened = open_project(project)
    image = labels = None
    if mask is not None:
        image = case_image(opened, case)
        labels = edited_mask(opened, image, mask)
    row = work_session(opened, case, annotator, device, image).accept(labels)
    dice_text = f", Dice vs pre-segmentation {row.initial_dice:.3f}" if row.initial_dice is not None else ""
    typer.echo(f"{case}: accepted ({counted(row.mask_slices, 'slice')}{dice_text}); mask {row.mask}")


@app.command("reject")
@reports_input_errors
def reject_command(
    project: Path = PROJECT_ARGUMENT,
    case: str = CASE_ARGUMENT,
    reason: str = typer.Option("", "--reason", help="Why (kept in the record)."),
    annotator: str | None = ANNOTATOR_OPTION,
) -> None:
    """Reject a case (unusable image, no such object): it leaves the queue and the export. Yours, or
    one nobody holds (a case whose image cannot be opened is given back at once).

    Example: medsam2 annotate reject lesions/ CT_Lesion_000002 --reason "motion artefact"
    """
    reject(open_project(project), case, annotator_name(annotator), reason)
    typer.echo(f"{case}: rejected")


@app.command("release")
@reports_input_errors
def release_command(
    project: Path = PROJECT_ARGUMENT,
    case: str = CASE_ARGUMENT,
    annotator: str | None = ANNOTATOR_OPTION,
) -> None:
    """Give a leased case back undecided; the next annotator goes on from what was recorded.

    Example: medsam2 annotate release lesions/ CT_Lesion_000002
    """
    row = release(open_project(project), case, annotator_name(annotator))
    typer.echo(f"{case}: released ({row.state})")


@app.command("status")
@reports_input_errors
def status_command(
    project: Path = PROJECT_ARGUMENT,
    cases: bool = typer.Option(False, "--cases", help="Also list every case: name, state, who holds it, image."),
) -> None:
    """Cases per state, running leases and the rounds with their models; with --cases, every case
    by name (the CASE other commands take).

    Example: medsam2 annotate status lesions/ --cases
    """
    opened = open_project(project)
    status = opened.status()
    console = StdoutConsole()
    console.print(f"project {status.name} ({status.database})")
    counts = Table("state", "cases")
    for state, count in status.counts.items():
        counts.add_row(state, str(count))
    console.print(counts)
    rounds = Table("round", "model", "started (UTC)", "cases")
    for info in status.rounds:
        rounds.add_row(str(info.number), info.model_version, f"{info.started_at:%Y-%m-%d %H:%M}", str(info.cases))
    if status.without_round:
        rounds.add_row("-", "none yet (not pre-segmented or opened)", "", str(status.without_round))
    console.print(rounds)
    if status.leases:
        leases = Table("case", "annotator", "lease ends (UTC)")
        for lease in status.leases:
            leases.add_row(lease.case, lease.annotator, f"{lease.expires:%Y-%m-%d %H:%M}")
        console.print(leases)
    if cases:
        holder = {lease.case: lease.annotator for lease in status.leases}
        listing = Table(Column("case", no_wrap=True), "state", "leased to", Column("image", overflow="fold"))
        for row in opened.cases():
            listing.add_row(row.name, row.state, holder.get(row.name, ""), row.image)
        console.print(listing)


@app.command("round")
@reports_input_errors
def round_command(
    project: Path = PROJECT_ARGUMENT,
    model: str = typer.Option(..., "--model", help="The model of the new round: a fine-tuned checkpoint, a preset or lite-medsam."),
) -> None:
    """Start the next round with a new model (the retraining hook): cases pre-segmented from now on
    record it, and the effort report compares the rounds.

    Example: medsam2 annotate round lesions/ --model finetuned_round1.pth
    """
    row = open_project(project).start_round(model)
    typer.echo(f"round {row.number} started with {row.model_version}")
    say_next("medsam2 annotate import {project} SCANS... (the round's new cases), then medsam2 annotate presegment {project}", project=project)


@app.command("relocate")
@reports_input_errors
def relocate_command(
    project: Path = PROJECT_ARGUMENT,
    old: Path = typer.Argument(..., metavar="OLD", help="The folder the images (or round checkpoints) were in when recorded (or one image file)."),
    new: Path = typer.Argument(..., metavar="NEW", help="The folder they are in now, with the same layout inside (or the file's new path)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Check and list the moves; change nothing."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar while the images are checked."),
) -> None:
    """Point the project at images (and round checkpoints) that moved: the record keeps absolute
    paths, so after copying the data to another machine or mount point, every path under OLD
    becomes the same path under NEW. Each file is checked first (a case's voxels as imported, a
    checkpoint's SHA-256); one missing or different changes nothing and says which.

    Example: medsam2 annotate relocate lesions/ /mnt/old-share/scans /data/scans
    """
    moves = relocate(open_project(project), old, new, dry_run=dry_run, progress=progress)
    for move in moves:
        typer.echo(f"{move.name}: {move.old} -> {move.new}")
    cases = sum(move.kind == "case" for move in moves)
    what = f"{cases} case image(s) and {len(moves) - cases} round checkpoint(s)"
    typer.echo(f"would relocate {what} (dry run: nothing changed)" if dry_run else f"relocated {what}")


@app.command("report")
@reports_input_errors
def report_command(
    project: Path = PROJECT_ARGUMENT,
    out: Path = typer.Option(..., "--out", help="Folder for cases.csv, rounds.csv and effort.png."),
) -> None:
    """Annotation effort per case and per round: interactions, slices touched, time, and the Dice
    between pre-segmentation and accepted mask, against slice-by-slice manual contouring.

    Example: medsam2 annotate report lesions/ --out effort/
    """
    report = effort_report(open_project(project))
    make_output_folder(out)  # before the table is printed: a report without its files is no report
    # One column per round, a row per measure: nine measures side by side do not fit a terminal.
    table = Table(Column("", no_wrap=True), *(Column(f"round {r.round}", overflow="fold") for r in report.rounds))
    measures = {
        "model": lambda r: r.model_version,
        "accepted": lambda r: str(r.accepted),
        "rejected": lambda r: str(r.rejected),
        "interactions per case": lambda r: fmt(r.mean_interactions, "{:.1f}"),
        "manual slices per case": lambda r: fmt(r.manual_slices / r.accepted if r.accepted else None, "{:.1f}"),
        "reduction": lambda r: fmt(None if r.reduction is None else 100 * r.reduction, "{:.0f}%"),
        "initial Dice": lambda r: fmt(r.mean_initial_dice, "{:.3f}"),
        "minutes per case": lambda r: fmt(None if r.mean_seconds is None else r.mean_seconds / 60, "{:.1f}"),
    }
    for measure, shown in measures.items():
        table.add_row(measure, *(shown(r) for r in report.rounds))
    if report.rounds:
        StdoutConsole().print(table)
    else:
        typer.echo("no case is accepted or rejected yet")
    for path in write_report(report, out):
        typer.echo(f"wrote {path}")


def fmt(value: float | None, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


@app.command("export")
@reports_input_errors
def export_command(
    project: Path = PROJECT_ARGUMENT,
    out: Path = typer.Argument(..., metavar="OUT", help="Folder for the training set: new, empty, or an earlier export with --overwrite (never the project's folder)."),
    layout: str = typer.Option("nifti", "--format", help=f"{' or '.join(EXPORT_FORMATS)}: images/ + masks/ NIfTI, or MedSAM npz (imgs + gts) per case."),
    round_: list[int] = typer.Option([], "--round", help="Only cases of these rounds (repeat). Default: all."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier export in OUT (a folder holding its manifest.json; the whole folder is replaced)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Write the accepted cases as a training set with manifest.json, for `medsam2 train`.

    Example: medsam2 annotate export lesions/ trainset/ --format npz
    """
    cases = export_training_set(open_project(project), out, layout, round_ or None, overwrite, progress)
    typer.echo(f"exported {len(cases)} case(s) to {out}")
    say_next("medsam2 train --data {out} --out RUN/, then medsam2 annotate round {project} --model RUN/model.pt", project=project, out=out)

