"""`edvit-tool serve`: one Open Inference Protocol v2 endpoint for the whole deployed ensemble.

Clients call one URL with any OIP v2 / Triton HTTP client; behind it the coordinator fans each request out to
the boards and fuses the answers. Model `edvit` (also reachable under the build's model name): input
`pixel_values` FP32 [B, C, H, W] (preprocessed per the manifest), outputs `logits` and `probabilities` FP32
[B, N] and `degraded` BOOL [B] (true when a sub-model's slice was missing); response headers `Edvit-Degraded`
and `Edvit-Missing` say the same. `/metrics`: Prometheus text (requests, images, degraded, failures, latency
histogram, per-board up / requests / failures).
"""

from __future__ import annotations

import hmac
import json
import logging
import signal
import socket
import socketserver
import sys
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import click

from .. import __version__

log = logging.getLogger("edvit.serve")
MODEL = "edvit"
OUTPUTS = ("logits", "probabilities", "degraded")

EPILOG = """\b
Examples:
  edvit-tool serve --deployment deployment.json --port 8000
  edvit-tool serve --deployment deployment.json --host 0.0.0.0 --port 8000 --token-file ~/.edvit/serve-token

\b
Then, from any machine that can reach it (stock Triton client):
  import tritonclient.http as th
  c = th.InferenceServerClient("HOST:8000")
  x = th.InferInput("pixel_values", [1, C, H, W], "FP32"); x.set_data_from_numpy(batch)
  c.infer("edvit", [x]).as_numpy("probabilities")
Health: /v2/health/live, /v2/health/ready (503 while no board is up). Metrics: /metrics.
SIGTERM / Ctrl-C: stop accepting, finish in-flight requests, exit 0.
"""


class _HttpError(Exception):
    def __init__(self, status: int, message: str, close: bool = False, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.close, self.headers = status, message, close, headers or {}


class ServeState:
    def __init__(self, coord, token: str | None, max_body: int):
        self.coord = coord
        self.token = token.encode("utf-8") if token else None
        self.max_body = max_body
        self.names = {MODEL, str(coord.manifest.get("model", {}).get("name") or MODEL)}
        self.draining = False
        self.http_requests = 0
        self.http_errors = 0
        self._inflight = 0
        self._cond = threading.Condition()

    def enter(self):
        with self._cond:
            self._inflight += 1
            self.http_requests += 1

    def leave(self, ok: bool):
        with self._cond:
            self._inflight -= 1
            self.http_errors += not ok
            if not self._inflight:
                self._cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._inflight == 0, timeout)

    def metadata(self, name: str) -> dict:
        c, h, w = self.coord.input_shape
        n = len(self.coord.classes)
        return {"name": name, "versions": ["1"], "platform": "edvit_ensemble",
                "inputs": [{"name": self.coord.input_name, "datatype": "FP32", "shape": [-1, c, h, w]}],
                "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, n]},
                            {"name": "probabilities", "datatype": "FP32", "shape": [-1, n]},
                            {"name": "degraded", "datatype": "BOOL", "shape": [-1]}],
                "parameters": {"classes": json.dumps(self.coord.classes), "submodels": ",".join(self.coord.models),
                               "boards": ",".join(self.coord.boards)}}


