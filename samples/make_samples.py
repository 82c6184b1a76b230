"""Regenerate the files in samples/ (deterministic): python samples/make_samples.py

- feats.safetensors: one feature map [1, 16, 38, 50] of a 600x800 image, stride 16 (metadata).
- pyramid.safetensors: an FPN pyramid p2..p5 of a 256x320 image, 8 channels.
- scene.png: a 256x320 picture of simple shapes (runs through the built-in backbone).
- rois.json / rois.csv: boxes for feats.safetensors (image pixels, xyxy), with ids and scores.
- pyramid_rois.json: boxes of all sizes for pyramid.safetensors and scene.png.
- manifest.csv: a `roicli batch` manifest with two good items and a bad one.
- vgg16_800.safetensors + rois_665.json: the classic worked example, an 800x800 image through a
  stride-32 VGG16-like map (25x25) and one 665x665 RoI.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from roicli.io.safetensors_io import dumps

HERE = Path(__file__).parent


def smooth_map(gen: torch.Generator, c: int, h: int, w: int) -> torch.Tensor:
    """Random but spatially smooth features (like a real backbone's), non-negative like ReLU output."""
    x = torch.randn(1, c, h, w, generator=gen)
    x = F.avg_pool2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), 5, stride=1)
    return (x * 3).relu().contiguous()


def save_file(tensors: dict, path: Path, metadata: dict) -> None:
    """Deterministic bytes, so regenerating leaves the committed files unchanged."""
    path.write_bytes(dumps(tensors, metadata))


def main() -> None:
    gen = torch.Generator().manual_seed(0)
    save_file({"features": smooth_map(gen, 16, 38, 50)}, HERE / "feats.safetensors",
              metadata={"stride": "16", "image_size": "600x800"})
    levels = {f"p{k}": smooth_map(gen, 8, 256 // 2**k, 320 // 2**k) for k in range(2, 6)}
    save_file(levels, HERE / "pyramid.safetensors", metadata={"image_size": "256x320"})
    save_file({"features": smooth_map(gen, 8, 25, 25)}, HERE / "vgg16_800.safetensors",
              metadata={"stride": "32", "image_size": "800x800"})

    rois = [
        {"id": "car", "box": [100.0, 150.0, 420.0, 380.0], "score": 0.98, "label": "car"},
        {"id": "person", "box": [480.5, 120.25, 560.0, 400.75], "score": 0.91, "label": "person"},
        {"id": "sign", "box": [650.0, 40.0, 705.0, 95.0], "score": 0.64, "label": "sign"},
        {"id": "bike", "box": [300.0, 330.0, 470.0, 520.0], "score": 0.55, "label": "bicycle"},
        {"id": "dog", "box": [33.3, 401.7, 180.9, 590.2], "score": 0.43, "label": "dog"},
    ]
    (HERE / "rois.json").write_text(json.dumps(rois, indent=1) + "\n")
    lines = ["id,x1,y1,x2,y2,score"] + [
        f"{r['id']},{','.join(str(v) for v in r['box'])},{r['score']}" for r in rois
    ]
    (HERE / "rois.csv").write_text("\n".join(lines) + "\n")
    pyr = [[10, 10, 40, 42], [60, 20, 160, 120], [20, 100, 250, 240], [0, 0, 320, 256], [200, 30, 230, 200]]
    (HERE / "pyramid_rois.json").write_text(json.dumps(pyr) + "\n")
    # A batch manifest: two good items and one whose features file is missing (it lands in errors.jsonl).
    (HERE / "manifest.csv").write_text(
        "features,rois,output\nfeats.safetensors,rois.json,feats_json.safetensors\n"
        "feats.safetensors,rois.csv,feats_csv.safetensors\nmissing.safetensors,rois.json,missing.safetensors\n"
    )
    (HERE / "rois_665.json").write_text(json.dumps([{"id": "classic", "box": [0, 0, 665, 665]}]) + "\n")

    im = Image.new("RGB", (320, 256), (200, 220, 240))
    d = ImageDraw.Draw(im)
    d.rectangle([0, 180, 320, 256], fill=(90, 90, 90))
    d.rectangle([60, 20, 160, 120], fill=(200, 40, 40), outline=(0, 0, 0), width=3)
    d.ellipse([20, 110, 120, 230], fill=(40, 160, 60))
    d.polygon([(200, 30), (230, 200), (170, 200)], fill=(240, 200, 30))
    for i in range(0, 320, 20):
        d.line([(i, 200), (i + 10, 200)], fill=(255, 255, 255), width=2)
    im.save(HERE / "scene.png")


if __name__ == "__main__":
    main()
