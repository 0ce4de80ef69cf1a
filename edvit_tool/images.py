"""Images in, model input out: png/jpg files, image folders and npz arrays -> preprocessed float32 [N, C, H, W].

Every image goes through runtime/preprocess.py with the manifest's input spec — the checkpoint's own timm eval
transform (resize by crop_pct, centre crop, mean/std), the same code the boards run. Older manifests without
crop_pct are stretched to H x W as they were built (see runtime/preprocess.py).

npz files: key `x`, either raw uint8 images ([N, H, W], [N, H, W, C] or [N, C, H, W]; preprocessed here) or float
arrays that are already preprocessed ([N, C, H, W], or [N, H, W] for a 1-channel model; resized when the size
differs, never channel-converted since their normalisation is unknown). Or key `pixels` instead of `x`: a build's
reference set (reference/eval.npz; see reference.py), uint8 [N, H, W, C] already at the model's size, only
normalised. Optional `y`: integer labels, for accuracy.
Image folders (eval sets): DIR/<class name>/<image>, class names as in the manifest.
`load_wire_inputs` keeps what the sources give for a deployment to send compactly (serve/wire.py): image files
as their bytes, raw uint8 npz images as uint8 pixels at the model's size; float npz rows stay float32.
Host side, torch-free (PIL + numpy).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from . import reference
from .errors import DataError
from .runtime import preprocess as pp

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclasses.dataclass
class Inputs:
    names: list            # one per image: the file, or file[i] for npz rows
    x: np.ndarray          # float32 [N, C, H, W], preprocessed
    y: np.ndarray | None   # int labels when every input came with one (npz `y`)


def _spec_text(spec: dict) -> str:
    c, h, w = spec["shape"]
    return f"[{c}, {h}, {w}] (C, H, W; manifest input.shape)"


def _preprocess(images, spec: dict, names) -> np.ndarray:
    try:
        return pp.preprocess_batch(images, spec, names)
    except pp.ImageError as e:
        raise DataError(str(e)) from None


def _resize_float(x: np.ndarray, h: int, w: int, spec: dict) -> np.ndarray:
    """Already-preprocessed float [N, C, H', W'] -> [N, C, h, w], channel by channel in PIL's float mode."""
    if x.shape[2:] == (h, w):
        return x
    from PIL import Image

    rs = getattr(Image.Resampling, str(spec.get("interpolation") or "bilinear").upper(), Image.Resampling.BILINEAR)
    out = np.empty(x.shape[:2] + (h, w), dtype=np.float32)
    for i in range(x.shape[0]):
        for c in range(x.shape[1]):
            out[i, c] = np.asarray(Image.fromarray(np.ascontiguousarray(x[i, c], dtype=np.float32), mode="F")
                                   .resize((w, h), rs))
    return out


def load_image(path: str, spec: dict) -> np.ndarray:
    """One image file -> float32 [1, C, H, W]."""
    return _preprocess([path], spec, [path])


def _raw_channels_last(x: np.ndarray, path: str, spec: dict) -> np.ndarray:
    """uint8 [N, H, W] / [N, H, W, C] / [N, C, H, W] -> [N, H, W(, C)] for runtime.preprocess."""
    if x.ndim == 3:
        return x
    if x.ndim == 4 and x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3):
        return x
    if x.ndim == 4 and x.shape[1] in (1, 3, 4):
        return x.transpose(0, 2, 3, 1)
    got = f" ({x.shape[-1]} channels?)" if x.ndim == 4 else ""
    raise DataError(f"{path}: x is uint8 with shape {list(x.shape)}{got}; raw images must be [N, H, W], "
                    f"[N, H, W, C] or [N, C, H, W] with C 1, 3 or 4, for a model taking {_spec_text(spec)}")


