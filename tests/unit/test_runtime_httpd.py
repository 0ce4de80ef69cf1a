"""runtime/httpd.py on a real loopback socket: the malformed-request corpus, the connection cap, the header
deadline, the idle timeout, the JSON cap, per-model in-flight slots and TLS. A tiny echo route stands in for a
model, so this needs no interpreter. ~5 s."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time

import numpy as np
import pytest

import http_corpus
from edvit_tool.runtime import httpd
from edvit_tool.runtime import protocol as oip

TOKEN = "unit-token"


class _Echo(httpd.Handler):
    """POST /echo: the decoded inputs' shapes; POST /hold: takes model m's slot until `release` is set."""

    server_version = "echo/1"
    seen: list
    release: threading.Event
    held: threading.Event

    def _route(self, method, path, parts):
        type(self).seen.append((method, path))
        if parts == ["v2", "health", "live"]:
            return 200, b'{"live":true}', "application/json", None
        self._authorise(method)
        if method == "POST" and parts == ["hold"]:
            with self.state.slot("m"):
                self._request_body(method)
                type(self).held.set()
                type(self).release.wait(10)
                return 200, b"{}", "application/json", None
        body = self._request_body(method)
        if method == "POST" and parts == ["echo"]:
            req = self._decode_request(body)
            return 200, json.dumps({k: list(v.shape) for k, v in req.inputs.items()}).encode(), "application/json", None
        raise httpd.HttpError(404, f"no route {path}")


class _Running:
    def __init__(self, limits: httpd.Limits, tls=None):
        handler = type("Echo", (_Echo,), {"seen": [], "release": threading.Event(), "held": threading.Event()})
        self.handler = handler
        self.state = httpd.ServerState(TOKEN, limits)
        self.server = httpd.bind("127.0.0.1", 0, handler, self.state, ssl_context=tls)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.handler.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def serve():
    made = []

    def start(**kw):
        tls = kw.pop("tls", None)
        r = _Running(httpd.Limits(**kw), tls)
        made.append(r)
        return r

    yield start
    for r in made:
        r.close()


def _exchange(port: int, raw: bytes, timeout: float = 5.0) -> bytes:
    """Send `raw`, half-close, read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(raw)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            try:
                b = s.recv(65536)
            except ConnectionResetError:
                break
            if not b:
                break
            chunks.append(b)
    return b"".join(chunks)