def metrics_text(stats: dict, state: ServeState) -> str:
    """Prometheus text exposition format 0.0.4."""
    lines = []

    def metric(name, kind, help_, samples):
        lines.append(f"# HELP {name} {help_}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            lab = "{" + ",".join(f'{k}="{_esc(v)}"' for k, v in labels.items()) + "}" if labels else ""
            lines.append(f"{name}{lab} {_num(value)}")

    metric("edvit_requests_total", "counter", "Inference requests sent through the ensemble (one per batch).",
           [({}, stats["requests"])])
    metric("edvit_images_total", "counter", "Images classified.", [({}, stats["images"])])
    metric("edvit_degraded_total", "counter", "Requests answered without every sub-model (degraded).",
           [({}, stats["degraded"])])
    metric("edvit_failed_total", "counter", "Requests no board answered.", [({}, stats["failed"])])
    lines += ["# HELP edvit_request_latency_seconds End-to-end latency of answered requests.",
              "# TYPE edvit_request_latency_seconds histogram"]
    for le, n in stats["latency_buckets"]:
        le_text = "+Inf" if le == float("inf") else repr(le)
        lines.append(f'edvit_request_latency_seconds_bucket{{le="{le_text}"}} {n}')
    lines.append(f"edvit_request_latency_seconds_sum {_num(stats['latency_sum_s'])}")
    lines.append(f"edvit_request_latency_seconds_count {stats['latency_buckets'][-1][1]}")
    boards = stats["boards"]
    metric("edvit_board_up", "gauge", "1 when the board is in rotation.",
           [({"board": b}, int(v["up"])) for b, v in boards.items()])
    metric("edvit_board_requests_total", "counter", "Requests sent to the board.",
           [({"board": b}, v["requests"]) for b, v in boards.items()])
    metric("edvit_board_failures_total", "counter", "Board requests that failed.",
           [({"board": b}, v["failures"]) for b, v in boards.items()])
    metric("edvit_board_deadline_misses_total", "counter", "Board requests that missed the deadline.",
           [({"board": b}, v["deadline_misses"]) for b, v in boards.items()])
    metric("edvit_http_requests_total", "counter", "HTTP requests to this endpoint (all routes).",
           [({}, state.http_requests)])
    return "\n".join(lines) + "\n"


def _dumps(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


def _esc(v) -> str:
    return str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _num(v) -> str:
    return repr(float(v)) if isinstance(v, float) else str(int(v))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"       # keep-alive
    disable_nagle_algorithm = True      # TCP_NODELAY (DESIGN §6)
    server_version = f"edvit-serve/{__version__}"
    timeout = 120
    state: ServeState

    def log_request(self, code="-", size="-"):
        pass

    def log_message(self, format, *args):
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")

    def _send(self, status, body: bytes, ctype="application/json", headers=None, close=False):
        if close or self.state.draining:
            self.close_connection = True
        reason = self.responses.get(status, ("",))[0]
        lines = [f"HTTP/1.1 {status} {reason}", f"Server: {self.server_version}", f"Content-Type: {ctype}",
                 f"Content-Length: {len(body)}"] + [f"{k}: {v}" for k, v in (headers or {}).items()]
        if self.close_connection:
            lines.append("Connection: close")
        self.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)

    def _handle(self, method):
        from ..errors import EdvitError
        from ..runtime import protocol as oip

        self.state.enter()
        ok = False
        try:
            path = urlsplit(self.path).path
            parts = [unquote(p) for p in path.strip("/").split("/")]
            try:
                status, body, ctype, headers = self._route(method, path, parts)
                self._send(status, body, ctype, headers)
                ok = status < 400
            except _HttpError as e:
                self._send(e.status, oip.error_body(e.message), headers=e.headers, close=e.close)
            except oip.ProtocolError as e:
                self._send(e.status or 400, oip.error_body(e.message))
            except EdvitError as e:
                from ..coordinator import NoBoardAnswered

                self._send(503 if isinstance(e, NoBoardAnswered) else 400, oip.error_body(str(e)))
            except (BrokenPipeError, ConnectionResetError):
                raise
            except Exception as e:  # our bug: answer 500, keep serving, keep the trace in the log
                log.exception("%s %s failed", method, self.path)
                self._send(500, oip.error_body(f"internal error: {type(e).__name__}: {e}"))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            self.state.leave(ok)

    def _authorised(self) -> bool:
        if self.state.token is None:
            return True
        scheme, _, token = self.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode("utf-8"), self.state.token)

    def _route(self, method, path, parts):
        from ..runtime import protocol as oip

        st = self.state
        if method == "GET" and parts == ["v2", "health", "live"]:
            return 200, b'{"live":true}', oip.JSON_TYPE, None
        if method == "GET" and parts == ["v2", "health", "ready"]:
            if not st.draining and st.coord.any_up():
                return 200, _dumps({"ready": True, "degraded": not st.coord.ready()}), oip.JSON_TYPE, None
            raise _HttpError(503, "not ready: " + ("shutting down" if st.draining else
                                                   "no board is up; run `edvit-tool status`"))
        if not self._authorised():
            raise _HttpError(401, "missing or wrong bearer token; send 'Authorization: Bearer <token>' with the "
                                  "token in the serve --token-file", close=method == "POST",
                             headers={"WWW-Authenticate": 'Bearer realm="edvit-serve"'})
        body = self._read_body() if method == "POST" else b""
        if method == "GET" and parts == ["metrics"]:
            text = metrics_text(st.coord.stats(), st).encode("utf-8")
            return 200, text, "text/plain; version=0.0.4; charset=utf-8", None
        if method == "GET" and parts == ["v2"]:
            return 200, _dumps({"name": "edvit-serve", "version": __version__,
                                         "extensions": ["binary_tensor_data"]}), oip.JSON_TYPE, None
        if len(parts) >= 3 and parts[:2] == ["v2", "models"]:
            name, rest = parts[2], parts[3:]
            if len(rest) >= 2 and rest[0] == "versions":
                if rest[1] != "1":
                    raise _HttpError(404, f"model {name!r} has only version 1, not {rest[1]!r}")
                rest = rest[2:]
            if name not in st.names:
                raise _HttpError(404, f"unknown model {name!r}; this endpoint serves {', '.join(sorted(st.names))}")
            if method == "GET" and not rest:
                return 200, _dumps(st.metadata(name)), oip.JSON_TYPE, None
            if method == "GET" and rest == ["ready"]:
                if not st.coord.any_up():
                    raise _HttpError(503, "no board is up; run `edvit-tool status`")
                return 200, b'{"ready":true}', oip.JSON_TYPE, None
            if method == "POST" and rest == ["infer"]:
                return self._infer(name, body)
        raise _HttpError(404, f"no route {method} {path}; OIP v2 routes live under /v2, metrics at /metrics")

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding"):
            raise _HttpError(411, "chunked request bodies are not supported; send Content-Length", close=True)
        length = self.headers.get("Content-Length")
        try:
            n = int(length) if length is not None else -1
        except ValueError:
            n = -1
        if n < 0:
            raise _HttpError(411, "a non-negative Content-Length is required", close=True)
        cap = self.state.max_body
        if n > cap:
            raise _HttpError(413, f"body is {n} bytes, the limit is {cap} (--max-body-mb); send fewer images "
                                  "per request", close=True)
        body = self.rfile.read(n)
        if len(body) != n:
            raise _HttpError(400, f"body ended after {len(body)} of {n} bytes", close=True)
        enc = (self.headers.get("Content-Encoding") or "identity").lower()
        if enc == "identity":
            return body
        if enc not in ("gzip", "deflate"):
            raise _HttpError(415, f"Content-Encoding {enc!r} is not supported; use gzip, deflate or none")
        d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS if enc == "gzip" else zlib.MAX_WBITS)
        try:
            out = d.decompress(body, cap + 1)  # bounded: a small bomb must not inflate past the cap
        except zlib.error as e:
            raise _HttpError(400, f"body is not valid {enc} ({e})") from None
        if len(out) > cap:
            raise _HttpError(413, f"decompressed body exceeds the limit of {cap} bytes (--max-body-mb)")
        return out

    def _infer(self, name: str, body: bytes):
        import numpy as np

        from ..runtime import protocol as oip

        coord = self.state.coord
        req = oip.decode_request(body, self.headers.get(oip.HEADER_LENGTH))
        if set(req.inputs) != {coord.input_name}:
            c, h, w = coord.input_shape
            raise _HttpError(400, f"inputs are {sorted(req.inputs)}; model {name} takes exactly one input "
                                  f"{coord.input_name!r} FP32 [B, {c}, {h}, {w}]")
        x = req.inputs[coord.input_name]
        if x.dtype != np.float32:
            raise _HttpError(400, f"input {coord.input_name!r}: datatype {oip.datatype_of(x.dtype)}, expected FP32")
        wanted = req.wanted(list(OUTPUTS))
        res = coord.run(x)
        outs = {"logits": res.logits, "probabilities": res.probabilities,
                "degraded": np.full(res.logits.shape[0], res.degraded, dtype=np.bool_)}
        payload, hlen = oip.encode_response(name, {n: outs[n] for n, _ in wanted}, dict(wanted), request_id=req.id)
        headers = {"Edvit-Degraded": "true" if res.degraded else "false"}
        if res.missing:
            headers["Edvit-Missing"] = ",".join(res.missing)
        if hlen is None:
            return 200, payload, oip.JSON_TYPE, headers
        headers[oip.HEADER_LENGTH] = hlen
        return 200, payload, oip.BINARY_TYPE, headers


class Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128

    def server_bind(self):
        # skip HTTPServer's getfqdn(): a DNS lookup that can stall start-up for seconds
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


def make_server(host: str, port: int, state: ServeState) -> Server:
    from ..errors import EdvitError

    handler = type("BoundHandler", (Handler,), {"state": state})
    cls = type("BoundServer", (Server,), {"address_family": socket.AF_INET6 if ":" in host else socket.AF_INET})
    try:
        return cls((host, port), handler)
    except OSError as e:
        raise EdvitError(f"cannot listen on {host}:{port} ({e.strerror or e}); pick a free --port or an address "
                         "this machine has") from None


@click.command("serve", epilog=EPILOG, context_settings={"max_content_width": 110})
@click.option("--deployment", "deployment", required=True, type=click.Path(dir_okay=False),
              help="deployment.json written by `edvit-tool deploy`.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", required=True, type=click.IntRange(0, 65535), help="Port (0 = any free one, printed).")
@click.option("--token-file", type=click.Path(dir_okay=False),
              help="Require 'Authorization: Bearer <token>' with the token in this file (health routes exempt).")
@click.option("--deadline-ms", type=click.FloatRange(min=1), default=None,
              help="Per-request deadline [default: deployment.json's deadline_ms, else 2000].")
@click.option("--max-body-mb", default=64.0, show_default=True, type=click.FloatRange(min=0.001),
              help="Request body limit (413 above it).")
