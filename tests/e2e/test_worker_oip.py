"""The board worker, run as a real subprocess from a board-like copy of the runtime (torch/timm/click/yaml
blocked), against a stock tritonclient.http client. ~6 s; the first run on a machine also exports the tiny
build (~20 s: importing torch + litert-torch), cached after in .pytest_cache."""

from __future__ import annotations

import http.client
import json
import os
import re
import select
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tiny_build import board_env, make_board_runtime, make_import_shim, shared_tiny_build
from tiny_build import cache_dir as _cache_dir

from edvit_tool.runtime.protocol import OipClient

tritonhttp = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

pytestmark = pytest.mark.slow
TOKEN = "s3cret-token-for-tests"
MAX_BODY_MB = 0.25


def _start_worker(build, board, shim, tmp, extra=(), models="g0,g1,fusion", token_file=None):
    token_file = token_file or os.path.join(tmp, "token")
    if not os.path.exists(token_file):
        with open(token_file, "w") as f:
            f.write(TOKEN + "\n")
        os.chmod(token_file, 0o600)
    pidfile = os.path.join(tmp, "worker.pid")
    cmd = [sys.executable, "-m", "edvit_tool.runtime.worker", "--manifest", os.path.join(build, "manifest.json"),
           "--models", models, "--host", "127.0.0.1", "--port", "0", "--token-file", token_file,
           "--pidfile", pidfile, "--max-body-mb", str(MAX_BODY_MB), "--log-level", "debug", *extra]
    log = open(os.path.join(tmp, "worker.log"), "w")  # a file, not a pipe: debug logs must never block it
    proc = subprocess.Popen(cmd, cwd=board, env=board_env(board, shim), stdout=subprocess.PIPE, stderr=log,
                            text=True)
    log.close()
    proc.log_path = log.name
    return proc, pidfile


def _log(proc) -> str:
    with open(proc.log_path) as f:
        return f.read()


def _read_event(proc, timeout=20.0) -> dict:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"worker printed nothing in {timeout} s"
    line = proc.stdout.readline()
    assert line, f"worker exited early (rc={proc.wait()}): {_log(proc)}"
    return json.loads(line)


def _stop(proc):
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def env(tmp_path_factory, pytestconfig):
    tmp = tmp_path_factory.mktemp("worker")
    build = shared_tiny_build(tmp_path_factory, _cache_dir(pytestconfig))
    board = make_board_runtime(str(tmp / "board"))
    shim = make_import_shim(str(tmp / "shim"))
    return {"build": build, "board": board, "shim": shim, "tmp": str(tmp)}


@pytest.fixture(scope="module")
def worker(env):
    # g0 from TFLite (LiteRT), g1 and fusion from ONNX (onnxruntime)
    proc, pidfile = _start_worker(env["build"], env["board"], env["shim"], env["tmp"],
                                  extra=["--variant", "g0=tflite/fp32,onnx/fp32"])
    try:
        event = _read_event(proc)
        assert event["event"] == "ready", event
        yield {"proc": proc, "port": event["port"], "event": event, "pidfile": pidfile}
    finally:
        _stop(proc)


@pytest.fixture
def client(worker):
    c = tritonhttp.InferenceServerClient(f"127.0.0.1:{worker['port']}")
    yield c
    c.close()


# a fresh dict per call: tritonclient adds Inference-Header-Content-Length to the dict it is given
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _local(build, rel, feeds):
    """Run an artifact with its interpreter directly (not through our backends module)."""
    path = os.path.join(build, rel)
    if path.endswith(".onnx"):
        import onnxruntime as ort
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        return dict(zip(names, sess.run(names, feeds)))
    from ai_edge_litert.interpreter import Interpreter
    it = Interpreter(model_path=path)
    runner = it.get_signature_runner()
    outs = [runner(args_0=x[None]) for x in feeds["pixel_values"]]   # batch-1 export: one sample at a time
    return {"features": np.concatenate([o["output_0"] for o in outs]),
            "logits": np.concatenate([o["output_1"] for o in outs])}


