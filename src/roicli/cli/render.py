"""One renderer for every command that prints rows: table, json, jsonl or csv."""

from __future__ import annotations

import csv
import io
import json
import math

from rich.console import Console
from rich.table import Table

from roicli.errors import UsageError

FORMATS = ("table", "json", "jsonl", "csv")


def _cell(v) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return "" if v is None else str(v)


def _clean(v):
    """JSON has no NaN/inf: they become null, in nested lists and dicts too."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_clean(x) for x in v]
    return v


def to_json(obj, indent: int | None = 2) -> str:
    return json.dumps(_clean(obj), indent=indent, allow_nan=False)


def render_text(
    rows: list[dict], fmt: str, title: str | None = None, header: dict | None = None, width: int = 200
) -> str:
    """Rows as text in `fmt`. `header` (parameters) goes into the table title, the JSON object,
    or `# key: value` comment lines above CSV. A table is at most `width` characters wide."""
    if fmt not in FORMATS:
        raise UsageError(f"--format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    header = header or {}
    if fmt == "json":
        return to_json({**header, "rows": rows}) + "\n"
    if fmt == "jsonl":
        return "".join(to_json(r, None) + "\n" for r in rows)
    if fmt == "csv":
        buf = io.StringIO()
        for k, v in header.items():
            buf.write(f"# {k}: {v}\n")
        if rows:
            writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        return buf.getvalue()
    table = Table(title=title, caption=", ".join(f"{k}={v}" for k, v in header.items()) or None)
    for col in rows[0] if rows else ["(no rows)"]:
        table.add_column(str(col), overflow="fold")
    for r in rows:
        table.add_row(*(_cell(v) for v in r.values()))
    console = Console(file=io.StringIO(), width=width, force_terminal=False, color_system=None)
    console.print(table)
    return console.file.getvalue()


def format_for_path(path: str, default: str = "json") -> str:
    lower = path.lower()
    if lower.endswith(".csv"):
        return "csv"
    if lower.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    if lower.endswith(".json"):
        return "json"
    return default