@click.option("--drain-s", default=10.0, show_default=True, type=click.FloatRange(min=0),
              help="On SIGTERM, wait this long for in-flight requests.")
@click.option("--json", "as_json", is_flag=True, help='Print the ready line as JSON ({"event": "ready", ...}).')
def command(deployment, host, port, token_file, deadline_ms, max_body_mb, drain_s, as_json):
    """Serve the deployed ensemble as one OIP v2 (KServe / Triton HTTP) endpoint."""
    from ..coordinator import Coordinator, read_token

    token = read_token(token_file, "--token-file") if token_file else None
    coord = Coordinator(deployment, deadline_ms=deadline_ms)
    try:
        state = ServeState(coord, token, int(max_body_mb * (1 << 20)))
        server = make_server(host, port, state)
        stop = threading.Event()
        previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        thread.start()
        h, p = server.server_address[:2]
        if as_json:
            click.echo(json.dumps({"event": "ready", "host": h, "port": p, "models": sorted(state.names)}))
        else:
            click.echo(f"serving {', '.join(sorted(state.names))} ({len(coord.models)} sub-models on "
                       f"{len(coord.boards)} boards) on http://{h}:{p}  — metrics at /metrics, Ctrl-C to stop")
        sys.stdout.flush()
        try:
            while not stop.wait(0.5):
                pass
            state.draining = True
            server.shutdown()
            if not state.wait_idle(drain_s):
                log.warning("in-flight requests still running after %.0f s; exiting anyway", drain_s)
        finally:
            if thread.is_alive():
                server.shutdown()
            server.server_close()
            for s, h_ in previous.items():
                signal.signal(s, h_)
    finally:
        coord.close()
    return 0
