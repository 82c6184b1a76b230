"""The pooling recipe shared by `roicli align/pool/precise`, `compare`, `show` and `batch`:
resolve options, read the inputs, pool in chunks, and assemble the output tensors and metadata.

It reads files and calls the ops; it never prints (callers report warnings and progress).
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, fields, replace

import torch

import roicli
from roicli import registry
from roicli.backbone import features_from_image
from roicli.errors import InputError, ResourceError, UsageError
from roicli.io.features import Features, features_from_safetensors, is_image_path
from roicli.io.inputs import read_input
from roicli.io.output import check_output, write_output
from roicli.io.rois import ROIS_FORMATS, RoiSet, read_rois
from roicli.io.writers import SUFFIXES, check_writable, encode, format_of
from roicli.ops import fpn_levels, pool_levels
from roicli.ops._validate import compute_dtype
from roicli.report import pool_geometry
from roicli.resources import check_memory

DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}
OPS = tuple(registry.OPS)  # the op names, in the registry's order


def resolve_device(name: str) -> torch.device:
    name = name.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if re.fullmatch(r"cuda(:\d+)?", name):
        if not torch.cuda.is_available():
            raise UsageError(
                f"{{device}} {name}: CUDA is not available on this machine; use {{device}} cpu", param="device"
            )
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"{{device}} {name}: only {torch.cuda.device_count()} CUDA device(s) here", param="device")
        return dev
    if name == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise UsageError("{device} mps: MPS is not available on this machine; use {device} cpu", param="device")
        return torch.device("mps")
    raise UsageError(f"{{device}}: expected auto, cpu, cuda, cuda:N or mps, got {name!r}", param="device")


def resolve_dtype(name: str | None) -> torch.dtype | None:
    if name is None:
        return None
    if name not in DTYPES:
        raise UsageError(f"{{dtype}}: expected one of {', '.join(DTYPES)}, got {name!r}", param="dtype")
    return DTYPES[name]


def scale_option(spatial_scale: float | None, stride: float | None) -> float | None:
    if spatial_scale is not None and stride is not None:
        raise UsageError("give {spatial_scale} or {stride}, not both", param=("spatial_scale", "stride"))
    for name, value in (("spatial_scale", spatial_scale), ("stride", stride)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise UsageError(f"{{{name}}}: expected a number, got {value!r}", param=name)
    if spatial_scale is not None:
        if not 0 < spatial_scale < math.inf:
            raise UsageError(
                f"{{spatial_scale}}: expected a finite positive number, got {spatial_scale}", param="spatial_scale"
            )
        return spatial_scale
    if stride is not None:
        if not 0 < stride < math.inf:
            raise UsageError(f"{{stride}}: expected a finite positive number, got {stride}", param="stride")
        return 1.0 / stride
    return None


def parse_output_size(value: int | str | tuple[int, int] | list[int]) -> tuple[int, int]:
    """`7` or `"7"` -> (7, 7); `"7x5"` or `(7, 5)` -> (7, 5)."""
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(_is_int(v) and v > 0 for v in value):
        return int(value[0]), int(value[1])
    if _is_int(value) and value > 0:
        return int(value), int(value)
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX,]\s*(\d+)\s*)?", value) if isinstance(value, str) else None
    if not m or int(m.group(1)) <= 0 or (m.group(2) is not None and int(m.group(2)) <= 0):
        raise UsageError(f"{{output_size}}: expected a positive size like 7 or 7x5, got {value!r}", param="output_size")
    ph = int(m.group(1))
    return ph, int(m.group(2)) if m.group(2) else ph


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass
class PoolSpec:
    """Everything that says how to read the inputs and which op to run with which parameters.

    `op_params` holds the op's own parameters (the registry's `Op.params`), filled in with their
    defaults and checked when the spec is made. Build one from keywords with `spec_from_options`."""

    op: str = "align"
    output_size: tuple[int, int] = (7, 7)
    op_params: dict = field(default_factory=dict)
    spatial_scale: float | None = None
    stride: float | None = None
    key: str | None = None
    backbone: str = "builtin"
    box_format: str | None = None
    rois_format: str = "auto"
    device: str = "auto"
    dtype: str | None = None
    canonical_size: float = 224
    canonical_level: int = 4
    chunk_size: int = 512
    max_image_pixels: int | None = None  # None: io.images.MAX_PIXELS

    def __post_init__(self) -> None:
        entry = registry.get(self.op)
        self.output_size = parse_output_size(self.output_size)
        self.op_params = entry.resolve(self.op_params)
        if self.box_format is not None and self.box_format not in entry.box_formats:
            raise UsageError(
                f"{{box_format}}: expected one of {', '.join(entry.box_formats)}, got {self.box_format!r}",
                param="box_format",
            )
        if self.rois_format not in ROIS_FORMATS:
            raise UsageError(
                f"{{rois_format}}: expected one of {', '.join(ROIS_FORMATS)}, got {self.rois_format!r}",
                param="rois_format",
            )
        if not _is_int(self.chunk_size) or self.chunk_size <= 0:
            raise UsageError(f"{{chunk_size}}: expected a positive number, got {self.chunk_size}", param="chunk_size")
        if not 0 < self.canonical_size < math.inf:
            raise UsageError(
                f"{{canonical_size}}: expected a finite positive number, got {self.canonical_size}",
                param="canonical_size",
            )
        if not _is_int(self.canonical_level) or self.canonical_level < 0:
            raise UsageError(
                f"{{canonical_level}}: expected 0 or more, got {self.canonical_level}", param="canonical_level"
            )
        if self.max_image_pixels is not None and self.max_image_pixels <= 0:
            raise UsageError(
                f"{{max_image_pixels}}: expected a positive number, got {self.max_image_pixels}",
                param="max_image_pixels",
            )

    def params(self) -> dict:
        """The op's own parameters, as recorded in the output."""
        return dict(self.op_params)

    def op_fn(self) -> Callable:
        """`fn(feature_map, rois [K, 5], spatial_scale) -> Tensor[K, C, PH, PW]`."""
        return registry.get(self.op).bind(self.output_size, self.op_params)


