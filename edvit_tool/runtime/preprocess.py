"""The build's eval preprocessing, torch-free: image -> float32 [C, H, W], equal to timm's eval transform.

Board side: stdlib + numpy + PIL only, so `infer`, `check --eval` and the board workers all run this one
implementation, and the host's tests prove it equal to `timm.data.create_transform(is_training=False)`.

The spec is the manifest's `input` entry:

    {"shape": [C, H, W], "mean": [..C], "std": [..C], "interpolation": "bicubic"|"bilinear"|"nearest"|...,
     "crop_pct": 0.9, "crop_mode": "center"|"squash"|"border", "resize_size": [H', W']}

Steps, as timm does them (transforms_imagenet_eval on a PIL image):
1. Image mode: RGB for a 3-channel model (PIL `convert("RGB")`, what timm's datasets do: RGBA drops alpha, P/L/CMYK
   are expanded), "L" for a 1-channel model (PIL `convert("L")`, ITU-R 601 luma — timm has no rule for this; ours
   is the same on host and board). 16-bit grayscale (PIL "I;16"/"I") is first scaled to 8 bit (value >> 8) and
   float images ("F", taken as 0-1) to round(255 x): PIL's own conversion clips them, which turns nearly every
   16-bit photo white. EXIF orientation is not applied (timm does not either).
2. Resize with PIL to resize_size = floor([H, W] / crop_pct):
   center: the short side to resize_size (the long side truncated, torchvision's rule) when resize_size is
           square, else the short side to match with rounding (timm's ResizeKeepRatio);
   squash: exactly resize_size (aspect ratio not kept);
   border: the long side to resize_size (ResizeKeepRatio longest=1), the rest padded with the mean colour.
3. Centre crop to [H, W] (zero padding when the image is smaller), top/left = round((size - crop) / 2).
4. x / 255, then (x - mean) / std, in float32.

Manifests written before crop_pct was recorded stretched every image to H x W: they read as crop_mode "squash",
crop_pct 1.0 and their recorded interpolation, which reproduces that.

Steps 1-3 give the uint8 [H, W, C] image at model resolution (`resize_crop`), step 4 is `normalize`, so a uint8
wire format or cache can store the former and apply the latter later.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import math
import os

import numpy as np

# Refuse images whose header claims more pixels than this before decoding them (a board has little memory).
MAX_PIXELS = 64 * 1024 * 1024
CROP_MODES = ("center", "squash", "border")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class ImageError(ValueError):
    """An image cannot be read or converted; the message names what was expected. Host code re-raises it as a
    DataError."""


@dataclasses.dataclass(frozen=True)
class Transform:
    """A validated eval transform (from a manifest input spec)."""

    channels: int
    size: tuple            # (H, W) at the model
    resize_size: tuple     # (H', W') before the crop
    crop_pct: float
    crop_mode: str
    interpolation: str
    mean: tuple
    std: tuple

    @property
    def mode(self) -> str:
        """PIL mode the image is converted to before resizing."""
        return "L" if self.channels == 1 else "RGB"


def scale_size(size: tuple, crop_pct: float) -> tuple:
    """timm's resize target: floor(size / crop_pct) per side."""
    return tuple(int(math.floor(s / crop_pct)) for s in size)


def transform_of(spec) -> Transform:
    """Manifest input spec (dict) -> Transform; a Transform passes through. ImageError on a bad spec."""
    if isinstance(spec, Transform):
        return spec
    try:
        c, h, w = (int(v) for v in spec["shape"])
        mean = tuple(float(v) for v in spec["mean"])
        std = tuple(float(v) for v in spec["std"])
    except (KeyError, TypeError, ValueError):
        raise ImageError("input spec: needs shape [C, H, W], mean [C] and std [C] (the manifest's input entry)") \
            from None
    if c not in (1, 3) or h <= 0 or w <= 0:
        raise ImageError(f"input spec: shape {[c, h, w]} is not [1 or 3, H, W]; only gray and RGB models")
    if len(mean) != c or len(std) != c or any(s == 0 for s in std):
        raise ImageError(f"input spec: mean {list(mean)} / std {list(std)} must have {c} values, std non-zero")
    legacy = spec.get("crop_pct") is None  # built before crop_pct was recorded: stretched to H x W
    crop_pct = 1.0 if legacy else float(spec["crop_pct"])
    crop_mode = "squash" if legacy else str(spec.get("crop_mode") or "center")
    interpolation = str(spec.get("interpolation") or "bilinear").lower()
    if not 0 < crop_pct <= 4:
        raise ImageError(f"input spec: crop_pct {crop_pct} must be in (0, 4]")
    if crop_mode not in CROP_MODES:
        raise ImageError(f"input spec: crop_mode {crop_mode!r} must be one of {', '.join(CROP_MODES)}")
    if interpolation not in INTERPOLATIONS:
        raise ImageError(f"input spec: interpolation {interpolation!r} must be one of {', '.join(INTERPOLATIONS)}")
    resize = spec.get("resize_size")
    resize = tuple(int(v) for v in resize) if resize else scale_size((h, w), crop_pct)
    if len(resize) != 2 or min(resize) <= 0:
        raise ImageError(f"input spec: resize_size {list(resize)} must be [H', W'] positive")
    return Transform(c, (h, w), resize, crop_pct, crop_mode, interpolation, mean, std)


