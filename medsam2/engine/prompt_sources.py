"""Prompts from what a user writes: box/point/RECIST text, a prompts JSON file, a mask file, or the
RECIST marker stored in a MedSAM npz.

One parser for every front end, so `medsam2 segment --box 6,246,273,276,322` and a batch
manifest's ``box`` column with the same text give the same prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medsam2.engine.prompt_files import load_prompt_file
from medsam2.engine.prompts import Prompt, recist_line_from_marker, recist_to_box, whole_number
from medsam2.errors import InputError
from medsam2.io.masks import check_mask_fits, load_mask, stored_array
from medsam2.io.volume import SliceAxis, Volume, slicing_axis_index, to_slices


@dataclass(frozen=True)
class PromptSources:
    """Everything a user may give to prompt one image; text in the `--box`/`--point`/`--recist` syntax."""

    boxes: tuple[str, ...] = ()  # "Z,X1,Y1,X2,Y2[,ID]"
    points: tuple[str, ...] = ()  # "Z,X,Y[,LABEL[,ID]]"
    recists: tuple[str, ...] = ()  # "Z,X1,Y1,X2,Y2[,ID]"
    prompts_file: Path | None = None  # JSON, see `medsam2.engine.prompt_files`
    mask_prompt: Path | None = None  # a label file in the image's geometry
    erases: tuple[str, ...] = ()  # "Z[,ID]": the object is not on slice Z (scans only)


@dataclass(frozen=True)
class PromptNames:
    """What a front end calls the prompt texts, their index and all its prompt sources, for messages."""

    box: str = "--box"
    point: str = "--point"
    recist: str = "--recist"
    unit: str = "slice"
    all_sources: str = "use --box, --point, --recist, --prompts or --mask-prompt"
    erase: str = "--erase"


SCAN_FLAGS = PromptNames()
VIDEO_FLAGS = PromptNames("--frame-box", "--frame-point", "--recist", "frame", "use --frame-box, --frame-point, --prompts or --mask-prompt")


def parse_numbers(text: str, flag: str, counts: tuple[int, ...]) -> list[float]:
    """Comma-separated numbers of one of the allowed counts, or a one-line error."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise InputError(f"{flag} {text!r}: expected comma-separated numbers") from None
    if len(values) not in counts:
        raise InputError(f"{flag} {text!r}: expected {' or '.join(map(str, counts))} numbers, got {len(values)}")
    return values


def prompts_from_flags(
    boxes: list[str], points: list[str], recists: list[str], height: int, width: int, names: PromptNames = SCAN_FLAGS
) -> list[Prompt]:
    prompts = []
    for text in boxes:
        z, x1, y1, x2, y2, *rest = parse_numbers(text, names.box, (5, 6))
        obj_id = whole_number(rest[0], f"{names.box}: object id") if rest else 1
        prompts.append(Prompt(whole_number(z, f"{names.box}: {names.unit}"), obj_id, box=(x1, y1, x2, y2)))
    for text in points:
        z, x, y, *rest = parse_numbers(text, names.point, (3, 4, 5))
        label = whole_number(rest[0], f"{names.point}: label") if rest else 1
        obj_id = whole_number(rest[1], f"{names.point}: object id") if len(rest) > 1 else 1
        prompts.append(Prompt(whole_number(z, f"{names.point}: {names.unit}"), obj_id, points=((x, y),), labels=(label,)))
    for text in recists:
        z, x1, y1, x2, y2, *rest = parse_numbers(text, names.recist, (5, 6))
        obj_id = whole_number(rest[0], f"{names.recist}: object id") if rest else 1
        prompts.append(Prompt(whole_number(z, f"{names.recist}: {names.unit}"), obj_id, box=recist_to_box((x1, y1, x2, y2), height, width)))
    return prompts


def erase_prompts(texts: list[str], height: int, width: int, names: PromptNames = SCAN_FLAGS) -> list[Prompt]:
    """`--erase Z[,ID]`: an empty mask of object ID (default 1) on slice Z, which takes the object
    off that slice and starts no propagation there."""
    prompts = []
    for text in texts:
        z, *rest = parse_numbers(text, names.erase, (1, 2))
        obj_id = whole_number(rest[0], f"{names.erase}: object id") if rest else 1
        prompts.append(Prompt(whole_number(z, f"{names.erase}: {names.unit}"), obj_id, mask=np.zeros((height, width), dtype=bool)))
    return prompts


