"""Compact image inputs: OIP BYTES tensors in runtime/protocol.py and runtime/wire.py's board-side conversion
(uint8 pixels or image files -> the build's preprocessing), equal to the host's fp32 preprocessing."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from edvit_tool.runtime import preprocess as pp
from edvit_tool.runtime import protocol as oip
from edvit_tool.runtime import wire
from synth_images import encode, photo

SPEC = {"name": "pixel_values", "shape": [3, 24, 24], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
        "interpolation": "bicubic", "crop_pct": 0.875, "crop_mode": "center"}


_photo, _encode = photo, encode


def _files(*items):
    out = np.empty(len(items), dtype=object)
    for i, b in enumerate(items):
        out[i] = b
    return out


# -- BYTES on the wire ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_bytes_tensors_roundtrip(binary):
    items = [b"abc", b"", "h\u00e9".encode()] if not binary else [b"\x00\xff\x10PNG", b"", b"x" * 1000]
    body, hlen = oip.encode_request({"img": _files(*items), "x": np.ones((1, 2), np.float32)}, binary=binary)
    got = oip.decode_request(body, hlen).inputs
    assert got["img"].dtype == object and list(got["img"]) == items
    np.testing.assert_array_equal(got["x"], np.ones((1, 2), np.float32))


def test_bytes_from_tritonclient_decode():
    th = pytest.importorskip("tritonclient.http")
    from tritonclient.http._utils import _get_inference_request

    files = _files(_encode(_photo(30, 20, 0), "PNG"), _encode(_photo(8, 9, 1), "JPEG"))
    i = th.InferInput("pixel_values", [2], "BYTES")
    i.set_data_from_numpy(files, binary_data=True)
    body, hlen = _get_inference_request([i], None, None, None, None, None, None, None, None)
    got = oip.decode_request(body, hlen).inputs["pixel_values"]
    assert list(got) == list(files)


def test_non_utf8_bytes_cannot_go_as_json():
    with pytest.raises(oip.ProtocolError, match="must be sent binary"):
        oip.encode_request({"img": _files(b"\xff\xfe")}, binary=False)


def _bytes_body(blob: bytes, shape, size=None) -> tuple:
    head = {"inputs": [{"name": "img", "shape": shape, "datatype": "BYTES",
                        "parameters": {"binary_data_size": len(blob) if size is None else size}}]}
    h = oip._json_dumps(head)
    return h + blob, len(h)


@pytest.mark.parametrize("blob, shape, size, expect", [
    ((5).to_bytes(4, "little") + b"abc", [1], None, "claims 5 bytes"),
    ((1).to_bytes(4, "little") + b"ab", [1], None, "follow the last BYTES element"),
    (b"\x01\x00", [1], None, "at least 4 bytes"),
    ((0).to_bytes(4, "little"), [10 ** 9], None, "at least 4000000000 bytes"),
    ((0).to_bytes(4, "little"), [1], 99, "short of its binary data"),
], ids=["overrun", "trailing", "no-length", "huge-shape", "short-body"])
def test_malformed_bytes_tensors_are_400(blob, shape, size, expect):
    body, hlen = _bytes_body(blob, shape, size)
    with pytest.raises(oip.ProtocolError, match=expect) as e:
        oip.decode_request(body, hlen)
    assert e.value.status == 400


def test_json_bytes_must_be_strings():
    body = b'{"inputs":[{"name":"img","shape":[1],"datatype":"BYTES","data":[3]}]}'
    with pytest.raises(oip.ProtocolError, match="strings"):
        oip.decode_request(body)


# -- board-side conversion -----------------------------------------------------------------------------------

def test_uint8_at_model_size_is_only_normalised_and_equals_the_host_path():
    raw = [_photo(40, 31, s) for s in range(3)]
    crops = np.stack([pp.resize_crop(r, SPEC) for r in raw])       # what the coordinator sends
    host = pp.preprocess_batch(raw, SPEC)                             # the fp32 path
    board = wire.to_model_input(crops, SPEC)
    assert board.dtype == np.float32 and board.shape == (3, 3, 24, 24)
    assert np.abs(board - host).max() <= 1e-5


def test_uint8_of_another_size_is_resized_and_cropped_on_the_board():
    raw = np.stack([_photo(50, 37, s) for s in range(2)])
    board = wire.to_model_input(raw, SPEC)
    assert np.abs(board - pp.preprocess_batch(list(raw), SPEC)).max() <= 1e-5


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_encoded_files_equal_the_host_path(fmt, tmp_path):
    files, paths = [], []
    for s, (w, h) in enumerate([(61, 37), (24, 24), (300, 199)]):
        data = _encode(_photo(w, h, s), fmt)
        p = tmp_path / f"{s}.{fmt.lower()}"
        p.write_bytes(data)
        files.append(data)
        paths.append(str(p))
    board = wire.to_model_input(_files(*files), SPEC)
    host = pp.preprocess_batch(paths, SPEC)
    assert np.abs(board - host).max() <= 1e-5


def test_fp32_passes_through_untouched():
    x = np.zeros((1, 3, 24, 24), np.float32)
    assert wire.to_model_input(x, SPEC) is x


def _png_claiming(w: int, h: int) -> bytes:
    """A 1x1 PNG whose IHDR is rewritten to claim w x h (CRC fixed): a decompression-bomb header."""
    data = bytearray(_encode(np.zeros((1, 1, 3), np.uint8), "PNG"))
    data[16:24] = w.to_bytes(4, "big") + h.to_bytes(4, "big")
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    return bytes(data)


def test_decompression_bomb_header_is_refused_before_decoding():
    # 81 M pixels: over our MAX_PIXELS (64 M), under PIL's own limit, so our check is what refuses it
    with pytest.raises(wire.WireError, match=r"\[0\]: 9000x9000 pixels is more than"):
        wire.to_model_input(_files(_png_claiming(9000, 9000)), SPEC)
    with pytest.raises(wire.WireError, match="decompression bomb"):  # PIL's limit, far above ours
        wire.to_model_input(_files(_png_claiming(100000, 100000)), SPEC)


def test_caps_on_file_size_and_pixels_are_enforced():
    data = _encode(_photo(60, 50, 0), "PNG")
    with pytest.raises(wire.WireError, match=r"\[0\]: image file of \d+ bytes is over the 100-byte limit"):
        wire.to_model_input(_files(data), SPEC, max_bytes=100)
    with pytest.raises(wire.WireError, match="60x50 pixels is more than 1000"):
        wire.to_model_input(_files(data), SPEC, max_pixels=1000)
    with pytest.raises(wire.WireError, match="more than 1000"):
        wire.to_model_input(_photo(60, 50, 0)[None], SPEC, max_pixels=1000)


@pytest.mark.parametrize("arr, expect", [
    (_files(b"not an image"), r"\[0\]: cannot read it as an image"),
    (np.zeros((2, 2), object), "expected \\[B\\]"),
    (np.zeros((1, 24, 24, 2), np.uint8), "C 1, 3 or 4"),
    (np.zeros((1, 3, 24, 24), np.int32), "not an image format"),
], ids=["garbage", "bytes-shape", "channels", "dtype"])
def test_bad_image_inputs_are_named(arr, expect):
    with pytest.raises(wire.WireError, match=expect):
        wire.to_model_input(arr, SPEC)


def _early_body(data: bytes, name: str = "pixel_values", shape=(1,)) -> tuple:
    """(JSON header, binary part as a uint8 array) of a request carrying one file, as the worker reads them."""
    arr = np.empty(len(shape) and shape[0], dtype=object)
    arr[0] = data
    body, hlen = oip.encode_request({name: arr.reshape(shape)}, ["features"])
    return body[:hlen], np.frombuffer(body[hlen:], dtype=np.uint8).copy()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("chunk", [1, 700, 1 << 20])
def test_early_decoder_decodes_while_the_body_arrives_to_the_same_pixels(fmt, chunk):
    """A file fed in pieces (as the worker reads the body) decodes to exactly the whole file's pixels (JPEG as it
    arrives; PNG, which PIL cannot decode incrementally, at the end), and the board's tensor is the same."""
    from PIL import Image
    import io

    data = encode(photo(300, 200, 4), fmt)
    header, part = _early_body(data)
    dec = wire.EarlyDecoder.for_request(header, part, "pixel_values", wire.MAX_ENCODED_BYTES, pp.MAX_PIXELS)
    assert dec is not None
    for got in range(chunk, len(part) + chunk, chunk):
        dec.feed(min(got, len(part)))
    assert dec.failed is None and dec.image is not None and dec.tail_ms > 0  # the last piece's share, timed
    np.testing.assert_array_equal(np.asarray(dec.image), np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    spec = {"shape": [3, 32, 32], "mean": [0.5] * 3, "std": [0.25] * 3, "crop_pct": 0.875}
    files = _files(data)
    np.testing.assert_array_equal(wire.to_model_input(files, spec, decoded={0: dec.image}),
                                  wire.to_model_input(files, spec))


def test_early_decoder_checks_the_header_before_decoding_and_declines_what_it_does_not_handle():
    bomb = _png_claiming(9000, 9000)
    header, part = _early_body(bomb)
    dec = wire.EarlyDecoder.for_request(header, part, "pixel_values", wire.MAX_ENCODED_BYTES, pp.MAX_PIXELS)
    dec.feed(len(part))
    assert dec.image is None and "more than" in dec.failed      # refused from its header, never decoded
    jpeg = encode(photo(40, 30, 1), "JPEG")
    header, part = _early_body(jpeg)
    assert wire.EarlyDecoder.for_request(header, part, "other_input", 1 << 20, pp.MAX_PIXELS) is None
    assert wire.EarlyDecoder.for_request(header, part, "pixel_values", 10, pp.MAX_PIXELS) is None  # over max_bytes
    two = _files(jpeg, jpeg)
    body, hlen = oip.encode_request({"pixel_values": two}, ["features"])
    assert wire.EarlyDecoder.for_request(body[:hlen], np.frombuffer(body[hlen:], np.uint8), "pixel_values",
                                         1 << 20, pp.MAX_PIXELS) is None  # only one file per request
    part[:4] = np.frombuffer((len(jpeg) + 9).to_bytes(4, "little"), np.uint8)  # a length that lies
    dec = wire.EarlyDecoder.for_request(header, part, "pixel_values", 1 << 20, pp.MAX_PIXELS)
    dec.feed(len(part))
    assert dec.image is None and "length" in dec.failed
    for bad in (b"not json", b"[" * 100000 + b"]" * 100000, b'{"inputs": 5}', b'{"inputs": [{"name": 1}]}'):
        assert wire.EarlyDecoder.for_request(bad, part, "pixel_values", 1 << 20, pp.MAX_PIXELS) is None
