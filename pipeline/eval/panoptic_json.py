"""The COCO-panoptic json format as pydantic models, and the structural checks ``fovseg evaluate`` runs on a file
before scoring: every refusal is one line naming the file and the JSON path (``annotations[3].segments_info[1].id``),
the image and the segment."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, ValidationError

from pipeline.data.formats import DatasetError, read_json
from pipeline.eval.metrics import OFFSET


def _image_id(value: Any) -> int | str:
    """COCO image ids are integers; ``fovseg predict`` writes file stems (strings)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError("expected an integer or a string")
    return value


def _zero_one(value: Any) -> int:
    """``isthing`` / ``iscrowd``: 0 or 1 (true/false accepted)."""
    if value not in (0, 1) or isinstance(value, float):
        raise ValueError("expected 0 or 1")
    return int(value)


ImageId = Annotated[Any, PlainValidator(_image_id)]
Flag = Annotated[int, PlainValidator(_zero_one)]


class _Record(BaseModel):
    """A COCO-panoptic json object: no type coercion (``"3"`` is not an id), other keys ignored."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class SegmentInfo(_Record):
    id: int = Field(ge=1, lt=OFFSET, description="RGB-encoded id in the PNG; 0 is void")
    category_id: int
    iscrowd: Flag = 0
    area: int | None = Field(None, ge=0)


class PanopticAnnotation(_Record):
    image_id: ImageId
    file_name: str = Field(min_length=1)
    segments_info: list[SegmentInfo]


class Category(_Record):
    id: int
    name: str = ""
    isthing: Flag = 0


class ImageRecord(_Record):
    id: ImageId


class PanopticPredictionFile(_Record):
    annotations: list[PanopticAnnotation]


class PanopticGroundTruthFile(PanopticPredictionFile):
    categories: list[Category] = Field(min_length=1)
    images: list[ImageRecord] | None = None


def json_path(loc: tuple) -> str:
    """A pydantic error location as a JSON path: ``annotations[3].segments_info[1].id``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out or "(top level)"


def _describe(err: dict) -> str:
    """One schema error: the JSON path, what is wrong and the value found."""
    value = err.get("input")
    got = type(value).__name__ if isinstance(value, (dict, list)) else repr(value)[:60]
    msg = "missing key" if err["type"] == "missing" else err["msg"].removeprefix("Value error, ")
    return f"{json_path(err['loc'])}: {msg}" + ("" if err["type"] == "missing" else f", got {got}")


def parse_panoptic_json(path: Path, model: type[_Record], hint: str) -> Any:
    """Read ``path`` and validate it against ``model``; a structural error is one line naming the JSON path."""
    data = read_json(path, hint)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        raise DatasetError(f"{path}: {_describe(errors[0])}{more}; expected COCO-panoptic format "
                           "(annotations: [{image_id, file_name, segments_info: [{id, category_id}]}])") from None


def check_annotations(path: Path, annotations: list[PanopticAnnotation]) -> None:
    """Each image id and file once; segment ids unique within an image."""
    first_id: dict[Any, int] = {}
    first_file: dict[str, int] = {}
    for k, a in enumerate(annotations):
        if a.image_id in first_id:
            raise DatasetError(f"{path}: image_id {a.image_id!r} is listed twice (annotations[{first_id[a.image_id]}]"
                               f" and annotations[{k}]); list each image once")
        if a.file_name in first_file:
            raise DatasetError(f"{path}: file_name {a.file_name!r} is listed twice (annotations"
                               f"[{first_file[a.file_name]}] and annotations[{k}], image_id {a.image_id!r})")
        first_id[a.image_id], first_file[a.file_name] = k, k
        seen: set[int] = set()
        for s in a.segments_info:
            if s.id in seen:
                raise DatasetError(f"{path}: image_id {a.image_id!r} lists segment id {s.id} twice in "
                                   "segments_info; segment ids must be unique within an image")
            seen.add(s.id)


def _first_duplicate(values: list) -> Any:
    """The first value seen twice, else None."""
    seen: set = set()
    for v in values:
        if v in seen:
            return v
        seen.add(v)
    return None


def check_ground_truth(path: Path, gt: PanopticGroundTruthFile) -> None:
    """The gt json's own consistency: category ids and ``images`` ids once each, annotations as above."""
    for what, key, ids in (("category id", "categories", [c.id for c in gt.categories]),
                           ("image id", "images", [i.id for i in gt.images or []])):
        dup = _first_duplicate(ids)
        if dup is not None:
            raise DatasetError(f"{path}: {what} {dup!r} is listed twice in '{key}'; list each once")
    if not gt.annotations:
        raise DatasetError(f"{path} lists 0 images (its 'annotations' list is empty); nothing to evaluate")
    check_annotations(path, gt.annotations)
