"""HTTP/1.1 server plumbing shared by the board worker (runtime/worker.py) and `edvit-tool serve`
(serve/server.py).

Board side: stdlib + numpy only. A server subclasses `Handler` (setting `server_version`, `logger`, `realm`,
`token_hint` and implementing `_route`), keeps its state in a `ServerState` subclass, and binds with `bind`.
Named httpd, not http, so that it can never shadow the stdlib package. numpy and protocol (which needs numpy)
are imported where used: `edvit-tool --help` must stay light.

What a client on the network can cost us is bounded (`Limits`): at most `max_connections` connections get a
thread (the next ones are answered 503 by the accepting thread and closed); a connection must deliver its whole
request line and headers within `header_timeout_s` of its first byte (a reaper thread shuts the socket
otherwise) and may idle `idle_timeout_s` between requests; a body is read only once a per-model in-flight slot
is free, and JSON bodies (which grow ~14x once parsed) have a lower cap than binary tensors. Framing is strict:
Content-Length is ASCII digits only, Transfer-Encoding is refused, and a body the server did not read ends the
connection, so it can never be parsed as a second request. Optional TLS (`tls_context`): the handshake runs on
the connection's own thread, under the header deadline.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hmac
import json
import logging
import re
import socket
import socketserver
import ssl
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

HEADER_LENGTH = "Inference-Header-Content-Length"  # = protocol.HEADER_LENGTH (protocol needs numpy)
_DIGITS = re.compile(r"[0-9]{1,15}\Z")              # ASCII only: '²'.isdigit() is True, int('+5') == int('1_0')
_SINGLE = ("content-length", "authorization", "transfer-encoding", HEADER_LENGTH.lower())
MAX_LINE = 65536
MAX_HEADERS = 100
LINGER_S = 2.0                  # after refusing a body, drain it this long so the client sees the answer
LINGER_BYTES = 64 << 20         # ... and at most this much of it


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


def parse_length(text: str | None) -> int | None:
    """A byte count from a header: 1-15 ASCII digits -> int; None when absent or malformed."""
    if text is None or not _DIGITS.match(text):
        return None
    return int(text)


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    """Server-side TLS context (TLS 1.2+) from PEM files; ValueError naming the file that does not load."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as e:
        raise ValueError(f"cannot load the certificate {cert} with key {key} ({e})") from None
    return ctx