# -- decoding ------------------------------------------------------------------------------------------------
def open_image(image, where: str = "image", max_pixels: int | None = None):
    """path / bytes / file object / PIL image / uint8 array -> a loaded PIL image (any mode). Files claiming
    more than `max_pixels` (default MAX_PIXELS, read at call time) pixels are refused from their header, before
    decoding (decompression bombs)."""
    max_pixels = MAX_PIXELS if max_pixels is None else max_pixels
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, Image.Image):
        return image
    if isinstance(image, np.ndarray):
        if image.ndim >= 2 and image.shape[0] * image.shape[1] > max_pixels:
            raise ImageError(f"{where}: {image.shape[1]}x{image.shape[0]} pixels is more than {max_pixels}; "
                             "downscale the image first")
        return _from_array(image, where)
    if isinstance(image, (bytes, bytearray, memoryview)):
        image = io.BytesIO(bytes(image))
    elif isinstance(image, (str, os.PathLike)):
        if not os.path.isfile(image):
            raise ImageError(f"{where}: no such file")
    try:
        img = Image.open(image)
        if img.size[0] * img.size[1] > max_pixels:
            raise ImageError(f"{where}: {img.size[0]}x{img.size[1]} pixels is more than {max_pixels}; "
                             "downscale the image first")
        img.load()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, SyntaxError) as e:
        raise ImageError(f"{where}: cannot read it as an image ({e}); give a png/jpg file") from None
    return img


def image_size(data, where: str = "image", max_pixels: int | None = None) -> tuple:
    """(width, height) from an image file's header, without decoding it; ImageError when it is not an image or
    claims more than max_pixels pixels."""
    max_pixels = MAX_PIXELS if max_pixels is None else max_pixels
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(bytes(data)) if isinstance(data, (bytes, bytearray, memoryview)) else data) as img:
            w, h = img.size
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, SyntaxError) as e:
        raise ImageError(f"{where}: cannot read it as an image ({e}); give a png/jpg file") from None
    if w * h > max_pixels:
        raise ImageError(f"{where}: {w}x{h} pixels is more than {max_pixels}; downscale the image first")
    return w, h


def _from_array(arr: np.ndarray, where: str):
    """uint8 [H, W] or [H, W, 1|3|4] (channels last) -> PIL image in L / RGB / RGBA."""
    from PIL import Image

    if arr.dtype != np.uint8:
        raise ImageError(f"{where}: array of dtype {arr.dtype}; give uint8 pixels (0-255), [H, W] or [H, W, C]")
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        return Image.fromarray(np.ascontiguousarray(arr), mode="L")
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        return Image.fromarray(np.ascontiguousarray(arr), mode="RGB" if arr.shape[-1] == 3 else "RGBA")
    raise ImageError(f"{where}: array of shape {list(arr.shape)}; give [H, W] gray or [H, W, C] with C 1, 3 or 4 "
                     "(channels last)")


def to_mode(img, mode: str):
    """A PIL image in `mode` ("RGB" or "L"), converted as the module docstring says."""
    from PIL import Image

    if img.mode in _SIXTEEN_BIT:
        img = Image.fromarray((np.asarray(img, dtype=np.uint32) >> 8).clip(0, 255).astype(np.uint8), mode="L")
    elif img.mode == "F":
        img = Image.fromarray((np.asarray(img, dtype=np.float32) * 255).round().clip(0, 255).astype(np.uint8),
                              mode="L")
    return img if img.mode == mode else img.convert(mode)


# -- geometry ------------------------------------------------------------------------------------------------
def _target_size(w: int, h: int, t: Transform) -> tuple:
    """(new_w, new_h) of the resize step for a w x h image."""
    rh, rw = t.resize_size
    if t.crop_mode == "squash":
        return rw, rh
    if t.crop_mode == "center" and rh == rw:  # torchvision Resize(int): short side exact, long side truncated
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = rh, int(rh * long / short)
        return (new_short, new_long) if w <= h else (new_long, new_short)
    # timm ResizeKeepRatio: one scale for both sides, by the shorter (center) or longer (border) side's ratio
    ratio_h, ratio_w = h / rh, w / rw
    ratio = max(ratio_h, ratio_w) if t.crop_mode == "border" else min(ratio_h, ratio_w)
    return round(w / ratio), round(h / ratio)


def _resample(name: str):
    from PIL import Image

    return getattr(Image.Resampling, name.upper())


def _crop_or_pad(arr: np.ndarray, size: tuple, fill) -> np.ndarray:
    """Centre crop [h, w, C] to size (H, W); pad with `fill` first where the image is smaller (torchvision's
    CenterCrop pads with 0, timm's CenterCropOrPad with the mean colour; both split padding left-heavy-less)."""
    ch, cw = size
    h, w = arr.shape[:2]
    if ch > h or cw > w:
        top, left = max(ch - h, 0) // 2, max(cw - w, 0) // 2
        bottom, right = (max(ch - h, 0) + 1) // 2, (max(cw - w, 0) + 1) // 2
        padded = np.empty((h + top + bottom, w + left + right, arr.shape[2]), dtype=arr.dtype)
        padded[...] = np.asarray(fill, dtype=arr.dtype)
        padded[top:top + h, left:left + w] = arr
        arr = padded
        h, w = arr.shape[:2]
    top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
    return arr[top:top + ch, left:left + cw]


def resize_crop(image, spec, where: str = "image", max_pixels: int | None = None) -> np.ndarray:
    """Any image (path, bytes, PIL image, uint8 [H, W(, C)] array) -> uint8 [H, W, C] at model resolution."""
    t = transform_of(spec)
    img = to_mode(open_image(image, where, max_pixels), t.mode)
    new_w, new_h = _target_size(img.width, img.height, t)
    if (new_w, new_h) != (img.width, img.height):
        img = img.resize((new_w, new_h), _resample(t.interpolation))
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[..., None]
    fill = [round(255 * m) for m in t.mean] if t.crop_mode == "border" else 0
    return np.ascontiguousarray(_crop_or_pad(arr, t.size, fill))


def normalize(pixels: np.ndarray, spec) -> np.ndarray:
    """uint8 [H, W, C] -> float32 [C, H, W], or [N, H, W, C] -> [N, C, H, W]: x / 255, then (x - mean) / std."""
    t = transform_of(spec)
    arr = np.asarray(pixels)
    if arr.dtype != np.uint8 or arr.ndim not in (3, 4) or arr.shape[-1] != t.channels \
            or tuple(arr.shape[-3:-1]) != t.size:
        raise ImageError(f"pixels {arr.dtype} {list(arr.shape)}: expected uint8 [(N,) {t.size[0]}, {t.size[1]}, "
                         f"{t.channels}] (resize_crop's output)")
    # one table lookup per pixel, straight into the channels-first output: the same float32 operations on each
    # of the 256 values as on every pixel (so the result is identical), but no float temporaries (~4x faster,
    # which counts on a board whose CPU quota also runs the model)
    lut = _lut(t.mean, t.std)
    src = np.moveaxis(arr, -1, -3)
    out = np.empty(src.shape, dtype=np.float32)
    for c in range(t.channels):
        np.take(lut[c], src[..., c, :, :], out=out[..., c, :, :])
    return out


@functools.lru_cache(maxsize=16)
def _lut(mean: tuple, std: tuple) -> np.ndarray:
    """[C, 256] float32: (v / 255 - mean[c]) / std[c] for every uint8 value v."""
    v = np.arange(256, dtype=np.float32)[None, :] / np.float32(255)
    lut = (v - np.asarray(mean, dtype=np.float32)[:, None]) / np.asarray(std, dtype=np.float32)[:, None]
    lut.setflags(write=False)
    return lut


def preprocess(image, spec, where: str = "image") -> np.ndarray:
    """One image -> normalised float32 [C, H, W], as timm's eval transform computes it."""
    t = transform_of(spec)
    return normalize(resize_crop(image, t, where), t)


def preprocess_batch(images, spec, names=None) -> np.ndarray:
    """Images (any of the kinds `preprocess` takes) -> float32 [N, C, H, W]."""
    t = transform_of(spec)
    images = list(images)
    names = list(names) if names is not None else [f"image[{i}]" for i in range(len(images))]
    if not images:
        return np.zeros((0, t.channels) + t.size, dtype=np.float32)
    return normalize(np.stack([resize_crop(im, t, n) for im, n in zip(images, names)]), t)
