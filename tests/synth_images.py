"""Small generated inputs shared by tests: photo-like uint8 images, their encoded bytes, and a briefly trained
digits ViT checkpoint (the 'user checkpoint' of the compile tests)."""

from __future__ import annotations

import io

import numpy as np

DIGITS_KW = {"img_size": 16, "patch_size": 4, "in_chans": 1, "num_classes": 10, "embed_dim": 48, "depth": 2,
             "num_heads": 3}


def photo(w: int, h: int, seed: int) -> np.ndarray:
    """uint8 [h, w, 3]: smooth colour gradients plus noise (compresses like a photo, not like noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / (w - 1), yy * 255 / (h - 1), (xx + yy) * 127 / (w + h - 2)], -1)
    return np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8)


def encode(arr: np.ndarray, fmt: str) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def digits_checkpoint(path, steps: int, kwargs: dict | None = None):
    """A vit_tiny-structured ViT trained `steps` steps on digits, saved as safetensors at `path`."""
    from edvit_tool.config import recipe as r
    from edvit_tool.demo_model import train_demo_model

    rec = r.validate({"model": {"name": "vit_tiny_patch16_224", "kwargs": dict(kwargs or DIGITS_KW),
                                "checkpoint": str(path)},
                      "data": {"kind": "digits", "mean": [0.5], "std": [0.5]}})
    train_demo_model(rec, str(path), steps=steps)
    return path