def load_npz(path: str, spec: dict) -> tuple:
    """npz -> (float32 [N, C, H, W], y or None); see the module docstring for the accepted layouts."""
    c, h, w = spec["shape"]
    try:
        with np.load(path, allow_pickle=False) as z:
            if reference.holds_pixels(z.files):
                x = None
            elif "x" not in z.files:
                raise DataError(f"{path}: no array 'x' (it has {', '.join(z.files) or 'none'}); store the images "
                                "as x (and labels as y)")
            else:
                x = z["x"]
                y = z["y"] if "y" in z.files else None
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read it as an npz archive ({e})") from None
    if x is None:  # a build's reference set
        return reference.load(path, spec)
    shape = list(x.shape)
    if x.dtype == np.uint8:
        raw = _raw_channels_last(x, path, spec)
        x = _preprocess(list(raw), spec, [f"{path}[{i}] (x {shape} uint8)" for i in range(len(raw))])
    elif x.dtype.kind == "f":
        if x.ndim == 3 and c == 1:
            x = x[:, None]
        if x.ndim != 4 or x.shape[1] != c:
            raise DataError(f"{path}: x is {x.dtype} with shape {shape}, taken as already preprocessed, but the "
                            f"model takes [N, {c}, {h}, {w}] ({_spec_text(spec)}); store raw uint8 images "
                            "instead to have them converted, or preprocess them to that shape")
        x = _resize_float(x.astype(np.float32, copy=False), h, w, spec)
    else:
        raise DataError(f"{path}: x has dtype {x.dtype}; expected uint8 raw images or float32 preprocessed ones")
    if y is not None:
        y = np.asarray(y).reshape(-1)
        if y.dtype.kind not in "iu" or len(y) != len(x):
            raise DataError(f"{path}: y must be {len(x)} integer labels (one per image in x), got {y.dtype} "
                            f"with shape {list(np.shape(y))}")
    return np.ascontiguousarray(x, dtype=np.float32), y


def load_image_folder(root: str, spec: dict, classes: list) -> Inputs:
    """ROOT/<class name>/<image> -> Inputs with labels = the class's index in `classes` (the manifest's)."""
    paths, labels = _list_folder(root, classes)
    return Inputs(paths, _preprocess(paths, spec, paths), np.asarray(labels, dtype=np.int64))


def _list_folder(root: str, classes: list) -> tuple:
    """ROOT/<class name>/<image> -> ([paths], [labels])."""
    if not os.path.isdir(root):
        raise DataError(f"{root}: not a directory; give a folder with one sub-folder per class")
    index = {str(c): i for i, c in enumerate(classes)}
    subdirs = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
    unknown = [d for d in subdirs if d not in index]
    if unknown:
        known = ", ".join(list(index)[:10]) + (", ..." if len(index) > 10 else "")
        raise DataError(f"{root}: sub-folder(s) {', '.join(unknown[:5])} are not classes of this build; name them "
                        f"after the manifest's classes ({known})")
    paths, labels = [], []
    for d in subdirs:
        for name in sorted(os.listdir(os.path.join(root, d))):
            if os.path.splitext(name)[1].lower() in IMAGE_EXTS:
                paths.append(os.path.join(root, d, name))
                labels.append(index[d])
    if not paths:
        raise DataError(f"{root}: no images ({', '.join(IMAGE_EXTS)}) in its class sub-folders")
    return paths, labels


def _read_files(paths: list) -> np.ndarray:
    """Image files -> object array of their bytes; each checked to be a readable image (header only)."""
    out = np.empty(len(paths), dtype=object)
    for i, p in enumerate(paths):
        if not os.path.isfile(p):
            raise DataError(f"{p}: no such file")
        try:
            with open(p, "rb") as f:
                out[i] = f.read()
        except OSError as e:
            raise DataError(f"{p}: cannot read it ({e.strerror or e})") from None
        try:
            pp.image_size(out[i], p)
        except pp.ImageError as e:
            raise DataError(str(e)) from None
    return out


