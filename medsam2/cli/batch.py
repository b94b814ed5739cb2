"""`medsam2 batch`: every case of a manifest, on a local process pool or a Ray cluster, resumably."""

from __future__ import annotations

import signal
from collections import Counter
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from medsam2.cli.console import StdoutConsole
from medsam2.cli.errors import EXIT_SOME_FAILED, reports_input_errors
from medsam2.cli.segment import WINDOW_PRESETS_TEXT
from medsam2.distributed import BatchReport, BatchSettings, LocalEngine, RayEngine, read_manifest, run_batch
from medsam2.distributed.ray_engine import check_cluster_address, import_ray
from medsam2.distributed.runner import stop_requests
from medsam2.distributed.manifest import FORMATS, check_format
from medsam2.engine.models import DEFAULT_MODEL, resolve_device
from medsam2.engine.sam2_predictor import memory_propagation
from medsam2.engine.registry import pinned_spec, resolve_model
from medsam2.errors import InputError
from medsam2.preprocess import parse_window
from medsam2.wording import counted

ENGINES = ("local", "ray")
# Exit statuses beside 0 (all done) and 2 (bad command-line input).
FAILURES_SHOWN = 20


@reports_input_errors
def batch(
    manifest: Path = typer.Argument(..., metavar="MANIFEST", help="CSV or JSONL file, one case per row: image, prompts, optional gt/model/format (see above)."),
    out: Path = typer.Option(..., "-o", "--out", help="Output folder: `masks/ID.FORMAT`, `results.csv`, `results.jsonl`."),
    engine: str = typer.Option("local", "--engine", help="local: worker processes on this machine; ray: actors on a Ray cluster."),
    workers: int | None = typer.Option(None, "--workers", min=1, help="Worker processes or Ray actors. Default: one per CPU (local), one per GPU or CPU slot (ray)."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="Torch threads per worker. Default: CPUs / workers (local), 1 (ray)."),
    ray_address: str | None = typer.Option(None, "--ray-address", help="Ray cluster to join: HOST:PORT, auto, or ray://HOST:PORT. Default: $RAY_ADDRESS, else a local Ray."),
    model: str = typer.Option(DEFAULT_MODEL, "--model", help="Model for rows without one, as segment --model takes it: lite-medsam (embedded), a preset (medsam2, sam2.1-tiny, ...), PRESET=FILE.pt or a checkpoint path."),
    memory: str = typer.Option("recent", "--memory", help="SAM 2.1 / MedSAM2: the memory bank for rows without a memory column: recent or confidence (as `medsam2 segment --memory`)."),
    output_format: str = typer.Option("auto", "--format", help=f"Mask format for rows without one: {', '.join(FORMATS)}. auto: the image's own format where masks can be written in it, DICOM-SEG (.dcm) for DICOM, PNG for pictures, else nii.gz."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda (with --engine ray, each actor gets one GPU)."),
    axis: str = typer.Option("axial", "--axis", help="Slicing axis of 3D images: axial, coronal or sagittal (a row's 2D picture is segmented in its own plane)."),
    window: str | None = typer.Option(None, "--window", help=f"CT window: {WINDOW_PRESETS_TEXT}"),
    keep_largest: bool = typer.Option(False, "--keep-largest", help="Keep only the largest 3D connected component per object."),
    fill_holes: bool = typer.Option(False, "--fill-holes", help="Fill holes in each slice's mask."),
    nsd_tolerance: float = typer.Option(2.0, "--nsd-tolerance", min=0.0, help="NSD tolerance in mm, for cases with ground truth."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Run again the cases an earlier run recorded as failed."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the live progress bar."),
) -> None:
    """Segment every case of MANIFEST into OUT; rerun the same command to resume.

    Manifest columns (CSV header or JSONL keys; only image is required): id, image, box, point,
    recist (the text of segment's --box/--point/--recist; several separated by ';'), prompts (a
    prompts JSON file), mask_prompt (a mask file, as segment's --mask-prompt), gt (ground truth, for
    DSC and NSD), model, memory, format. Relative paths are taken from the manifest's folder. An
    npz with a recist marker needs no prompt column.

    Each case's mask is written atomically in the image's geometry and recorded in results.jsonl as
    it finishes; results.csv (status, error, seconds, DSC, NSD per case) is rebuilt at the end. A
    rerun skips recorded cases whose row and settings are unchanged (--retry-failed also reruns the
    failures). A failing case is recorded with its error and the run goes on. Ctrl-C or SIGTERM
    finishes the running cases and stops; a second one stops at once.

    Exit status: 0 all cases done, 1 some failed, 2 bad command or manifest, 128+N stopped by signal N.

    Example:

      printf 'id,image,box,gt\\nlesion1,ct1.nii.gz,"42,120,88,160,131",gt1.nii.gz\\n' > cases.csv

      medsam2 batch cases.csv --out results/ --workers 2

      medsam2 batch cases.csv --out results/ --engine ray --ray-address head-node:6379 --device cuda
    """
    if engine not in ENGINES:
        raise InputError(f"--engine {engine!r}: choose local or ray")
    if ray_address is not None and engine != "ray":
        raise InputError("--ray-address is for --engine ray")
    if axis not in ("axial", "coronal", "sagittal"):
        raise InputError(f"--axis {axis!r}: choose axial, coronal or sagittal")
    if window is not None:
        parse_window(window)
    memory_propagation(memory)  # a bad name is a one-line error before any case runs
    if engine == "local":
        resolve_device(device)  # a Ray cluster's GPUs may be on other machines: its actors check
        if model != DEFAULT_MODEL:
            resolve_model(model)  # ... and so may its checkpoints
    else:
        import_ray()
        check_cluster_address(ray_address)
    settings = BatchSettings(
        out_dir=out,
        model=model,
        output_format=check_format(output_format, "--format"),
        device=device,
        axis=axis,  # type: ignore[arg-type]
        window=window,
        keep_largest=keep_largest,
        fill_holes=fill_holes,
        nsd_tolerance_mm=nsd_tolerance,
        memory=memory,  # type: ignore[arg-type]
    )
    cases = read_manifest(manifest)
    # as segment says it, before the run (the workers load the models, each in its own process)
    for spec, count in Counter(case.model or model for case in cases).items():
        if spec != DEFAULT_MODEL:
            typer.echo(f"model: {pinned_spec(spec)} for {counted(count, 'case')}", err=True)

    def make_engine(cases_to_run: int) -> LocalEngine | RayEngine:
        if engine == "ray":
            return RayEngine(settings, workers, threads, ray_address, cases=cases_to_run)
        return LocalEngine(settings, workers, threads, cases=cases_to_run)

    # Held until the summary is out: a signal after the last case was recorded only ends the run
    # as it would have ended (it silently cut the summary off).
    with stop_requests() as stop:
        try:
            report = run_batch(cases, settings, make_engine, retry_failed=retry_failed, progress=progress, announce=typer.echo, stop=stop)
        except KeyboardInterrupt:
            if stop.at_once is None:
                raise
            typer.echo(f"stopped at once by {signal.Signals(stop.at_once).name}, dropping the running cases: "
                       "rerun the same command to go on", err=True)
            raise typer.Exit(128 + stop.at_once) from None
        print_summary(report, StdoutConsole())
        typer.echo(f"wrote {out / 'results.csv'}")
    if report.stopped_by is not None:
        typer.echo(f"stopped by {signal.Signals(report.stopped_by).name}: rerun the same command to go on", err=True)
        raise typer.Exit(128 + report.stopped_by)
    if report.count("failed"):
        raise typer.Exit(EXIT_SOME_FAILED)


def print_summary(report: BatchReport, console: Console) -> None:
    """The run and the manifest's state in one table, then the failed cases with their errors."""
    run_now = len(report.records)
    table = Table(title="Batch summary", show_header=False)
    table.add_column(justify="left")
    table.add_column(justify="right")
    table.add_row("cases in manifest", str(report.cases))
    table.add_row("done by earlier runs", str(report.done_before))
    table.add_row("run now", str(run_now))
    table.add_row("ok / failed / pending", f"{report.count('ok')} / {report.count('failed')} / {report.pending}")
    if report.unlisted:
        table.add_row("cases not in this manifest (kept)", str(report.unlisted))
    if run_now:
        table.add_row("engine", f"{report.engine}, {report.workers} worker(s) x {report.threads} thread(s)")
        table.add_row("wall time", f"{report.seconds:.1f} s ({run_now / report.seconds:.3f} cases/s)")
    scored = [record for record in report.latest.values() if record.get("dsc") is not None]
    if scored:
        mean_dsc = sum(record["dsc"] for record in scored) / len(scored)
        mean_nsd = sum(record["nsd"] for record in scored) / len(scored)
        table.add_row(f"mean DSC / NSD ({len(scored)} with ground truth)", f"{mean_dsc:.4f} / {mean_nsd:.4f}")
    console.print(table)
    failures = [record for record in report.latest.values() if record["status"] == "failed"]
    if failures:
        failed_table = Table(title=f"Failed cases ({len(failures)})")
        failed_table.add_column("case")
        failed_table.add_column("error", overflow="fold")
        for record in failures[:FAILURES_SHOWN]:
            failed_table.add_row(record["case_id"], record["error"])
        if len(failures) > FAILURES_SHOWN:
            failed_table.add_row("...", f"{len(failures) - FAILURES_SHOWN} more in results.csv")
        console.print(failed_table)
