"""Load feature maps: a safetensors file (or its bytes on stdin), or an image run through a backbone.

Safetensors metadata keys roicli reads (all optional, strings as safetensors requires):
- `spatial_scale` or `stride`: for the whole file (`spatial_scale = 1 / stride`);
- `spatial_scale.KEY` or `stride.KEY`: for one tensor (e.g. `stride.p3 = "8"` in a pyramid);
- `pyramid`: comma-separated keys, finest first, that form a feature pyramid.
Tensor keys `p2`, `p3`, ... (FPN's names) also form a pyramid, with stride 2**k for `pk`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load as st_load

from roicli.errors import InputError, UsageError
from roicli.io.header import parse_header

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")
_LEVEL_KEY = re.compile(r"^p(\d+)$")


@dataclass
class Features:
    """One feature map (`levels` has one tensor) or a pyramid (finest first), each [N, C, H, W]."""

    levels: list[torch.Tensor]
    keys: list[str]
    scales: list[float]
    scale_source: str  # where the spatial scale came from: option, metadata, pyramid key, default
    source: str
    image_size: tuple[int, int] | None = None  # (H, W) of the image, for image inputs
    metadata: dict = field(default_factory=dict)

    @property
    def is_pyramid(self) -> bool:
        return len(self.levels) > 1

    def per_roi(self, levels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The spatial scale `Tensor[K]` (float64) and map size (H, W) `Tensor[K, 2]` of the level each
        RoI is pooled from (`levels`: `Tensor[K]`, 0 for one map)."""
        lv = levels.cpu()
        scales = torch.tensor(self.scales, dtype=torch.float64)  # [L]
        sizes = torch.tensor([list(t.shape[-2:]) for t in self.levels], dtype=torch.long)  # [L, 2]
        return scales[lv], sizes[lv]


def read_safetensors_header(data: bytes, source: str) -> tuple[dict, dict]:
    """Validate the framing of a safetensors blob; return (tensor entries, metadata)."""
    header = parse_header(data, source, len(data))
    return header.entries, header.metadata


def load_safetensors(data: bytes, source: str) -> tuple[dict[str, torch.Tensor], dict]:
    _, metadata = read_safetensors_header(data, source)
    try:
        tensors = st_load(data)
    except Exception as e:  # safetensors raises its own error types for corrupt payloads
        raise InputError(f"{source}: cannot read safetensors data: {e}") from None
    return tensors, metadata


def features_from_safetensors(
    data: bytes,
    source: str,
    key: str | None = None,
    spatial_scale: float | None = None,
) -> Features:
    """Pick the feature map (or pyramid) out of a safetensors blob and resolve its spatial scale.

    `key`: one tensor name, or several comma-separated for a pyramid (finest first).
    `spatial_scale` (from --spatial-scale / --stride) overrides the metadata.
    """
    tensors, meta = load_safetensors(data, source)
    return features_from_tensors(tensors, meta, source, key, spatial_scale)


def features_from_tensors(
    tensors: dict[str, torch.Tensor],
    meta: dict,
    source: str,
    key: str | None = None,
    spatial_scale: float | None = None,
) -> Features:
    """`features_from_safetensors` for tensors already in memory (named like a file's, with its
    metadata): the same choice of map or pyramid and the same scale rules, without a copy."""
    maps = {k: t for k, t in tensors.items() if t.dim() in (3, 4)}
    if key:
        keys = [k.strip() for k in key.split(",") if k.strip()]
        for k in keys:
            if k not in tensors:
                raise InputError(f"{source}: no tensor named {k!r}; available: {', '.join(tensors) or 'none'}")
            if tensors[k].dim() not in (3, 4):
                raise InputError(
                    f"{source}: tensor {k!r} has shape {tuple(tensors[k].shape)}; expected [N, C, H, W] or [C, H, W]"
                )
    elif not maps:
        raise InputError(
            f"{source}: no 3-D or 4-D tensor (feature map) found; tensors: "
            + (", ".join(f"{k} {tuple(t.shape)}" for k, t in tensors.items()) or "none")
        )
    elif len(maps) == 1:
        keys = list(maps)
    elif "pyramid" in meta:
        keys = [k.strip() for k in meta["pyramid"].split(",")]
        missing = [k for k in keys if k not in maps]
        if missing:
            raise InputError(f"{source}: metadata 'pyramid' names missing tensors: {', '.join(missing)}")
    elif all(_LEVEL_KEY.match(k) for k in maps):
        keys = sorted(maps, key=lambda k: int(_LEVEL_KEY.match(k).group(1)))
    else:
        raise UsageError(
            f"{source}: holds several feature maps ({', '.join(maps)}); choose one with {{key}} "
            "(or several, comma-separated, finest first, for a pyramid)",
            param="key",
        )
    levels = [_as_nchw(tensors[k], source, k) for k in keys]
    for k, t in zip(keys[1:], levels[1:]):
        if t.shape[:2] != levels[0].shape[:2]:
            raise InputError(
                f"{source}: pyramid level {k!r} has N, C = {tuple(t.shape[:2])}, "
                f"expected {tuple(levels[0].shape[:2])} like {keys[0]!r}"
            )
    if spatial_scale is not None:
        if len(keys) > 1:
            raise UsageError(
                "{spatial_scale}/{stride} apply to one feature map; a pyramid's scales come from its metadata",
                param=("spatial_scale", "stride"),
            )
        scales, origin = [spatial_scale], "option"
    else:
        scales, origin = _scales_from_metadata(meta, keys, source)
    return Features(levels, keys, scales, origin, source, metadata=meta)


def _as_nchw(t: torch.Tensor, source: str, key: str) -> torch.Tensor:
    if not t.is_floating_point():
        raise InputError(f"{source}: tensor {key!r} has dtype {t.dtype}; expected a floating-point feature map")
    t = t.unsqueeze(0) if t.dim() == 3 else t
    empty = [name for name, n in zip("NCHW", t.shape) if n == 0]
    if empty:
        raise InputError(
            f"{source}: tensor {key!r} has shape {tuple(t.shape)} ({', '.join(empty)} = 0); "
            "expected a non-empty [N, C, H, W] feature map"
        )
    return t


def _scales_from_metadata(meta: dict, keys: list[str], source: str) -> tuple[list[float], str]:
    scales, origins = [], set()
    for k in keys:
        s, origin = None, "default"
        for name in (f"spatial_scale.{k}", f"stride.{k}", "spatial_scale", "stride"):
            if name in meta:
                s, origin = _scale_value(meta[name], name, source), "metadata"
                break
        if s is None and _LEVEL_KEY.match(k):  # FPN's names: level pk has stride 2**k
            s, origin = 2.0 ** -int(_LEVEL_KEY.match(k).group(1)), "pyramid key"
        scales.append(1.0 if s is None else s)
        origins.add(origin)
    return scales, "+".join(sorted(origins))


def _scale_value(text: str, name: str, source: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise InputError(f"{source}: metadata {name!r} is not a number: {text!r}") from None
    if not v > 0:
        raise InputError(f"{source}: metadata {name!r} must be positive, got {text!r}")
    return 1.0 / v if name.startswith("stride") else v


def is_image_path(path: str) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES
