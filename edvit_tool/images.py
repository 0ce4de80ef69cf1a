"""Images in, model input out: png/jpg files and npz arrays -> preprocessed float32 [N, C, H, W].

Follows the manifest input spec (`shape` [C, H, W], `mean`, `std`, `interpolation`) the way compile preprocessed
its data (data.to_model_input): pixels scaled to [0, 1], RGB -> gray by the channel mean, gray -> RGB by
repetition, antialiased resize, then (x - mean) / std.

npz files: key `x`, either raw uint8 images [N, H, W] / [N, H, W, C] (preprocessed here) or float arrays that are
already preprocessed ([N, C, H, W], or [N, H, W] for a 1-channel model; resized when the size differs, never
channel-converted since their normalisation is unknown). Optional `y`: integer labels, for accuracy.
Host side (PIL + numpy).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from .errors import DataError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclasses.dataclass
class Inputs:
    names: list            # one per image: the file, or file[i] for npz rows
    x: np.ndarray          # float32 [N, C, H, W], preprocessed
    y: np.ndarray | None   # int labels when every input came with one (npz `y`)


def _spec_text(spec: dict) -> str:
    c, h, w = spec["shape"]
    return f"[{c}, {h}, {w}] (C, H, W; manifest input.shape)"


def _resample(spec: dict):
    from PIL import Image

    name = str(spec.get("interpolation", "bilinear")).lower()
    return {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
            "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}.get(
                name, Image.Resampling.BILINEAR)


def _resize(x: np.ndarray, h: int, w: int, spec: dict) -> np.ndarray:
    """float [N, C, H', W'] -> [N, C, h, w], channel by channel in PIL's float mode (antialiased)."""
    if x.shape[2:] == (h, w):
        return x
    from PIL import Image

    rs = _resample(spec)
    out = np.empty(x.shape[:2] + (h, w), dtype=np.float32)
    for i in range(x.shape[0]):
        for c in range(x.shape[1]):
            out[i, c] = np.asarray(Image.fromarray(np.ascontiguousarray(x[i, c], dtype=np.float32), mode="F")
                                   .resize((w, h), rs))
    return out


def _match_channels(x: np.ndarray, c: int, where: str, spec: dict) -> np.ndarray:
    """[N, C', H, W] raw [0, 1] images -> [N, c, H, W]: RGB <-> gray, RGBA drops alpha; anything else rejected."""
    have = x.shape[1]
    if have == c:
        return x
    if have == 4 and c in (1, 3):  # RGBA / CMYK-like: drop the 4th channel first
        x, have = x[:, :3], 3
        if c == 3:
            return x
    if have == 3 and c == 1:
        return x.mean(axis=1, keepdims=True)
    if have == 1 and c == 3:
        return np.repeat(x, 3, axis=1)
    raise DataError(f"{where}: images have {have} channels (array shape {list(x.shape)}), the model takes "
                    f"{_spec_text(spec)}; give 1-channel (gray) or 3-channel (RGB) images")


def preprocess_raw(images: np.ndarray, spec: dict, where: str) -> np.ndarray:
    """Raw images [N, C', H', W'] with values in [0, 1] -> normalised float32 [N, C, H, W]."""
    c, h, w = spec["shape"]
    x = _match_channels(images.astype(np.float32, copy=False), c, where, spec)
    x = _resize(x, h, w, spec)
    mean = np.asarray(spec["mean"], dtype=np.float32).reshape(1, c, 1, 1)
    std = np.asarray(spec["std"], dtype=np.float32).reshape(1, c, 1, 1)
    return np.ascontiguousarray((x - mean) / std, dtype=np.float32)


def load_image(path: str, spec: dict) -> np.ndarray:
    """One image file -> float32 [1, C, H, W]."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit PNGs (Pillow opens some as "I")
                arr = (np.asarray(img, dtype=np.float32) / 65535.0)[..., None]
            elif mode == "F":
                arr = np.asarray(img, dtype=np.float32)[..., None]
            else:
                if mode not in ("L", "RGB", "RGBA"):
                    img = img.convert("RGBA" if "A" in img.getbands() or "transparency" in img.info else "RGB")
                arr = np.asarray(img, dtype=np.float32) / 255.0
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"{path}: cannot read it as an image ({e}); give a png/jpg file") from None
    if arr.ndim == 2:
        arr = arr[..., None]
    return preprocess_raw(arr.transpose(2, 0, 1)[None], spec, path)


def load_npz(path: str, spec: dict) -> tuple:
    """npz -> (float32 [N, C, H, W], y or None); see the module docstring for the accepted layouts."""
    c, h, w = spec["shape"]
    try:
        with np.load(path, allow_pickle=False) as z:
            if "x" not in z.files:
                raise DataError(f"{path}: no array 'x' (it has {', '.join(z.files) or 'none'}); store the images "
                                "as x (and labels as y)")
            x = z["x"]
            y = z["y"] if "y" in z.files else None
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read it as an npz archive ({e})") from None
    shape = list(x.shape)
    if x.dtype == np.uint8:
        if x.ndim == 3:
            x = x[:, None]
        elif x.ndim == 4 and x.shape[-1] in (1, 2, 3, 4) and x.shape[1] not in (1, 3):
            x = x.transpose(0, 3, 1, 2)  # channels-last
        elif x.ndim != 4:
            raise DataError(f"{path}: x is uint8 with shape {shape}; raw images must be [N, H, W] or "
                            f"[N, H, W, C] for a model taking {_spec_text(spec)}")
        x = preprocess_raw(x / np.float32(255.0), spec, f"{path} (x {shape} uint8)")
    elif x.dtype.kind == "f":
        if x.ndim == 3 and c == 1:
            x = x[:, None]
        if x.ndim != 4 or x.shape[1] != c:
            raise DataError(f"{path}: x is {x.dtype} with shape {shape}, taken as already preprocessed, but the "
                            f"model takes [N, {c}, {h}, {w}] ({_spec_text(spec)}); store raw uint8 images "
                            "instead to have them converted, or preprocess them to that shape")
        x = _resize(x.astype(np.float32, copy=False), h, w, spec)
    else:
        raise DataError(f"{path}: x has dtype {x.dtype}; expected uint8 raw images or float32 preprocessed ones")
    if y is not None:
        y = np.asarray(y).reshape(-1)
        if y.dtype.kind not in "iu" or len(y) != len(x):
            raise DataError(f"{path}: y must be {len(x)} integer labels (one per image in x), got {y.dtype} "
                            f"with shape {list(np.shape(y))}")
    return np.ascontiguousarray(x, dtype=np.float32), y


def load_inputs(paths, spec: dict) -> Inputs:
    """Image files and npz archives, in order -> Inputs. Labels only when every source had them."""
    names, xs, ys = [], [], []
    for path in paths:
        ext = os.path.splitext(path)[1].lower()
        if ext == ".npz":
            x, y = load_npz(path, spec)
            names += [f"{path}[{i}]" for i in range(len(x))]
        elif ext in IMAGE_EXTS:
            x, y = load_image(path, spec), None
            names.append(path)
        else:
            raise DataError(f"{path}: unknown input type {ext or '(no extension)'}; give image files "
                            f"({', '.join(IMAGE_EXTS)}) or an .npz with x (and y)")
        xs.append(x)
        ys.append(y)
    if not xs:
        raise DataError("no inputs given; pass image files or an .npz")
    y = np.concatenate(ys) if all(v is not None for v in ys) else None
    return Inputs(names, np.concatenate(xs), y)