class HttpError(Exception):
    """Answer `status` with an OIP error body; close: drop the connection after it (body left unread)."""

    def __init__(self, status: int, message: str, close: bool = False, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.close, self.headers = status, message, close, headers or {}


@dataclasses.dataclass
class Limits:
    """What one client may cost the server (see the module docstring)."""

    max_body: int = 16 << 20          # binary tensor bodies
    max_json: int = 4 << 20           # JSON bodies and the JSON header of a binary one
    max_connections: int = 64         # connections with a thread; 503 above
    max_inflight: int = 2             # requests per model past the headers (reading, decoding, running)
    queue_wait_s: float = 10.0        # how long a request waits for an in-flight slot before 503
    header_timeout_s: float = 10.0    # request line + headers, from the first byte (and the TLS handshake)
    idle_timeout_s: float = 15.0      # keep-alive idle time, and the longest pause while reading a body

    def check(self) -> str | None:
        """None, or what is wrong (for the CLI's error line)."""
        if min(self.max_body, self.max_json, self.max_connections, self.max_inflight) < 1:
            return "body caps, max connections and max in-flight must be >= 1"
        if min(self.queue_wait_s, self.header_timeout_s, self.idle_timeout_s) <= 0:
            return "timeouts must be > 0 s"
        return None


class ServerState:
    """Bearer token (None = no auth), limits, per-model in-flight slots, and the count that a shutdown drains."""

    def __init__(self, token: str | None, limits: Limits):
        self.token = token.encode("utf-8") if token else None
        self.limits = limits
        self.draining = False
        self.http_requests = 0
        self.http_errors = 0
        self.busy_refusals = 0
        self._inflight = 0
        self._cond = threading.Condition()
        self._slots: dict = {}

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

    @contextlib.contextmanager
    def slot(self, model: str):
        """Hold one of `model`'s in-flight slots; HttpError(503) when none frees up within queue_wait_s."""
        with self._cond:
            sem = self._slots.get(model)
            if sem is None:
                sem = self._slots[model] = threading.BoundedSemaphore(self.limits.max_inflight)
        if not sem.acquire(timeout=self.limits.queue_wait_s):
            with self._cond:
                self.busy_refusals += 1
            raise HttpError(503, f"model {model!r} is busy ({self.limits.max_inflight} requests in flight for "
                                 f"{self.limits.queue_wait_s:g} s); retry later", close=True,
                            headers={"Retry-After": "1"})
        try:
            yield
        finally:
            sem.release()


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
        raise HttpError(413, f"decompressed body exceeds the limit of {cap} bytes (--max-body-mb / --max-json-mb)")
    return out


def _error_json(message: str) -> bytes:
    return json.dumps({"error": message}, separators=(",", ":")).encode("utf-8")


class _Headers(dict):
    """Request headers, names lower-cased; `get` is case-insensitive like http.client's message."""

    def get(self, name, default=None):
        return dict.get(self, name.lower(), default)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"       # keep-alive
    default_request_version = "HTTP/1.1"  # errors before the version is known still get a status line
    disable_nagle_algorithm = True      # TCP_NODELAY: ~40 ms per request without it (DESIGN §6)
    timeout = None                      # per-phase timeouts come from state.limits (see handle_one_request)
    state: ServerState                  # set on the subclass made by bind
    server: "Server"
    logger = logging.getLogger("edvit.httpd")
    realm = "edvit"                     # WWW-Authenticate realm
    token_hint = "the deployment's token"  # where the client finds the token, for the 401 message
    _unread = 0                         # body bytes the request announced and nobody read yet
    _continue = False                   # the client waits for "100 Continue" before sending its body
    _dead = False                       # the TLS handshake failed: nothing to serve

    def _route(self, method: str, path: str, parts: list) -> tuple:
        """-> (status, body, content type, headers or None); raise HttpError / oip.ProtocolError to refuse."""
        raise NotImplementedError

    def _known_error(self, e: Exception) -> tuple | None:
        """(status, message) for an exception the server expects; None = a bug, answered 500 with its trace."""
        return None

    def _finished(self, method: str, status: int, t0: float, ready: float | None) -> None:
        """Per-request hook after the answer (or failure), before the request leaves the in-flight count."""

    # -- connection and request framing ----------------------------------------------------------------------
    def setup(self):
        super().setup()
        if isinstance(self.connection, ssl.SSLSocket):
            lim = self.state.limits
            self.connection.settimeout(lim.header_timeout_s)
            with self.server.deadline(self.connection, lim.header_timeout_s):
                try:
                    self.connection.do_handshake()
                except (OSError, ValueError) as e:  # ssl.SSLError is an OSError; ValueError: reaped mid-way
                    self.logger.debug("%s: TLS handshake failed (%s)", self.client_address[0], e)
                    self._dead = True

    def handle(self):
        if self._dead:
            return
        super().handle()
        if self._unread:
            self._linger()

    def _linger(self) -> None:
        """Read and drop, for up to LINGER_S, what the client is still sending after we refused its body: it
        then reads our 413/401 instead of a connection reset (memory stays flat: 64 KiB at a time)."""
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(LINGER_S)
            end, left = time.monotonic() + LINGER_S, min(self._unread, LINGER_BYTES)
            while left > 0 and time.monotonic() < end:
                got = self.rfile.read1(min(65536, left))
                if not got:
                    break
                left -= len(got)
        except OSError as e:
            self.logger.debug("%s: lingering close ended (%s)", self.client_address[0], e)

    def handle_one_request(self):
        """One request: wait up to idle_timeout_s for its first byte, then the request line and headers must
        all arrive within header_timeout_s; the body is read (by the route) under the idle timeout per read."""
        lim = self.state.limits
        self.close_connection = True
        try:
            self.connection.settimeout(lim.idle_timeout_s)
            if not self.rfile.peek(1):
                return  # the client closed an idle keep-alive connection
            with self.server.deadline(self.connection, lim.header_timeout_s) as expired:
                self.connection.settimeout(lim.header_timeout_s)
                self.raw_requestline = self.rfile.readline(MAX_LINE + 1)
                if expired():
                    return
                if len(self.raw_requestline) > MAX_LINE:
                    self.requestline, self.request_version = "", self.default_request_version
                    self.send_error(414, "request line too long")
                    return
                parsed = self.parse_request()
                if expired():
                    return
            if not parsed:
                return
            self.connection.settimeout(lim.idle_timeout_s)
            handler = getattr(self, "do_" + self.command, None)
            if handler is None:
                self.send_error(405, f"method {self.command[:20]!r} is not allowed; use GET or POST")
                return
            handler()
            self.wfile.flush()
        except OSError as e:  # timeouts, resets, a socket the reaper shut: this connection is done
            self.logger.debug("%s: connection dropped (%s)", self.client_address[0], e)
            self.close_connection = True

    def parse_request(self) -> bool:
        """Lean, strict HTTP/1.x request-line and header parsing.

        The stdlib's version runs every request's headers through the email package (~60 µs here, several
        times that on a Pi) and accepts what it should not (`Content-Length: +5`). On False an error was sent
        (or the line was empty) and the connection closes.
        """
        self.command, self.request_version, self.close_connection = None, self.default_request_version, True
        self._unread, self._continue = 0, False
        self.requestline = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
        words = self.requestline.split()
        if not words:
            return False
        if len(words) != 3 or not words[2].startswith("HTTP/"):
            self.send_error(400, f"bad request line {self.requestline[:80]!r}; expected 'METHOD /path HTTP/1.1'")
            return False
        self.command, self.path, version = words
        if version not in ("HTTP/1.0", "HTTP/1.1"):
            self.send_error(505, f"unsupported HTTP version {version[:20]!r}; use HTTP/1.1")
            return False
        self.request_version = version
        headers = _Headers()
        for _ in range(MAX_HEADERS + 1):
            line = self.rfile.readline(MAX_LINE + 1)
            if len(line) > MAX_LINE:
                self.send_error(431, "header line too long")
                return False
            if line in (b"\r\n", b"\n"):
                break
            if not line.endswith(b"\n"):
                return False  # the client went away (or the reaper shut it) mid-headers
            name, sep, value = line.decode("iso-8859-1").partition(":")
            key = name.lower()
            # no folded lines, no space before the colon: both are request-smuggling vectors (RFC 9112 §5)
            if not sep or not key or key != key.strip() or " " in key or "\t" in key:
                self.send_error(400, "malformed header line")
                return False
            value = value.strip()
            if key in headers:
                if key in _SINGLE and headers[key] != value:
                    self.send_error(400, f"conflicting {name} headers")
                    return False
                value = headers[key] if key in _SINGLE else f"{headers[key]}, {value}"
            headers[key] = value
        else:
            self.send_error(431, "too many headers")
            return False
        self.headers = headers
        if "transfer-encoding" in headers:
            self.send_error(411, "chunked request bodies are not supported; send Content-Length")
            return False
        length = headers.get("content-length")
        if length is not None:
            n = parse_length(length)
            if n is None:
                self.send_error(400, f"Content-Length must be 1-15 ASCII digits, got {length[:40]!r}")
                return False
            self._unread = n
        if headers.get(HEADER_LENGTH) not in (None, "") and parse_length(headers[HEADER_LENGTH.lower()]) is None:
            self.send_error(400, f"{HEADER_LENGTH} must be 1-15 ASCII digits, got "
                                 f"{headers[HEADER_LENGTH.lower()][:40]!r}")
            return False
        conn = headers.get("connection", "").lower()
        self.close_connection = conn == "close" or (version == "HTTP/1.0" and conn != "keep-alive")
        self._continue = version == "HTTP/1.1" and headers.get("expect", "").lower() == "100-continue"
        return True

    def send_error(self, code, message=None, explain=None):
        """Every error, even one before the request line parsed: a status line and a JSON error body."""
        self.close_connection = True
        reason = self.responses.get(code, ("",))[0]
        try:
            self._send(code, _error_json(message or reason), close=True)
        except OSError as e:
            self.logger.debug("%s: could not send %d (%s)", self.client_address[0], code, e)

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
        # a body nobody read would be parsed as the next request: end the connection instead
        if close or self.state.draining or self._unread:
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
        # the body (if any) is left unread, so this connection cannot be reused (see _send)
        raise HttpError(401, "missing or wrong bearer token; send 'Authorization: Bearer <token>' with "
                             f"{self.token_hint}",
                        headers={"WWW-Authenticate": f'Bearer realm="{self.realm}"'})

    def _request_body(self, method: str):
        """POST: the body (see _read_body); otherwise b"" (a GET's body stays unread and ends the connection)."""
        if method == "POST":
            return self._read_body()
        return b""

    def _read_exact(self, view, progress=None) -> int:
        """Fill `view` from the body; progress(bytes so far), if given, is called as each piece arrives."""
        got = 0
        while got < len(view):
            r = self.rfile.readinto(view[got:]) if progress is None else self.rfile.readinto1(view[got:])
            if not r:
                break
            got += r
            if progress is not None:
                progress(got)
        return got

    def _body_progress(self, header: bytes, data):
        """A callback fed the binary part's progress while it arrives (see _read_exact), or None."""
        return None

    def _read_body(self):
        """The request body: bytes, or (JSON header bytes, binary part as a uint8 array) for binary tensors.

        Caps are checked before a byte is read: binary tensors up to max_body, JSON up to max_json."""
        length = self.headers.get("Content-Length")
        if length is None:
            raise HttpError(411, "Content-Length is required", close=True)
        n, lim = self._unread, self.state.limits
        if n > lim.max_body:
            raise HttpError(413, f"body is {n} bytes, the limit is {lim.max_body} (--max-body-mb); send fewer "
                                 "images per request", close=True)
        encoding = (self.headers.get("Content-Encoding") or "identity").lower()
        hlen = parse_length(self.headers.get(HEADER_LENGTH))
        binary = encoding == "identity" and hlen is not None and 0 < hlen < n
        json_part = hlen if binary else n
        if encoding == "identity" and json_part > lim.max_json:
            raise HttpError(413, f"JSON body is {json_part} bytes, the limit for JSON is {lim.max_json} "
                                 "(--max-json-mb); send the tensors in binary (Inference-Header-Content-Length) "
                                 "or fewer images per request", close=True)
        if self._continue:
            self._continue = False
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # curl waits for this before large bodies
        if binary:
            # binary tensors: JSON header, then the tensor bytes read straight into a fresh (aligned) numpy
            # buffer, so the interpreter gets aligned input without another copy of the body
            import numpy as np

            header = self.rfile.read(hlen)
            data = np.empty(n - hlen, dtype=np.uint8)
            got = self._read_exact(memoryview(data), self._body_progress(header, data)) if len(header) == hlen else 0
            self._unread = n - len(header) - got
            if self._unread:
                raise HttpError(400, f"body ended after {len(header) + got} of {n} bytes", close=True)
            return header, data
        body = self.rfile.read(n)
        self._unread = n - len(body)
        if self._unread:
            raise HttpError(400, f"body ended after {len(body)} of {n} bytes", close=True)
        # a compressed binary request inflates up to the binary cap; its JSON header is checked by its length
        out = decompress(body, encoding, lim.max_body if hlen else lim.max_json)
        if encoding != "identity" and hlen is not None and hlen > lim.max_json:
            raise HttpError(413, f"{HEADER_LENGTH} is {hlen}, the limit for JSON is {lim.max_json} "
                                 "(--max-json-mb)", close=True)
        return out

    def _decode_request(self, body):
        """An OIP infer request (protocol.InferRequest) from what _read_body returned."""
        from . import protocol as oip

        if isinstance(body, tuple):
            return oip.decode_request(body[0], binary=body[1])
        return oip.decode_request(body, self.headers.get(HEADER_LENGTH))


class Server(ThreadingHTTPServer):
    """Thread per connection up to limits.max_connections; above, a 503 from the accepting thread itself."""

    daemon_threads = True          # idle keep-alive connections must not block exit
    block_on_close = False         # in-flight requests are drained by ServerState.wait_idle instead
    request_queue_size = 64
    limits: Limits
    ssl_context: ssl.SSLContext | None = None

    def server_bind(self):
        # HTTPServer.server_bind calls socket.getfqdn(), a DNS lookup that can stall start-up for seconds
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def start_guard(self) -> None:
        """The connection count and the reaper that enforces header deadlines (called by bind)."""
        self._guard = threading.Lock()
        self._connections = 0
        self.refused = 0
        self._deadlines: dict = {}
        self._closing = threading.Event()
        self._reaper = threading.Thread(target=self._reap, name="edvit-httpd-reaper", daemon=True)
        self._reaper.start()

    @property
    def connections(self) -> int:
        return self._connections

    @contextlib.contextmanager
    def deadline(self, sock, seconds: float):
        """While inside, `sock` is shut down if still here after `seconds`; yields expired() -> bool."""
        key = id(sock)
        state = {"expired": False}
        with self._guard:
            self._deadlines[key] = (time.monotonic() + seconds, sock, state)
        try:
            yield lambda: state["expired"]
        finally:
            with self._guard:
                self._deadlines.pop(key, None)

    def _reap(self) -> None:
        step = min(0.25, self.limits.header_timeout_s / 4)
        while not self._closing.wait(step):
            now = time.monotonic()
            with self._guard:
                late = [k for k, (t, _, _) in self._deadlines.items() if t <= now]
                entries = [self._deadlines.pop(k) for k in late]
            for _, sock, state in entries:
                state["expired"] = True
                try:
                    sock.shutdown(socket.SHUT_RDWR)  # its thread's blocked read returns; the thread ends
                except OSError as e:
                    logging.getLogger("edvit.httpd").debug("reaper: %s", e)

    def get_request(self):
        sock, addr = super().get_request()
        if self.ssl_context is not None:  # handshake later, on the connection's thread, under a deadline
            sock = self.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def process_request(self, request, client_address):
        with self._guard:
            full = self._connections >= self.limits.max_connections
            if not full:
                self._connections += 1
        if full:
            self._refuse(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            with self._guard:
                self._connections -= 1
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._guard:
                self._connections -= 1

    def _refuse(self, sock) -> None:
        """503 without a thread: a short non-blocking write, then close (over TLS, just close)."""
        self.refused += 1
        try:
            if not isinstance(sock, ssl.SSLSocket):
                sock.setblocking(False)
                body = _error_json(f"too many connections (limit {self.limits.max_connections}); retry later")
                sock.send(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
                          b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                sock.shutdown(socket.SHUT_WR)
                with contextlib.suppress(BlockingIOError):
                    while sock.recv(65536):  # drain what already arrived, so the close does not reset the 503
                        pass
        except OSError as e:
            logging.getLogger("edvit.httpd").debug("refusing a connection: %s", e)
        finally:
            self.shutdown_request(sock)

    def handle_error(self, request, client_address):
        logging.getLogger("edvit.httpd").exception("connection from %s failed", client_address[0])

    def server_close(self):
        if hasattr(self, "_closing"):
            self._closing.set()
        super().server_close()


def bind(host: str, port: int, handler: type, state: ServerState, server: type = Server,
         ssl_context: ssl.SSLContext | None = None) -> Server:
    """A listening `server` whose `handler` sees `state`; OSError when the address cannot be bound."""
    bound = type("BoundHandler", (handler,), {"state": state})
    cls = type("BoundServer", (server,), {"address_family": socket.AF_INET6 if ":" in host else socket.AF_INET,
                                           "limits": state.limits, "ssl_context": ssl_context})
    srv = cls((host, port), bound)
    srv.start_guard()
    return srv