def _infer(client, model, arrays, binary_in=True, binary_out=True, outputs=None):
    inputs = []
    for name, a in arrays.items():
        i = tritonhttp.InferInput(name, list(a.shape), {"float32": "FP32", "float64": "FP64"}[a.dtype.name])
        i.set_data_from_numpy(a, binary_data=binary_in)
        inputs.append(i)
    req_out = [tritonhttp.InferRequestedOutput(n, binary_data=binary_out) for n in outputs] if outputs else None
    return client.infer(model, inputs, outputs=req_out, headers=dict(AUTH))


def _pixels(n=3, seed=1):
    return np.random.default_rng(seed).standard_normal((n, 1, 16, 16)).astype(np.float32)


def _good_request(client, build):
    x = _pixels(2, seed=9)
    res = _infer(client, "g1", {"pixel_values": x})
    np.testing.assert_allclose(res.as_numpy("logits"), _local(build, "submodels/g1.fp32.onnx",
                                                              {"pixel_values": x})["logits"], atol=1e-6)


def test_health_and_metadata_follow_oip_v2(client, worker):
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata(headers=dict(AUTH))
    assert meta["name"] == "edvit-worker" and "binary_tensor_data" in meta["extensions"]
    assert client.is_model_ready("g0", headers=dict(AUTH))
    g0 = client.get_model_metadata("g0", headers=dict(AUTH))
    assert g0["name"] == "g0" and g0["versions"] == ["1"]
    assert g0["platform"] == "tensorflow_lite" and g0["parameters"]["backend"] == "litert"
    assert g0["inputs"] == [{"name": "pixel_values", "datatype": "FP32", "shape": [-1, 1, 16, 16]}]
    assert [o["name"] for o in g0["outputs"]] == ["features", "logits"]
    fusion = client.get_model_metadata("fusion", headers=dict(AUTH))
    assert fusion["platform"] == "onnxruntime_onnx"
    assert fusion["inputs"][0]["shape"] == [-1, 32] and fusion["outputs"][0]["shape"] == [-1, 4]
    assert worker["event"]["models"]["g0"] == {"artifact": "g0:tflite/fp32", "backend": "litert"}


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_matches_the_interpreter_run_locally(client, env, binary):
    x = _pixels(3)
    for model, rel in (("g0", "submodels/g0.fp32.tflite"), ("g1", "submodels/g1.fp32.onnx")):
        res = _infer(client, model, {"pixel_values": x}, binary_in=binary, binary_out=binary,
                     outputs=["features", "logits"])
        want = _local(env["build"], rel, {"pixel_values": x})
        for name in ("features", "logits"):
            got = res.as_numpy(name)
            assert got.shape == want[name].shape and got.dtype == np.float32
            np.testing.assert_allclose(got, want[name], rtol=0, atol=1e-6)
        out = res.get_response()["outputs"]
        assert all(("binary_data_size" in o.get("parameters", {})) == binary for o in out)
    feats = np.random.default_rng(2).standard_normal((3, 32)).astype(np.float32)
    res = _infer(client, "fusion", {"features": feats}, binary_in=binary, binary_out=binary, outputs=["logits"])
    np.testing.assert_allclose(res.as_numpy("logits"),
                               _local(env["build"], "fusion/fusion.onnx", {"features": feats})["logits"], atol=1e-6)


def test_infer_without_requested_outputs_returns_all_in_binary(client, env):
    res = _infer(client, "g1", {"pixel_values": _pixels(1)})
    assert {o["name"] for o in res.get_response()["outputs"]} == {"features", "logits"}
    assert res.as_numpy("features").shape == (1, 16)


