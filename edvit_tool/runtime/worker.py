"""The board worker: serves sub-models over the Open Inference Protocol v2 REST API (KServe v2 / Triton).

    python -m edvit_tool.runtime.worker --manifest build/manifest.json --models g0,g1 \\
        --host 10.0.0.21 --port 8001 --token-file ~/.edvit/token [--variant tflite/int8-static] [--threads 2]

Routes: GET /v2/health/live, /v2/health/ready (200 once every model is loaded; no token needed for these two),
GET /v2 (server metadata), GET /v2/models/<m>[/versions/1] (model metadata), GET /v2/models/<m>/ready,
GET /v2/models/<m>/stats (ours: request count, errors, p50 of the last 1000 answered requests' time in the
worker from headers read to answer ready, and of the interpreter call alone),
POST /v2/models/<m>[/versions/1]/infer (JSON tensors and the binary-tensor extension).
Everything else needs `Authorization: Bearer <token file contents>`.

Stdout carries exactly one JSON line, `{"event": "ready", "host", "port", "pid", "models": {...}}` once serving
(port 0 -> the real port), or `{"event": "error", "message"}` before exiting 2. Logs go to stderr.
SIGTERM / SIGINT: stop accepting, let in-flight requests finish, remove the pidfile, exit 0.
Board side: stdlib + numpy + one interpreter.
"""

from __future__ import annotations

import argparse
import collections
import hmac
import json
import logging
import os
import signal
import socket
import socketserver
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import numpy as np

from .. import __version__
from . import backends
from . import manifest as mf
from . import protocol as oip

log = logging.getLogger("edvit.worker")
STATS_WINDOW = 1000  # latencies kept per model for the p50
_PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "litert": "tensorflow_lite", "tflite-runtime": "tensorflow_lite"}


class WorkerError(Exception):
    """Startup failed for a reason the user can fix; exit 2 with this message."""


