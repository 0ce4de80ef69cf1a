"""Host side of the compact wire formats: what the coordinator puts on the wire for a batch, given what the
caller has and the deployment's `wire` (deploy --wire; formats in runtime/wire.py).

    payload = prepare(batch, "auto", manifest["input"])   -> Payload(wire, array, item_bytes)

What the caller has decides what can be sent (pixels cannot be rebuilt from a normalised tensor, nor the file
from pixels):
    float32 [B, C, H, W] (preprocessed)        -> fp32, whatever the deployment says
    uint8 [B, H, W(, C)] pixels (any size)     -> uint8 at the model's size (resize_crop here when the size
                                                  differs), or fp32 when the deployment says fp32
    encoded files (list of bytes / object array) -> the files (encoded), uint8 (decoded here) or fp32
`auto` sends whatever is smallest: files when they are smaller than their uint8 crops (a 12-megapixel JPEG is
not), else uint8. `encoded` sends the files as given unless one is over the boards' per-file cap
(runtime.wire.MAX_ENCODED_BYTES), then that batch goes as uint8.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from ..errors import DataError, EdvitError
from ..runtime import preprocess as pp
from ..runtime import wire as rw

log = logging.getLogger("edvit.coordinator")


@dataclasses.dataclass
class Payload:
    wire: str                # fp32 | uint8 | encoded: what goes on the wire
    array: np.ndarray        # float32 [B, C, H, W], uint8 [B, H, W, C] or object [B] of bytes
    item_bytes: list         # tensor bytes per image (for splitting batches under the body cap)

    @property
    def count(self) -> int:
        return len(self.array)

    def split(self, max_bytes: int):
        """Consecutive slices whose tensor bytes stay under max_bytes (at least one image each)."""
        start, size = 0, 0
        for i, n in enumerate(self.item_bytes):
            if i > start and size + n > max_bytes:
                yield Payload(self.wire, self.array[start:i], self.item_bytes[start:i])
                start, size = i, 0
            size += n
        if start < len(self.item_bytes):
            yield Payload(self.wire, self.array[start:], self.item_bytes[start:])


def as_files(batch) -> np.ndarray | None:
    """A list/tuple of bytes or an object array of bytes -> object array [B]; anything else -> None."""
    if isinstance(batch, np.ndarray) and batch.dtype.kind != "O":
        return None
    if not isinstance(batch, (list, tuple, np.ndarray)):
        return None
    items = list(batch.reshape(-1)) if isinstance(batch, np.ndarray) else list(batch)
    if not all(isinstance(b, (bytes, bytearray, memoryview)) for b in items):
        return None
    out = np.empty(len(items), dtype=object)
    for i, b in enumerate(items):
        out[i] = bytes(b)
    return out


def prepare(batch, wire: str, spec: dict) -> Payload:
    """The batch in the format to send (see the module docstring); EdvitError naming what is wrong with it."""
    if wire not in rw.WIRE_CHOICES:
        raise EdvitError(f"wire format {wire!r} must be one of {', '.join(rw.WIRE_CHOICES)}")
    t = pp.transform_of(spec)
    files = as_files(batch)
    if files is not None:
        return _from_files(files, wire, t)
    arr = np.asarray(batch)
    if arr.dtype == np.uint8:
        return _from_pixels(arr, wire, t)
    return _fp32(check_fp32(arr, t))


def check_fp32(arr: np.ndarray, t: pp.Transform) -> np.ndarray:
    want = [t.channels, *t.size]
    if arr.ndim != 4 or list(arr.shape[1:]) != want or arr.shape[0] < 1:
        raise EdvitError(f"batch has shape {list(arr.shape)}, the build takes [B, {', '.join(map(str, want))}] "
                         "float32 (manifest input.shape), uint8 pixels [B, H, W, C] or image files; load images "
                         "with edvit_tool.images.load_wire_inputs")
    if arr.dtype.kind != "f":
        raise EdvitError(f"batch has dtype {arr.dtype}, expected preprocessed float32 (normalised with the "
                         "manifest's mean/std), uint8 pixels or image files")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise EdvitError("batch holds NaN or Inf values; send finite, preprocessed pixels")
    return arr


def _fp32(x: np.ndarray) -> Payload:
    return Payload("fp32", x, [x[0].nbytes] * len(x))


def _uint8(pixels: np.ndarray) -> Payload:
    return Payload("uint8", pixels, [pixels[0].nbytes] * len(pixels))


def _crops(images, t: pp.Transform, names) -> np.ndarray:
    try:
        return np.stack([pp.resize_crop(im, t, n) for im, n in zip(images, names)])
    except pp.ImageError as e:
        raise DataError(str(e)) from None


def _from_pixels(arr: np.ndarray, wire: str, t: pp.Transform) -> Payload:
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[0] < 1 or arr.shape[-1] not in (1, 3, 4):
        raise EdvitError(f"uint8 batch has shape {list(arr.shape)}; give pixels [B, H, W, C] with C 1, 3 or 4 "
                         "(channels last)")
    if tuple(arr.shape[1:3]) != t.size or arr.shape[-1] != t.channels:
        arr = _crops(list(arr), t, [f"image[{i}]" for i in range(len(arr))])
    arr = np.ascontiguousarray(arr)
    return _fp32(pp.normalize(arr, t)) if wire == "fp32" else _uint8(arr)


def _from_files(files: np.ndarray, wire: str, t: pp.Transform) -> Payload:
    if len(files) < 1:
        raise EdvitError("no images in the batch")
    names = [f"image[{i}]" for i in range(len(files))]
    if wire == "fp32":
        return _fp32(pp.normalize(_crops(files, t, names), t))
    sizes = [len(f) for f in files]
    pixel_bytes = t.channels * t.size[0] * t.size[1]
    if wire == "uint8" or (wire == "auto" and sum(sizes) > pixel_bytes * len(files)):
        return _uint8(_crops(files, t, names))
    try:  # a file no board can read would fail every board: name it here (header only, no decoding)
        for f, n in zip(files, names):
            pp.image_size(f, n)
    except pp.ImageError as e:
        raise DataError(str(e)) from None
    if max(sizes) > rw.MAX_ENCODED_BYTES:
        log.info("an image file of %d bytes is over the boards' %d-byte cap: sending this batch as uint8",
                 max(sizes), rw.MAX_ENCODED_BYTES)
        return _uint8(_crops(files, t, names))
    return Payload("encoded", files, [4 + n for n in sizes])
