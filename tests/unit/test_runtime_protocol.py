"""OIP v2 encode/decode (pure) and the keep-alive client against a real loopback server. ~2 s."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edvit_tool.runtime import protocol as oip
from edvit_tool.runtime.protocol import ProtocolError

tritonhttp = pytest.importorskip("tritonclient.http")

DTYPES = [np.float32, np.float16, np.float64, np.int8, np.uint8, np.int32, np.int64, np.bool_]


def _arrays():
    return st.sampled_from(DTYPES).flatmap(
        lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=4),
                              elements=None if dt is np.bool_ else
                              hnp.from_dtype(np.dtype(dt), allow_nan=False, allow_infinity=False)))


@settings(max_examples=60, deadline=None)
@given(a=_arrays(), b=_arrays(), binary=st.booleans())
def test_request_roundtrip_keeps_values_shapes_and_dtypes(a, b, binary):
    body, hlen = oip.encode_request({"a": a, "b": b}, outputs=["y"], binary=binary)
    req = oip.decode_request(body, hlen)
    assert list(req.inputs) == ["a", "b"]
    for name, want in (("a", a), ("b", b)):
        got = req.inputs[name]
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    assert req.outputs == [("y", binary)]


@settings(max_examples=40, deadline=None)
@given(a=_arrays(), binary=st.booleans())
def test_response_roundtrip(a, binary):
    body, hlen = oip.encode_response("g0", {"logits": a, "features": a[..., :1]}, binary, request_id="r1")
    got = oip.decode_response(body, hlen)
    np.testing.assert_array_equal(got["logits"], a)
    assert got["logits"].dtype == a.dtype and got["features"].shape == a[..., :1].shape
    assert (hlen is not None) == binary


def test_binary_part_can_arrive_separately_from_the_json_header():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    i8 = np.arange(3, dtype=np.int8)
    body, hlen = oip.encode_request({"i8": i8, "x": x}, None)
    binary = np.frombuffer(body[hlen:], dtype=np.uint8).copy()  # what the worker reads into a fresh buffer
    req = oip.decode_request(body[:hlen], binary=binary)
    np.testing.assert_array_equal(req.inputs["x"], x)
    np.testing.assert_array_equal(req.inputs["i8"], i8)
    with pytest.raises(ProtocolError, match="short of its binary data"):
        oip.decode_request(body[:hlen], binary=binary[:-1])


def test_requests_made_by_tritonclient_decode():
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    m = np.array([[True, False]])
    for binary in (True, False):
        ins = [tritonhttp.InferInput("x", list(x.shape), "FP32").set_data_from_numpy(x, binary_data=binary),
               tritonhttp.InferInput("m", list(m.shape), "BOOL").set_data_from_numpy(m, binary_data=binary)]
        outs = [tritonhttp.InferRequestedOutput("logits", binary_data=binary)]
        body, hlen = tritonhttp.InferenceServerClient.generate_request_body(ins, outputs=outs, request_id="7")
        req = oip.decode_request(body, hlen)
        np.testing.assert_array_equal(req.inputs["x"], x)
        np.testing.assert_array_equal(req.inputs["m"], m)
        assert req.id == "7" and req.outputs == [("logits", binary)]
    # no outputs listed: tritonclient asks for everything in binary
    body, hlen = tritonhttp.InferenceServerClient.generate_request_body(
        [tritonhttp.InferInput("x", [1], "INT64").set_data_from_numpy(np.array([5]))])
    req = oip.decode_request(body, hlen)
    assert req.outputs is None and req.binary_output and req.wanted(["a", "b"]) == [("a", True), ("b", True)]


def test_our_responses_parse_in_tritonclient():
    logits = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    feats = np.arange(4, dtype=np.float16).reshape(2, 2)
    body, hlen = oip.encode_response("g0", {"logits": logits, "features": feats}, {"logits": True})
    res = tritonhttp.InferResult.from_response_body(body, header_length=hlen)
    np.testing.assert_array_equal(res.as_numpy("logits"), logits)
    np.testing.assert_array_equal(res.as_numpy("features"), feats)
    assert res.as_numpy("features").dtype == np.float16


def test_json_data_may_be_nested():
    body = json.dumps({"inputs": [{"name": "x", "shape": [2, 2], "datatype": "INT32", "data": [[1, 2], [3, 4]]}]})
    np.testing.assert_array_equal(oip.decode_request(body.encode()).inputs["x"], [[1, 2], [3, 4]])


def _bad(header: dict, tail: bytes = b"", hlen=True):
    h = json.dumps(header).encode()
    with pytest.raises(ProtocolError) as e:
        oip.decode_request(h + tail, len(h) if hlen else None)
    assert e.value.status == 400
    return e.value.message


def _t(**kw):
    t = {"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]}
    t.update(kw)
    return {"inputs": [t]}


@pytest.mark.parametrize("header,tail,expect", [
    (_t(datatype="FP8"), b"", "datatype 'FP8' is not supported"),
    (_t(shape=[1, -2]), b"", "shape must be a list of non-negative integers"),
    (_t(data=[1.0, 2.0, 3.0]), b"", "shape [1, 2] needs 2 values, data has 3"),
    (_t(data=["a", "b"]), b"", "data holds str"),
    (_t(datatype="INT32", data=[1.5, 2.0]), b"", "data holds float64 values, datatype is INT32"),
    (_t(data=[[1.0], [2.0, 3.0]]), b"", "not a (nested) list of numbers"),
    ({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32"}]}, b"", "neither 'data' nor"),
    ({"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 4}}]},
     b"\0" * 4, "binary_data_size is 4 bytes but shape [2] of FP32 needs 8"),
    ({"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 8}}]},
     b"\0" * 4, "body ends 4 bytes short"),
    ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": 4}}]},
     b"\0" * 9, "5 bytes of binary data that no input claims"),
    ({"inputs": [_t()["inputs"][0], _t()["inputs"][0]]}, b"", "input 'x' appears twice"),
    ({"outputs": []}, b"", "request has no 'inputs'"),
    ({"inputs": {"x": 1}}, b"", "'inputs' must be a list"),
])
def test_malformed_requests_are_400_naming_the_problem(header, tail, expect):
    assert expect in _bad(header, tail)


def test_bad_json_and_bad_header_length():
    with pytest.raises(ProtocolError, match="not valid JSON"):
        oip.decode_request(b'{"inputs": [')
    with pytest.raises(ProtocolError, match="body has 2 bytes"):
        oip.decode_request(b"{}", 10)
    for bad in ("ten", "\u00b2", "+2", "1_0", " 2", "9" * 5000):  # '²'.isdigit() and int('1_0') are true
        with pytest.raises(ProtocolError, match="must be 1-15 ASCII digits") as e:
            oip.decode_request(b"{}", bad)
        assert e.value.status == 400
    with pytest.raises(ProtocolError, match="must be a JSON object"):
        oip.decode_request(b"[1]")


def test_deeply_nested_json_is_a_400_not_a_recursion_error():
    with pytest.raises(ProtocolError, match="nested too deeply") as e:
        oip.decode_request(b"[" * 100_000 + b"]" * 100_000)
    assert e.value.status == 400


def test_first_non_finite_names_the_tensor_with_nan_or_inf():
    ok = {"a": np.ones(3, np.float32), "i": np.arange(3)}
    assert oip.first_non_finite(ok) is None
    for bad in (np.nan, np.inf, -np.inf):
        x = np.zeros((2, 2), np.float16)
        x[1, 1] = bad
        assert oip.first_non_finite({**ok, "x": x}) == "x"


def test_unknown_requested_output_is_named():
    body, hlen = oip.encode_request({"x": np.zeros(1, np.float32)}, outputs=["logitz"])
    with pytest.raises(ProtocolError, match="unknown output 'logitz'; this model has features, logits"):
        oip.decode_request(body, hlen).wanted(["features", "logits"])


def test_datatype_map_both_ways():
    for name, dt in oip.DATATYPES.items():
        assert oip.datatype_of(dt) == name and oip.dtype_of(name) == dt
    with pytest.raises(ProtocolError, match="has no OIP datatype"):
        oip.datatype_of(np.complex64)


# ---- client against a real loopback server -----------------------------------------------------------------

class _Echo(BaseHTTPRequestHandler):
    """Answers every request with its own decoded inputs; `drop` makes it close without saying so."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    seen: list = []
    drop = False

    def log_message(self, *a):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).seen.append((self.path, self.headers.get("Authorization"), self.client_address[1]))
        req = oip.decode_request(body, self.headers.get(oip.HEADER_LENGTH))
        out, hlen = oip.encode_response("echo", req.inputs, True)
        self.send_response(200)
        self.send_header("Content-Length", str(len(out)))
        self.send_header(oip.HEADER_LENGTH, str(hlen))
        self.end_headers()
        self.wfile.write(out)
        if type(self).drop:  # like an idle-timeout on the server: the next request on this socket fails
            self.close_connection = True

    def do_GET(self):
        type(self).seen.append((self.path, self.headers.get("Authorization"), self.client_address[1]))
        status = 200 if self.path == "/v2/health/live" else 404
        body = b"{}" if status == 200 else b'{"error": "no such thing"}'
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def echo_server():
    _Echo.seen, _Echo.drop = [], False
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_client_keeps_one_connection_and_sends_the_token(echo_server):
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    with oip.OipClient("127.0.0.1", echo_server.server_address[1], token="tok") as c:
        for _ in range(3):
            np.testing.assert_array_equal(c.infer("m", {"x": x})["x"], x)
        assert c.live()
        import socket
        assert c._conn.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    ports = {p for _, _, p in _Echo.seen}
    assert len(ports) == 1 and all(a == "Bearer tok" for _, a, _ in _Echo.seen)