class _HttpError(Exception):
    def __init__(self, status: int, message: str, close: bool = False, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.close, self.headers = status, message, close, headers or {}


class ServedModel:
    """One model: its manifest artifact, the loaded interpreter (None while loading), a lock and stats."""

    def __init__(self, name: str, art: dict, path: str):
        self.name, self.art, self.path = name, art, path
        self.model: backends.Model | None = None
        self.lock = threading.Lock()  # TFLite interpreters are not thread-safe; ORT is, but one run at a time
        self._stats_lock = threading.Lock()
        self.count = 0
        self.errors = 0
        self.request_ms: collections.deque = collections.deque(maxlen=STATS_WINDOW)
        self.infer_ms: collections.deque = collections.deque(maxlen=STATS_WINDOW)

    @property
    def inputs(self) -> list:
        return self.art.get("inputs") or (self.model.inputs if self.model else [])

    @property
    def outputs(self) -> list:
        return self.art.get("outputs") or (self.model.outputs if self.model else [])

    def record(self, ok: bool, request_ms: float, infer_ms: float | None) -> None:
        with self._stats_lock:
            self.count += 1
            self.errors += not ok
            if ok:  # latencies of answered requests only; fast 4xx would drag the p50 down
                self.request_ms.append(request_ms)
            if ok and infer_ms is not None:
                self.infer_ms.append(infer_ms)

    def stats(self) -> dict:
        with self._stats_lock:
            req, inf = sorted(self.request_ms), sorted(self.infer_ms)
            count, errors = self.count, self.errors
        return {"name": self.name, "count": count, "errors": errors, "window": len(req),
                "p50_ms": _median(req), "infer_p50_ms": _median(inf)}

    def metadata(self) -> dict:
        def spec(t):
            return {"name": t["name"], "datatype": oip.datatype_of(t.get("dtype", "float32")),
                    "shape": list(t["shape"])}
        params = {"artifact": self.art.get("file"), "format": self.art.get("format"),
                  "quant": self.art.get("quant"), "sha256": self.art.get("sha256")}
        if self.model is not None:
            params.update(backend=self.model.backend_name, backend_version=self.model.backend_version)
        platform = _PLATFORMS.get(self.model.backend_name if self.model else "", self.art.get("format", ""))
        return {"name": self.name, "versions": ["1"], "platform": platform,
                "inputs": [spec(t) for t in self.inputs], "outputs": [spec(t) for t in self.outputs],
                "parameters": params}

    def validate(self, inputs: dict) -> None:
        """Names, datatypes and shapes against the manifest; _HttpError(400) naming the tensor otherwise."""
        declared = {t["name"]: t for t in self.inputs}
        for name in inputs:
            if name not in declared:
                raise _HttpError(400, f"unknown input {name!r}; model {self.name} takes {_describe(self.inputs)}")
        batches = set()
        for name, t in declared.items():
            if name not in inputs:
                raise _HttpError(400, f"missing input {name!r}; model {self.name} takes {_describe(self.inputs)}")
            arr, want = inputs[name], t.get("dtype", "float32")
            if arr.dtype != want:
                raise _HttpError(400, f"input {name!r}: datatype {oip.datatype_of(arr.dtype)}, expected "
                                      f"{oip.datatype_of(want)}")
            shape = list(t["shape"])
            if (arr.ndim != len(shape) or arr.ndim == 0 or arr.shape[0] < 1
                    or any(d > 0 and d != a for a, d in zip(arr.shape[1:], shape[1:]))):
                raise _HttpError(400, f"input {name!r}: shape {list(arr.shape)}, expected {shape} "
                                      "(first dim = batch, any size >= 1)")
            batches.add(arr.shape[0])
        if len(batches) > 1:
            raise _HttpError(400, f"inputs disagree on the batch size: {sorted(batches)}")


def _describe(specs: list) -> str:
    return ", ".join(f"{t['name']} {oip.datatype_of(t.get('dtype', 'float32'))} {list(t['shape'])}"
                     for t in specs) or "nothing"


def _median(values: list):
    if not values:
        return None
    n = len(values)
    mid = n // 2
    return round(values[mid] if n % 2 else (values[mid - 1] + values[mid]) / 2, 4)


class WorkerState:
    def __init__(self, models: dict, token: str, max_body: int):
        self.models = models
        self.token = token.encode("utf-8")
        self.max_body = max_body
        self.draining = False
        self._inflight = 0
        self._cond = threading.Condition()

    def ready(self) -> bool:
        return all(m.model is not None for m in self.models.values())

    def enter(self) -> None:
        with self._cond:
            self._inflight += 1

    def leave(self) -> None:
        with self._cond:
            self._inflight -= 1
            if not self._inflight:
                self._cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._inflight == 0, timeout)


class _Headers(dict):
    """Request headers, names lower-cased; `get` is case-insensitive like http.client's message."""

    def get(self, name, default=None):
        return dict.get(self, name.lower(), default)


