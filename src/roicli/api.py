"""roicli's Python API: what every command is a thin shell over.

    import roicli
    result = roicli.pool("feats.safetensors", "rois.json", op="align", output_size=7, sampling_ratio=2)
    result.tensors["pooled"]          # Tensor[K, C, 7, 7]

Inputs are paths (as the commands take them) or data: a feature map `Tensor[N, C, H, W]` (or
`[C, H, W]`), a dict of tensors (as a safetensors file holds them: one map, or a pyramid `p2`..`p5`),
a list of maps (a pyramid, finest first, with `spatial_scale` as a list); RoIs as `Tensor[K, 4]` /
`Tensor[K, 5]` (batch index first) or the same as nested lists, in image pixels.

Parameters have the names of the library (`output_size`, `spatial_scale`, `sampling_ratio`, ...) and
each op's own parameters come from the registry (`roicli.registry.OPS`). Errors are roicli's own
types (`roicli.errors`) and name these parameters (`e.param`); the CLI words them as its flags.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from roicli import registry
from roicli.errors import InputError, UsageError
from roicli.io.features import Features, features_from_tensors
from roicli.io.rois import RoiSet, read_rois
from roicli.pipeline import (
    SPEC_OPTIONS,
    Inputs,
    PoolResult,
    PoolSpec,
    check_boxes,
    load_inputs,
    need_memory,
    pool_job,
    read_features,
    roi_warnings,
    rois_and_levels,
    spec_from_options,
)

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["Comparison", "batch", "compare", "load_features", "load_rois", "pool", "show", "spec"]

FeaturesLike = Any  # str | Path | Tensor | dict[str, Tensor] | list[Tensor] | Features
RoisLike = Any  # str | Path | Tensor[K, 4 or 5] | list | RoiSet


def spec(op: str = "align", **options) -> PoolSpec:
    """The checked `PoolSpec` for `op` and its options (what `pool` runs); unknown names are refused."""
    s, rest = spec_from_options(op, options)
    _refuse_unknown(rest)
    return s


def _picture_spec(options: dict, **align) -> PoolSpec:
    """compare's and show's spec: RoI Align's geometry (`sampling_ratio`, `aligned`) against RoI
    Pool's and the exact bins; other op parameters do not apply to them and are refused."""
    other = [name for name in registry.shared_params() if name in options and name not in align]
    if other:
        raise UsageError(f"{{{other[0]}}}: does not apply here (RoI Align's geometry only)", param=other[0])
    return spec("align", **align, **options)


def _refuse_unknown(rest: Mapping) -> None:
    if rest:
        name = next(iter(rest))
        known = sorted({*registry.shared_params(), *SPEC_OPTIONS})
        raise UsageError(f"{{{name}}}: not a parameter; expected one of {', '.join(known)}", param=name)


