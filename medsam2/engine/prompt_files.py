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

from medsam2.documents import keys_once
from medsam2.engine.prompts import Prompt, recist_to_box, whole_number
from medsam2.errors import InputError

PROMPT_KEYS = {"slice", "box", "points", "labels", "recist"}


def load_prompt_file(path: Path, height: int, width: int) -> list[Prompt]:
    """Read a prompts JSON file (layout in this module's docstring)."""
    try:
        data = json.loads(Path(path).read_text(), object_pairs_hook=keys_once)
    except FileNotFoundError:
        raise InputError(f"{path}: no such prompts file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a folder; the prompts are a JSON file") from None
    except OSError as error:
        raise InputError(f"{path}: cannot read ({error.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: not valid JSON ({error})") from None
    except InputError as error:  # a key given twice
        raise InputError(f"{path}: {error}") from None
    try:
        return prompts_from_dict(data, height, width)
    except (KeyError, TypeError, ValueError) as error:
        if isinstance(error, InputError):
            raise InputError(f"{path}: {error}") from None
        raise InputError(f"{path}: malformed prompts ({type(error).__name__}: {error})") from None


def prompts_from_dict(data: object, height: int, width: int) -> list[Prompt]:
    prompts = []
    ids: set[int] = set()
    entries = _member(data, "objects", list, 'the file', 'expected {"objects": [{"id": 1, "prompts": [...]}, ...]}')
    if not entries:
        raise InputError('"objects" is empty: there is nothing to segment')
    for position, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise InputError(f"objects[{position}] is {json.dumps(entry)}, not an object with \"prompts\"")
        obj_id = whole_number(entry.get("id", position + 1), "object id")
        if obj_id in ids:
            raise InputError(f"object id {obj_id} is given to two objects; give each its own")
        ids.add(obj_id)
        name = entry.get("name")
        if name is not None and not isinstance(name, str):
            raise InputError(f"object {obj_id}: name {json.dumps(name)} is not text")
        for item in _member(entry, "prompts", list, f"object {obj_id}", 'expected "prompts": [{"slice": 40, "box": [...]}, ...]'):
            if not isinstance(item, dict):
                raise InputError(f"object {obj_id}: prompt {json.dumps(item)} is not an object with \"slice\"")
            unknown = set(item) - PROMPT_KEYS
            if unknown:
                raise InputError(f"object {obj_id}: unknown prompt keys {sorted(unknown)}")
            if "slice" not in item:
                raise InputError(f"object {obj_id}: a prompt without \"slice\" (the slice index it is drawn on)")
            box = item.get("box")
            if "recist" in item and box is not None:
                raise InputError(f"object {obj_id}: a prompt with both a box and a RECIST line; give one")
            if "recist" in item:
                box = recist_to_box(_numbers(item["recist"], 4, f"object {obj_id}: recist"), height, width)
            elif box is not None:
                box = _numbers(box, 4, f"object {obj_id}: box")
            points = tuple(_numbers(point, 2, f"object {obj_id}: point (x, y)") for point in _sequence(item.get("points", []), f"object {obj_id}: points"))
            labels = tuple(whole_number(v, "label") for v in _sequence(item.get("labels", [1] * len(points)), f"object {obj_id}: labels"))
            prompts.append(
                Prompt(
                    slice_index=whole_number(item["slice"], f"object {obj_id}: slice"),
                    obj_id=obj_id,
                    box=box,
                    points=points,  # type: ignore[arg-type]
                    labels=labels,
                    name=name,
                )
            )
    return prompts


def _member(data: object, key: str, kind: type, where: str, expected: str) -> object:
    """`data[key]`, which must be a `kind`: else a one-line error that shows the `expected` layout."""
    if not isinstance(data, dict) or key not in data:
        raise InputError(f"{where} has no {json.dumps(key)}: {expected}")
    if not isinstance(data[key], kind):
        raise InputError(f"{where}: {json.dumps(key)} is {json.dumps(data[key])}: {expected}")
    return data[key]


def _sequence(value: object, what: str) -> list:
    if not isinstance(value, list):
        raise InputError(f"{what} {json.dumps(value)} is not a list")
    return value


def _numbers(value: object, count: int, what: str) -> tuple[float, ...]:
    """`value` as `count` numbers (a box or RECIST line: 4, a point: 2)."""
    if not isinstance(value, list) or len(value) != count or any(isinstance(v, bool) or not isinstance(v, int | float) for v in value):
        raise InputError(f"{what} {json.dumps(value)} is not a list of {count} numbers")
    return tuple(float(v) for v in value)