_SINGLE = ("content-length", "authorization", "transfer-encoding", oip.HEADER_LENGTH.lower())


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"       # keep-alive
    disable_nagle_algorithm = True      # TCP_NODELAY: ~40 ms per request without it (DESIGN §6)
    server_version = f"edvit-worker/{__version__}"
    timeout = 120                       # an idle keep-alive connection is dropped after this many seconds
    state: WorkerState                  # set on the subclass made by make_server
    _served: ServedModel | None = None  # per request: the model an infer hit (for its stats)
    _infer_ms: float | None = None

    # -- plumbing --------------------------------------------------------------------------------------------
    def log_request(self, code="-", size="-"):
        pass  # one line per request is written by _handle, with the time taken

    def log_message(self, format, *args):
        log.debug("%s %s", self.address_string(), format % args)

    def parse_request(self) -> bool:
        """Lean HTTP/1.x request-line and header parsing.

        The stdlib's version runs every request's headers through the email package (~60 µs here, several
        times that on a Pi) — a large share of the worker's per-request budget. Same contract: on False an
        error was sent (or the line was empty) and the connection closes.
        """
        self.command, self.request_version, self.close_connection = None, "HTTP/0.9", True
        self.requestline = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
        words = self.requestline.split()
        if not words:
            return False
        if len(words) != 3 or not words[2].startswith("HTTP/"):
            self.send_error(400, f"Bad request line {self.requestline[:80]!r}")
            return False
        self.command, self.path, version = words
        if version not in ("HTTP/1.0", "HTTP/1.1"):
            self.send_error(505, f"Unsupported HTTP version {version[:20]!r}")
            return False
        self.request_version = version
        headers = _Headers()
        for _ in range(101):
            line = self.rfile.readline(65537)
            if len(line) > 65536:
                self.send_error(431, "Header line too long")
                return False
            if line in (b"\r\n", b"\n", b""):
                break
            name, sep, value = line.decode("iso-8859-1").partition(":")
            key = name.lower()
            # no folded lines, no space before the colon: both are request-smuggling vectors (RFC 9112 §5)
            if not sep or not key or key != key.strip() or " " in key or "\t" in key:
                self.send_error(400, "Malformed header line")
                return False
            value = value.strip()
            if key in headers:
                if key in _SINGLE and headers[key] != value:
                    self.send_error(400, f"Conflicting {name} headers")
                    return False
                value = headers[key] if key in _SINGLE else f"{headers[key]}, {value}"
            headers[key] = value
        else:
            self.send_error(431, "Too many headers")
            return False
        self.headers = headers
        conn = headers.get("connection", "").lower()
        self.close_connection = conn == "close" or (version == "HTTP/1.0" and conn != "keep-alive")
        if version == "HTTP/1.1" and headers.get("expect", "").lower() == "100-continue":
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # curl waits for this before large bodies
        return True

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")

    def _send(self, status: int, body: bytes, content_type: str = oip.JSON_TYPE, headers: dict | None = None,
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
        t0 = time.perf_counter()
        self.state.enter()
        status, ready = 500, None
        try:
            path = urlsplit(self.path).path
            parts = [unquote(p) for p in path.strip("/").split("/")]
            try:
                status, body, ctype, headers = self._route(method, path, parts)
                ready = time.perf_counter()  # stats time the worker's own work, not the client's reading
                self._send(status, body, ctype, headers)
            except _HttpError as e:
                status = e.status
                self._send(e.status, oip.error_body(e.message), headers=e.headers, close=e.close)
            except oip.ProtocolError as e:
                status = e.status or 400
                self._send(status, oip.error_body(e.message))
            except (BrokenPipeError, ConnectionResetError):
                raise
            except Exception as e:  # a bug or an interpreter failure: answer 500, keep serving, keep the trace
                log.exception("%s %s failed", method, self.path)
                status = 500
                self._send(500, oip.error_body(f"internal error: {type(e).__name__}: {e}"))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client went away mid-answer; nothing to tell it
            status = 499
        finally:
            done = time.perf_counter()
            ms = (done - t0) * 1000
            if self._served is not None:
                self._served.record(status == 200, ((ready or done) - t0) * 1000, self._infer_ms)
            self._served = self._infer_ms = None
            self.state.leave()
            log.debug("%s %s %d %.2fms", method, self.path, status, ms)

    # -- routing ---------------------------------------------------------------------------------------------
    def _authorised(self) -> bool:
        got = self.headers.get("Authorization", "")
        scheme, _, token = got.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode("utf-8"), self.state.token)

    def _route(self, method: str, path: str, parts: list) -> tuple:
        st = self.state
        if method == "GET" and parts == ["v2", "health", "live"]:
            return 200, b'{"live":true}', oip.JSON_TYPE, None
        if method == "GET" and parts == ["v2", "health", "ready"]:
            if st.ready() and not st.draining:
                return 200, b'{"ready":true}', oip.JSON_TYPE, None
            raise _HttpError(503, "not ready: " + ("shutting down" if st.draining else "loading models"))
        if not self._authorised():
            # the body (if any) is left unread, so this connection cannot be reused
            raise _HttpError(401, "missing or wrong bearer token; send 'Authorization: Bearer <token>' with the "
                                  "token from deployment.json", close=method == "POST",
                             headers={"WWW-Authenticate": 'Bearer realm="edvit-worker"'})
        if method != "POST" and self.headers.get("Content-Length", "0").strip() not in ("", "0"):
            self.close_connection = True  # a GET with a body: we do not read it, so this connection is done
        body = self._read_body() if method == "POST" else b""
        if parts == ["v2"] and method == "GET":
            return 200, oip._json_dumps({"name": "edvit-worker", "version": __version__,
                                         "extensions": ["binary_tensor_data"]}), oip.JSON_TYPE, None
        if len(parts) >= 3 and parts[:2] == ["v2", "models"]:
            name, rest = parts[2], parts[3:]
            if len(rest) >= 2 and rest[0] == "versions":
                if rest[1] != "1":
                    raise _HttpError(404, f"model {name!r} has only version 1, not {rest[1]!r}")
                rest = rest[2:]
            served = st.models.get(name)
            if served is None:
                raise _HttpError(404, f"unknown model {name!r}; this worker serves {', '.join(st.models)}")
            if method == "GET" and not rest:
                return 200, oip._json_dumps(served.metadata()), oip.JSON_TYPE, None
            if method == "GET" and rest == ["ready"]:
                if served.model is None:
                    raise _HttpError(503, f"model {name!r} is still loading")
                return 200, b'{"ready":true}', oip.JSON_TYPE, None
            if method == "GET" and rest == ["stats"]:
                return 200, oip._json_dumps(served.stats()), oip.JSON_TYPE, None
            if method == "POST" and rest == ["infer"]:
                self._served = served
                return self._infer(served, body)
        raise _HttpError(404, f"no route {method} {path}; OIP v2 routes live under /v2")

    def _read_body(self):
        """The request body: bytes, or (JSON header bytes, binary part as a uint8 array) for binary tensors."""
        if self.headers.get("Transfer-Encoding"):
            raise _HttpError(411, "chunked request bodies are not supported; send Content-Length", close=True)
        length = self.headers.get("Content-Length")
        if length is None:
            raise _HttpError(411, "Content-Length is required", close=True)
        try:
            n = int(length)
        except ValueError:
            n = -1
        if n < 0:
            raise _HttpError(400, f"Content-Length must be a non-negative integer, got {length!r}", close=True)
        cap = self.state.max_body
        if n > cap:
            raise _HttpError(413, f"body is {n} bytes, the limit is {cap} (--max-body-mb); send fewer images "
                                  "per request", close=True)
        encoding = (self.headers.get("Content-Encoding") or "identity").lower()
        hlen = self.headers.get(oip.HEADER_LENGTH, "")
        if encoding == "identity" and hlen.isdigit() and 0 < int(hlen) < n:
            # binary tensors: JSON header, then the tensor bytes read straight into a fresh (aligned) numpy
            # buffer, so the interpreter gets aligned input without another copy of the body
            header = self.rfile.read(int(hlen))
            binary = np.empty(n - int(hlen), dtype=np.uint8)
            view, got = memoryview(binary), 0
            while len(header) == int(hlen) and got < len(view):
                r = self.rfile.readinto(view[got:])
                if not r:
                    break
                got += r
            if len(header) + got != n:
                raise _HttpError(400, f"body ended after {len(header) + got} of {n} bytes", close=True)
            return header, binary
        body = self.rfile.read(n)
        if len(body) != n:
            raise _HttpError(400, f"body ended after {len(body)} of {n} bytes", close=True)
        if encoding == "identity":
            return body
        if encoding not in ("gzip", "deflate"):
            raise _HttpError(415, f"Content-Encoding {encoding!r} is not supported; use gzip, deflate or none")
        d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
        try:
            out = d.decompress(body, cap + 1)  # bounded: a small bomb must not inflate past the cap
        except zlib.error as e:
            raise _HttpError(400, f"body is not valid {encoding} ({e})") from None
        if len(out) > cap:
            raise _HttpError(413, f"decompressed body exceeds the limit of {cap} bytes (--max-body-mb)")
        return out

    def _infer(self, served: ServedModel, body) -> tuple:
        if served.model is None:
            raise _HttpError(503, f"model {served.name!r} is still loading")
        if isinstance(body, tuple):
            req = oip.decode_request(body[0], binary=body[1])
        else:
            req = oip.decode_request(body, self.headers.get(oip.HEADER_LENGTH))
        served.validate(req.inputs)
        wanted = req.wanted([t["name"] for t in served.outputs])
        t0 = time.perf_counter()
        with served.lock:
            outs = served.model.run(req.inputs)
        self._infer_ms = (time.perf_counter() - t0) * 1000
        payload, hlen = oip.encode_response(served.name, {n: outs[n] for n, _ in wanted}, dict(wanted),
                                            request_id=req.id)
        if hlen is None:
            return 200, payload, oip.JSON_TYPE, None
        return 200, payload, oip.BINARY_TYPE, {oip.HEADER_LENGTH: hlen}


