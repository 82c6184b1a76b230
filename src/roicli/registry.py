"""The table of ops: each entry says its name, its library function, its parameters (type, default,
help, valid values), the box formats it takes, and what the report and the picture say about it.

Everything that lists ops reads this table: the pooling commands (`roicli align|pool|precise` are
generated from it), `batch --op`, `compare`, `show`, the output metadata (`PoolSpec.params`) and the
README's table of ops. Adding an op is one `Op` entry here plus its kernel (and its tests).

This module imports neither torch nor the ops (functions are named by dotted path and imported on
first use), so that the CLI's `--help` stays fast.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from roicli.errors import UsageError

# Box formats the RoI readers understand (io/rois converts every one to xyxy for the ops).
BOX_FORMATS = ("xyxy", "xywh", "cxcywh")


@dataclass(frozen=True)
class Param:
    """One parameter of an op, as the library function takes it (same name, same default)."""

    name: str
    type: type  # int, float, bool or str
    default: Any
    help: str  # the op's own command: `roicli align --help`
    summary: str  # a short phrase, for commands that take several ops (`batch --help`)
    choices: tuple = ()  # the valid values, when there is a fixed set
    minimum: float | None = None  # the smallest valid value (numbers)
    maximum: float | None = None

    def check(self, value: Any, op: str) -> Any:
        """`value` converted to the parameter's type, or a UsageError naming the parameter."""
        what = f"{{{self.name}}}"
        if self.type is bool:
            if not isinstance(value, bool):
                raise UsageError(f"{what}: expected True or False, got {value!r}", param=self.name)
            return value
        if self.choices:
            if value not in self.choices:
                raise UsageError(f"{what}: expected {_either(self.choices)}, got {value!r}", param=self.name)
            return value
        if self.type in (int, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                self.type is int and not float(value).is_integer()
            ):
                raise UsageError(f"{what}: expected {'an integer' if self.type is int else 'a number'}, "
                                 f"got {value!r}", param=self.name)  # fmt: skip
            value = self.type(value)
            if not math.isfinite(value) or (self.minimum is not None and value < self.minimum) or (
                self.maximum is not None and value > self.maximum
            ):
                raise UsageError(f"{what}: expected {self.range_text()}, got {value!r}", param=self.name)
            return value
        if not isinstance(value, self.type):
            raise UsageError(f"{what}: expected a {self.type.__name__}, got {value!r}", param=self.name)
        return value

    def range_text(self) -> str:
        """The valid values in words (the docs table and messages)."""
        if self.type is bool:
            return "true or false"
        if self.choices:
            return _either(self.choices)
        lo, hi = self.minimum, self.maximum
        if lo is not None and hi is not None:
            return f"{lo:g}..{hi:g}"
        if lo is not None:
            return f">= {lo:g}"
        if hi is not None:
            return f"<= {hi:g}"
        return f"any {'integer' if self.type is int else 'finite number'}"


@dataclass(frozen=True)
class Op:
    """One op: what the command line, the API, the metadata and the docs know about it."""

    name: str  # the command (`roicli align`), `batch --op`, `roicli.pool(op=...)`, the output's `op`
    title: str  # in words: "RoI Align"
    function: str  # "module:function", called as fn(input, rois [K, 5], output_size, spatial_scale, **params)
    doc: str  # the command's help text (first line: the summary)
    params: tuple[Param, ...] = ()
    box_formats: tuple[str, ...] = BOX_FORMATS
    report: str = ""  # what `compare` and `--report` say about it
    picture: str = ""  # what `show` draws of it
    lacks: tuple[tuple[str, str], ...] = ()  # (parameter, why this op has none) for the message that refuses it

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    def load(self) -> Callable:
        """The library function (imported on first use)."""
        module, _, name = self.function.partition(":")
        return getattr(importlib.import_module(module), name)

    def resolve(self, given: dict) -> dict:
        """The op's parameters: `given` (None means not given) checked, the rest at their defaults,
        in the registry's order. A parameter the op does not take is refused, not ignored."""
        known = {p.name for p in self.params}
        for name, value in given.items():
            if value is not None and name not in known:
                takers = [o.name for o in OPS.values() if name in {p.name for p in o.params}]
                if takers:
                    why = dict(self.lacks).get(name)
                    raise UsageError(
                        f"{{{name}}}: applies to {{op}} {' and '.join(takers)}, not {{op}} {self.name}"
                        + (f" ({why})" if why else ""),
                        param=(name, "op"),
                    )
                raise UsageError(f"{{{name}}}: not a parameter of {self.name}", param=name)
        out = {}
        for p in self.params:
            value = given.get(p.name)
            out[p.name] = p.default if value is None else p.check(value, self.name)
        return out

    def bind(self, output_size: tuple[int, int], params: dict) -> Callable:
        """`fn(feature_map [N, C, H, W], rois [K, 5], spatial_scale) -> Tensor[K, C, PH, PW]`."""
        fn = self.load()
        return lambda f, r, s: fn(f, r, output_size, s, **params)


