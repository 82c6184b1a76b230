"""The pooling recipe shared by `roicli align/pool/precise`, `compare`, `show` and `batch`:
resolve options, read the inputs, pool in chunks, and assemble the output tensors and metadata.

It reads files and calls the ops; it never prints (callers report warnings and progress).
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

import roicli
from roicli.errors import InputError, UsageError
from roicli.io.features import Features, features_from_image, features_from_safetensors, is_image_path
from roicli.io.output import read_input
from roicli.io.rois import RoiSet, read_rois
from roicli.io.safetensors_io import dump_parts, dumps
from roicli.ops import fpn_levels, pool_levels, precise_roi_pool, roi_align, roi_pool
from roicli.ops._validate import compute_dtype
from roicli.report import pool_geometry
from roicli.resources import check_memory

DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}
OPS = ("align", "pool", "precise")


def resolve_device(name: str) -> torch.device:
    name = name.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if re.fullmatch(r"cuda(:\d+)?", name):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
        return dev
    if name == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise UsageError("--device mps: MPS is not available on this machine; use --device cpu")
        return torch.device("mps")
    raise UsageError(f"--device: expected auto, cpu, cuda, cuda:N or mps, got {name!r}")


def resolve_dtype(name: str | None) -> torch.dtype | None:
    if name is None:
        return None
    if name not in DTYPES:
        raise UsageError(f"--dtype: expected one of {', '.join(DTYPES)}, got {name!r}")
    return DTYPES[name]


def scale_option(spatial_scale: float | None, stride: float | None) -> float | None:
    if spatial_scale is not None and stride is not None:
        raise UsageError("give --spatial-scale or --stride, not both")
    if spatial_scale is not None:
        if not 0 < spatial_scale < math.inf:
            raise UsageError(f"--spatial-scale: expected a finite positive number, got {spatial_scale}")
        return spatial_scale
    if stride is not None:
        if not 0 < stride < math.inf:
            raise UsageError(f"--stride: expected a finite positive number, got {stride}")
        return 1.0 / stride
    return None


@dataclass
class PoolSpec:
    """Everything that says how to read the inputs and which op to run with which parameters."""

    op: str = "align"
    output_size: tuple[int, int] = (7, 7)
    spatial_scale: float | None = None
    stride: float | None = None
    sampling_ratio: int = -1
    aligned: bool = False
    mode: str = "avg"
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
        if self.op not in OPS:
            raise UsageError(f"--op: expected one of {', '.join(OPS)}, got {self.op!r}")
        if self.mode not in ("avg", "max"):
            raise UsageError(f"--mode: expected avg or max, got {self.mode!r}")
        if self.chunk_size <= 0:
            raise UsageError(f"--chunk-size: expected a positive number, got {self.chunk_size}")
        if not 0 < self.canonical_size < math.inf:
            raise UsageError(f"--canonical-size: expected a finite positive number, got {self.canonical_size}")
        if self.canonical_level < 0:
            raise UsageError(f"--canonical-level: expected 0 or more, got {self.canonical_level}")
        if self.max_image_pixels is not None and self.max_image_pixels <= 0:
            raise UsageError(f"--max-image-pixels: expected a positive number, got {self.max_image_pixels}")

    def params(self) -> dict:
        """The op's own parameters, as recorded in the output."""
        if self.op == "align":
            return {"sampling_ratio": self.sampling_ratio, "aligned": self.aligned, "mode": self.mode}
        if self.op == "precise":
            return {"aligned": self.aligned}
        return {}

    def op_fn(self) -> Callable:
        """`fn(feature_map, rois [K, 5], spatial_scale) -> Tensor[K, C, PH, PW]`."""
        size = self.output_size
        if self.op == "align":
            return lambda f, r, s: roi_align(f, r, size, s, self.sampling_ratio, self.aligned, mode=self.mode)
        if self.op == "precise":
            return lambda f, r, s: precise_roi_pool(f, r, size, s, self.aligned)
        return lambda f, r, s: roi_pool(f, r, size, s)


@dataclass
class Inputs:
    features: Features
    rois: RoiSet
    device: torch.device


def load_inputs(features: str, rois: str, spec: PoolSpec, rois_text: str | None = None) -> Inputs:
    """Read the feature map(s) and RoIs on the chosen device/dtype. `rois_text`, when given, holds
    the RoIs themselves (`rois` then only names them in messages)."""
    if features == "-" and rois == "-" and rois_text is None:
        raise UsageError("FEATURES and ROIS cannot both be read from stdin ('-')")
    dev = resolve_device(spec.device)
    dt = resolve_dtype(spec.dtype)
    scale = scale_option(spec.spatial_scale, spec.stride)
    if features != "-" and is_image_path(features):
        if spec.key:
            raise UsageError("--key applies to safetensors feature files, not to images")
        feats = features_from_image(
            features, spec.backbone, spec.stride, spec.spatial_scale, dev, spec.max_image_pixels
        )
    else:
        data = read_input(features, binary=True)
        feats = features_from_safetensors(data, "stdin" if features == "-" else features, spec.key, scale)
    feats.levels = [t.to(device=dev, dtype=dt or t.dtype) for t in feats.levels]
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