class Server(ThreadingHTTPServer):
    daemon_threads = True          # idle keep-alive connections must not block exit
    block_on_close = False         # in-flight requests are drained by WorkerState.wait_idle instead
    request_queue_size = 64

    def server_bind(self):
        # HTTPServer.server_bind calls socket.getfqdn(), a DNS lookup that can stall a board for seconds
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


def make_server(host: str, port: int, state: WorkerState) -> Server:
    handler = type("BoundHandler", (Handler,), {"state": state})
    server_cls = type("BoundServer", (Server,), {"address_family": socket.AF_INET6 if ":" in host
                                                 else socket.AF_INET})
    try:
        return server_cls((host, port), handler)
    except OSError as e:
        raise WorkerError(f"cannot listen on {host}:{port} ({e.strerror or e}); pick a free port or an address "
                          "this board has") from None


def resolve_models(manifest: dict, base_dir: str, names: list, variants: str | None,
                   artifact_dir: str | None) -> dict:
    """{name: ServedModel} with each artifact chosen, found on disk and its sha256 checked (not loaded yet)."""
    default, per_model = None, {}
    for item in filter(None, (v.strip() for v in (variants or "").split(","))):
        if "=" in item:
            k, _, v = item.partition("=")
            per_model[k.strip()] = v.strip()
        else:
            default = item
    root = artifact_dir or base_dir
    served = {}
    for name in names:
        try:
            art, note = mf.select_artifact(manifest, name, per_model.get(name, default))
        except mf.ManifestError as e:
            raise WorkerError(str(e)) from None
        if note:
            log.warning("%s", note)
        path = os.path.join(root, art["file"])
        if not os.path.isfile(path):  # a flat upload dir holds files without their build subdirectories
            path = os.path.join(root, os.path.basename(art["file"]))
        if not os.path.isfile(path):
            raise WorkerError(f"{name}: artifact {art['file']} not found under {root}; upload it or pass "
                              "--artifact-dir")
        size = os.path.getsize(path)
        if size != art.get("bytes", size) or mf.sha256_file(path) != art["sha256"]:
            raise WorkerError(f"{path}: sha256 differs from the manifest ({art['sha256'][:12]}…); the file is "
                              "stale or corrupt, upload it again")
        served[name] = ServedModel(name, art, path)
    return served


