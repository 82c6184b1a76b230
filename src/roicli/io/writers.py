"""Output writers, chosen by the output file's extension: what `roicli align|pool|precise` write.

- `.safetensors` (default): the tensors; metadata as strings, the only type the format allows (numbers,
  booleans and lists as JSON).
- `.npz` (numpy): the tensors as arrays; the metadata as one JSON document in the array `__metadata__`.
- `.pt`: a dict of tensors plus `metadata` with native types; `torch.load(path, weights_only=True)`.
- `.parquet`: one row per RoI (id, batch, x1, y1, x2, y2, level, score, label, and the pooled tensor
  as a fixed-size list of C*PH*PW values), the shape and every parameter in the schema metadata
  (key `roicli`, JSON); needs pyarrow (`pip install 'roicli[parquet]'`).

Every writer returns the file as buffers for `io.output.write_outputs`, which writes them atomically.
The tensors are `pooled [K, C, PH, PW]`, `rois [K, 5]` and, when present, `ids [K]`, `levels [K]`,
`scores [K]` and other per-RoI columns (`items [K]` in batch shards); a value may also be a list of
tensors to store joined along dim 0 (safetensors streams them piece by piece; the other formats join
them first). Metadata values are str, int, float, bool, None, or lists and dicts of them.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

from roicli.errors import UsageError

SUFFIXES = (".safetensors", ".npz", ".pt", ".parquet")


def suffix_of(fmt: str) -> str:
    """The extension of a format named by the user (`npz`, `.npz`, `NPZ`): one of SUFFIXES."""
    suffix = "." + str(fmt).lower().lstrip(".")
    if suffix not in SUFFIXES:
        raise UsageError(f"{{format}}: expected one of {', '.join(SUFFIXES)}, got {fmt!r}", param="format")
    return suffix


def format_of(path: str, fmt: str | None = None) -> str:
    """The format an output asks for: `fmt` (`npz` or `.npz`, ...) when given, else the path's
    extension; `.safetensors` for stdout (`-`). A file's extension must agree with `fmt`."""
    suffix = Path(path).suffix.lower() if path != "-" else None
    if fmt is not None:
        wanted = suffix_of(fmt)
        if suffix is not None and suffix != wanted:
            raise UsageError(f"{{format}} {wanted[1:]} disagrees with the output {path!r}; name it *{wanted}",
                             param="format")  # fmt: skip
        return wanted
    if suffix is None:
        return ".safetensors"
    if suffix not in SUFFIXES:
        raise UsageError(f"{path}: roicli writes {', '.join(SUFFIXES)} files, not {suffix or 'this'!r}")
    return suffix


def encode(tensors: dict, metadata: dict, fmt: str, table: dict | None = None) -> list:
    """The file in `fmt` (an extension from SUFFIXES) as buffers to write one after another.
    `table`: per-RoI columns for Parquet (ids, labels as lists)."""
    if fmt != ".safetensors" and any(isinstance(t, list) for t in tensors.values()):
        import torch

        tensors = {k: torch.cat(t) if isinstance(t, list) else t for k, t in tensors.items()}
    return _WRITERS[fmt](tensors, metadata, table or {})


def _safetensors(tensors: dict, metadata: dict, table: dict) -> list:
    from roicli.io.safetensors_io import dump_parts

    return dump_parts(tensors, metadata)


def _npz(tensors: dict, metadata: dict, table: dict) -> list:
    import numpy as np
    import torch

    if any(t.dtype == torch.bfloat16 for t in tensors.values()):
        raise UsageError(".npz: numpy has no bfloat16; use --dtype float32, or a .safetensors or .pt output")
    arrays = {k: t.detach().cpu().numpy() for k, t in sorted(tensors.items())}
    arrays["__metadata__"] = np.array(json.dumps(metadata, sort_keys=True))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return [buf.getbuffer()]


def _pt(tensors: dict, metadata: dict, table: dict) -> list:
    import torch

    buf = io.BytesIO()
    torch.save({**{k: t.detach().cpu() for k, t in tensors.items()}, "metadata": metadata}, buf)
    return [buf.getbuffer()]


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise UsageError(".parquet outputs need pyarrow: pip install 'roicli[parquet]'") from None
    return pa, pq


def check_writable(fmt: str) -> None:
    """Before any work: refuse a format whose writer cannot run here (Parquet without pyarrow)."""
    if fmt == ".parquet":
        _pyarrow()


def _parquet(tensors: dict, metadata: dict, table: dict) -> list:
    pa, pq = _pyarrow()
    import torch

    pooled = tensors["pooled"].detach().cpu()
    if pooled.dtype == torch.bfloat16:
        raise UsageError(".parquet: Arrow has no bfloat16; use --dtype float32, or a .safetensors or .pt output")
    k, per_roi = pooled.shape[0], int(pooled[0].numel()) if pooled.shape[0] else 0
    rois = tensors["rois"].detach().cpu().double()
    ids = table.get("ids", list(range(k)))
    columns = {
        "id": pa.array(ids if all(isinstance(i, int) for i in ids) else [str(i) for i in ids]),
        "batch": pa.array(rois[:, 0].long().numpy()),
        **{name: pa.array(rois[:, j + 1].numpy()) for j, name in enumerate(("x1", "y1", "x2", "y2"))},
    }
    if "levels" in tensors:
        columns["level"] = pa.array(tensors["levels"].cpu().numpy())
    if "scores" in tensors:
        columns["score"] = pa.array(tensors["scores"].cpu().double().numpy())
    for name, t in sorted(tensors.items()):  # other per-RoI columns, e.g. a shard's `items`
        if name not in ("pooled", "rois", "ids", "levels", "scores") and t.dim() == 1 and len(t) == k:
            columns[name] = pa.array(t.cpu().numpy())
    if table.get("labels") is not None:
        columns["label"] = pa.array([None if v is None else str(v) for v in table["labels"]])
    flat = pa.array(pooled.reshape(-1).numpy())
    columns["pooled"] = pa.FixedSizeListArray.from_arrays(flat, max(per_roi, 1)) if k else pa.array(
        [], pa.list_(flat.type, max(per_roi, 1))
    )
    meta = {
        "roicli": json.dumps({**metadata, "pooled_shape": list(pooled.shape), "pooled_dtype": str(pooled.dtype)[6:]})
    }
    arrow = pa.table(columns).replace_schema_metadata(meta)
    sink = pa.BufferOutputStream()
    pq.write_table(arrow, sink)
    return [memoryview(sink.getvalue())]


_WRITERS: dict[str, Callable] = {
    ".safetensors": _safetensors,
    ".npz": _npz,
    ".pt": _pt,
    ".parquet": _parquet,
}
