"""Image inputs on the wire: what a board accepts for a sub-model's image input, and the conversion it applies.

A sub-model's image input (the manifest's `input.name`, e.g. `pixel_values`) may arrive in three forms:

    fp32     FP32  [B, C, H, W]  preprocessed on the host (normalised with the manifest's mean/std): as before
    uint8    UINT8 [B, H, W, C]  pixels; at exactly the model's H x W they are taken as `resize_crop`'s output and
                                 only normalised; any other size goes through `resize_crop` first (so a raw image
                                 of the model's size must be cropped by the sender: that is what the host sends)
    encoded  BYTES [B]           the image files (png/jpg/...) as the user gave them, decoded here

uint8 and encoded inputs get the build's own preprocessing on the board (runtime/preprocess.py, the same code
`infer` runs on the host), so their answers equal the fp32 path's. A 224x224x3 image is 588 KiB as fp32,
147 KiB as uint8 and typically 10-40 KiB as a JPEG.

Limits for encoded inputs: each file at most `max_bytes`, and no more than `max_pixels` pixels claimed by its
header (checked before decoding: decompression bombs). The request body cap (httpd.Limits) bounds the rest.
Board side: stdlib + numpy + PIL.
"""

from __future__ import annotations

import json

import numpy as np

from . import preprocess as pp

WIRE_FORMATS = ("fp32", "uint8", "encoded")        # least to most compact
WIRE_CHOICES = ("auto",) + WIRE_FORMATS
DATATYPE = {"fp32": "FP32", "uint8": "UINT8", "encoded": "BYTES"}
MAX_ENCODED_BYTES = 8 << 20                         # per image file (default; the worker's --max-image-mb)


class WireError(ValueError):
    """An image input that cannot be turned into the model's input; the message says what was expected."""


def wire_of(arr: np.ndarray) -> str | None:
    """The wire format an array is in (None: none of them)."""
    if arr.dtype == np.float32:
        return "fp32"
    if arr.dtype == np.uint8:
        return "uint8"
    if arr.dtype.kind == "O":
        return "encoded"
    return None


def expected(spec: dict) -> str:
    c, h, w = (int(v) for v in spec["shape"])
    return (f"FP32 [B, {c}, {h}, {w}] (preprocessed), UINT8 [B, {h}, {w}, {c}] (pixels; other sizes are resized "
            "and cropped here) or BYTES [B] (png/jpg files)")


def to_model_input(arr: np.ndarray, spec: dict, name: str = "pixel_values", max_bytes: int = MAX_ENCODED_BYTES,
                   max_pixels: int = pp.MAX_PIXELS, decoded: dict | None = None) -> np.ndarray:
    """An image input in any wire format -> what the model takes (float32 [B, C, H, W]); fp32 passes through
    untouched (the caller validates its shape). WireError naming the tensor and element otherwise.
    decoded: {element index: PIL image} already decoded from those very files (EarlyDecoder)."""
    kind = wire_of(arr)
    if kind == "fp32":
        return arr
    try:
        t = pp.transform_of(spec)
        if kind == "uint8":
            return _from_pixels(arr, t, name, max_pixels)
        if kind == "encoded":
            return _from_files(arr, t, name, max_bytes, max_pixels, decoded or {})
    except pp.ImageError as e:
        raise WireError(str(e)) from None
    raise WireError(f"input {name!r}: dtype {arr.dtype} is not an image format; send {expected(spec)}")


def _from_pixels(arr: np.ndarray, t: pp.Transform, name: str, max_pixels: int) -> np.ndarray:
    if arr.ndim == 3:  # [B, H, W]: gray images without a channel axis
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[0] < 1 or arr.shape[-1] not in (1, 3, 4):
        raise WireError(f"input {name!r}: UINT8 shape {list(arr.shape)}; expected [B, H, W, C] with B >= 1 and "
                        "C 1, 3 or 4 (channels last)")
    if tuple(arr.shape[1:3]) == t.size and arr.shape[-1] == t.channels:
        return pp.normalize(arr, t)  # already resize_crop's output: only normalise
    crops = [pp.resize_crop(arr[i], t, f"input {name!r}[{i}]", max_pixels) for i in range(arr.shape[0])]
    return pp.normalize(np.stack(crops), t)