def _raw(port, method, path, body=b"", headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def test_bad_requests_get_4xx_with_a_message_and_the_worker_keeps_serving(client, worker, env):
    port = worker["port"]
    cases = []
    # malformed JSON
    status, _, body = _raw(port, "POST", "/v2/models/g1/infer", b'{"inputs": [', {**AUTH, "Content-Type":
                                                                                   "application/json"})
    cases.append(("malformed json", status, 400, json.loads(body)["error"], "not valid JSON"))
    # wrong shape / wrong dtype / unknown model / oversized body, through the stock client
    for label, call, want_status, want_msg in (
        ("wrong shape", lambda: _infer(client, "g1", {"pixel_values": np.zeros((1, 1, 8, 8), np.float32)}), 400,
         "input 'pixel_values': shape [1, 1, 8, 8], expected [-1, 1, 16, 16]"),
        ("wrong dtype", lambda: _infer(client, "g1", {"pixel_values": np.zeros((1, 1, 16, 16), np.float64)}), 400,
         "input 'pixel_values': datatype FP64, expected FP32"),
        ("unknown input", lambda: _infer(client, "fusion", {"pixel_values": _pixels(1)}), 400,
         "unknown input 'pixel_values'; model fusion takes features FP32 [-1, 32]"),
        ("unknown model", lambda: _infer(client, "g7", {"pixel_values": _pixels(1)}), 404, "unknown model 'g7'"),
        ("oversized body", lambda: _infer(client, "g1", {"pixel_values": _pixels(300)}), 413, "limit is 262144"),
    ):
        with pytest.raises(InferenceServerException) as e:
            call()
        cases.append((label, int(e.value.status()), want_status, e.value.message(), want_msg))
        _good_request(client, env["build"])
    # token: missing, wrong (stock client), and the challenge header (raw)
    for label, headers in (("missing token", None), ("wrong token", {"Authorization": "Bearer nope"})):
        with pytest.raises(InferenceServerException) as e:
            client.infer("g1", [tritonhttp.InferInput("pixel_values", [1, 1, 16, 16], "FP32")
                                .set_data_from_numpy(_pixels(1))], headers=headers)
        cases.append((label, int(e.value.status()), 401, e.value.message(), "bearer token"))
        _good_request(client, env["build"])
    status, hdrs, _ = _raw(port, "GET", "/v2/models/g0")
    assert status == 401 and hdrs["WWW-Authenticate"].startswith("Bearer")
    assert _raw(port, "GET", "/v2/health/live")[0] == 200  # health stays open without a token
    for label, got, want, msg, want_msg in cases:
        assert got == want, f"{label}: status {got}, expected {want} ({msg})"
        assert want_msg in msg, f"{label}: message {msg!r} lacks {want_msg!r}"
    _good_request(client, env["build"])


def _socket_exchange(port, raw: bytes) -> bytes:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(raw)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            b = s.recv(65536)
            if not b:
                return b"".join(chunks)
            chunks.append(b)


def test_http_framing_edge_cases(worker, client, env):
    from edvit_tool.runtime.protocol import encode_request

    body, hlen = encode_request({"pixel_values": _pixels(1)}, None)
    head = (f"POST /v2/models/g1/infer HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Inference-Header-Content-Length: {hlen}\r\n")
    port = worker["port"]
    # curl sends Expect: 100-continue before bodies over 1 KiB and waits for the interim answer
    out = _socket_exchange(port, (head + f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n")
                           .encode() + body)
    assert out.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n")
    for extra, status in (("", b"411"), ("Transfer-Encoding: chunked\r\n", b"411"),
                          ("Content-Length: 5\r\nContent-Length: 6\r\n", b"400"),
                          ("Content-Length : 5\r\n", b"400"), (" folded\r\n", b"400")):
        out = _socket_exchange(port, (head + extra + "\r\n").encode())
        assert out.startswith(b"HTTP/1.1 " + status), (extra, out[:200])
    # HTTP/1.0 with keep-alive is answered as such; two requests on one connection
    get = b"GET /v2/health/ready HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
    out = _socket_exchange(port, get + b"GET /v2/health/live HTTP/1.0\r\n\r\n")
    assert out.count(b" 200 OK\r\n") == 2 and b"Connection: keep-alive" in out
    _good_request(client, env["build"])


def test_stats_count_requests_per_model(worker):
    from edvit_tool.runtime.protocol import OipClient, ProtocolError

    with OipClient("127.0.0.1", worker["port"], token=TOKEN) as c:
        before = c.stats("fusion")
        for _ in range(5):
            c.infer("fusion", {"features": np.zeros((2, 32), np.float32)})
        with pytest.raises(ProtocolError) as e:
            c.infer("fusion", {"features": np.zeros((2, 31), np.float32)})
        s = c.stats("fusion")
    assert e.value.status == 400 and "expected [-1, 32]" in e.value.message
    assert s["count"] == before["count"] + 6 and s["errors"] == before["errors"] + 1
    assert s["p50_ms"] > 0 and s["infer_p50_ms"] > 0 and s["p50_ms"] >= s["infer_p50_ms"]
    # the answered requests' own times, in order (the refused one is not among them; fp32 has no preprocessing)
    added = s["recent_ms"][len(before["recent_ms"]):] if len(s["recent_ms"]) < 100 else s["recent_ms"][-5:]
    assert len(added) == 5 and all(inf > 0 and prep == 0 for inf, prep in added)


def test_sigterm_exits_0_with_an_idle_connection_open_and_removes_the_pidfile(env, tmp_path):
    proc, pidfile = _start_worker(env["build"], env["board"], env["shim"], str(tmp_path), models="g1")
    try:
        event = _read_event(proc)
        assert event["event"] == "ready"
        with open(pidfile) as f:
            assert int(f.read()) == proc.pid
        from edvit_tool.runtime.protocol import OipClient
        with OipClient("127.0.0.1", event["port"], token=TOKEN) as c:  # an idle keep-alive connection stays open
            c.infer("g1", {"pixel_values": _pixels(1)})
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=15)  # a hang guard, not a speed check: the idle connection must not block exit
        assert rc == 0, (rc, _log(proc))
        assert not os.path.exists(pidfile)
        assert re.search(r"DEBUG POST /v2/models/g1/infer 200 \d+\.\d+ms", _log(proc))  # one line per request
        assert "GET" not in proc.stdout.read()  # stdout holds only the ready line
    finally:
        _stop(proc)


def test_sigterm_lets_an_in_flight_request_finish(env, tmp_path):
    import socket

    from edvit_tool.runtime.protocol import decode_response, encode_request

    proc, pidfile = _start_worker(env["build"], env["board"], env["shim"], str(tmp_path), models="g1")
    try:
        port = _read_event(proc)["port"]
        x = _pixels(2)
        body, hlen = encode_request({"pixel_values": x}, None)
        head = (f"POST /v2/models/g1/infer HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                f"Inference-Header-Content-Length: {hlen}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(head + body[:100])      # the worker is now inside this request, waiting for its body
            time.sleep(0.3)
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            assert proc.poll() is None, "worker exited with a request in flight"
            s.sendall(body[100:])
            resp = http.client.HTTPResponse(s)
            resp.begin()
            payload = resp.read()
        assert resp.status == 200 and resp.getheader("Connection") == "close"
        got = decode_response(payload, resp.getheader("Inference-Header-Content-Length"))
        np.testing.assert_allclose(got["logits"], _local(env["build"], "submodels/g1.fp32.onnx",
                                                         {"pixel_values": x})["logits"], atol=1e-6)
        assert proc.wait(timeout=3) == 0 and not os.path.exists(pidfile)
    finally:
        _stop(proc)


@pytest.mark.parametrize("problem", ["unknown model", "tampered artifact", "empty token"])
def test_startup_problems_exit_2_with_one_error_event(env, tmp_path, problem):
    build, models, token_file = env["build"], "g0", None
    if problem == "unknown model":
        models = "g9"
    elif problem == "tampered artifact":
        import shutil
        build = str(tmp_path / "build")
        shutil.copytree(env["build"], build)
        with open(os.path.join(build, "submodels", "g1.fp32.onnx"), "ab") as f:
            f.write(b"\0")
        models = "g1"
    else:
        token_file = str(tmp_path / "empty-token")
        open(token_file, "w").close()
    proc, _ = _start_worker(build, env["board"], env["shim"], str(tmp_path), models=models, token_file=token_file)
    try:
        event = _read_event(proc)
        assert proc.wait(timeout=5) == 2
        assert event["event"] == "error"
        assert {"unknown model": "no artifact for model 'g9'", "tampered artifact": "sha256 differs",
                "empty token": "--token-file"}[problem] in event["message"]
    finally:
        _stop(proc)


def test_compressed_json_bodies_are_inflated_within_the_cap(worker, env):
    import gzip
    import zlib

    x = _pixels(2, seed=4)
    req = json.dumps({"inputs": [{"name": "pixel_values", "shape": list(x.shape), "datatype": "FP32",
                                  "data": x.ravel().tolist()}]}).encode()
    want = _local(env["build"], "submodels/g1.fp32.onnx", {"pixel_values": x})["logits"]
    port = worker["port"]
    for enc, body in (("gzip", gzip.compress(req)), ("deflate", zlib.compress(req))):
        status, _, out = _raw(port, "POST", "/v2/models/g1/infer", body,
                              {**AUTH, "Content-Type": "application/json", "Content-Encoding": enc})
        assert status == 200, out[:200]
        logits = next(o for o in json.loads(out)["outputs"] if o["name"] == "logits")
        np.testing.assert_allclose(np.array(logits["data"], np.float32).reshape(want.shape), want, atol=1e-5)
    # a small body that inflates past the cap (a "zip bomb") is refused, not inflated
    bomb = gzip.compress(b"{" + b" " * (4 << 20) + b"}")
    status, _, out = _raw(port, "POST", "/v2/models/g1/infer", bomb, {**AUTH, "Content-Encoding": "gzip"})
    assert status == 413 and b"decompressed body exceeds" in out
    status, _, out = _raw(port, "POST", "/v2/models/g1/infer", b"not gzip", {**AUTH, "Content-Encoding": "gzip"})
    assert status == 400 and b"not valid gzip" in out
    status, _, _ = _raw(port, "POST", "/v2/models/g1/infer", req, {**AUTH, "Content-Encoding": "br"})
    assert status == 415


# -- hardening (issue 11): NaN/Inf, malformed requests, connection and body caps --------------------------------

def test_non_finite_inputs_are_refused_with_400(client, worker, env):
    for bad in (np.nan, np.inf, -np.inf):
        x = _pixels(2)
        x[1, 0, 3, 3] = bad
        for binary in (True, False):
            with pytest.raises(InferenceServerException) as e:
                _infer(client, "g1", {"pixel_values": x}, binary_in=binary)
            assert int(e.value.status()) == 400 and "holds NaN or Inf" in e.value.message()
    # JSON's NaN literal (Python's json accepts it) is refused the same way
    body = json.dumps({"inputs": [{"name": "features", "shape": [1, 32], "datatype": "FP32",
                                   "data": [float("nan")] + [0.0] * 31}]}).encode()
    assert b"NaN" in body
    status, _, out = _raw(worker["port"], "POST", "/v2/models/fusion/infer", body, dict(AUTH))
    assert status == 400 and b"holds NaN or Inf" in out
    _good_request(client, env["build"])


def test_malformed_request_corpus_on_the_worker(worker, client, env, capsys):
    import http_corpus

    report = []
    cases = http_corpus.corpus("/v2/models/g1/infer", TOKEN)
    # this worker's JSON cap (64 KiB) refuses the 200 KB nesting bomb unread; 30k deep fits and must be a 400 too
    cases = [(label, raw, 413, "limit for JSON") if label.startswith("JSON nested") else (label, raw, want, says)
             for label, raw, want, says in cases]
    nested = b"[" * 30_000 + b"]" * 30_000
    cases.append(("JSON nested 30k deep", (f"POST /v2/models/g1/infer HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n"
                                           f"Content-Length: {len(nested)}\r\n\r\n").encode() + nested, 400,
                  "nested too deeply"))
    for label, raw, want, says in cases:
        out = _socket_exchange(worker["port"], raw)
        head, _, body = out.partition(b"\r\n\r\n")
        status = int(head.split(b" ")[1]) if head.startswith(b"HTTP/1.1 ") else None
        report.append(f"{label} -> {status}")
        assert status == want, f"{label}: got {out[:200]!r}"
        assert says in json.loads(body)["error"], (label, body[:200])
    with capsys.disabled():
        print("\nworker malformed corpus:", "; ".join(report))
    assert worker["proc"].poll() is None
    _good_request(client, env["build"])


def test_an_unread_get_body_is_not_a_second_request_on_the_worker(worker):
    smuggled = f"GET /v2/models/g1 HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode()
    for path in ("/v2/health/live", "/v2/models/g0"):  # an open route and a 401
        out = _socket_exchange(worker["port"], f"GET {path} HTTP/1.1\r\nHost: x\r\nContent-Length: "
                                               f"{len(smuggled)}\r\n\r\n".encode() + smuggled)
        assert out.count(b"HTTP/1.1 ") == 1 and b"Connection: close" in out, out[:300]


def test_a_json_body_over_the_json_cap_is_413_while_binary_of_that_size_passes(worker, client, env):
    x = _pixels(40, seed=5)  # 40 KiB of tensor: ~0.8 MB as JSON, over the 64 KiB JSON cap (a quarter of 0.25 MB)
    with pytest.raises(InferenceServerException) as e:
        _infer(client, "g1", {"pixel_values": x}, binary_in=False)
    assert int(e.value.status()) == 413 and "limit for JSON is 65536" in e.value.message()
    res = _infer(client, "g1", {"pixel_values": x}, binary_in=True)
    assert res.as_numpy("logits").shape[0] == 40
    _good_request(client, env["build"])


def _threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Threads:"))


def test_idle_half_sent_connections_are_capped_then_dropped_at_the_header_deadline(env, tmp_path, capsys):
    import socket

    cap = 16
    proc, _ = _start_worker(env["build"], env["board"], env["shim"], str(tmp_path), models="g1",
                            extra=["--max-connections", str(cap), "--header-timeout-s", "5"])
    socks = []
    try:
        port = _read_event(proc)["port"]
        idle = _threads(proc.pid)
        for _ in range(200):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(b"POST /v2/models/g1/infer HTTP/1.1\r\nHost: x\r\nContent-Le")
            socks.append(s)
        socks[-1].recv(4096)  # the last one is over the cap: once it is answered, all 200 were accepted
        peak = _threads(proc.pid)
        answers = []
        for s in socks[:-1]:  # every connection ends: 503 at once above the cap, the rest at the header deadline
            try:
                answers.append(s.recv(4096))
            except ConnectionResetError:
                answers.append(b"reset")
        refused = sum(a.startswith(b"HTTP/1.1 503 ") for a in answers)
        with capsys.disabled():
            print(f"\nworker, 200 idle half-sent connections, cap {cap}: threads {idle} idle -> {peak}; "
                  f"{refused} answered 503, {answers.count(b'')} dropped at the header deadline")
        assert all(a.startswith(b"HTTP/1.1 503 ") or a in (b"", b"reset") for a in answers)
        assert refused >= 1 and 1 <= answers.count(b"") <= cap
        assert peak <= idle + cap
    finally:
        for s in socks:
            s.close()
    try:
        with OipClient("127.0.0.1", port, token=TOKEN) as c:
            assert c.infer("g1", {"pixel_values": _pixels(1)})["logits"].shape[0] == 1
    finally:
        _stop(proc)


def test_uint8_and_image_files_are_preprocessed_on_the_board_like_the_host_does(client, env):
    """The board-like runtime copy (torch/timm blocked) takes UINT8 pixels and BYTES files for the image input of
    both interpreters and answers what the host-preprocessed FP32 input gives."""
    import io

    from PIL import Image

    from edvit_tool.runtime import preprocess as pp

    spec = json.load(open(os.path.join(env["build"], "manifest.json")))["input"]
    rng = np.random.default_rng(5)
    files = []
    for w, h in ((23, 40), (16, 16), (64, 48)):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, format="PNG")
        files.append(buf.getvalue())
    host = pp.preprocess_batch(files, spec)
    crops = np.stack([pp.resize_crop(f, spec) for f in files])
    encoded = np.empty(len(files), dtype=object)
    encoded[:] = files
    for model in ("g0", "g1"):  # LiteRT and onnxruntime
        want = _infer(client, model, {"pixel_values": host}, outputs=["features"]).as_numpy("features")
        for dt, arr in (("UINT8", crops), ("BYTES", encoded)):
            i = tritonhttp.InferInput("pixel_values", list(arr.shape), dt)
            i.set_data_from_numpy(arr, binary_data=True)
            got = client.infer(model, [i], outputs=[tritonhttp.InferRequestedOutput("features")],
                               headers=dict(AUTH)).as_numpy("features")
            assert np.abs(got - want).max() <= 1e-5, (model, dt)