def test_client_retries_once_when_the_server_dropped_keep_alive(echo_server):
    _Echo.drop = True
    x = np.ones((1, 2), np.float32)
    with oip.OipClient("127.0.0.1", echo_server.server_address[1]) as c:
        for _ in range(3):
            np.testing.assert_array_equal(c.infer("m", {"x": x}, binary=False)["x"], x)
    assert len({p for _, _, p in _Echo.seen}) == 3  # a fresh connection each time, no error surfaced


def test_client_refuses_an_answer_over_its_size_cap_without_reading_it(echo_server):
    big = np.zeros((64, 1024), np.float32)  # a 256 KiB answer
    with oip.OipClient("127.0.0.1", echo_server.server_address[1], max_response=64 << 10) as c:
        with pytest.raises(ProtocolError, match="over the 65536-byte limit") as e:
            c.infer("m", {"x": big})
        assert e.value.status == 0 and c._conn is None  # the unread rest is dropped with the connection
        small = np.ones((2, 2), np.float32)
        np.testing.assert_array_equal(c.infer("m", {"x": small})["x"], small)  # a fresh connection


def test_client_errors_carry_the_status_and_message(echo_server):
    with oip.OipClient("127.0.0.1", echo_server.server_address[1]) as c:
        with pytest.raises(ProtocolError) as e:
            c.metadata("nope")
    assert e.value.status == 404 and e.value.message == "no such thing"
    with pytest.raises(ProtocolError) as e:
        oip.OipClient("127.0.0.1", 1, timeout=1).live()  # nothing listens on port 1
    assert e.value.status == 0 and "127.0.0.1:1" in e.value.message