def load_models(served: dict, backend: str | None, threads: int) -> None:
    for s in served.values():
        t0 = time.perf_counter()
        try:
            s.model = backends.load_model(s.path, backend=backend, threads=threads,
                                          inputs=s.art.get("inputs"), outputs=s.art.get("outputs"))
        except backends.BackendError as e:
            raise WorkerError(f"{s.name}: {e}") from None
        log.info("loaded %s (%s) on %s %s in %.0f ms", s.name, mf.artifact_key(s.art), s.model.backend_name,
                 s.model.backend_version, (time.perf_counter() - t0) * 1000)


def read_token(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    except OSError as e:
        raise WorkerError(f"--token-file {path}: cannot read it ({e.strerror}); write the deployment's token "
                          "there") from None
    if not token or any(c.isspace() for c in token):
        raise WorkerError(f"--token-file {path}: must hold one token (no spaces), it is empty or has several")
    if os.stat(path).st_mode & 0o077:
        log.warning("--token-file %s is readable by other users; chmod 600 it", path)
    return token


def _write_pidfile(path: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{os.getpid()}\n")
    os.replace(tmp, path)


def _remove_pidfile(path: str) -> None:
    try:
        with open(path) as f:
            mine = f.read().strip() == str(os.getpid())
        if mine:  # a newer worker may have taken the file over
            os.remove(path)
    except FileNotFoundError:
        pass


def _emit(event: dict) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


class _ArgParser(argparse.ArgumentParser):
    def error(self, message):
        raise WorkerError(f"{self.prog}: {message}")


def parse_args(argv):
    p = _ArgParser(prog="python -m edvit_tool.runtime.worker",
                   description="Serve ED-ViT sub-models over the Open Inference Protocol v2.")
    p.add_argument("--manifest", required=True, help="build dir or its manifest.json")
    p.add_argument("--models", required=True, help="comma-separated model names, e.g. g0,g1 or fusion")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8001, help="port (0 = any free port, printed on the ready line)")
    p.add_argument("--token-file", required=True, help="file holding the bearer token")
    p.add_argument("--artifact-dir", help="where the artifact files are (default: the manifest's dir)")
    p.add_argument("--variant", help="FORMAT/QUANT for every model, and/or NAME=FORMAT/QUANT, comma-separated")
    p.add_argument("--backend", choices=backends.BACKENDS, help="force an interpreter")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads per model")
    p.add_argument("--max-body-mb", type=float, default=16.0, help="request body limit (413 above it)")
    p.add_argument("--drain-s", type=float, default=10.0, help="on SIGTERM, wait this long for in-flight requests")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.add_argument("--pidfile", help="write our pid here; removed on exit")
    a = p.parse_args(argv)
    if a.threads < 1 or a.max_body_mb <= 0 or not 0 <= a.port <= 65535:
        raise WorkerError("--threads must be >= 1, --max-body-mb > 0 and --port in 0..65535")
    return a


def serve(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        manifest, base_dir = mf.load_path(args.manifest)
    except mf.ManifestError as e:
        raise WorkerError(str(e)) from None
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    if not names or len(set(names)) != len(names):
        raise WorkerError(f"--models {args.models!r}: give distinct model names, e.g. g0,g1")
    served = resolve_models(manifest, base_dir, names, args.variant, args.artifact_dir)
    state = WorkerState(served, read_token(args.token_file), int(args.max_body_mb * (1 << 20)))

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server = make_server(args.host, args.port, state)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    try:
        if args.pidfile:
            _write_pidfile(args.pidfile)
        thread.start()  # live answers while models load; ready only after
        load_models(served, args.backend, args.threads)
        host, port = server.server_address[:2]
        _emit({"event": "ready", "host": host, "port": port, "pid": os.getpid(),
               "models": {n: {"artifact": mf.artifact_key(s.art), "backend": s.model.backend_name}
                          for n, s in served.items()}})
        log.info("serving %s on %s:%d", ", ".join(served), host, port)
        while not stop.wait(0.5):
            pass
        log.info("shutting down: finishing in-flight requests")
        state.draining = True
        server.shutdown()
        if not state.wait_idle(args.drain_s):
            log.warning("in-flight requests still running after %.0f s; exiting anyway", args.drain_s)
    finally:
        if thread.is_alive():
            server.shutdown()
        server.server_close()
        if args.pidfile:
            _remove_pidfile(args.pidfile)
    return 0


def main(argv=None) -> int:
    try:
        return serve(argv)
    except WorkerError as e:
        _emit({"event": "error", "message": str(e)})
        print(f"Error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
