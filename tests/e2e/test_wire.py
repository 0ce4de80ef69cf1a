"""Compact wire formats end to end: real workers (subprocesses) called with a stock tritonclient.http for each
datatype (FP32 preprocessed on the host, UINT8 pixels, BYTES files) give the same features (max |diff| <= 1e-5);
the workers' caps refuse oversized files and decompression-bomb headers; the coordinator sends what the
deployment's `wire` and the caller's input allow, with the same answers; `serve` passes BYTES through. ~15 s."""

from __future__ import annotations

import json
import os
import shutil
import threading
import zlib

import numpy as np
import pytest

from workers import BUILD_CACHE, make_coord_build, start_local_workers, write_deployment

from edvit_tool.artifacts import write_manifest
from edvit_tool.runtime import preprocess as pp
from edvit_tool.serve.coordinator import Coordinator

tritonhttp = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402
from synth_images import encode, photo

pytestmark = pytest.mark.slow
ASSIGN = {"b0": ["g0"], "b1": ["g1", "g2"]}
MAX_IMAGE_MB = 0.05
TOL = 1e-5


_photo, _encode = photo, encode


@pytest.fixture(scope="module")
def build(pytestconfig, tmp_path_factory):
    """The coordinator test build with a timm-style centre-crop transform (crop_pct 0.875, bicubic)."""
    src = make_coord_build(str(pytestconfig.cache.mkdir(BUILD_CACHE)))
    dst = str(tmp_path_factory.mktemp("wire") / "build")
    shutil.copytree(src, dst)
    manifest = json.load(open(os.path.join(dst, "manifest.json")))
    manifest["input"].update(crop_pct=0.875, crop_mode="center", interpolation="bicubic", mean=[0.45], std=[0.226])
    write_manifest(dst, manifest)
    return dst