SPEC_OPTIONS = frozenset(f.name for f in fields(PoolSpec)) - {"op", "op_params"}


def spec_from_options(op: str, options: Mapping) -> tuple[PoolSpec, dict]:
    """The one place a PoolSpec is built from keywords (the API's and the commands' alike): the
    spec, and the options it did not take (a command's own, such as `report` or `quiet`).

    A keyword naming any op's parameter goes to the op (None: not given, the op's default); one the
    chosen op does not take is refused."""
    params = set(registry.shared_params())
    spec, op_params, rest = {}, {}, {}
    for name, value in options.items():
        if name in SPEC_OPTIONS:
            spec[name] = value
        elif name in params:
            op_params[name] = value
        else:
            rest[name] = value
    return PoolSpec(op=op, op_params=op_params, **spec), rest


@dataclass
class Inputs:
    features: Features
    rois: RoiSet
    device: torch.device


def load_inputs(
    features: str | Features, rois: str | RoiSet, spec: PoolSpec, rois_text: str | None = None
) -> Inputs:
    """Read the feature map(s) and RoIs on the chosen device/dtype. `rois_text`, when given, holds
    the RoIs themselves (`rois` then only names them in messages). Either input may come already
    read (`Features`, `RoiSet`: the API's tensors and lists)."""
    if features == "-" and rois == "-" and rois_text is None:
        raise UsageError("{features} and {rois} cannot both be read from stdin ('-')", param=("features", "rois"))
    dev = resolve_device(spec.device)
    dt = resolve_dtype(spec.dtype)
    if isinstance(features, Features):
        feats = features
    else:
        feats = read_features(features, spec, dev)
    feats = replace(feats, levels=[t.to(device=dev, dtype=dt or t.dtype) for t in feats.levels])  # the caller's is kept
    if isinstance(rois, RoiSet):
        roi_set = rois
    else:
        text = rois_text if rois_text is not None else read_input(rois)
        roi_set = read_rois(text, "stdin" if rois == "-" else rois, spec.box_format, spec.rois_format)
    n = feats.levels[0].shape[0]
    if len(roi_set) and int(roi_set.batch.max()) >= n:
        row = int((roi_set.batch >= n).nonzero()[0, 0])
        raise InputError(
            f"{roi_set.source}: roi {row} (id {roi_set.ids[row]!r}): batch index {int(roi_set.batch[row])} "
            f"is out of range; {feats.source} holds {n} image(s)"
        )
    return Inputs(feats, roi_set, dev)


def read_features(features: str, spec: PoolSpec, device: torch.device | str = "cpu") -> Features:
    """A feature file (safetensors; `-`: its bytes on stdin) or an image run through the backbone,
    as `spec` says (key, scale, backbone, image size limit)."""
    scale = scale_option(spec.spatial_scale, spec.stride)
    if features != "-" and is_image_path(features):
        if spec.key:
            raise UsageError("{key} applies to safetensors feature files, not to images", param="key")
        return features_from_image(
            features, spec.backbone, spec.stride, spec.spatial_scale, device, spec.max_image_pixels
        )
    data = read_input(features, binary=True)
    return features_from_safetensors(data, "stdin" if features == "-" else features, spec.key, scale)


