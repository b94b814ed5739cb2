"""Batch manifests: one case per CSV row or JSONL line.

Columns (CSV header, or JSONL keys; only ``image`` is required)::

    id       the case's name: its mask is masks/<id>.<format>; default the image's file name
             without its suffix. Letters, digits, '.', '_' and '-' only, unique in the manifest.
    image    the scan (any scan format `medsam2 segment` reads, or a DICOM folder; not a video)
    box      "Z,X1,Y1,X2,Y2[,ID]"        as `medsam2 segment --box`
    point    "Z,X,Y[,LABEL[,ID]]"         as `medsam2 segment --point`
    recist   "Z,X1,Y1,X2,Y2[,ID]"        as `medsam2 segment --recist`
    prompts  a prompts JSON file          as `medsam2 segment --prompts`
    mask_prompt  a mask file in the image's geometry, each label an object prompted by its largest
             slice, as `medsam2 segment --mask-prompt` (a DICOM-SEG of a DICOM series too)
    gt       a ground-truth mask in the image's geometry (an npz's own `gts` when it is the image)
    model    the model for this case (default: the command's --model)
    memory   a memory model's bank for this case: recent or confidence (default: the command's --memory)
    format   the mask's format: nii.gz, nii, nrrd, mha, npz, dcm, png or auto (default: --format)

A CSV cell holds several prompts separated by ';'. In JSONL, box/point/recist may also be a list
of such strings, a list of numbers (one prompt) or a list of lists of numbers. Relative paths are
taken from the manifest's folder. A malformed manifest is an `InputError`; a problem with one case
(a missing image, a box outside the slice) is that case's failure, found when it runs.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path

from medsam2.documents import keys_once
from medsam2.engine.prompt_sources import PromptNames, PromptSources, check_prompt_texts
from medsam2.engine.registry import with_files_from
from medsam2.engine.tracking import MEMORY_POLICIES, MemoryPolicy
from medsam2.errors import InputError
from medsam2.io.paths import mask_file_stem
from medsam2.io.writers import SUPPORTED_MASK_SUFFIXES

AUTO_FORMAT = "auto"
FORMATS = (AUTO_FORMAT, *(suffix.lstrip(".") for suffix in SUPPORTED_MASK_SUFFIXES))
COLUMNS = ("id", "image", "box", "point", "recist", "prompts", "mask_prompt", "gt", "model", "memory", "format")
PROMPT_COLUMNS = ("box", "point", "recist")
# Messages about a row's prompts name its columns, not the options of `segment`.
MANIFEST_PROMPTS = PromptNames("box", "point", "recist", "slice", "give a box, point, recist, prompts or mask_prompt column")
# Ids become file names on every node of a cluster: keep them portable.
CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class Case:
    """One row of a manifest, paths resolved."""

    case_id: str
    image: Path
    prompts: PromptSources
    gt: Path | None = None
    model: str | None = None  # None: the batch's default model
    memory: MemoryPolicy | None = None  # None: the batch's default memory bank
    output_format: str | None = None  # None: the batch's default format
    line: int = 0  # where it is in the manifest, for messages


def read_manifest(path: Path) -> list[Case]:
    """The cases of a CSV (``.csv``) or JSON Lines (``.jsonl``, ``.ndjson``) manifest."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a folder; the manifest is a .csv or .jsonl file listing the cases")
    if not path.is_file():
        raise InputError(f"{path}: no such manifest file")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        rows = _csv_rows(path)
    elif suffix in (".jsonl", ".ndjson"):
        rows = _jsonl_rows(path)
    else:
        raise InputError(f"{path}: a manifest is a .csv or .jsonl file, not '{suffix or 'no extension'}'")
    cases = [_case(values, line, path) for line, values in rows]
    if not cases:
        raise InputError(f"{path}: the manifest lists no cases")
    first_line: dict[str, int] = {}
    for case in cases:
        if case.case_id in first_line:
            raise InputError(
                f"{path} line {case.line}: case id {case.case_id!r} repeats line {first_line[case.case_id]} "
                "(give each row a unique id)"
            )
        first_line[case.case_id] = case.line
    return cases


def _csv_rows(path: Path) -> list[tuple[int, dict]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle, skipinitialspace=True)
            if reader.fieldnames is None:
                return []
            header = [name.strip().lower() for name in reader.fieldnames]
            _check_columns(header, path, "line 1")
            reader.fieldnames = header
            rows = []
            for row in reader:
                if None in row:
                    raise InputError(f"{path} line {reader.line_num}: more cells than columns (quote cells holding commas)")
                rows.append((reader.line_num, {key: value for key, value in row.items() if value not in (None, "")}))
            return rows
    except (UnicodeDecodeError, csv.Error) as error:
        raise InputError(f"{path}: not a readable CSV file ({error})") from None


