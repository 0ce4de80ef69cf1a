"""Generate a user-style ImageFolder of photo-like JPEGs (no downloads): N classes of coloured shapes on textured,
cluttered backgrounds, varied image sizes and aspect ratios, some grayscale and PNG files among them.

    python scripts/synth_photos.py OUT_DIR --classes 10 --per-class 60 --test-per-class 20 [--size 224] [--seed 0]

Used by scripts/gpu-check.sh and bench/scale.py. Classes differ in shape and hue, so a ViT learns them quickly,
but position, scale, rotation, background and clutter vary per image.
"""

from __future__ import annotations

import argparse
import math
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SHAPES = ("circle", "square", "triangle", "star", "ring", "cross", "diamond", "bar", "hexagon", "arrow")


def _polygon(kind: str, cx: float, cy: float, r: float, rot: float) -> list:
    if kind == "square":
        pts = [(1, 1), (-1, 1), (-1, -1), (1, -1)]
    elif kind == "triangle":
        pts = [(math.cos(a), math.sin(a)) for a in np.linspace(0, 2 * math.pi, 4)[:3]]
    elif kind == "star":
        pts = [((1 if i % 2 == 0 else 0.45) * math.cos(i * math.pi / 5), (1 if i % 2 == 0 else 0.45)
                * math.sin(i * math.pi / 5)) for i in range(10)]
    elif kind == "cross":
        pts = [(0.3, 1), (-0.3, 1), (-0.3, 0.3), (-1, 0.3), (-1, -0.3), (-0.3, -0.3), (-0.3, -1), (0.3, -1),
               (0.3, -0.3), (1, -0.3), (1, 0.3), (0.3, 0.3)]
    elif kind == "diamond":
        pts = [(0, 1), (-0.6, 0), (0, -1), (0.6, 0)]
    elif kind == "bar":
        pts = [(1, 0.25), (-1, 0.25), (-1, -0.25), (1, -0.25)]
    elif kind == "hexagon":
        pts = [(math.cos(a), math.sin(a)) for a in np.linspace(0, 2 * math.pi, 7)[:6]]
    else:  # arrow
        pts = [(1, 0), (0.2, 0.7), (0.2, 0.25), (-1, 0.25), (-1, -0.25), (0.2, -0.25), (0.2, -0.7)]
    c, s = math.cos(rot), math.sin(rot)
    return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in pts]


def make_image(cls: int, n_classes: int, rng: np.random.Generator, size: int) -> Image.Image:
    w = int(size * rng.uniform(0.8, 1.6))
    h = int(size * rng.uniform(0.8, 1.3))
    bg = rng.integers(0, 256, 3)
    noise = rng.normal(0, 25, (h // 8 + 1, w // 8 + 1, 3))
    arr = np.clip(bg + np.kron(noise, np.ones((8, 8, 1)))[:h, :w], 0, 255).astype(np.uint8)
    img = Image.fromarray(arr)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 6))):  # clutter
        x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
        draw.ellipse([x0, y0, x0 + rng.uniform(5, w / 5), y0 + rng.uniform(5, h / 5)],
                     fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    kind = SHAPES[cls % len(SHAPES)]
    hue = (cls // len(SHAPES)) / max(1, math.ceil(n_classes / len(SHAPES)))
    color = tuple(int(255 * v) for v in _hsv(hue + rng.uniform(-0.03, 0.03), 0.8, rng.uniform(0.6, 1.0)))
    r = min(w, h) * rng.uniform(0.18, 0.35)
    cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=color)
    elif kind == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=color, width=max(2, int(r / 3)))
    else:
        draw.polygon(_polygon(kind, cx, cy, r, rng.uniform(0, 2 * math.pi)), fill=color)
    return img.filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.2)))


def _hsv(h, s, v):
    import colorsys

    return colorsys.hsv_to_rgb(h % 1.0, s, v)


def write_folder(out: str, classes: int, per_class: int, test_per_class: int, size: int = 224, seed: int = 0,
                 val_per_class: int = 0) -> str:
    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("val", val_per_class), ("test", test_per_class)):
        for c in range(classes):
            if n == 0:
                continue
            d = os.path.join(out, split, f"class_{c:03d}")
            os.makedirs(d, exist_ok=True)
            for i in range(n):
                img = make_image(c, classes, rng, size)
                if i % 10 == 7:
                    img.convert("L").save(os.path.join(d, f"{i:05d}.png"))
                else:
                    img.save(os.path.join(d, f"{i:05d}.jpg"), quality=90)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--per-class", type=int, default=60)
    ap.add_argument("--val-per-class", type=int, default=0)
    ap.add_argument("--test-per-class", type=int, default=20)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    write_folder(a.out, a.classes, a.per_class, a.test_per_class, a.size, a.seed, a.val_per_class)
    print(a.out)