def _wait_for(cond, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            return False
        time.sleep(0.02)
    return True


AUTH = f"Authorization: Bearer {TOKEN}\r\n"
CORPUS = http_corpus.corpus("/echo", TOKEN)


def test_malformed_request_corpus_gets_4xx_status_lines_and_json_errors(serve, capsys):
    r = serve()
    report = []
    for label, raw, want, says in CORPUS:
        out = _exchange(r.port, raw)
        head, _, body = out.partition(b"\r\n\r\n")
        status = int(head.split(b" ")[1]) if head.startswith(b"HTTP/1.1 ") else None
        report.append((label, status))
        assert status == want, f"{label}: got {out[:120]!r}, expected HTTP/1.1 {want}"
        if label != "JSON nested 100k deep":  # that body was read whole: the connection may stay open
            assert b"Connection: close" in head, label
        assert says in json.loads(body)["error"], (label, body[:200])
    with capsys.disabled():
        print("\nmalformed corpus:", ", ".join(f"{label} -> {s}" for label, s in report))
    # and the server still answers
    assert _exchange(r.port, b"GET /v2/health/live HTTP/1.1\r\nConnection: close\r\n\r\n").startswith(
        b"HTTP/1.1 200 ")


@pytest.mark.parametrize("path", ["/v2/health/live", "/v2/models"], ids=["open route", "401 route"])
def test_an_unread_get_body_is_never_parsed_as_a_second_request(serve, path):
    r = serve()
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    out = _exchange(r.port, f"GET {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(smuggled)}\r\n\r\n".encode()
                    + smuggled)
    assert out.count(b"HTTP/1.1 ") == 1 and b"Connection: close" in out
    assert ("GET", "/smuggled") not in r.handler.seen


def test_connections_above_the_cap_get_503_and_threads_stay_bounded(serve, capsys):
    r = serve(max_connections=8, header_timeout_s=60, idle_timeout_s=60)
    before = threading.active_count()
    socks = []
    try:
        for _ in range(200):  # idle, half-sent requests (slowloris)
            s = socket.create_connection(("127.0.0.1", r.port), timeout=5)
            s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Le")
            socks.append(s)
        assert _wait_for(lambda: r.server.refused == 192), r.server.refused
        threads = threading.active_count()
        assert r.server.connections == 8
        assert threads - before <= 8, (before, threads)
        answers = []
        for s in socks[8:]:
            try:
                answers.append(s.recv(4096))
            except ConnectionResetError:
                answers.append(b"reset")
        assert all(a.startswith(b"HTTP/1.1 503 ") or a in (b"", b"reset") for a in answers)
        assert sum(a.startswith(b"HTTP/1.1 503 ") for a in answers) >= 1
        with capsys.disabled():
            print(f"\n200 idle half-sent connections, cap 8: {threads - before} more threads, "
                  f"{sum(a.startswith(b'HTTP/1.1 503 ') for a in answers)} answered 503")
    finally:
        for s in socks:
            s.close()
    assert _wait_for(lambda: r.server.connections == 0)
    assert _exchange(r.port, b"GET /v2/health/live HTTP/1.1\r\nConnection: close\r\n\r\n").startswith(
        b"HTTP/1.1 200 ")


def test_headers_must_arrive_within_the_deadline_even_when_trickled(serve):
    r = serve(header_timeout_s=0.5, idle_timeout_s=30)
    with socket.create_connection(("127.0.0.1", r.port), timeout=5) as s:
        s.sendall(b"GET /v2/health/live HTTP/1.1\r\n")
        closed = False
        for _ in range(200):  # one header byte every 50 ms: each read succeeds, the whole never finishes
            try:
                s.sendall(b"X")
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            time.sleep(0.05)
            if r.server.connections == 0:
                closed = True
                break
    assert closed, "the server kept a connection that trickled its headers for 10 s"


def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout(serve):
    r = serve(idle_timeout_s=0.3)
    with socket.create_connection(("127.0.0.1", r.port), timeout=10) as s:
        s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        first = s.recv(4096)
        assert first.startswith(b"HTTP/1.1 200 ") and b"Connection: close" not in first
        assert s.recv(4096) == b""  # closed by the server, not by our 10 s socket timeout (that would raise)


def test_json_bodies_have_a_lower_cap_than_binary_ones(serve):
    r = serve(max_body=64 << 10, max_json=4 << 10)
    x = np.zeros((1, 2048), np.float32)  # 8 KiB of tensor
    with oip.OipClient("127.0.0.1", r.port, token=TOKEN) as c:
        body, hlen = oip.encode_request({"x": x}, binary=True)
        status, _, data = c.request("POST", "/echo", body, {oip.HEADER_LENGTH: str(hlen)})
        assert status == 200 and json.loads(data) == {"x": [1, 2048]}
        body, _ = oip.encode_request({"x": x}, binary=False)
        status, _, data = c.request("POST", "/echo", body)
        assert status == 413 and "limit for JSON is 4096" in json.loads(data)["error"]
        big, hlen = oip.encode_request({"x": np.zeros((1, 32 << 10), np.float32)}, binary=True)
        status, _, data = c.request("POST", "/echo", big, {oip.HEADER_LENGTH: str(hlen)})
        assert status == 413 and "the limit is 65536" in json.loads(data)["error"]


def test_a_model_with_its_slots_taken_answers_503_without_reading_the_body(serve):
    r = serve(max_inflight=1, queue_wait_s=0.2)
    holder = threading.Thread(target=_exchange, args=(r.port, (
        f"POST /hold HTTP/1.1\r\nHost: x\r\n{AUTH}Content-Length: 0\r\nConnection: close\r\n\r\n").encode()))
    holder.start()
    try:
        assert r.handler.held.wait(5)
        out = _exchange(r.port, f"POST /hold HTTP/1.1\r\nHost: x\r\n{AUTH}Content-Length: 5\r\n\r\n".encode())
        assert out.startswith(b"HTTP/1.1 503 ") and b"Retry-After: 1" in out and b"is busy" in out
        assert r.state.busy_refusals == 1
    finally:
        r.handler.release.set()
        holder.join(5)


def test_tls_serves_verified_clients_only(serve, tmp_path):
    from tls_certs import make_self_signed

    cert, key = make_self_signed(str(tmp_path))
    r = serve(tls=httpd.tls_context(cert, key), header_timeout_s=1)
    with oip.OipClient("127.0.0.1", r.port, token=TOKEN, ssl_context=oip.client_tls_context(cert)) as c:
        assert c.live()
        status, _, data = c.request("POST", "/echo", *oip.encode_request({"x": np.ones((1, 3), np.float32)},
                                                                        binary=False)[:1])
        assert status == 200 and json.loads(data) == {"x": [1, 3]}
    untrusted = ssl.create_default_context()  # the system CAs do not know our certificate
    with pytest.raises(oip.ProtocolError, match="CERTIFICATE_VERIFY_FAILED"):
        oip.OipClient("127.0.0.1", r.port, ssl_context=untrusted).live()
    try:  # plain HTTP to the TLS port: the handshake fails and the connection ends without an answer
        out = _exchange(r.port, b"GET /v2/health/live HTTP/1.1\r\n\r\n")
    except OSError as e:
        out = repr(e).encode()
    assert not out.startswith(b"HTTP/1.1 200")
    assert _wait_for(lambda: r.server.connections == 0)
    with pytest.raises(ValueError, match="cannot load the certificate"):
        httpd.tls_context(key, cert)


def test_parse_length_takes_ascii_digits_only():
    assert httpd.parse_length("0") == 0 and httpd.parse_length("123") == 123
    for bad in ("", "+5", "-1", "1_0", " 5", "5 ", "\u00b2", "\u0661", "1e3", "9" * 16, None):
        assert httpd.parse_length(bad) is None, bad
