"""Read RoIs from JSON, JSON Lines or CSV (a file or stdin), in xyxy, xywh or cxcywh.

Accepted shapes:
- JSON: `[[x1, y1, x2, y2], ...]`, `[[b, x1, y1, x2, y2], ...]`, a list of objects with `box` or
  `bbox` (+ optional `batch`/`image_index`, `id`, `score`, `label`), or `{"rois": [...]}`.
- JSON Lines: one such list or object per line.
- CSV with a header naming the columns (any order, extra columns ignored) or without a header
  (4 or 5 numbers per row).
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field

import torch

from roicli.errors import InputError, UsageError
from roicli.registry import BOX_FORMATS

ROIS_FORMATS = ("auto", "json", "jsonl", "csv")

# CSV column groups: the four coordinate columns and the box format their names imply.
_COORD_COLUMNS = [
    (("x1", "y1", "x2", "y2"), None),
    (("xmin", "ymin", "xmax", "ymax"), None),
    (("x", "y", "w", "h"), "xywh"),
    (("x", "y", "width", "height"), "xywh"),
    (("cx", "cy", "w", "h"), "cxcywh"),
]
_BATCH_KEYS = ("batch", "image_index", "batch_index", "b")
# Beyond 2**24 float32 (the ops' dtype) no longer holds every integer pixel position.
MAX_COORDINATE = 2**24


@dataclass
class RoiSet:
    """RoIs in image coordinates, xyxy, in input order."""

    boxes: torch.Tensor  # [K, 4] float64
    batch: torch.Tensor  # [K] int64
    ids: list = field(default_factory=list)
    scores: list | None = None
    labels: list | None = None
    source: str = ""
    box_format: str = "xyxy"

    def __len__(self) -> int:
        return self.boxes.shape[0]

    def as_tensor(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """`Tensor[K, 5]` (batch index, x1, y1, x2, y2), as the ops take it."""
        return torch.cat([self.batch[:, None].double(), self.boxes], dim=1).to(dtype)

    def duplicate_ids(self) -> list:
        """Ids given to more than one RoI, in order of first appearance."""
        seen: set = set()
        dup: dict = {}
        for i in self.ids:
            key = (type(i).__name__, str(i))
            if key in seen:
                dup.setdefault(key, i)
            seen.add(key)
        return list(dup.values())

    def degenerate(self) -> list[int]:
        """Row numbers of zero-size or inverted boxes."""
        b = self.boxes
        bad = (b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])
        return bad.nonzero().flatten().tolist()


def read_rois(text: str, source: str, box_format: str | None = None, rois_format: str = "auto") -> RoiSet:
    """Parse RoIs from `text` (the contents of `source`, used in error messages).

    `box_format`: xyxy, xywh or cxcywh; None takes it from a CSV header that implies one, else xyxy.
    Empty input is an error; an explicit empty list (`[]`, `{"rois": []}`, a CSV header alone) gives
    an empty RoiSet."""
    box_format_given = box_format is not None
    box_format = box_format or "xyxy"
    if box_format not in BOX_FORMATS:
        raise UsageError(
            f"{{box_format}}: expected one of {', '.join(BOX_FORMATS)}, got {box_format!r}", param="box_format"
        )
    if rois_format not in ROIS_FORMATS:
        raise UsageError(
            f"{{rois_format}}: expected one of {', '.join(ROIS_FORMATS)}, got {rois_format!r}", param="rois_format"
        )
    if not text.strip():
        raise InputError(f"{source}: no RoIs: the input is empty (an explicit empty list, [], means no RoIs)")
    fmt = rois_format if rois_format != "auto" else _sniff(text, source)
    if fmt == "csv":
        records, implied = _read_csv(text, source)
        if implied and box_format_given and implied != box_format:
            raise InputError(
                f"{source}: the CSV header names {implied} columns, but {{box_format}} is {box_format}; "
                "drop {box_format} or rename the columns",
                param="box_format",
            )
        if implied:
            box_format = implied
    elif fmt == "jsonl":
        records = _read_jsonl(text, source)
    else:
        records = _read_json(text, source)
    return _build(records, source, box_format)


def _sniff(text: str, source: str) -> str:
    stripped = text.lstrip()
    if not stripped:
        return "json"  # empty input: no RoIs, handled as an empty JSON list below
    if source.lower().endswith((".jsonl", ".ndjson")):
        return "jsonl"
    if source.lower().endswith(".csv"):
        return "csv"
    if stripped[0] in "[{":
        lines = [ln for ln in stripped.splitlines() if ln.strip()]
        if len(lines) > 1:
            try:
                json.loads(stripped)
            except json.JSONDecodeError:
                try:  # not one JSON document, but its first line is one: JSON Lines
                    json.loads(lines[0])
                    return "jsonl"
                except json.JSONDecodeError:
                    pass
        return "json"
    return "csv"


# A record: (where, coords list, batch, id, score, label); `where` names it in messages.
def _read_json(text: str, source: str) -> list[tuple]:
    if not text.strip():
        return []
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{source}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    except RecursionError:
        raise InputError(f"{source}: JSON nested too deeply; expected a list of RoIs") from None
    if isinstance(data, dict):
        for key in ("rois", "boxes", "detections"):
            if key in data:
                data = data[key]
                break
        else:
            raise InputError(f"{source}: expected a list of RoIs or an object with a 'rois' list")
    if not isinstance(data, list):
        raise InputError(f"{source}: expected a list of RoIs, got {type(data).__name__}")
    return [_record(item, f"{source}: roi {i}", i) for i, item in enumerate(data)]


def json_lines(text: str, source: str) -> list[tuple[str, object]]:
    """Parse JSON Lines: (`"SOURCE: line N"`, value) per non-blank line; errors name line and column."""
    out = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append((f"{source}: line {lineno}", json.loads(line)))
        except json.JSONDecodeError as e:
            raise InputError(f"{source}: invalid JSON at line {lineno}, column {e.colno}: {e.msg}") from None
        except RecursionError:
            raise InputError(f"{source}: line {lineno}: JSON nested too deeply") from None
    return out


def _read_jsonl(text: str, source: str) -> list[tuple]:
    return [_record(item, where, row) for row, (where, item) in enumerate(json_lines(text, source))]


def _record(item, where: str, row: int) -> tuple:
    if isinstance(item, list):
        if len(item) not in (4, 5):
            raise InputError(f"{where}: expected 4 or 5 numbers, got {len(item)}")
        nums = [_number(v, where, f"value {j + 1}") for j, v in enumerate(item)]
        batch = nums[0] if len(nums) == 5 else 0.0
        return (where, nums[-4:], batch, row, None, None)
    if isinstance(item, dict):
        box = item.get("box", item.get("bbox"))
        if box is None:
            raise InputError(f"{where}: expected a 'box' or 'bbox' field")
        if not isinstance(box, list) or len(box) != 4:
            raise InputError(f"{where}: field 'box' must be a list of 4 numbers, got {box!r}")
        coords = [_number(v, where, f"box[{j}]") for j, v in enumerate(box)]
        batch = 0.0
        for key in _BATCH_KEYS:
            if key in item:
                batch = _number(item[key], where, key)
                break
        score = _number(item["score"], where, "score") if "score" in item else None
        return (where, coords, batch, item.get("id", row), score, item.get("label"))
    raise InputError(f"{where}: expected a list of numbers or an object, got {type(item).__name__}")


def _number(v, where: str, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise InputError(f"{where}: {_field(name)} is not a number: {v!r}")
    try:
        x = float(v)
    except ValueError:
        raise InputError(f"{where}: {_field(name)} is not a number: {v!r}") from None
    if not math.isfinite(x):
        raise InputError(f"{where}: {_field(name)} is {v!r}; coordinates must be finite")
    return x


def _field(name: str) -> str:
    """'value 3' (a position, counted from 1) or "field 'x1'" (a named field)."""
    return name if name.startswith("value ") else f"field {name!r}"


def _read_csv(text: str, source: str) -> tuple[list[tuple], str | None]:
    rows = [r for r in csv.reader(io.StringIO(text))]
    numbered = [(i + 1, r) for i, r in enumerate(rows) if r and any(c.strip() for c in r)]
    if not numbered:
        return [], None
    first = [c.strip() for c in numbered[0][1]]
    has_header = any(not _is_float(c) for c in first)
    implied = None
    records = []
    if has_header:
        names = [c.lower() for c in first]
        coords_at, implied = _find_columns(names, source)
        batch_at = next((names.index(k) for k in _BATCH_KEYS if k in names), None)
        id_at = names.index("id") if "id" in names else None
        score_at = names.index("score") if "score" in names else None
        label_at = names.index("label") if "label" in names else None
        for row_no, (line, r) in enumerate(numbered[1:], start=1):
            where = f"{source}: row {row_no} (line {line})"
            if len(r) != len(names):
                raise InputError(f"{where}: expected {len(names)} fields, got {len(r)}")
            coords = [_number(r[j].strip(), where, names[j]) for j in coords_at]
            batch = _number(r[batch_at].strip(), where, names[batch_at]) if batch_at is not None else 0.0
            rid = r[id_at].strip() if id_at is not None else row_no - 1
            if isinstance(rid, str) and rid.lstrip("-").isdigit():
                rid = int(rid)
            score = _number(r[score_at].strip(), where, "score") if score_at is not None else None
            label = r[label_at].strip() if label_at is not None else None
            records.append((where, coords, batch, rid, score, label))
    else:
        for row_no, (line, r) in enumerate(numbered, start=1):
            where = f"{source}: row {row_no} (line {line})"
            if len(r) not in (4, 5):
                raise InputError(f"{where}: expected 4 or 5 fields, got {len(r)}")
            nums = [_number(c.strip(), where, f"value {j + 1}") for j, c in enumerate(r)]
            batch = nums[0] if len(nums) == 5 else 0.0
            records.append((where, nums[-4:], batch, row_no - 1, None, None))
    return records, implied


def _find_columns(names: list[str], source: str) -> tuple[list[int], str | None]:
    for group, implied in _COORD_COLUMNS:
        if all(g in names for g in group):
            return [names.index(g) for g in group], implied
    raise InputError(
        f"{source}: header {','.join(names)!r} names no box columns; expected x1,y1,x2,y2 "
        "(or xmin,ymin,xmax,ymax / x,y,w,h / cx,cy,w,h)"
    )


def _is_float(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _build(records: list[tuple], source: str, box_format: str) -> RoiSet:
    for where, coords, batch, *_ in records:
        if batch != int(batch) or batch < 0:
            raise InputError(f"{where}: batch index must be a non-negative integer, got {batch:g}")
        if batch >= 2**31:
            raise InputError(f"{where}: batch index {batch:g} is out of range")
        big = next((x for x in coords if abs(x) > MAX_COORDINATE), None)
        if big is not None:
            raise InputError(
                f"{where}: coordinate {big:g} is out of range; expected at most {MAX_COORDINATE:,} in absolute "
                "value (no image is that large, and float32 cannot place a pixel there)"
            )
    coords = torch.tensor([r[1] for r in records], dtype=torch.float64).reshape(-1, 4)
    boxes = to_xyxy(coords, box_format)
    scores = [r[4] for r in records]
    labels = [r[5] for r in records]
    return RoiSet(
        boxes=boxes,
        batch=torch.tensor([int(r[2]) for r in records], dtype=torch.int64),
        ids=[r[3] for r in records],
        scores=scores if any(s is not None for s in scores) else None,
        labels=labels if any(lb is not None for lb in labels) else None,
        source=source,
        box_format=box_format,
    )


def to_xyxy(coords: torch.Tensor, box_format: str) -> torch.Tensor:
    """`Tensor[K, 4]` in `box_format` -> (x1, y1, x2, y2)."""
    a, b, c, d = coords.unbind(1)
    if box_format == "xywh":
        return torch.stack([a, b, a + c, b + d], dim=1)
    if box_format == "cxcywh":
        return torch.stack([a - c / 2, b - d / 2, a + c / 2, b + d / 2], dim=1)
    return coords.clone()
