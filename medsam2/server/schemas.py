"""Request and response bodies of the REST API (they make its OpenAPI schema)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from medsam2.engine.prompts import MAX_CLICKS, MAX_OBJECT_ID, Prompt
from medsam2.errors import InputError
from medsam2.io.volume import SliceDisplay
from medsam2.server import rle

# An object's name is one line of printable text: it labels a DICOM-SEG segment, a CSV row, a legend.
OBJECT_NAME = r"^[^\x00-\x1f\x7f]*$"

Coordinate = tuple[float, float]


class ErrorOut(BaseModel):
    """Every error response: one line, fit to show as is."""

    error: str = Field(description="what was wrong, naming the value or file", examples=["no object 99 in this session (prompt it first)"])


def error_responses(descriptions: dict[int, str]) -> dict[int | str, dict]:
    """OpenAPI responses for the error statuses a router's routes may answer, each an `ErrorOut`
    (FastAPI's default 422 schema is not what is sent)."""
    return {status: {"model": ErrorOut, "description": description} for status, description in descriptions.items()}


# What every /api route may answer besides its success.
ERROR_RESPONSES = error_responses({
    400: "bad input: a value, a file or a prompt the server cannot use",
    404: "no such case, session, slice or object (for this client)",
    413: "the upload is over the size limit",
    409: "a save that would overwrite a mask saved earlier",
    412: "a change sent with If-Match naming a revision the session has moved on from",
    415: "a body of the wrong type or format",
    422: "a request that does not match the schema",
    503: "too many sessions open, the device is busy, or a scan needs more memory than the server has",
})  # fmt: skip


class MaskRLE(BaseModel):
    """A slice mask as COCO's uncompressed RLE: column-major runs, background first."""

    size: tuple[int, int] = Field(description="[rows, columns] of the slice")
    counts: list[int] = Field(description="alternating background / object run lengths, column-major")


class CaseInfo(BaseModel):
    id: str = Field(description="what POST /api/sessions takes: data/<path>, upload/<name> or sample/<name>")
    name: str
    source: Literal["data", "upload", "sample"]
    can_save: bool = Field(description="whether POST .../save may write the mask next to the case")
    start_slice: int | None = Field(None, description="the axial slice to prompt first (the sample lesion's largest); the page opens such a case at once")


class ServerInfo(BaseModel):
    version: str
    model: str = Field(description="the --model the server was started with")
    model_description: str | None = Field(
        None, description="what that model is (family, variant, input size, settings, file); null until it is loaded"
    )
    devices: list[str]
    max_upload_bytes: int
    upload_formats: list[str] = Field(description="the file suffixes POST /api/cases takes (without the dot)")
    window_presets: dict[str, tuple[float, float]] = Field(description="CT presets: name -> (width, level) in HU")
    label_colours: list[tuple[int, int, int]] = Field(description="RGB colours of object ids 1, 2, ... (cycled)")
    memory_banks: list[str] = Field(
        description="the `memory` a session may open with: recent and confidence for SAM 2.1 / MedSAM2, none for LiteMedSAM"
    )


class OpenSession(BaseModel):
    case: str = Field(description="a case id from GET /api/cases", examples=["data/CT_Lesion_000002_03_01_035-047.npz"])
    axis: Literal["axial", "coronal", "sagittal"] = "axial"
    window: str | None = Field(
        None, description="CT window for the model's input: a preset (soft_tissue, lung...) or 'W,L'; default by modality"
    )
    memory: Literal["recent", "confidence"] = Field(
        "recent", description="SAM 2.1 / MedSAM2: the memory bank propagation attends to, as `medsam2 segment --memory`"
    )


class PromptIn(BaseModel):
    """A prompt on one slice for one object, in pixels of the slice (x = column, y = row, from 0)."""

    slice: int = Field(ge=0, strict=True, description="slice (or frame) index")
    obj_id: int = Field(1, ge=1, le=MAX_OBJECT_ID, strict=True, description="object id; a new id starts a new object")
    box: tuple[float, float, float, float] | None = Field(None, description="[x1, y1, x2, y2]; replaces an earlier box on the slice")
    points: list[Coordinate] = Field(
        default_factory=list, max_length=MAX_CLICKS, description="clicks [[x, y], ...]; add to earlier clicks on the slice"
    )
    labels: list[int] = Field(default_factory=list, max_length=MAX_CLICKS, description="one per point: 1 object, 0 background")
    mask: MaskRLE | None = Field(
        None,
        description="a mask prompt; replaces the slice's earlier prompts. Alone it is the answer on its slice "
        "(an empty one takes the object off the slice, and propagation starts nothing from there); "
        "with a box or clicks in the same request it is the model's dense input beside them",
    )
    name: str | None = Field(None, max_length=100, pattern=OBJECT_NAME, description="the object's name")

    def to_prompt(self, slice_shape: tuple[int, int]) -> Prompt:
        try:
            mask = None if self.mask is None else rle.decode(self.mask.model_dump(), slice_shape)
        except InputError as error:
            raise InputError(f"prompt on slice {self.slice} (object {self.obj_id}): {error}") from None
        return Prompt(
            slice_index=self.slice,
            obj_id=self.obj_id,
            box=self.box,
            points=tuple(self.points),
            labels=tuple(self.labels),
            mask=mask,
            name=self.name,
        )


class PropagateIn(BaseModel):
    direction: Literal["both", "forward", "backward"] = "both"
    # An empty list would answer 200 "done" having propagated nothing (a client's filter that matched nothing).
    obj_ids: list[int] | None = Field(None, min_length=1, description="objects to propagate (at least one); default all")


class RenameIn(BaseModel):
    name: str = Field(min_length=1, max_length=100, pattern=OBJECT_NAME)


class SaveIn(BaseModel):
    format: str = Field("nii.gz", description="mask file format: nii.gz, nii, nrrd, mha, npz, dcm (DICOM cases), png (2D)")
    replace: bool = Field(False, strict=True, description="overwrite a mask saved there earlier (without it, such a save is a 409)")


class LoadIn(BaseModel):
    file: str = Field(description="one of the session's saved_masks", max_length=300)


class SavedMask(BaseModel):
    file: str = Field(description="file name of the mask written next to the case")


class Progress(BaseModel):
    state: Literal["idle", "queued", "running", "done", "failed"]
    done: int
    total: int
    message: str


class PromptInfo(BaseModel):
    slice: int
    box: list[float] | None
    points: list[list[float]]
    labels: list[int]
    mask: bool
    erased: bool = Field(description="an empty mask: the object taken off this slice")


class ObjectInfo(BaseModel):
    id: int
    name: str | None
    prompts: list[PromptInfo]
    slices: list[int] = Field(description="slices where the object has a mask")
    needs_propagation: bool = Field(description="prompts changed since the last propagation")


class Intensity(BaseModel):
    kind: Literal["passthrough", "window", "percentile"] = Field(description="how the scan was mapped to the model's 0-255 input")
    low: float
    high: float
    modality: str
    value_range: tuple[float, float]


class WindowPreset(BaseModel):
    width: float
    level: float


class SessionInfo(BaseModel):
    id: str
    case: CaseInfo
    kind: Literal["volume", "video", "image"]
    fps: float | None
    shape: tuple[int, int, int] = Field(description="[slices, rows, columns] along the session's axis")
    axis: str
    color: bool
    pixel_spacing: tuple[float, float] | None = Field(description="mm between columns, between rows; null where the file gives no spacing")
    slice_spacing: float | None = Field(description="mm between slices; null where the file gives no spacing")
    display: SliceDisplay = Field(
        description="how to turn a slice for the screen, as radiologists look at it: transpose first, then flip; "
        "slices, masks and prompts stay in the slice's own pixels"
    )
    patient_frame: bool = Field(description="whether the case is placed in the patient (a scan), so the view's edges have patient directions; videos and pictures are not")
    slice_step: Literal[1, -1] = Field(
        description="the slice-number change from one slice to the next in reading order (axial: head to feet, coronal: front to back, sagittal: right to left): -1 where the file stores them the other way; the page's keys, wheel and slider follow it"
    )
    warnings: list[str] = Field(description="what the user should know before prompting (slices too narrow for the model)")
    intensity: Intensity
    window_presets: dict[str, WindowPreset] = Field(description="display windows that fit the scan (CT in HU)")
    device: str
    memory: str | None = Field(description="the memory bank of the session's propagation: recent or confidence; null for a model without memory (LiteMedSAM)")
    mask_formats: list[str] = Field(description="formats GET .../mask-file and POST .../save write for this case")
    saved_masks: list[str] = Field(description="masks saved beside the case earlier (POST .../save replaces one only with replace)")
    objects: list[ObjectInfo]
    undo_steps: int
    revision: int = Field(
        description="counts the session's changes (prompts, undos, propagations, objects renamed or deleted, masks loaded); "
        "send it as `If-Match` with a change to have it refused (412) when the session changed meanwhile, e.g. in another tab"
    )
    progress: Progress


class PromptResult(BaseModel):
    mask: MaskRLE = Field(description="the object's mask on the prompted slice")
    session: SessionInfo


class SliceMasks(BaseModel):
    slice: int
    objects: dict[int, MaskRLE] = Field(description="object id -> its mask on this slice")


class VolumeMasks(BaseModel):
    shape: tuple[int, int, int]
    slices: list[SliceMasks] = Field(description="every slice holding an object")