def _from_files(arr: np.ndarray, t: pp.Transform, name: str, max_bytes: int, max_pixels: int,
                decoded: dict) -> np.ndarray:
    if arr.ndim == 2 and arr.shape[1] == 1:  # [B, 1]: what some clients send for one string per row
        arr = arr[:, 0]
    if arr.ndim != 1 or arr.shape[0] < 1:
        raise WireError(f"input {name!r}: BYTES shape {list(arr.shape)}; expected [B] (one image file per row)")
    crops = []
    for i, data in enumerate(arr):
        where = f"input {name!r}[{i}]"
        if len(data) > max_bytes:
            raise WireError(f"{where}: image file of {len(data)} bytes is over the {max_bytes}-byte limit; send "
                            "it resized, or as UINT8 pixels")
        image = decoded.get(i)
        crops.append(pp.resize_crop(data if image is None else image, t, where, max_pixels))
    return pp.normalize(np.stack(crops), t)


class EarlyDecoder:
    """Decodes a request's one image file while the body is still arriving (PIL's incremental parser), so on a
    slow link the board's decoding overlaps the transfer instead of following it. Only for the simple case the
    coordinator sends: the image input is the first tensor, BYTES [1] (or [1, 1]) in binary. Pixels are those of
    a whole-file decode (the same decoder); formats PIL cannot decode incrementally (e.g. PNG) are decoded at the
    end, as before. The header's pixel count is checked against max_pixels before any decoding; anything odd
    (a bad length, an unreadable file) leaves `image` None and the request takes the ordinary path, which names
    the problem."""

    def __init__(self, data: np.ndarray, size: int, max_pixels: int):
        self._data, self._size, self._max_pixels = data, size, max_pixels
        self._fed = 4
        self._tried = 0                 # prefix length of the last header check
        self._parser = None
        self.image = None
        self.failed: str | None = None
        self.tail_ms = 0.0              # decoding left after the last byte arrived (what the transfer did not hide)

    @classmethod
    def for_request(cls, header: bytes, data: np.ndarray, name: str, max_bytes: int, max_pixels: int):
        """An EarlyDecoder for this request's binary part `data` (being filled), or None when it does not apply."""
        try:
            inputs = json.loads(header).get("inputs")
            first = inputs[0]
            size = first["parameters"]["binary_data_size"]
        except (ValueError, AttributeError, TypeError, KeyError, IndexError, RecursionError):
            return None  # not the simple case (or not even JSON: decode_request answers that with a 400)
        if first.get("name") != name or first.get("datatype") != "BYTES" or first.get("shape") not in ([1], [1, 1]):
            return None
        if type(size) is not int or not 4 < size <= len(data) or size - 4 > max_bytes:
            return None
        return cls(data, size, max_pixels)

    def feed(self, got: int) -> None:
        """The first `got` bytes of the binary part have arrived."""
        if self.failed or self.image is not None or got <= 4:
            return
        import time

        from PIL import Image, ImageFile

        t0 = time.perf_counter()
        end = min(got, self._size)
        try:
            if self._parser is None:
                if int.from_bytes(self._data[:4].tobytes(), "little") != self._size - 4:
                    self.failed = "the element's length does not match binary_data_size"
                    return
                if end < self._size and end < 2 * self._tried:
                    return  # check the header again once the prefix has doubled
                self._tried = end
                prefix = self._data[4:end].tobytes()
                try:
                    pp.image_size(prefix, max_pixels=self._max_pixels)
                except pp.ImageError as e:
                    if end >= self._size:
                        self.failed = str(e)
                    return  # header incomplete (or refused: then the ordinary path says so)
                self._parser = ImageFile.Parser()
                self._parser.feed(prefix)
            elif end > self._fed:
                self._parser.feed(self._data[self._fed:end].tobytes())
            self._fed = end
            if end >= self._size:
                self.image = self._parser.close()
                self.tail_ms = (time.perf_counter() - t0) * 1000
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            self.failed = f"{type(e).__name__}: {e}"