def load_features(
    source: FeaturesLike,
    *,
    key: str | None = None,
    spatial_scale: float | list[float] | None = None,
    stride: float | None = None,
    backbone: str = "builtin",
    device: str = "cpu",
    max_image_pixels: int | None = None,
) -> Features:
    """Feature map(s) from a path (safetensors or image; see `roicli align --help`) or from tensors.

    A single `Tensor[N, C, H, W]` gets `spatial_scale` (default 1.0); a list of tensors is a pyramid,
    finest first, and needs one scale per map (`spatial_scale=[1/4, 1/8, ...]`)."""
    if isinstance(source, Features):
        return source
    if isinstance(source, (str, Path)):
        s = spec(key=key, spatial_scale=spatial_scale, stride=stride, backbone=backbone,
                 max_image_pixels=max_image_pixels)  # fmt: skip
        from roicli.pipeline import resolve_device

        return read_features(str(source), s, resolve_device(device))
    if isinstance(source, torch.Tensor):
        source = {"input": source}
    if isinstance(source, Mapping):
        bad = [k for k, v in source.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise UsageError(f"{{features}}: expected tensors, got {bad[0]!r} = {type(source[bad[0]]).__name__}",
                             param="features")  # fmt: skip
        return features_from_tensors(dict(source), {}, "features", key, _scale(spatial_scale, stride))
    if isinstance(source, (list, tuple)) and source and all(isinstance(t, torch.Tensor) for t in source):
        scales = spatial_scale if isinstance(spatial_scale, (list, tuple)) else None
        if scales is None or len(scales) != len(source):
            raise UsageError(
                f"{{spatial_scale}}: a pyramid of {len(source)} maps needs one scale per map, got {spatial_scale!r}",
                param="spatial_scale",
            )
        keys = [f"level{i}" for i in range(len(source))]
        feats = load_features(dict(zip(keys, source)), key=",".join(keys))
        if not all(isinstance(s, (int, float)) and 0 < s < math.inf for s in scales):
            raise UsageError(
                f"{{spatial_scale}}: expected finite positive numbers, got {scales!r}", param="spatial_scale"
            )
        feats.scales, feats.scale_source = [float(s) for s in scales], "option"
        return feats
    raise UsageError(
        f"{{features}}: expected a path, a Tensor[N, C, H, W], a dict or a list of tensors, "
        f"got {type(source).__name__}",
        param="features",
    )


def _scale(spatial_scale, stride) -> float | None:
    from roicli.pipeline import scale_option

    return scale_option(spatial_scale, stride)


def load_rois(source: RoisLike, *, box_format: str | None = None, rois_format: str = "auto") -> RoiSet:
    """RoIs from a path (JSON, JSON Lines, CSV; `-` is stdin) or from `Tensor[K, 4]` / `Tensor[K, 5]`
    (batch index first) or nested lists, in image pixels, in `box_format` (default xyxy)."""
    if isinstance(source, RoiSet):
        return source
    if isinstance(source, (str, Path)):
        from roicli.io.inputs import read_input

        name = str(source)
        return read_rois(read_input(name), "stdin" if name == "-" else name, box_format, rois_format)
    if isinstance(source, torch.Tensor):
        if source.dim() != 2 or source.shape[1] not in (4, 5):
            raise InputError(
                f"{{rois}}: expected Tensor[K, 4] or Tensor[K, 5], got shape {tuple(source.shape)}", param="rois"
            )
        source = source.detach().double().cpu().tolist()
    if isinstance(source, (list, tuple)):
        return read_rois(json.dumps(list(source)), "rois", box_format, "json")
    raise UsageError(
        f"{{rois}}: expected a path, a Tensor[K, 4 or 5] or a list of boxes, got {type(source).__name__}", param="rois"
    )


def _inputs(features: FeaturesLike, rois: RoisLike, s: PoolSpec) -> tuple[str | Features, str | RoiSet]:
    """Paths stay paths (the pipeline reads them, with the spec's options); data becomes Features/RoiSet."""
    if not isinstance(features, (str, Path)):
        features = load_features(features, key=s.key, spatial_scale=s.spatial_scale, stride=s.stride)
    if not isinstance(rois, (str, Path)):
        rois = load_rois(rois, box_format=s.box_format)
    return (str(features) if isinstance(features, Path) else features), (str(rois) if isinstance(rois, Path) else rois)


def pool(
    features: FeaturesLike,
    rois: RoisLike,
    op: str | PoolSpec = "align",
    *,
    strict: bool = False,
    progress: Callable[[int, int], None] | None = None,
    **options,
) -> PoolResult:
    """Pool `rois` from `features` with `op` (align, pool, precise: `roicli.registry.OPS`) and its
    parameters (`output_size=7`, `sampling_ratio=-1`, `aligned=...`, `mode="avg"`, ...).

    Returns a `PoolResult`: `.tensors["pooled"]` (`Tensor[K, C, PH, PW]`), `.tensors["rois"]`,
    `.metadata`, `.summary`, `.warnings()`. `strict` makes zero-size, inverted or off-map boxes an
    error. `progress(done, total)` is called after each chunk."""
    s = op if isinstance(op, PoolSpec) else spec(op, **options)
    if isinstance(op, PoolSpec):
        _refuse_unknown(options)
    f, r = _inputs(features, rois, s)
    return pool_job(f, r, s, strict=strict, progress=progress)


@dataclass
class Comparison:
    """`compare`'s report: one row per RoI (RoI Pool's geometry and value errors), the headline,
    the parameters it ran with, and the warnings about the RoIs."""

    header: dict
    rows: list[dict]
    headline: dict
    warnings: list[str] = field(default_factory=list)
    explanation: list[str] | None = None  # with `explain`: that RoI walked through in words
    source: str = ""  # where the RoIs came from

    def summary(self) -> list[dict]:
        from roicli.report import summarize

        return summarize(self.rows)

    def by_size(self) -> list[dict]:
        from roicli.report import by_size

        return by_size(self.rows)


def compare(
    features: FeaturesLike,
    rois: RoisLike,
    *,
    output_size: int | str | tuple[int, int] = 7,
    sampling_ratio: int = -1,
    aligned: bool = True,
    explain: str | int | None = None,
    strict: bool = False,
    progress: Callable[[int, int], None] | None = None,
    **options,
) -> Comparison:
    """How far RoI Pool lands from RoI Align and from the exact integral, per RoI (`roicli compare`).

    `explain`: one RoI's id (or "first") to walk through both quantization steps; the result then
    holds that RoI alone and `explanation`. `progress(done, total)` is called after each chunk."""
    from roicli.report import compare_chunks, headline
    from roicli.report import explain as explain_lines

    s = _picture_spec(options, output_size=output_size, sampling_ratio=sampling_ratio, aligned=aligned)
    inputs = _load(features, rois, s)
    feats, roi_set = inputs.features, inputs.rois
    boxes, levels = rois_and_levels(inputs, s)  # [K, 5] in the op's dtype, [K]
    _check_compare_memory(feats, len(roi_set) if explain is None else 1, s)
    bad, outside = check_boxes(inputs, levels, strict)
    size, ratio, al = s.output_size, s.op_params["sampling_ratio"], s.op_params["aligned"]
    header = {
        "features": feats.source,
        "output_size": f"{size[0]}x{size[1]}",
        "spatial_scale": feats.scales if feats.is_pyramid else feats.scales[0],
        "sampling_ratio": ratio,
        "aligned": al,
        "rois": len(roi_set),
    }
    run = dict(features=feats, roi_set=roi_set, rois=boxes, levels=levels, output_size=size,
               sampling_ratio=ratio, aligned=al, chunk_size=s.chunk_size)  # fmt: skip
    warnings = roi_warnings(roi_set, bad, outside)
    if explain is not None:
        i = _find(roi_set.ids, explain)
        ((geometry, _, rows),) = compare_chunks(**run, indices=[i])
        lines = explain_lines(geometry[0], size, rows[0])
        return Comparison(header, rows, headline(rows, ratio, al), warnings, lines, roi_set.source)
    rows: list[dict] = []
    for _, _, chunk in compare_chunks(**run):
        rows += chunk
        if progress:
            progress(len(rows), len(roi_set))
    return Comparison(header, rows, headline(rows, ratio, al), warnings, None, roi_set.source)


def _load(features: FeaturesLike, rois: RoisLike, s: PoolSpec) -> Inputs:
    f, r = _inputs(features, rois, s)
    return load_inputs(f, r, s)


def _check_compare_memory(feats: Features, k: int, s: PoolSpec) -> None:
    """Refuse, before it starts, a report that cannot fit: a chunk's five pooled results and their
    float64 differences, plus about 4 KB per RoI for its row."""
    c, item = feats.levels[0].shape[1], feats.levels[0].element_size()
    ph, pw = s.output_size
    working = min(k, s.chunk_size) * c * ph * pw * (5 * item + 3 * 8) + (64 << 20)
    need_memory(
        working + 4096 * k,
        f"compare of {k} RoIs ({s.chunk_size} at a time, {c} x {ph} x {pw} each)",
        "use a smaller {chunk_size} or {output_size}, or fewer RoIs per run",
    )


def _find(ids: list, wanted: str | int) -> int:
    if not ids:
        raise UsageError("{explain}: there are no RoIs to explain", param="explain")
    if wanted == "first":
        return 0
    for i, v in enumerate(ids):
        if str(v) == str(wanted):
            return i
    raise UsageError(
        f"{{explain}}: no RoI with id {str(wanted)!r}; ids: {', '.join(map(str, ids[:10]))}", param="explain"
    )


def show(
    features: FeaturesLike,
    rois: RoisLike,
    *,
    ids: list | None = None,
    output_size: int | str | tuple[int, int] = 7,
    sampling_ratio: int = -1,
    aligned: bool = False,
    channel: int | None = None,
    heatmap: bool = False,
    full: bool = False,
    max_size: int = 1200,
    **options,
) -> Image.Image:
    """The picture (`roicli show`): exact RoI and bins (green), RoI Pool's rounded RoI and integer
    bins (red), RoI Align's samples (blue), over the feature map's heat map (or the image).

    `ids`: the RoIs to draw (default: the first 3); they must share a pyramid level (others are left
    out, with a warning). Returns a `PIL.Image`; `image.info["roicli"]` holds what was drawn: the
    RoIs, the level, the spatial scale and the warnings."""
    import numpy as np

    from roicli.figure import draw
    from roicli.figure import heatmap as heat
    from roicli.io.features import is_image_path
    from roicli.io.images import read_image
    from roicli.pipeline import outside_rows

    if not isinstance(max_size, int) or not 64 <= max_size <= 4096:
        raise UsageError(f"{{max_size}}: expected 64..4096, got {max_size}", param="max_size")
    s = _picture_spec(options, output_size=output_size, sampling_ratio=sampling_ratio, aligned=aligned)
    inputs = _load(features, rois, s)
    feats, roi_set = inputs.features, inputs.rois
    if len(roi_set) == 0:
        raise InputError(f"{roi_set.source}: holds no RoIs; nothing to draw")
    chosen = _choose(roi_set.ids, ids)
    warnings = []
    # The level of each RoI exactly as the pooling commands assign it (same boxes, same dtype).
    rois_t, levels = rois_and_levels(inputs, s)  # [K, 5], [K]
    levels = levels.cpu()
    level = int(levels[chosen[0]])
    if feats.is_pyramid:
        skipped = [repr(roi_set.ids[i]) for i in chosen if int(levels[i]) != level]
        chosen = [i for i in chosen if int(levels[i]) == level]
        if skipped:
            warnings.append(
                f"RoI(s) {', '.join(skipped)} sit on other pyramid levels than {feats.keys[level]} "
                "(one level per picture); not drawn"
            )
    fmap, scale = feats.levels[level], feats.scales[level]
    h, w = fmap.shape[-2:]
    off_map = set(outside_rows(inputs, levels))  # the pooling commands' test: no overlap with its map
    outside = [i for i in chosen if i in off_map]
    if outside:
        names = ", ".join(f"{roi_set.ids[i]!r} {[round(v, 4) for v in roi_set.boxes[i].tolist()]}" for i in outside)
        where = f"the {w / scale:g}x{h / scale:g} px feature map"
        where += f" {feats.keys[level]}" if feats.is_pyramid else ""
        if len(outside) == len(chosen):
            raise InputError(f"{roi_set.source}: RoI {names} lies entirely outside {where}; nothing to draw")
        warnings.append(f"RoI {names} lies entirely outside {where}; not drawn")
        chosen = [i for i in chosen if i not in outside]
    batch_index = int(roi_set.batch[chosen[0]])
    image_path = isinstance(features, (str, Path)) and str(features) != "-" and is_image_path(str(features))
    if image_path and not heatmap:
        picture = read_image(str(features), s.max_image_pixels)[0].permute(1, 2, 0).numpy()
        background, background_scale = (picture * 255).round().astype(np.uint8), 1.0
    else:
        if channel is not None and not 0 <= channel < fmap.shape[1]:
            raise UsageError(f"{{channel}}: expected 0..{fmap.shape[1] - 1}, got {channel}", param="channel")
        values = fmap[batch_index, channel] if channel is not None else fmap[batch_index].float().mean(dim=0)
        background, background_scale = heat(values.float().cpu().numpy()), scale
    size, ratio, al = s.output_size, s.op_params["sampling_ratio"], s.op_params["aligned"]
    names = ", ".join(str(roi_set.ids[i]) for i in chosen)
    image, _ = draw(
        background, background_scale, (h, w), scale, roi_set.boxes[chosen], size, ratio, al,
        max_size=max_size, crop=not full,
        legend=[f"{size[0]}x{size[1]} bins, spatial scale {scale:g}, sampling_ratio {ratio}, "
                f"aligned={al}; RoIs {names}"],
        dtype=rois_t.dtype,
    )  # fmt: skip
    image.info["roicli"] = {
        "rois": [roi_set.ids[i] for i in chosen],
        "level": feats.keys[level] if feats.is_pyramid else None,
        "spatial_scale": scale,
        "output_size": list(size),
        "sampling_ratio": ratio,
        "aligned": al,
        "warnings": warnings,
    }
    return image


def _choose(ids: list, wanted: list | None) -> list[int]:
    if not wanted:
        return list(range(min(3, len(ids))))
    out = []
    for w in wanted:
        match = [i for i, v in enumerate(ids) if str(v) == str(w)]
        if not match:
            raise UsageError(f"{{ids}}: no RoI with id {str(w)!r}; ids: {', '.join(map(str, ids[:10]))}", param="ids")
        out.append(match[0])
    return out


def batch(
    manifest: str | None = None,
    outdir: str | Path | None = None,
    *,
    features: str | None = None,
    rois: str | None = None,
    op: str = "align",
    format: str = "safetensors",
    shard_rois: int | None = None,
    workers: int = 0,
    resume: bool = True,
    on_error: str = "skip",
    fsync: bool = False,
    engine: str = "local",
    address: str | None = None,
    strict: bool = False,
    progress: Callable[[dict], None] | None = None,
    notice: Callable[[str], None] | None = None,
    **options,
) -> dict:
    """Pool many items in one job (`roicli batch`): a manifest (CSV or JSON Lines; `-` is stdin), or
    `features` (a glob) with `rois` (a template such as `rois/{stem}.json`). Writes one output per
    item (or shards of about `shard_rois` RoIs) under `outdir`; returns the summary. `format`
    (safetensors, npz, pt or parquet) is the shards' format and that of the outputs the manifest does
    not name (an `output` column's extension chooses its own). Op parameters the chosen op does not
    take are refused (`sampling_ratio=2` with `op="pool"`)."""
    from roicli.io.inputs import read_input
    from roicli.io.manifest import items_from_glob, read_manifest
    from roicli.io.writers import check_writable, suffix_of
    from roicli.jobs import BatchConfig, run_batch

    if not outdir:
        raise UsageError("{outdir}: give the output folder", param="outdir")
    s = spec(op, **options)
    suffix = suffix_of(format)
    cfg = BatchConfig(
        s, Path(outdir), shard_rois, overwrite=not resume, on_error=on_error, workers=workers, engine=engine,
        address=address, fsync=fsync, strict=strict, shard_format=suffix,
    )  # fmt: skip
    if (manifest is None) == (features is None):
        raise UsageError(
            "give a {manifest} or {features} (with {rois}), not both", param=("manifest", "features", "rois")
        )
    if features is not None and rois is None:
        raise UsageError("{features} needs {rois}, e.g. {rois} 'rois/{stem}.json'", param=("features", "rois"))
    if manifest is not None:
        base = Path.cwd() if manifest == "-" else Path(manifest).parent
        items = read_manifest(read_input(manifest), "stdin" if manifest == "-" else manifest, base, suffix)
    else:
        items = items_from_glob(features, rois, suffix)
    for fmt in {suffix} if shard_rois else {Path(it.output).suffix.lower() for it in items}:
        check_writable(fmt)  # before any work: Parquet without pyarrow
    return run_batch(items, cfg, progress, notice)