@dataclass
class PoolResult:
    tensors: dict
    metadata: dict
    summary: dict
    inputs: Inputs
    levels: torch.Tensor  # [K] pyramid level of each RoI (0 for one map)
    degenerate: list[int] = field(default_factory=list)  # rows of zero-size or inverted boxes
    outside: list[int] = field(default_factory=list)  # rows of boxes entirely outside their map

    def to_bytes(self) -> bytes:
        return dumps(self.tensors, self.metadata)

    def to_parts(self) -> list[memoryview]:
        """The safetensors file as buffers to write one after another (no joined copy)."""
        return dump_parts(self.tensors, self.metadata)

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
    boxes = inputs.rois.as_tensor(compute_dtype(feats.levels[0].dtype)).to(inputs.device)
    if feats.is_pyramid:
        return boxes, fpn_levels(boxes, feats.scales, spec.canonical_size, spec.canonical_level)
    return boxes, torch.zeros(boxes.shape[0], dtype=torch.long, device=inputs.device)


def roi_geometry(inputs: Inputs, levels: torch.Tensor, output_size: tuple[int, int]) -> list:
    """RoI Pool's quantization geometry of every RoI, on the map (level) it is pooled from."""
    feats, roi_set = inputs.features, inputs.rois
    lv = levels.cpu()
    scales = torch.tensor(feats.scales, dtype=torch.float64)[lv]  # [K]
    sizes = torch.tensor([list(feats.levels[int(i)].shape[-2:]) for i in lv], dtype=torch.long).reshape(-1, 2)
    dt = compute_dtype(feats.levels[0].dtype)
    return pool_geometry(roi_set.boxes, roi_set.batch, roi_set.ids, scales, output_size, sizes, dt)


def pool_job(
    features: str,
    rois: str,
    spec: PoolSpec,
    *,
    rois_text: str | None = None,
    strict: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> PoolResult:
    """Read, pool in chunks of `spec.chunk_size` RoIs, and assemble the output tensors + metadata.

    `progress(done, total)` is called after each chunk."""
    t0 = time.perf_counter()
    inputs = load_inputs(features, rois, spec, rois_text)
    feats, roi_set = inputs.features, inputs.rois
    check_pool_memory(feats, len(roi_set), spec)
    boxes, levels = rois_and_levels(inputs, spec)  # [K, 5], [K]
    bad, outside = check_boxes(inputs, levels, strict)
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
        "spatial_scale": json.dumps(scale),
        "spatial_scale_source": feats.scale_source,
        **{k: json.dumps(v) for k, v in spec.params().items()},
        "features": feats.source,
        "keys": ",".join(feats.keys),
        "rois": roi_set.source,
        "box_format": roi_set.box_format,
        "device": str(inputs.device),
        "dtype": str(pooled.dtype).replace("torch.", ""),
        "count": str(len(roi_set)),
        "ids": json.dumps(roi_set.ids),
        "roicli_version": roicli.__version__,
        "torch_version": torch.__version__,
    }
    if roi_set.labels is not None:
        meta["labels"] = json.dumps(roi_set.labels)
    if feats.is_pyramid:
        meta.update(canonical_size=json.dumps(spec.canonical_size), canonical_level=json.dumps(spec.canonical_level))
    if feats.image_size is not None:
        meta["image_size"] = json.dumps(list(feats.image_size))
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
    lv = levels.cpu()
    extent = torch.tensor(
        [[t.shape[-1] / s, t.shape[-2] / s] for t, s in zip(feats.levels, feats.scales)], dtype=torch.float64
    )[lv]  # [K, 2]: width, height in image px
    out = (b[:, 2] <= 0) | (b[:, 3] <= 0) | (b[:, 0] >= extent[:, 0]) | (b[:, 1] >= extent[:, 1])
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
        "pool fewer RoIs per run (split the RoI file, or roicli batch --shard-rois N) or use a smaller --output-size"
        if output >= working
        else "use a smaller --chunk-size or --output-size"
    )
    check_memory(output + working, f"the output ({k} x {c} x {ph} x {pw} {str(dtype)[6:]}) plus working memory", hint)


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