@dataclass
class PoolResult:
    tensors: dict
    metadata: dict  # native values (str, int, float, bool, lists); each writer encodes them
    summary: dict
    inputs: Inputs
    levels: torch.Tensor  # [K] pyramid level of each RoI (0 for one map)
    degenerate: list[int] = field(default_factory=list)  # rows of zero-size or inverted boxes
    outside: list[int] = field(default_factory=list)  # rows of boxes entirely outside their map

    def encode(self, fmt: str = ".safetensors") -> list:
        """The output file in `fmt` (see `roicli.io.writers`) as buffers to write one after another
        (no joined copy of the tensors)."""
        table = {"ids": self.inputs.rois.ids, "labels": self.inputs.rois.labels}
        return encode(self.tensors, self.metadata, fmt, table)

    def save(self, path, format: str | None = None, fsync: bool = True) -> str:
        """Write the result to `path` (`-`: stdout) atomically, in `format` (safetensors, npz, pt,
        parquet) or else by the path's extension, as `roicli align -o` does; returns the format.
        The inputs are never overwritten."""
        path = str(path)
        check_output(path, [self.inputs.features.source, self.inputs.rois.source], suffixes=SUFFIXES)
        fmt = format_of(path, format)
        check_writable(fmt)
        write_output(path, self.encode(fmt), fsync)
        return fmt[1:]

    def warnings(self) -> list[str]:
        """What a user should hear about the RoIs (each message one line, without "Warning: ")."""
        return roi_warnings(self.inputs.rois, self.degenerate, self.outside)

    def geometry_rows(self, spec: PoolSpec) -> list[dict]:
        """RoI Pool's per-RoI quantization geometry (the `--report`)."""
        return [g.flat() for g in roi_geometry(self.inputs, self.levels, spec.output_size)]