def check_prompt_texts(sources: PromptSources, names: PromptNames) -> None:
    """The one-line error `written_prompts` or the session would give for text that is no prompt on
    any image (not numbers, an inverted box, a label not 0/1...), found before the image is read
    (its size only clips RECIST boxes, so any size does there)."""
    for prompt in prompts_from_flags(list(sources.boxes), list(sources.points), list(sources.recists), 2**31, 2**31, names):
        prompt.validate(None, None, None, names.unit)


def prompts_from_mask(mask: Volume, image: Volume, axis_index: int) -> list[Prompt]:
    """Each label of a mask file becomes a mask prompt on the slice where that label is largest."""
    check_mask_fits(image, mask)
    slices = to_slices(mask.array, axis_index)
    prompts = []
    for label in (int(v) for v in np.unique(slices) if v != 0):
        areas = (slices == label).reshape(slices.shape[0], -1).sum(axis=1)
        index = int(np.argmax(areas))
        prompts.append(Prompt(index, label, mask=slices[index] == label))
    if not prompts:
        raise InputError(f"{mask.source}: the mask prompt is empty")
    return prompts


def check_one_region_each(prompts: list[Prompt], frame: str = "slice") -> list[Prompt]:
    """`prompts` as they are, where each object has at most one box or mask per slice (a RECIST
    line is a box): a second would replace the first without a word. Clicks add to either."""
    given: set[tuple[int, int]] = set()
    for prompt in prompts:
        if prompt.box is None and prompt.mask is None:
            continue
        key = (prompt.slice_index, prompt.obj_id)
        if key in given:
            raise InputError(
                f"object {prompt.obj_id} has two boxes or masks on {frame} {prompt.slice_index} (a RECIST line is a box); "
                "give one, or give the second object its own id"
            )
        given.add(key)
    return prompts


def check_objects_marked(prompts: list[Prompt], frame: str = "slice") -> list[Prompt]:
    """`prompts` as they are, where every object has a box, a mask or a click on it somewhere:
    background clicks alone mark nothing to segment (where no mask is there to correct)."""
    marked = {p.obj_id for p in prompts if not p.erases and (p.box is not None or p.mask is not None or 1 in p.labels)}
    unmarked = sorted({prompt.obj_id for prompt in prompts} - marked)
    if unmarked:
        erased_only = all(p.erases for p in prompts if p.obj_id == unmarked[0])
        what = "an erase takes an object off a slice, and it has nothing else" if erased_only else "background clicks alone mark no object"
        raise InputError(f"object {unmarked[0]}: {what}; add a box or a click on the object on some {frame}")
    return prompts


def written_prompts(sources: PromptSources, height: int, width: int, names: PromptNames = SCAN_FLAGS) -> list[Prompt]:
    """The prompts given as text: the box, point and RECIST flags, then the prompts file."""
    prompts = prompts_from_flags(list(sources.boxes), list(sources.points), list(sources.recists), height, width, names)
    if sources.prompts_file is not None:
        prompts += load_prompt_file(sources.prompts_file, height, width)
    return prompts


def gather_prompts(volume: Volume, axis: SliceAxis, sources: PromptSources, names: PromptNames = SCAN_FLAGS) -> list[Prompt]:
    """The prompts of every source, in the coordinates of `axis` slices; an npz with a `recist`
    marker and no other prompt is prompted from that marker. No prompt at all, or one that does not
    fit the slices, is an `InputError` (naming a view other than axial), found before any model runs."""
    axis_index = slicing_axis_index(volume, axis)
    depth, height, width = to_slices(np.empty(volume.shape, dtype=np.uint8), axis_index).shape
    prompts = written_prompts(sources, height, width, names)
    if sources.mask_prompt is not None:
        prompts += prompts_from_mask(load_mask(sources.mask_prompt, like=volume), volume, axis_index)
    marker = stored_array(volume, "recist")
    if not prompts and marker is not None:
        if marker.shape != volume.shape:
            raise InputError(
                f"{volume.source}: its recist array has shape {tuple(marker.shape)}, not the image's "
                f"{tuple(volume.shape)}: a RECIST marker is the line drawn on one slice of an image-sized "
                "array (give the line itself as a recist prompt, Z,X1,Y1,X2,Y2)"
            )
        slice_index, line = recist_line_from_marker(to_slices(marker, axis_index))
        prompts.append(Prompt(slice_index, 1, box=recist_to_box(line, height, width)))
    prompts += erase_prompts(list(sources.erases), height, width, names)  # last: after what marks their objects
    if not prompts:
        raise InputError(f"{volume.source}: no prompt given ({names.all_sources})")
    for prompt in prompts:
        prompt.validate(depth, height, width, unit="slice" if axis == "axial" else f"{axis} slice")
    return check_one_region_each(prompts)