def _either(values: tuple) -> str:
    words = [str(v) for v in values]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


# Parameters that several ops share (same meaning; each op may give its own default and help).
_SAMPLING_RATIO = Param(
    "sampling_ratio", int, -1,
    help="Samples per bin axis; <= 0 is adaptive, ceil(roi_size / bins).",
    summary="samples per bin axis; <= 0 is adaptive",
)  # fmt: skip
_MODE = Param(
    "mode", str, "avg",
    help="avg (torchvision) or max (mmcv's max of the bilinear samples).",
    summary="avg or max", choices=("avg", "max"),
)  # fmt: skip


OPS: dict[str, Op] = {
    op.name: op
    for op in (
        Op(
            "align",
            "RoI Align",
            "roicli.ops.roi_align:roi_align",
            "RoI Align: bilinear samples averaged (or maxed) per bin; no rounding. Same numbers as\n"
            "torchvision.ops.roi_align.",
            params=(
                _SAMPLING_RATIO,
                Param(
                    "aligned", bool, False,
                    help="Half-pixel shift (Detectron2's aligned=True). Default --no-aligned, like torchvision's "
                    "roi_align; Detectron2 uses --aligned.",
                    summary="half-pixel shift",
                ),  # fmt: skip
                _MODE,
            ),
            report="compare: its values against RoI Pool's (pool_vs_align) and against the exact integral "
            "(align_rel_err)",
            picture="show: its sample points (blue)",
        ),
        Op(
            "pool",
            "RoI Pool",
            "roicli.ops.roi_pool:roi_pool",
            "RoI Pool (Fast R-CNN): box rounded to the grid, integer bins, max per bin. Same numbers as\n"
            "torchvision.ops.roi_pool.",
            lacks=(("aligned", "it rounds boxes"),),
            report="compare and --report: its rounded box and integer bins against the exact ones (shifts, "
            "IoU, quant_rel_err)",
            picture="show: its rounded RoI and integer bins (red)",
        ),
        Op(
            "precise",
            "Precise RoI Pooling",
            "roicli.ops.precise:precise_roi_pool",
            "Precise RoI Pooling: the exact mean of the bilinearly interpolated map over each bin\n"
            "(no sampling, no rounding) — the ground truth the quantization report uses.",
            params=(
                Param("aligned", bool, True, help="Half-pixel shift; default --aligned.", summary="half-pixel shift"),
            ),
            report="compare: the exact reference (pool_vs_exact, quant_rel_err, align_rel_err)",
            picture="show: the exact RoI and bins (green)",
        ),
    )
}


def get(name: str) -> Op:
    """The entry of op `name`; a UsageError naming the parameter `op` otherwise."""
    if name not in OPS:
        raise UsageError(f"{{op}}: expected one of {', '.join(OPS)}, got {name!r}", param="op")
    return OPS[name]


def shared_params() -> dict[str, list[tuple[Op, Param]]]:
    """Every parameter name, with the ops that take it (in registry order): what `batch` offers."""
    out: dict[str, list[tuple[Op, Param]]] = {}
    for op in OPS.values():
        for p in op.params:
            out.setdefault(p.name, []).append((op, p))
    return out


def docs_table() -> str:
    """The README's table of ops (Markdown), generated from the registry."""
    lines = [
        "| op | function | parameters (default; valid values) | box formats | report / picture |",
        "| --- | --- | --- | --- | --- |",
    ]
    for op in OPS.values():
        params = "; ".join(f"`{p.name}` ({p.default!r}; {p.range_text()})" for p in op.params) or "none"
        module, _, fn = op.function.partition(":")
        lines.append(
            f"| `{op.name}` ({op.title}) | `{module.rsplit('.', 1)[0]}.{fn}` | {params} | "
            f"{', '.join(op.box_formats)} | {op.report}; {op.picture} |"
        )
    return "\n".join(lines) + "\n"
