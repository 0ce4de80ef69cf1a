"""The build's reference image sets — reference/val.npz, eval.npz, calib-g<i>.npz: written by compile, read by
export (gate, exported accuracy, int8 calibration), `check --eval`, `infer`, the loop and the tests.

Stored as `pixels`: uint8 [M, H, W, C] at the model's resolution (already resized and centre-cropped by the build's
eval transform), plus `y` int64 [M] where the set has labels: a quarter of the float32 size, and compile writes it
without ever holding the set as floats. `load` normalises with the build's input spec in chunks
(runtime.preprocess.normalize: x / 255, then (x - mean) / std, the float32 operations compile's own batches use),
so readers get the tensors compile saw. Builds from before kept `x` float32 [M, C, H, W], already normalised:
those load as they are. Host side, torch-free.
"""

from __future__ import annotations

import os

import numpy as np

from .errors import DataError
from .runtime import preprocess as pp

PIXELS = "pixels"
CHUNK = 64  # rows normalised at a time: the float copy is the only full-size array


def save(path: str, pixels: np.ndarray, y=None) -> None:
    """uint8 [M, H, W, C] pixels at model resolution (and labels) -> `path`."""
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8 or pixels.ndim != 4:
        raise ValueError(f"{path}: reference pixels must be uint8 [M, H, W, C], got {pixels.dtype} "
                         f"{list(pixels.shape)}")
    arrays = {PIXELS: pixels}
    if y is not None:
        arrays["y"] = np.asarray(y, dtype=np.int64).reshape(-1)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    np.savez(path, **arrays)


def holds_pixels(files) -> bool:
    """Whether an npz (its `files`) is in this format rather than plain `x`."""
    return PIXELS in files and "x" not in files


def check_pixels(pixels: np.ndarray, path: str, spec) -> np.ndarray:
    """`pixels` of `path` as stored, refused unless uint8 [M, H, W, C] at the spec's size and channels."""
    t = pp.transform_of(spec)
    want = list(t.size) + [t.channels]
    if pixels.dtype != np.uint8 or pixels.ndim != 4 or list(pixels.shape[1:]) != want:
        raise DataError(f"{path}: pixels is {pixels.dtype} {list(pixels.shape)}; expected uint8 "
                        f"[M, {', '.join(map(str, want))}] (the model's input size, H, W, C); recompile the build "
                        "to rewrite it")
    return pixels


def normalize(pixels: np.ndarray, spec) -> np.ndarray:
    """uint8 [M, H, W, C] -> float32 [M, C, H, W], CHUNK rows at a time (one full-size float array)."""
    t = pp.transform_of(spec)
    out = np.empty((len(pixels), t.channels) + tuple(t.size), dtype=np.float32)
    for i in range(0, len(pixels), CHUNK):
        out[i:i + CHUNK] = pp.normalize(pixels[i:i + CHUNK], t)
    return out


def _labels(y, n: int, path: str):
    if y is None:
        return None
    y = np.asarray(y).reshape(-1)
    if y.dtype.kind not in "iu" or len(y) != n:
        raise DataError(f"{path}: y must be {n} integer labels (one per image), got {y.dtype} with shape "
                        f"{list(np.shape(y))}")
    return y.astype(np.int64, copy=False)


def _read(path: str) -> tuple:
    """(file names, {pixels | x, y}) of an npz, never unpickling."""
    try:
        with np.load(path, allow_pickle=False) as z:
            files = list(z.files)
            key = PIXELS if holds_pixels(files) else "x"
            return files, {k: z[k] for k in (key, "y") if k in files}
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read it as an npz archive ({e})") from None


def load_pixels(path: str, spec) -> tuple:
    """-> (uint8 [M, H, W, C], y or None) of a `pixels` file, as stored (what a deployment sends compactly)."""
    files, a = _read(path)
    if PIXELS not in a:
        raise DataError(f"{path}: no array '{PIXELS}' (it has {', '.join(files) or 'none'})")
    pixels = check_pixels(a[PIXELS], path, spec)
    return pixels, _labels(a.get("y"), len(pixels), path)


def load(path: str, spec) -> tuple:
    """A reference set -> (float32 [M, C, H, W] normalised, y int64 or None). `pixels` files are normalised here;
    older float `x` files come back as stored (the caller checks their shape)."""
    files, a = _read(path)
    if PIXELS in a:
        pixels = check_pixels(a[PIXELS], path, spec)
        return normalize(pixels, spec), _labels(a.get("y"), len(pixels), path)
    if "x" not in a:
        raise DataError(f"{path}: no array '{PIXELS}' or 'x' (it has {', '.join(files) or 'none'}); recompile the "
                        "build to rewrite it")
    x = a["x"]
    if x.dtype.kind != "f":
        raise DataError(f"{path}: x is {x.dtype}; a reference set holds uint8 `pixels` or float32 `x`; recompile "
                        "the build to rewrite it")
    return x.astype(np.float32, copy=False), _labels(a.get("y"), len(x), path)
