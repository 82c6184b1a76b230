"""What the commands share: error handling, consoles, option parsing, loading the inputs."""

from __future__ import annotations

import functools
import os
import re
import sys
import traceback
from dataclasses import dataclass

import torch
import typer
from rich.console import Console

from roicli.errors import InputError, RoicliError, UsageError
from roicli.io.features import (
    Features,
    features_from_image,
    features_from_safetensors,
    is_image_path,
)
from roicli.io.output import read_input
from roicli.io.rois import RoiSet, read_rois

DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def stderr() -> Console:
    return Console(stderr=True, highlight=False)


def fail(message: str, code: int = 1, hint: str | None = None) -> typer.Exit:
    console = stderr()
    console.print(f"Error: {message}", markup=False, soft_wrap=True)
    if hint:
        console.print(f"Hint: {hint}", markup=False, soft_wrap=True)
    return typer.Exit(code)


def handle_errors(fn):
    """Turn roicli's errors into `Error: ...` on stderr and an exit code; no tracebacks
    unless ROICLI_DEBUG=1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RoicliError as e:
            if os.environ.get("ROICLI_DEBUG") == "1":
                traceback.print_exc()
            raise fail(str(e), e.exit_code) from None
        except KeyboardInterrupt:
            raise fail("interrupted; no output was written", 130) from None
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except Exception as e:  # a bug: say so in one line, details on request
            if os.environ.get("ROICLI_DEBUG") == "1":
                traceback.print_exc()
            raise fail(
                f"internal error: {type(e).__name__}: {e}",
                hint="run again with ROICLI_DEBUG=1 for a traceback, and report it",
            ) from None

    return wrapper


def parse_output_size(text: str) -> tuple[int, int]:
    """`7` -> (7, 7); `7x5` -> (7, 5)."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX,]\s*(\d+)\s*)?", text)
    if not m or int(m.group(1)) <= 0 or (m.group(2) is not None and int(m.group(2)) <= 0):
        raise UsageError(f"--output-size: expected a positive size like 7 or 7x5, got {text!r}")
    ph = int(m.group(1))
    return ph, int(m.group(2)) if m.group(2) else ph


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
        if not spatial_scale > 0:
            raise UsageError(f"--spatial-scale: expected a positive number, got {spatial_scale}")
        return spatial_scale
    if stride is not None:
        if not stride > 0:
            raise UsageError(f"--stride: expected a positive number, got {stride}")
        return 1.0 / stride
    return None


@dataclass
class Inputs:
    features: Features
    rois: RoiSet
    device: torch.device


def load_inputs(
    features: str,
    rois: str,
    *,
    key: str | None,
    spatial_scale: float | None,
    stride: float | None,
    backbone: str,
    box_format: str | None,
    rois_format: str,
    device: str,
    dtype: str | None,
) -> Inputs:
    """Read the feature map(s) and RoIs named on the command line, on the chosen device/dtype."""
    if features == "-" and rois == "-":
        raise UsageError("FEATURES and ROIS cannot both be read from stdin ('-')")
    dev = resolve_device(device)
    dt = resolve_dtype(dtype)
    scale = scale_option(spatial_scale, stride)
    if features != "-" and is_image_path(features):
        if key:
            raise UsageError("--key applies to safetensors feature files, not to images")
        feats = features_from_image(features, backbone, stride, spatial_scale, dev)
    else:
        data = read_input(features, binary=True)
        feats = features_from_safetensors(data, "stdin" if features == "-" else features, key, scale)
    feats.levels = [t.to(device=dev, dtype=dt or t.dtype) for t in feats.levels]
    text = read_input(rois)
    roi_set = read_rois(
        text, "stdin" if rois == "-" else rois, box_format or "xyxy", rois_format,
        box_format_given=box_format is not None,
    )
    n = feats.levels[0].shape[0]
    if len(roi_set) and int(roi_set.batch.max()) >= n:
        row = int((roi_set.batch >= n).nonzero()[0, 0])
        raise InputError(
            f"{roi_set.source}: roi {row} (id {roi_set.ids[row]!r}): batch index {int(roi_set.batch[row])} "
            f"is out of range; {feats.source} holds {n} image(s)"
        )
    return Inputs(feats, roi_set, dev)


def show_progress(quiet: bool) -> bool:
    return not quiet and sys.stderr.isatty()