def load_wire_inputs(paths, spec: dict, classes: list | None = None) -> Inputs:
    """Like `load_inputs`, but `x` keeps the most compact form every source allows: image files (and folders)
    -> object array of the files' bytes; raw uint8 npz images -> uint8 [N, H, W, C] at the model's size;
    float npz -> float32 [N, C, H, W]. Mixed sources meet at the least compact kind among them (files are
    decoded here when a source has only pixels, everything is preprocessed when one has only floats)."""
    names, parts, ys = [], [], []
    for path in paths:
        ext = os.path.splitext(path)[1].lower()
        if classes is not None and os.path.isdir(path):
            files, labels = _list_folder(path, classes)
            parts.append(("files", _read_files(files), files))
            ys.append(np.asarray(labels, dtype=np.int64))
            names += files
        elif ext == ".npz":
            x, y = _load_npz_raw(path, spec)
            parts.append(("pixels" if x.dtype == np.uint8 else "floats", x, [f"{path}[{i}]" for i in range(len(x))]))
            ys.append(y)
            names += parts[-1][2]
        elif ext in IMAGE_EXTS:
            parts.append(("files", _read_files([path]), [path]))
            ys.append(None)
            names.append(path)
        else:
            raise DataError(f"{path}: unknown input type {ext or '(no extension)'}; give image files "
                            f"({', '.join(IMAGE_EXTS)}), an .npz with x (and y) or a folder of class sub-folders")
    if not parts:
        raise DataError("no inputs given; pass image files or an .npz")
    kinds = {k for k, _, _ in parts}
    if kinds == {"files"}:
        x = np.concatenate([a for _, a, _ in parts])
    elif "floats" not in kinds:
        x = np.concatenate([a if k == "pixels" else _crops(a, spec, n) for k, a, n in parts])
    else:
        x = np.concatenate([a if k == "floats" else pp.normalize(a if k == "pixels" else _crops(a, spec, n), spec)
                            for k, a, n in parts])
    y = np.concatenate(ys) if all(v is not None for v in ys) else None
    return Inputs(names, x, y)


def _crops(images, spec: dict, names) -> np.ndarray:
    try:
        return np.stack([pp.resize_crop(im, spec, n) for im, n in zip(images, names)])
    except pp.ImageError as e:
        raise DataError(str(e)) from None


def _load_npz_raw(path: str, spec: dict) -> tuple:
    """npz -> (uint8 [N, H, W, C] at the model's size for raw images, or float32 [N, C, H, W], y or None)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if reference.holds_pixels(z.files):  # a build's reference set: pixels already at the model's size
                return reference.load_pixels(path, spec)
            is_raw = "x" in z.files and z["x"].dtype == np.uint8
            if is_raw:
                x = z["x"]
                y = z["y"] if "y" in z.files else None
    except (OSError, ValueError):
        is_raw = False  # load_npz names the problem
    if not is_raw:
        return load_npz(path, spec)
    raw = _raw_channels_last(x, path, spec)
    pixels = _crops(list(raw), spec, [f"{path}[{i}] (x {list(x.shape)} uint8)" for i in range(len(raw))])
    if y is not None:
        y = np.asarray(y).reshape(-1)
        if y.dtype.kind not in "iu" or len(y) != len(pixels):
            raise DataError(f"{path}: y must be {len(pixels)} integer labels (one per image in x), got {y.dtype} "
                            f"with shape {list(np.shape(y))}")
    return pixels, y


def load_inputs(paths, spec: dict, classes: list | None = None) -> Inputs:
    """Image files, npz archives and (given the manifest's `classes`) image folders, in order -> Inputs. Labels
    only when every source had them."""
    names, xs, ys = [], [], []
    for path in paths:
        ext = os.path.splitext(path)[1].lower()
        if classes is not None and os.path.isdir(path):
            folder = load_image_folder(path, spec, classes)
            x, y = folder.x, folder.y
            names += folder.names
        elif ext == ".npz":
            x, y = load_npz(path, spec)
            names += [f"{path}[{i}]" for i in range(len(x))]
        elif ext in IMAGE_EXTS:
            x, y = load_image(path, spec), None
            names.append(path)
        else:
            raise DataError(f"{path}: unknown input type {ext or '(no extension)'}; give image files "
                            f"({', '.join(IMAGE_EXTS)}), an .npz with x (and y) or a folder of class sub-folders")
        xs.append(x)
        ys.append(y)
    if not xs:
        raise DataError("no inputs given; pass image files or an .npz")
    y = np.concatenate(ys) if all(v is not None for v in ys) else None
    return Inputs(names, np.concatenate(xs), y)
