"""Prompts and slice masks as the database stores them: JSON for prompts, packed bits for masks."""

from __future__ import annotations

import zlib

import numpy as np

from medsam2.engine.prompts import Prompt
from medsam2.errors import InputError


def prompt_to_json(prompt: Prompt) -> dict:
    """A box/click prompt as JSON (mask prompts are stored as packed masks instead)."""
    document: dict = {"slice": prompt.slice_index, "obj_id": prompt.obj_id}
    if prompt.box is not None:
        document["box"] = [float(v) for v in prompt.box]
    if prompt.points:
        document["points"] = [[float(x), float(y)] for x, y in prompt.points]
        document["labels"] = [int(v) for v in prompt.labels]
    if prompt.name:
        document["name"] = prompt.name
    return document


def prompt_from_json(document: dict) -> Prompt:
    box = document.get("box")
    return Prompt(
        slice_index=int(document["slice"]),
        obj_id=int(document.get("obj_id", 1)),
        box=tuple(box) if box is not None else None,
        points=tuple((float(x), float(y)) for x, y in document.get("points", ())),
        labels=tuple(int(v) for v in document.get("labels", ())),
        name=document.get("name"),
    )


def pack_mask(mask: np.ndarray) -> bytes:
    """A (H, W) bool mask as compressed bits (a 512x512 slice takes a few hundred bytes)."""
    return zlib.compress(np.packbits(np.asarray(mask, dtype=bool)).tobytes())


def unpack_mask(data: bytes, shape: tuple[int, int]) -> np.ndarray:
    try:
        bits = np.frombuffer(zlib.decompress(data), dtype=np.uint8)
    except zlib.error:
        raise InputError("a stored slice mask is damaged") from None
    count = int(np.prod(shape))
    if bits.size * 8 < count:
        raise InputError(f"a stored slice mask is shorter than its {shape[0]}x{shape[1]} slice")
    return np.unpackbits(bits, count=count).astype(bool).reshape(shape)
