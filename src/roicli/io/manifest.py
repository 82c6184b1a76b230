"""Read a batch manifest: one item per row (CSV with a header, or JSON Lines), or build the items from
a glob of feature files and a template for their RoI files.

Columns / keys: `features` (required: a .safetensors file or an image); `rois` (a RoI file) or `boxes`
(the RoIs inline, as JSON: a list in any form `roicli align` reads); optional `output` (the output's
file name; its extension picks the format, as for `roicli align -o`; default `<features stem>` plus
the job's format, `.safetensors` unless told otherwise) and per-item overrides `spatial_scale`, `stride`,
`key`. Relative paths are relative to the manifest's folder (to the current folder for stdin), and
are made absolute here, in the driver: every worker (a Ray node included) reads the same files, and an
item's output does not depend on how its paths were written.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

from roicli.errors import InputError, UsageError
from roicli.io.writers import SUFFIXES

_OVERRIDES = ("spatial_scale", "stride")
_RESERVED = ("errors.jsonl", "warnings.jsonl", "index.jsonl")  # what `roicli batch` writes beside the outputs


@dataclass
class Item:
    index: int  # row number in the manifest (0-based), the item's identity in outputs
    features: str
    rois: str  # a path, or a name for inline boxes
    rois_text: str | None  # inline boxes as JSON text
    output: str  # output file name, relative to OUTDIR
    overrides: dict  # spatial_scale / stride / key for this item


def read_manifest(text: str, source: str, base: Path, suffix: str = ".safetensors") -> list[Item]:
    """The items of a manifest; `suffix`: the format of outputs the manifest does not name."""
    stripped = text.lstrip()
    if not stripped:
        raise InputError(f"{source}: the manifest is empty")
    if stripped.startswith("{"):
        from roicli.io.rois import json_lines  # imports torch: only when a manifest is read

        rows = json_lines(text, source)
        for where, obj in rows:
            if not isinstance(obj, dict):
                raise InputError(f"{where}: expected a JSON object")
    else:
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames or "features" not in [f.strip() for f in reader.fieldnames]:
            raise InputError(f"{source}: expected a CSV header with a 'features' column (and 'rois' or 'boxes')")
        rows = []
        for n, r in enumerate(reader, start=1):
            if None in r:
                raise InputError(f"{source}: row {n} (line {reader.line_num}): more fields than the header has")
            rows.append((f"{source}: row {n} (line {reader.line_num})", {k.strip(): v for k, v in r.items()}))
    items = [_item(i, where, obj, base, suffix) for i, (where, obj) in enumerate(rows)]
    _check_unique(items, source)
    return items


def _item(index: int, where: str, obj: dict, base: Path, suffix: str) -> Item:
    features = obj.get("features")
    if not features:
        raise InputError(f"{where}: field 'features' is missing or empty")
    features = _resolve(str(features), base)
    rois, boxes = obj.get("rois"), obj.get("boxes")
    if rois and boxes not in (None, ""):
        raise InputError(f"{where}: give 'rois' or 'boxes', not both")
    if rois:
        rois_path, rois_text = _resolve(str(rois), base), None
    elif boxes not in (None, ""):
        rois_path = f"{where} boxes"
        rois_text = boxes if isinstance(boxes, str) else json.dumps(boxes)
    else:
        raise InputError(f"{where}: expected a 'rois' file or inline 'boxes'")
    overrides = {}
    for name in _OVERRIDES:
        v = obj.get(name)
        if v not in (None, ""):
            try:
                overrides[name] = float(v)
            except (TypeError, ValueError):
                raise InputError(f"{where}: field {name!r} is not a number: {v!r}") from None
            if not overrides[name] > 0:
                raise InputError(f"{where}: field {name!r} must be positive, got {v!r}")
    if obj.get("key") not in (None, ""):
        overrides["key"] = str(obj["key"])
    output = str(obj.get("output") or "") or Path(features).stem + suffix
    if Path(output).suffix.lower() not in SUFFIXES:
        raise InputError(f"{where}: field 'output' must end in {', '.join(SUFFIXES)}, got {output!r}")
    if Path(output).name != output or output.startswith(".") or output in _RESERVED or output.startswith("shard-"):
        raise InputError(
            f"{where}: field 'output' must be a plain file name, not hidden and not one of roicli's "
            f"({', '.join(_RESERVED)}, shard-*), got {output!r}"
        )
    return Item(index, features, rois_path, rois_text, output, overrides)


def _resolve(path: str, base: Path) -> str:
    return os.path.abspath(os.path.join(base, os.path.expanduser(path)))


def _check_unique(items: list[Item], source: str) -> None:
    seen: dict[str, int] = {}
    for it in items:
        if it.output in seen:
            raise InputError(
                f"{source}: items {seen[it.output]} and {it.index} both write {it.output!r}; give an 'output' column"
            )
        seen[it.output] = it.index


def items_from_glob(features_glob: str, rois_template: str, suffix: str = ".safetensors") -> list[Item]:
    """`--features 'feats/*.safetensors' --rois 'rois/{stem}.json'` ({stem}, {name}, {parent}); each
    output is `<stem>` plus `suffix`."""
    paths = sorted(glob.glob(features_glob, recursive=True))
    if not paths:
        raise UsageError(f"{{features}}: no file matches {features_glob!r}", param="features")
    items = []
    for i, f in enumerate(paths):
        p = Path(f)
        try:
            rois = rois_template.format(stem=p.stem, name=p.name, parent=str(p.parent))
        except (KeyError, IndexError, AttributeError, ValueError) as e:
            raise UsageError(
                f"{{rois}}: bad placeholder ({e}) in {rois_template!r}; use {{stem}}, {{name}}, {{parent}}",
                param="rois",
            ) from None
        items.append(Item(i, os.path.abspath(f), os.path.abspath(rois), None, p.stem + suffix, {}))
    _check_unique(items, features_glob)
    return items
