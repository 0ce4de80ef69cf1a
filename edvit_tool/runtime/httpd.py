"""HTTP/1.1 server plumbing shared by the board worker (runtime/worker.py) and `edvit-tool serve` (cli/serve.py).

Board side: stdlib + numpy only. A server subclasses `Handler` (setting `server_version`, `logger`, `realm`,
`token_hint` and implementing `_route`), keeps its state in a `ServerState` subclass, and binds with `bind`.
Named httpd, not http, so that it can never shadow the stdlib package. numpy and protocol (which needs numpy)
are imported where used: `edvit-tool --help` imports cli/serve.py, which subclasses Handler, and must stay light.
"""

from __future__ import annotations

import hmac
import logging
import socketserver
import socket
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit


def read_token_file(path: str) -> str:
    """The bearer token in `path` (one word). ValueError with the reason otherwise; the token is never logged."""
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    except OSError as e:
        raise ValueError(f"cannot read it ({e.strerror})") from None
    if not token or any(c.isspace() for c in token):
        raise ValueError("must hold one token (no spaces); it is empty or has several")
    return token


class HttpError(Exception):
    """Answer `status` with an OIP error body; close: drop the connection after it (body left unread)."""

    def __init__(self, status: int, message: str, close: bool = False, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.close, self.headers = status, message, close, headers or {}


class ServerState:
    """Bearer token (None = no auth), body cap, and the in-flight count that a shutdown drains."""

    def __init__(self, token: str | None, max_body: int):
        self.token = token.encode("utf-8") if token else None
        self.max_body = max_body
        self.draining = False
        self.http_requests = 0
        self.http_errors = 0
        self._inflight = 0
        self._cond = threading.Condition()

    def enter(self) -> None:
        with self._cond:
            self._inflight += 1
            self.http_requests += 1

    def leave(self, ok: bool = True) -> None:
        with self._cond:
            self._inflight -= 1
            self.http_errors += not ok
            if not self._inflight:
                self._cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._inflight == 0, timeout)


def model_path(parts: list) -> tuple | None:
    """['v2', 'models', NAME, ('versions', '1',) ...REST] -> (NAME, REST); None for any other path."""
    if len(parts) < 3 or parts[:2] != ["v2", "models"]:
        return None
    name, rest = parts[2], parts[3:]
    if len(rest) >= 2 and rest[0] == "versions":
        if rest[1] != "1":
            raise HttpError(404, f"model {name!r} has only version 1, not {rest[1]!r}")
        rest = rest[2:]
    return name, rest