def rois_and_levels(inputs: Inputs, spec: PoolSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """The RoIs as the ops take them (`Tensor[K, 5]` in the compute dtype, on the device) and each
    RoI's pyramid level (`Tensor[K]`, FPN eq. 1; all 0 for a single map)."""
    feats = inputs.features
    boxes = inputs.rois.as_tensor(geometry_dtype(feats)).to(inputs.device)
    if feats.is_pyramid:
        return boxes, fpn_levels(boxes, feats.scales, spec.canonical_size, spec.canonical_level)
    return boxes, torch.zeros(boxes.shape[0], dtype=torch.long, device=inputs.device)


def roi_geometry(inputs: Inputs, levels: torch.Tensor, output_size: tuple[int, int]) -> list:
    """RoI Pool's quantization geometry of every RoI, on the map (level) it is pooled from."""
    feats, roi_set = inputs.features, inputs.rois
    scales, sizes = feats.per_roi(levels)  # [K], [K, 2]
    return pool_geometry(roi_set.boxes, roi_set.batch, roi_set.ids, scales, output_size, sizes, geometry_dtype(feats))


def geometry_dtype(feats: Features) -> torch.dtype:
    """The dtype RoIs, their pyramid levels and their quantization geometry are computed in, for
    pooling, `--report`, `compare` and `show` alike: the ops' compute dtype for these features."""
    return compute_dtype(feats.levels[0].dtype)


def pool_job(
    features: str,
    rois: str,
    spec: PoolSpec,
    *,
    rois_text: str | None = None,
    strict: bool = False,
    progress: Callable[[int, int], None] | None = None,
    compute: AbstractContextManager | None = None,
) -> PoolResult:
    """Read, pool in chunks of `spec.chunk_size` RoIs, and assemble the output tensors + metadata.

    `progress(done, total)` is called after each chunk. `compute` (e.g. a lock) is held while the op
    runs: how `roicli batch` lets one item's reading and writing overlap another's pooling without
    running two ops' thread teams at once."""
    t0 = time.perf_counter()
    inputs = load_inputs(features, rois, spec, rois_text)
    feats, roi_set = inputs.features, inputs.rois
    check_pool_memory(feats, len(roi_set), spec)
    boxes, levels = rois_and_levels(inputs, spec)  # [K, 5], [K]
    bad, outside = check_boxes(inputs, levels, strict)
    check_sampling_work(inputs, levels, spec)
    with compute or contextlib.nullcontext():
        pooled = _pool_in_chunks(spec, feats, boxes, levels, progress)
    seconds = time.perf_counter() - t0

    size = spec.output_size
    tensors = {"pooled": pooled.contiguous(), "rois": boxes.cpu().contiguous()}
    if all(isinstance(i, int) and -(2**63) <= i < 2**63 for i in roi_set.ids):
        tensors["ids"] = torch.tensor(roi_set.ids, dtype=torch.int64)
    if feats.is_pyramid:
        tensors["levels"] = levels.cpu()
    if roi_set.scores is not None:
        tensors["scores"] = torch.tensor([float("nan") if s is None else s for s in roi_set.scores])
    scale = feats.scales if feats.is_pyramid else feats.scales[0]
    meta = {
        "op": spec.op,
        "output_size": f"{size[0]}x{size[1]}",
        "spatial_scale": scale,
        "spatial_scale_source": feats.scale_source,
        **spec.params(),
        "features": feats.source,
        "keys": ",".join(feats.keys),
        "rois": roi_set.source,
        "box_format": roi_set.box_format,
        "device": str(inputs.device),
        "dtype": str(pooled.dtype).replace("torch.", ""),
        "count": len(roi_set),
        "ids": roi_set.ids,
        "roicli_version": roicli.__version__,
        "torch_version": str(torch.__version__),
    }
    if roi_set.labels is not None:
        meta["labels"] = roi_set.labels
    if feats.is_pyramid:
        meta.update(canonical_size=spec.canonical_size, canonical_level=spec.canonical_level)
    if feats.image_size is not None:
        meta["image_size"] = list(feats.image_size)
    summary = {
        "op": spec.op,
        "rois": len(roi_set),
        "output_shape": list(pooled.shape),
        "spatial_scale": scale,
        "spatial_scale_source": feats.scale_source,
        "output_size": list(size),
        **spec.params(),
        "device": str(inputs.device),
        "dtype": meta["dtype"],
        "seconds": round(seconds, 4),
        "degenerate_boxes": len(bad),
    }
    if feats.is_pyramid:
        counts = torch.bincount(levels.cpu(), minlength=len(feats.keys)).tolist()
        summary["rois_per_level"] = dict(zip(feats.keys, counts))
    return PoolResult(tensors, meta, summary, inputs, levels, bad, outside)


def _names(ids: list, rows: list[int]) -> str:
    return ", ".join(repr(ids[i]) for i in rows[:5]) + (" ..." if len(rows) > 5 else "")


def roi_warnings(roi_set: RoiSet, degenerate: list[int], outside: list[int]) -> list[str]:
    """The warnings every command gives about a RoI set (`--strict` turns the first two into errors)."""
    out = []
    if degenerate:
        out.append(
            f"{len(degenerate)} zero-size or inverted box(es) (ids {_names(roi_set.ids, degenerate)}); pooled as "
            "given (they sample a degenerate region; --strict makes this an error)"
        )
    if outside:
        out.append(
            f"{len(outside)} box(es) entirely outside the feature map (ids {_names(roi_set.ids, outside)}); "
            "pooled as given (zeros or edge values; --strict makes this an error)"
        )
    dup = roi_set.duplicate_ids()
    if dup:
        shown = ", ".join(repr(i) for i in dup[:5]) + (" ..." if len(dup) > 5 else "")
        out.append(f"{roi_set.source}: {len(dup)} id(s) given to more than one RoI ({shown})")
    return out


def check_boxes(inputs: Inputs, levels: torch.Tensor, strict: bool = False) -> tuple[list[int], list[int]]:
    """Rows of zero-size or inverted boxes and of boxes entirely outside their map; with `strict`,
    either is an error naming them (otherwise `roi_warnings` words them)."""
    roi_set = inputs.rois
    bad, outside = roi_set.degenerate(), outside_rows(inputs, levels)
    if strict and (bad or outside):
        what, rows = ("zero-size or inverted box(es)", bad) if bad else ("box(es) entirely outside the map", outside)
        raise InputError(f"{roi_set.source}: {len(rows)} {what} (ids {_names(roi_set.ids, rows)})")
    return bad, outside


def outside_rows(inputs: Inputs, levels: torch.Tensor) -> list[int]:
    """Rows of boxes that do not overlap their feature map at all (in image coordinates: the map of
    level l covers [0, W_l / scale_l] x [0, H_l / scale_l])."""
    feats, b = inputs.features, inputs.rois.boxes  # [K, 4] float64
    if b.shape[0] == 0:
        return []
    scales, sizes = feats.per_roi(levels)  # [K], [K, 2] (H, W)
    width, height = sizes[:, 1] / scales, sizes[:, 0] / scales  # [K] each, image px
    out = (b[:, 2] <= 0) | (b[:, 3] <= 0) | (b[:, 0] >= width) | (b[:, 1] >= height)
    return out.nonzero().flatten().tolist()


def check_pool_memory(feats: Features, k: int, spec: PoolSpec) -> None:
    """Refuse, before any pooling, an output (plus one chunk's working memory) that cannot fit."""
    ph, pw = spec.output_size
    c = feats.levels[0].shape[1]
    dtype = resolve_dtype(spec.dtype) or feats.levels[0].dtype
    per_roi = c * ph * pw * torch.empty((), dtype=dtype).element_size()
    output = k * per_roi
    working = min(k, spec.chunk_size) * per_roi * 3 + (64 << 20)  # chunk results, op scratch
    hint = (
        "pool fewer RoIs per run (split the RoI file, or roicli batch {shard_rois} N) or use a smaller {output_size}"
        if output >= working
        else "use a smaller {chunk_size} or {output_size}"
    )
    need_memory(output + working, f"the output ({k} x {c} x {ph} x {pw} {str(dtype)[6:]}) plus working memory", hint)


# Bilinear samples RoI Align may take per call (x channels): about 10^11 multiply-adds, minutes on
# one core. Beyond it, the work (known from the boxes before it starts) is refused, not begun.
MAX_SAMPLE_TAPS = 1e11


def check_sampling_work(inputs: Inputs, levels: torch.Tensor, spec: PoolSpec) -> None:
    """Refuse RoI Align work that would run for hours: a huge `sampling_ratio`, or adaptive sampling
    (`ceil(bin size)` samples per axis) on huge boxes at a fine stride. Counted from the boxes alone:
    sum over RoIs of PH * PW * IY * IX, times C channels and 4 taps per sample."""
    params = spec.params()
    if spec.op != "align" or len(inputs.rois) == 0:
        return
    ph, pw = spec.output_size
    feats, b = inputs.features, inputs.rois.boxes  # [K, 4] float64, image px
    scale, _ = feats.per_roi(levels)  # [K]
    sr = params["sampling_ratio"]
    if sr > 0:
        iy = ix = torch.full_like(scale, float(sr))
    else:
        floor = 0.0 if params["aligned"] else 1.0  # aligned=False makes RoIs at least one cell
        iy = (((b[:, 3] - b[:, 1]) * scale).clamp_min(floor) / ph).ceil().clamp_min(0)
        ix = (((b[:, 2] - b[:, 0]) * scale).clamp_min(floor) / pw).ceil().clamp_min(0)
    taps = float((iy * ix).sum()) * ph * pw * feats.levels[0].shape[1] * 4
    if taps > MAX_SAMPLE_TAPS:
        raise ResourceError(
            f"RoI Align would interpolate about {taps:.2g} values (up to {int(iy.max())} x {int(ix.max())} samples "
            "per bin), hours of work; give a small fixed {sampling_ratio} such as 2 (adaptive sampling takes "
            "ceil(bin size) samples per axis, which is huge for huge boxes at a fine stride)",
            param="sampling_ratio",
        )


def need_memory(need: float, what: str, hint: str) -> None:
    """`resources.check_memory`, with the parameters the hint names (`{chunk_size}`) marked for the CLI."""
    try:
        check_memory(need, what, hint)
    except ResourceError as e:
        marked = tuple(p for p in ("chunk_size", "output_size", "shard_rois") if "{" + p + "}" in hint)
        raise ResourceError(e.template, param=marked) from None


def _pool_in_chunks(spec: PoolSpec, feats: Features, boxes, levels, progress) -> torch.Tensor:
    """Pool `spec.chunk_size` RoIs at a time (bounded memory); results on the CPU in input order."""
    k = boxes.shape[0]
    op = spec.op_fn()
    first = feats.levels[0]
    out = torch.empty((k, first.shape[1], *spec.output_size), dtype=first.dtype)  # [K, C, PH, PW], all filled below
    with torch.no_grad():
        for s in range(0, k, spec.chunk_size):
            r, lv = boxes[s : s + spec.chunk_size], levels[s : s + spec.chunk_size]
            if feats.is_pyramid:
                res = pool_levels(op, feats.levels, r, lv, feats.scales)
            else:
                res = op(first, r, feats.scales[0])
            out[s : s + res.shape[0]] = res
            if progress:
                progress(min(s + spec.chunk_size, k), k)
    return out