@pytest.fixture(scope="module")
def cluster(build, tmp_path_factory):
    dep, workers = start_local_workers(build, ASSIGN, "onnx/fp32", str(tmp_path_factory.mktemp("workers")),
                                       extra_args=["--max-image-mb", str(MAX_IMAGE_MB)])
    try:
        yield dep, workers
    finally:
        workers.close()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Files of odd sizes, PNG and JPEG: [(path, bytes)]."""
    d = tmp_path_factory.mktemp("images")
    out = []
    for i, (w, h, fmt) in enumerate([(61, 37, "PNG"), (16, 16, "PNG"), (45, 80, "JPEG"), (120, 90, "JPEG")]):
        data = _encode(_photo(w, h, i), fmt)
        p = d / f"img{i}.{fmt.lower()}"
        p.write_bytes(data)
        out.append((str(p), data))
    return out


def _spec(build):
    return json.load(open(os.path.join(build, "manifest.json")))["input"]


def _client(workers, board):
    return tritonhttp.InferenceServerClient(f"127.0.0.1:{workers.ports[board]}")


def _auth(workers):
    return {"Authorization": "Bearer " + open(workers.token_file).read().strip()}


def _features(client, workers, model, arr, datatype):
    i = tritonhttp.InferInput("pixel_values", list(arr.shape), datatype)
    i.set_data_from_numpy(arr, binary_data=True)
    res = client.infer(model, [i], outputs=[tritonhttp.InferRequestedOutput("features")], headers=_auth(workers))
    return res.as_numpy("features")


def _files(items):
    out = np.empty(len(items), dtype=object)
    for i, b in enumerate(items):
        out[i] = b
    return out


def test_uint8_and_encoded_inputs_give_the_fp32_paths_features(build, cluster, images):
    _, workers = cluster
    spec = _spec(build)
    paths = [p for p, _ in images]
    host = pp.preprocess_batch(paths, spec)                                 # fp32, preprocessed here
    crops = np.stack([pp.resize_crop(p, spec) for p in paths])              # uint8 at the model's size
    raw = np.stack([_photo(61, 37, s)[..., :1].repeat(3, -1) for s in range(2)])  # uint8, not the model's size
    for board, models in ASSIGN.items():
        c = _client(workers, board)
        try:
            for m in models:
                want = _features(c, workers, m, host, "FP32")
                got = {"UINT8": _features(c, workers, m, crops, "UINT8"),
                       "BYTES": _features(c, workers, m, _files([d for _, d in images]), "BYTES")}
                for dt, f in got.items():
                    assert f.shape == want.shape and f.dtype == np.float32
                    assert np.abs(f - want).max() <= TOL, (m, dt)
                for i in (2, 3):  # one JPEG per request: the worker decodes it while the body arrives
                    one = _features(c, workers, m, _files([images[i][1]]), "BYTES")
                    assert np.abs(one - want[i:i + 1]).max() <= TOL, (m, i)
                raw_want = _features(c, workers, m, pp.preprocess_batch(list(raw), spec), "FP32")
                assert np.abs(_features(c, workers, m, raw, "UINT8") - raw_want).max() <= TOL
            meta = c.get_model_metadata(models[0], headers=_auth(workers))
            assert meta["parameters"]["image_datatypes"] == "FP32,UINT8,BYTES"
        finally:
            c.close()


def _bomb() -> bytes:
    data = bytearray(_encode(np.zeros((1, 1, 3), np.uint8), "PNG"))
    data[16:24] = (9000).to_bytes(4, "big") * 2
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    return bytes(data)


@pytest.mark.parametrize("payload, expect", [
    (lambda: _encode(np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8), "PNG"),
     "over the 52428-byte limit"),
    (_bomb, "9000x9000 pixels is more than"),
    (lambda: b"GIF89a but not really", "cannot read it as an image"),
], ids=["too-big", "bomb-header", "garbage"])
def test_bad_files_are_a_400_naming_the_image_and_the_worker_keeps_serving(cluster, images, payload, expect):
    _, workers = cluster
    c = _client(workers, "b0")
    try:
        with pytest.raises(InferenceServerException, match=expect) as e:
            _features(c, workers, "g0", _files([images[0][1], payload()]), "BYTES")
        assert "[1]" in str(e.value) and e.value.status() == "400"
        assert _features(c, workers, "g0", _files([images[0][1]]), "BYTES").shape == (1, 8)
    finally:
        c.close()


def test_the_coordinator_sends_what_the_deployment_and_the_input_allow(build, cluster, images, tmp_path):
    dep, workers = cluster
    spec = _spec(build)
    files = [d for _, d in images]
    crops = np.stack([pp.resize_crop(d, spec) for d in files])
    results = {}
    for wire in ("fp32", "uint8", "encoded", "auto", None):
        path = write_deployment(str(tmp_path / f"dep-{wire}.json"), build, workers, wire=wire)
        with Coordinator(path) as coord:
            results[wire] = {"files": coord.run(files), "pixels": coord.run(crops),
                             "floats": coord.run(pp.normalize(crops, spec))}
    sent = {w: {k: r.wire for k, r in by.items()} for w, by in results.items()}
    assert sent["fp32"] == sent[None] == {"files": "fp32", "pixels": "fp32", "floats": "fp32"}
    assert sent["uint8"] == {"files": "uint8", "pixels": "uint8", "floats": "fp32"}
    assert sent["encoded"] == {"files": "encoded", "pixels": "uint8", "floats": "fp32"}
    # these files are bigger than their 16x16 gray crops: auto sends the crops
    assert sent["auto"] == {"files": "uint8", "pixels": "uint8", "floats": "fp32"}
    ref = results["fp32"]["files"].logits
    for wire, by in results.items():
        for kind, r in by.items():
            assert not r.degraded
            assert np.abs(r.logits - ref).max() <= 1e-4, (wire, kind)
    size = {w: results[w]["files"].request_bytes for w in ("fp32", "uint8", "encoded")}
    assert size["uint8"] < size["fp32"] / 3 and size["encoded"] > size["uint8"]


def test_auto_sends_the_files_when_they_are_smaller_than_their_pixels(build, cluster, tmp_path):
    dep, workers = cluster
    # a flat 64x64 gray PNG is smaller than its 16x16 gray crop (256 bytes)
    flat = _encode(np.full((64, 64), 120, np.uint8), "PNG")
    assert len(flat) < 256
    path = write_deployment(str(tmp_path / "dep-auto.json"), build, workers, wire="auto")
    with Coordinator(path) as coord:
        r = coord.run([flat, flat])
        assert r.wire == "encoded" and not r.degraded
        want = coord.run(np.stack([pp.resize_crop(flat, _spec(build))] * 2))
    assert np.abs(r.logits - want.logits).max() <= 1e-4


def test_serve_passes_image_files_through_to_the_boards(build, cluster, images, tmp_path):
    from edvit_tool.runtime import httpd
    from edvit_tool.serve import server

    dep, workers = cluster
    path = write_deployment(str(tmp_path / "dep-enc.json"), build, workers, wire="encoded")
    limits = httpd.Limits(max_body=1 << 20, max_json=1 << 18, max_connections=8, max_inflight=2,
                          header_timeout_s=5, idle_timeout_s=5)
    with Coordinator(path) as coord:
        srv = server.make_server("127.0.0.1", 0, server.ServeState(coord, None, limits))
        t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        t.start()
        try:
            c = tritonhttp.InferenceServerClient(f"127.0.0.1:{srv.server_address[1]}")
            files = _files([d for _, d in images])
            i = tritonhttp.InferInput("pixel_values", [len(files)], "BYTES")
            i.set_data_from_numpy(files, binary_data=True)
            got = c.infer("edvit", [i]).as_numpy("logits")
            c.close()
            want = coord.run(pp.preprocess_batch([p for p, _ in images], _spec(build)))
            sent = coord.stats()
        finally:
            srv.shutdown()
            srv.server_close()
    assert np.abs(got - want.logits).max() <= 1e-4
    assert sent["requests"] == 2