def _jsonl_rows(path: Path) -> list[tuple[int, dict]]:
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise InputError(f"{path}: not a UTF-8 text file ({error})") from None
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            values = json.loads(text, object_pairs_hook=keys_once)
        except json.JSONDecodeError as error:
            raise InputError(f"{path} line {number}: not valid JSON ({error.msg})") from None
        except InputError as error:
            raise InputError(f"{path} line {number}: {error}") from None
        if not isinstance(values, dict):
            raise InputError(f"{path} line {number}: expected a JSON object, got {type(values).__name__}")
        names = [key.strip().lower() for key in values]  # as a CSV header's names
        _check_columns(names, path, f"line {number}")
        values = dict(zip(names, values.values()))
        rows.append((number, {key: value for key, value in values.items() if value not in (None, "", [])}))
    return rows


def _check_columns(names: list[str], path: Path, where: str) -> None:
    unknown = [name for name in names if name not in COLUMNS]
    if unknown:
        raise InputError(f"{path} {where}: unknown column(s) {', '.join(map(repr, unknown))} (known: {', '.join(COLUMNS)})")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:  # the reader would keep the last one's value without a word
        raise InputError(f"{path} {where}: column(s) {', '.join(map(repr, repeated))} given twice (upper and lower case are one name)")


def check_format(value: str, where: str) -> str:
    """A format name ("nii.gz", ".npz", "auto"...) in its plain lower-case form."""
    name = value.strip().lower().lstrip(".")
    if name not in FORMATS:
        raise InputError(f"{where} {value!r}: unknown mask format (choose from {', '.join(FORMATS)})")
    return name


def _case(values: dict, line: int, manifest: Path) -> Case:
    where = f"{manifest} line {line}"
    if "image" not in values:
        raise InputError(f"{where}: no image")
    text = {key: value for key, value in values.items() if key not in PROMPT_COLUMNS}
    for key, value in text.items():
        if not isinstance(value, str):
            raise InputError(f"{where}: {key} must be text, got {json.dumps(value)}")
    image = _resolve(manifest, text["image"])
    case_id = text.get("id", mask_file_stem(image))
    if not CASE_ID.match(case_id):
        given = "" if "id" in text else ", taken from the image's name (give the row an id column)"
        raise InputError(f"{where}: case id {case_id!r}{given} must be letters, digits, '.', '_' or '-' (it names the mask file)")
    model = text.get("model")
    if model is not None:
        model = with_files_from(model, manifest.parent)
    memory = text.get("memory")
    if memory is not None and memory not in MEMORY_POLICIES:
        raise InputError(f"{where}: memory {memory!r}: choose {' or '.join(MEMORY_POLICIES)}")
    prompts_file = text.get("prompts")
    prompts = PromptSources(
        boxes=_prompt_texts(values.get("box"), where, "box"),
        points=_prompt_texts(values.get("point"), where, "point"),
        recists=_prompt_texts(values.get("recist"), where, "recist"),
        prompts_file=_resolve(manifest, prompts_file) if prompts_file else None,
        mask_prompt=_resolve(manifest, text["mask_prompt"]) if "mask_prompt" in text else None,
    )
    try:
        check_prompt_texts(prompts, MANIFEST_PROMPTS)
    except InputError as error:
        raise InputError(f"{where}: {error}") from None
    return Case(
        case_id=case_id,
        image=image,
        prompts=prompts,
        gt=_resolve(manifest, text["gt"]) if "gt" in text else None,
        model=model,
        memory=memory,  # type: ignore[arg-type]
        output_format=check_format(text["format"], f"{where}: format") if "format" in text else None,
        line=line,
    )


def _resolve(manifest: Path, value: str) -> Path:
    return (manifest.parent / Path(value).expanduser()).resolve()


def _prompt_texts(value: object, where: str, column: str) -> tuple[str, ...]:
    """A prompt cell as `--box`-style strings: "a;b", ["a", "b"], [numbers] or [[numbers], ...]."""
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(";") if part.strip())
    # bool is an int to Python, but `true` in a box is no coordinate: it goes to the error below.
    if isinstance(value, list) and all(isinstance(item, (int, float)) and not isinstance(item, bool) for item in value):
        return (",".join(str(item) for item in value),)
    if isinstance(value, list) and all(isinstance(item, (str, list)) for item in value):
        return tuple(text for item in value for text in _prompt_texts(item, where, column))
    raise InputError(f"{where}: {column} must be text like '6,246,273,276,322' or a list of them, got {json.dumps(value)}")