def decompress(body: bytes, encoding: str, cap: int) -> bytes:
    """Undo Content-Encoding gzip / deflate / identity, never inflating past `cap` bytes."""
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise HttpError(415, f"Content-Encoding {encoding!r} is not supported; use gzip, deflate or none")
    d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
    try:
        out = d.decompress(body, cap + 1)  # bounded: a small bomb must not inflate past the cap
    except zlib.error as e:
        raise HttpError(400, f"body is not valid {encoding} ({e})") from None
    if len(out) > cap:
        raise HttpError(413, f"decompressed body exceeds the limit of {cap} bytes (--max-body-mb)")
    return out


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"       # keep-alive
    disable_nagle_algorithm = True      # TCP_NODELAY: ~40 ms per request without it (DESIGN §6)
    timeout = 120                       # an idle keep-alive connection is dropped after this many seconds
    state: ServerState                  # set on the subclass made by bind
    logger = logging.getLogger("edvit.httpd")
    realm = "edvit"                     # WWW-Authenticate realm
    token_hint = "the deployment's token"  # where the client finds the token, for the 401 message

    def _route(self, method: str, path: str, parts: list) -> tuple:
        """-> (status, body, content type, headers or None); raise HttpError / oip.ProtocolError to refuse."""
        raise NotImplementedError

    def _known_error(self, e: Exception) -> tuple | None:
        """(status, message) for an exception the server expects; None = a bug, answered 500 with its trace."""
        return None

    def _finished(self, method: str, status: int, t0: float, ready: float | None) -> None:
        """Per-request hook after the answer (or failure), before the request leaves the in-flight count."""

    # -- plumbing --------------------------------------------------------------------------------------------
    def log_request(self, code="-", size="-"):
        pass  # one line per request is written by _handle, with the time taken

    def log_message(self, format, *args):
        self.logger.debug("%s %s", self.address_string(), format % args)

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")

    def _send(self, status: int, body: bytes, content_type: str = "application/json", headers: dict | None = None,
              close: bool = False) -> None:
        if close or self.state.draining:
            self.close_connection = True
        reason = self.responses.get(status, ("",))[0]
        lines = [f"HTTP/1.1 {status} {reason}", f"Server: {self.server_version}",
                 f"Content-Type: {content_type}", f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if self.close_connection:
            lines.append("Connection: close")
        elif self.request_version == "HTTP/1.0":
            lines.append("Connection: keep-alive")
        # one write: status line, headers and body leave in a single segment where they fit
        self.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)

    def _handle(self, method: str) -> None:
        from . import protocol as oip

        t0 = time.perf_counter()
        self.state.enter()
        status, ready = 500, None
        try:
            path = urlsplit(self.path).path
            parts = [unquote(p) for p in path.strip("/").split("/")]
            try:
                status, body, ctype, headers = self._route(method, path, parts)
                ready = time.perf_counter()  # stats time the server's own work, not the client's reading
                self._send(status, body, ctype, headers)
            except HttpError as e:
                status = e.status
                self._send(e.status, oip.error_body(e.message), headers=e.headers, close=e.close)
            except oip.ProtocolError as e:
                status = e.status or 400
                self._send(status, oip.error_body(e.message))
            except (BrokenPipeError, ConnectionResetError):
                raise
            except Exception as e:
                known = self._known_error(e)
                if known is None:  # a bug or an interpreter failure: answer 500, keep serving, keep the trace
                    self.logger.exception("%s %s failed", method, self.path)
                    known = 500, f"internal error: {type(e).__name__}: {e}"
                status = known[0]
                self._send(status, oip.error_body(known[1]))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client went away mid-answer; nothing to tell it
            status = 499
        finally:
            self._finished(method, status, t0, ready)
            self.state.leave(status < 400)
            self.logger.debug("%s %s %d %.2fms", method, self.path, status, (time.perf_counter() - t0) * 1000)

    # -- auth and body ---------------------------------------------------------------------------------------
    def _authorise(self, method: str) -> None:
        """HttpError(401) unless the request carries the state's bearer token (or the state has none)."""
        token = self.state.token
        if token is None:
            return
        scheme, _, got = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(got.strip().encode("utf-8"), token):
            return
        # the body (if any) is left unread, so this connection cannot be reused
        raise HttpError(401, "missing or wrong bearer token; send 'Authorization: Bearer <token>' with "
                             f"{self.token_hint}", close=method == "POST",
                        headers={"WWW-Authenticate": f'Bearer realm="{self.realm}"'})

    def _request_body(self, method: str):
        """POST: the body (see _read_body); otherwise b"", and a GET's unread body ends the connection."""
        if method == "POST":
            return self._read_body()
        if self.headers.get("Content-Length", "0").strip() not in ("", "0"):
            self.close_connection = True  # a GET with a body: we do not read it, so this connection is done
        return b""

    def _read_body(self):
        """The request body: bytes, or (JSON header bytes, binary part as a uint8 array) for binary tensors."""
        from . import protocol as oip
        if self.headers.get("Transfer-Encoding"):
            raise HttpError(411, "chunked request bodies are not supported; send Content-Length", close=True)
        length = self.headers.get("Content-Length")
        if length is None:
            raise HttpError(411, "Content-Length is required", close=True)
        try:
            n = int(length)
        except ValueError:
            n = -1
        if n < 0:
            raise HttpError(400, f"Content-Length must be a non-negative integer, got {length!r}", close=True)
        cap = self.state.max_body
        if n > cap:
            raise HttpError(413, f"body is {n} bytes, the limit is {cap} (--max-body-mb); send fewer images "
                                 "per request", close=True)
        encoding = (self.headers.get("Content-Encoding") or "identity").lower()
        hlen = self.headers.get(oip.HEADER_LENGTH, "")
        if encoding == "identity" and hlen.isdigit() and 0 < int(hlen) < n:
            # binary tensors: JSON header, then the tensor bytes read straight into a fresh (aligned) numpy
            # buffer, so the interpreter gets aligned input without another copy of the body
            import numpy as np

            header = self.rfile.read(int(hlen))
            binary = np.empty(n - int(hlen), dtype=np.uint8)
            view, got = memoryview(binary), 0
            while len(header) == int(hlen) and got < len(view):
                r = self.rfile.readinto(view[got:])
                if not r:
                    break
                got += r
            if len(header) + got != n:
                raise HttpError(400, f"body ended after {len(header) + got} of {n} bytes", close=True)
            return header, binary
        body = self.rfile.read(n)
        if len(body) != n:
            raise HttpError(400, f"body ended after {len(body)} of {n} bytes", close=True)
        return decompress(body, encoding, cap)

    def _decode_request(self, body):
        """An OIP infer request (protocol.InferRequest) from what _read_body returned."""
        from . import protocol as oip

        if isinstance(body, tuple):
            return oip.decode_request(body[0], binary=body[1])
        return oip.decode_request(body, self.headers.get(oip.HEADER_LENGTH))


class Server(ThreadingHTTPServer):
    daemon_threads = True          # idle keep-alive connections must not block exit
    block_on_close = False         # in-flight requests are drained by ServerState.wait_idle instead
    request_queue_size = 64

    def server_bind(self):
        # HTTPServer.server_bind calls socket.getfqdn(), a DNS lookup that can stall start-up for seconds
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


def bind(host: str, port: int, handler: type, state: ServerState, server: type = Server) -> Server:
    """A listening `server` whose `handler` sees `state`; OSError when the address cannot be bound."""
    bound = type("BoundHandler", (handler,), {"state": state})
    cls = type("BoundServer", (server,), {"address_family": socket.AF_INET6 if ":" in host else socket.AF_INET})
    return cls((host, port), bound)