def test_send_bodies_interleaves_and_a_stalled_peer_only_costs_its_own_request():
    """Two connections: one peer reads, one never does. The reader gets its whole body; the stalled one is
    reported at the deadline (its body is far larger than the socket buffers), and both keep their timeouts."""
    import socket
    import threading
    import time

    body = bytes(range(256)) * (64 * 1024)  # 16 MiB: more than any socket buffer here
    (a, a_peer), (b, b_peer) = socket.socketpair(), socket.socketpair()
    for s in (a, b):
        s.settimeout(3.0)
    got = bytearray()

    def read_all():
        while len(got) < len(body):
            chunk = a_peer.recv(1 << 20)
            if not chunk:
                break
            got.extend(chunk)

    t = threading.Thread(target=read_all)
    t.start()
    try:
        out = oip.send_bodies([("reader", a, body), ("stalled", b, body)], time.perf_counter() + 2.0)
        t.join(5)
        assert out["reader"] is None and bytes(got) == body
        assert "not sent within the deadline" in out["stalled"]
        assert a.gettimeout() == 3.0 and b.gettimeout() == 3.0
        b_peer.close()  # a peer that went away: an error for that body, not an exception
        out = oip.send_bodies([("gone", b, b"x" * (8 << 20))], time.perf_counter() + 2.0)
        assert out["gone"].startswith("sending the request failed")
    finally:
        for s in (a, a_peer, b, b_peer):
            s.close()
