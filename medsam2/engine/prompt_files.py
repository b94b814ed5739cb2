"""Prompts from JSON files (several objects with names) and from MedSAM-style RECIST markers.

JSON layout (coordinates in slice pixels along the chosen axis; `slice` is the slice index)::

    {"objects": [
        {"id": 1, "name": "liver lesion",
         "prompts": [{"slice": 40, "box": [120, 88, 160, 131]},
                     {"slice": 44, "points": [[140, 100], [150, 90]], "labels": [1, 0]},
                     {"slice": 38, "recist": [125, 95, 155, 120]}]}
    ]}
"""

from __future__ import annotations

import json
from pathlib import Path

from medsam2.engine.prompts import Prompt, recist_to_box
from medsam2.errors import InputError

PROMPT_KEYS = {"slice", "box", "points", "labels", "recist"}


def load_prompt_file(path: Path, height: int, width: int) -> list[Prompt]:
    """Read a prompts JSON file (layout in this module's docstring)."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: no such prompts file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a folder; the prompts are a JSON file") from None
    except OSError as error:
        raise InputError(f"{path}: cannot read ({error.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: not valid JSON ({error})") from None
    try:
        return prompts_from_dict(data, height, width)
    except (KeyError, TypeError, ValueError) as error:
        if isinstance(error, InputError):
            raise InputError(f"{path}: {error}") from None
        raise InputError(f"{path}: malformed prompts ({type(error).__name__}: {error})") from None


def whole_number(value: object, what: str) -> int:
    """`value` as an index or id: a JSON whole number (2.5, "2" or true are mistakes, not 2 or 1)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise InputError(f"{what} {json.dumps(value)} is not a whole number")
    return int(value)


def prompts_from_dict(data: dict, height: int, width: int) -> list[Prompt]:
    prompts = []
    ids: set[int] = set()
    for position, entry in enumerate(data["objects"]):
        obj_id = whole_number(entry.get("id", position + 1), "object id")
        if obj_id in ids:
            raise InputError(f"object id {obj_id} is given to two objects; give each its own")
        ids.add(obj_id)
        name = entry.get("name")
        for item in entry["prompts"]:
            unknown = set(item) - PROMPT_KEYS
            if unknown:
                raise InputError(f"object {obj_id}: unknown prompt keys {sorted(unknown)}")
            box = item.get("box")
            if "recist" in item and box is not None:
                raise InputError(f"object {obj_id}: a prompt with both a box and a RECIST line; give one")
            if "recist" in item:
                box = recist_to_box(tuple(float(v) for v in item["recist"]), height, width)
            points = tuple(tuple(float(c) for c in point) for point in item.get("points", ()))
            labels = tuple(whole_number(v, "label") for v in item.get("labels", [1] * len(points)))
            prompts.append(
                Prompt(
                    slice_index=whole_number(item["slice"], f"object {obj_id}: slice"),
                    obj_id=obj_id,
                    box=tuple(float(v) for v in box) if box is not None else None,
                    points=points,  # type: ignore[arg-type]
                    labels=labels,
                    name=name,
                )
            )
    return prompts
