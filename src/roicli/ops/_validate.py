"""Argument checks and normalisation shared by every op (no math beyond format conversion)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from roicli.errors import ValidationError

BoxesLike = Tensor | Sequence[Tensor]


def to_pair(output_size: int | Sequence[int]) -> tuple[int, int]:
    """`7` -> `(7, 7)`; `(7, 5)` -> `(7, 5)`. Both entries must be positive integers."""
    if isinstance(output_size, int) and not isinstance(output_size, bool):
        pair = (output_size, output_size)
    elif isinstance(output_size, Sequence) and len(output_size) == 2:
        pair = tuple(output_size)
    else:
        raise ValidationError(f"output_size: expected an int or a pair (PH, PW), got {output_size!r}")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pair):
        raise ValidationError(f"output_size: expected positive integers, got {output_size!r}")
    return pair  # type: ignore[return-value]


def check_input(input: Tensor, name: str = "input") -> None:
    if not isinstance(input, Tensor):
        raise ValidationError(f"{name}: expected a Tensor[N, C, H, W], got {type(input).__name__}")
    if input.dim() != 4:
        raise ValidationError(f"{name}: expected a 4-D Tensor[N, C, H, W], got shape {tuple(input.shape)}")
    if not input.is_floating_point():
        raise ValidationError(f"{name}: expected a floating-point tensor, got {input.dtype}")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Half types are computed (and accumulated) in float32; float32/float64 in themselves."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def as_rois(boxes: BoxesLike, input: Tensor, *, values: bool = True) -> Tensor:
    """Normalise boxes to `Tensor[K, 5]` (batch index, x1, y1, x2, y2) in the op's compute dtype.

    Accepts `Tensor[K, 5]` or `list[Tensor[L, 4]]` (one tensor per image). With `values` (and not
    while tracing, see `is_tracing`) raises ValidationError naming the row for NaN/infinite
    coordinates and for batch indices outside `[0, N)`; the operators check those themselves.
    """
    dtype = compute_dtype(input.dtype)
    if isinstance(boxes, Tensor):
        # (A trace reads shapes as tensors: comparing them would warn, and would be a constant anyway.)
        if boxes.dim() != 2 or (boxes.shape[1] != 5 if not torch.jit.is_tracing() else False):
            raise ValidationError(
                f"boxes: expected Tensor[K, 5] (batch index, x1, y1, x2, y2), got shape {tuple(boxes.shape)}"
            )
        _check_device(boxes, input, "boxes")
        rois = boxes.to(dtype)
    elif isinstance(boxes, Sequence) and not isinstance(boxes, str):
        parts = []
        for i, b in enumerate(boxes):
            if not isinstance(b, Tensor):
                raise ValidationError(f"boxes[{i}]: expected a Tensor[L, 4], got {type(b).__name__}")
            if b.dim() != 2 or (b.shape[1] != 4 if not torch.jit.is_tracing() else False):
                raise ValidationError(
                    f"boxes[{i}]: expected Tensor[L, 4] (x1, y1, x2, y2), got shape {tuple(b.shape)}"
                )
            _check_device(b, input, f"boxes[{i}]")
            b = b.to(dtype)
            parts.append(torch.cat([torch.full_like(b[:, :1], i), b], dim=1))
        rois = torch.cat(parts) if parts else input.new_zeros((0, 5), dtype=dtype)
    else:
        raise ValidationError(
            f"boxes: expected Tensor[K, 5] or list[Tensor[L, 4]], got {type(boxes).__name__}"
        )
    if values and not is_tracing(rois):
        check_values(rois, input.shape[0])
    return rois


def is_tracing(t: Tensor | None = None) -> bool:
    """True while tracing, scripting, compiling or exporting, or when `t` is a fake tensor: then
    a front door must not read tensor values (the operators check them when the graph runs)."""
    if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling():
        return True
    return t is not None and torch._subclasses.fake_tensor.is_fake(t)


def _check_device(t: Tensor, input: Tensor, name: str) -> None:
    if t.device != input.device:
        raise ValidationError(
            f"{name}: expected a tensor on {input.device} (the input's device), got {t.device}"
        )


def check_values(rois: Tensor, n_images: int) -> None:
    """Every row finite, with an integer batch index in `[0, n_images)` (reads the values)."""
    if rois.numel() == 0:
        return
    finite = torch.isfinite(rois).all(dim=1)
    if not bool(finite.all()):
        row = int((~finite).nonzero()[0, 0])
        raise ValidationError(
            f"boxes row {row}: expected finite coordinates, got NaN or infinite values {rois[row].tolist()}"
        )
    batch = rois[:, 0]
    bad = (batch != batch.round()) | (batch < 0) | (batch >= n_images)
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise ValidationError(
            f"boxes row {row}: expected an integer batch index in [0, {n_images}), "
            f"got {rois[row, 0].item():g}"
        )
