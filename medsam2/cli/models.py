"""What the commands that load a model share: the `--model` help, and saying which model runs."""

from __future__ import annotations

import typer

from medsam2.engine.models import DEFAULT_MODEL, load_predictor

MODEL_HELP = (
    "lite-medsam (embedded); medsam2, sam2.1-tiny, sam2.1-small, sam2.1-base-plus or sam2.1-large "
    "(checkpoint from `$MEDSAM2_MODEL_<NAME>` or the config file, see README); PRESET=FILE.pt for a preset's "
    "settings with your file; or a LiteMedSAM / SAM 2.1 checkpoint path (SAM 2.1 variant detected; 1024 px, "
    "or the settings `medsam2 train` recorded in it)."
)


def loaded_predictor(spec: str, **options):
    """`load_predictor(spec, **options)`, saying on stderr which model runs where `spec` is not the
    embedded default (the family, variant, input size, settings and file a preset or path came to)."""
    predictor = load_predictor(spec, **options)
    if spec != DEFAULT_MODEL:
        typer.echo(f"model: {predictor.description}", err=True)
    return predictor
