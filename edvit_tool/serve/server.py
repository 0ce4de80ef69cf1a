"""The HTTP service of `edvit-tool serve`: one Open Inference Protocol v2 endpoint for the whole deployed ensemble.

Clients call one URL with any OIP v2 / Triton HTTP client; behind it the coordinator fans each request out to
the boards and fuses the answers. Model `edvit` (also reachable under the build's model name): input
`pixel_values` FP32 [B, C, H, W] (preprocessed per the manifest), UINT8 [B, H, W, C] (pixels, any size) or BYTES
[B] (png/jpg files; passed to the boards as they are when the deployment's wire allows it), outputs `logits`
and `probabilities` FP32 [B, N] and `degraded` BOOL [B] (true when a sub-model's slice was missing); response headers `Edvit-Degraded`
and `Edvit-Missing` say the same. `/metrics`: Prometheus text (requests, images, degraded, failures, latency
histogram, per-board up / requests / failures). The CLI (cli/serve.py) only parses flags and calls `run`.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import signal
import sys
import threading

from .. import __version__
from ..errors import EdvitError
from ..runtime import httpd
from .coordinator import NoBoardAnswered

log = logging.getLogger("edvit.serve")
MODEL = "edvit"
OUTPUTS = ("logits", "probabilities", "degraded")


class ServeState(httpd.ServerState):
    def __init__(self, coord, token: str | None, limits: httpd.Limits):
        super().__init__(token, limits)
        self.coord = coord
        self.names = {MODEL, str(coord.manifest.get("model", {}).get("name") or MODEL)}

    def metadata(self, name: str) -> dict:
        c, h, w = self.coord.input_shape
        n = len(self.coord.classes)
        return {"name": name, "versions": ["1"], "platform": "edvit_ensemble",
                "inputs": [{"name": self.coord.input_name, "datatype": "FP32", "shape": [-1, c, h, w]}],
                # also UINT8 [-1, H, W, C] pixels or BYTES [-1] image files (one input, any of the three)
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


class Handler(httpd.Handler):
    server_version = f"edvit-serve/{__version__}"
    logger = log
    realm = "edvit-serve"
    token_hint = "the token in the serve --token-file"
    state: ServeState

    def _known_error(self, e: Exception) -> tuple | None:
        if isinstance(e, EdvitError):
            return 503 if isinstance(e, NoBoardAnswered) else 400, str(e)
        return None

    def _route(self, method, path, parts):
        from ..runtime import protocol as oip

        st = self.state
        if method == "GET" and parts == ["v2", "health", "live"]:
            return 200, b'{"live":true}', oip.JSON_TYPE, None
        if method == "GET" and parts == ["v2", "health", "ready"]:
            if not st.draining and st.coord.any_up():
                return 200, _dumps({"ready": True, "degraded": not st.coord.ready()}), oip.JSON_TYPE, None
            raise httpd.HttpError(503, "not ready: " + ("shutting down" if st.draining else
                                                        "no board is up; run `edvit-tool status`"))
        self._authorise(method)
        model = httpd.model_path(parts)
        if model is not None and method == "POST" and model[1] == ["infer"] and model[0] in st.names:
            with st.slot(MODEL):  # the body is read only with a slot: bounded memory under load
                return self._infer(model[0], self._request_body(method))
        self._request_body(method)  # a POST to another route: read, so the connection stays usable
        if method == "GET" and parts == ["metrics"]:
            text = metrics_text(st.coord.stats(), st).encode("utf-8")
            return 200, text, "text/plain; version=0.0.4; charset=utf-8", None
        if method == "GET" and parts == ["v2"]:
            return 200, _dumps({"name": "edvit-serve", "version": __version__,
                                         "extensions": ["binary_tensor_data"]}), oip.JSON_TYPE, None
        if model is not None:
            name, rest = model
            if name not in st.names:
                raise httpd.HttpError(404, f"unknown model {name!r}; this endpoint serves "
                                           f"{', '.join(sorted(st.names))}")
            if method == "GET" and not rest:
                return 200, _dumps(st.metadata(name)), oip.JSON_TYPE, None
            if method == "GET" and rest == ["ready"]:
                if not st.coord.any_up():
                    raise httpd.HttpError(503, "no board is up; run `edvit-tool status`")
                return 200, b'{"ready":true}', oip.JSON_TYPE, None
        raise httpd.HttpError(404, f"no route {method} {path}; OIP v2 routes live under /v2, metrics at /metrics")

    def _infer(self, name: str, body):
        import numpy as np

        from ..runtime import protocol as oip

        coord = self.state.coord
        req = self._decode_request(body)
        if set(req.inputs) != {coord.input_name}:
            c, h, w = coord.input_shape
            raise httpd.HttpError(400, f"inputs are {sorted(req.inputs)}; model {name} takes exactly one input "
                                       f"{coord.input_name!r} FP32 [B, {c}, {h}, {w}]")
        x = req.inputs[coord.input_name]
        if x.dtype not in (np.float32, np.uint8) and x.dtype.kind != "O":
            raise httpd.HttpError(400, f"input {coord.input_name!r}: datatype {oip.datatype_of(x.dtype)}, "
                                       "expected FP32 (preprocessed), UINT8 (pixels) or BYTES (image files)")
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


class Server(httpd.Server):
    request_queue_size = 128


def make_server(host: str, port: int, state: ServeState, tls=None) -> Server:
    try:
        return httpd.bind(host, port, Handler, state, Server, ssl_context=tls)
    except OSError as e:
        raise EdvitError(f"cannot listen on {host}:{port} ({e.strerror or e}); pick a free --port or an address "
                         "this machine has") from None




def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, 'localhost')."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_exposure(host: str, token_file: str | None, insecure: bool, tls: bool) -> None:
    """Refuse to listen beyond this machine without a token, unless the user said --insecure."""
    if is_loopback(host):
        return
    if token_file is None and not insecure:
        raise EdvitError(f"--host {host}: other machines could call this endpoint without a token; give "
                         "--token-file (clients then send 'Authorization: Bearer <token>'), or --insecure to "
                         "serve without one")
    if not tls:
        log.warning("serving plain HTTP on %s: anyone on the network path can read the images, the answers and "
                    "the bearer token; give --tls-cert/--tls-key to serve HTTPS", host)


def run(coord, host: str, port: int, token: str | None, limits: httpd.Limits, tls=None, drain_s: float = 10.0,
        ready_line=print) -> int:
    """Serve `coord` on host:port until SIGTERM / SIGINT, then drain in-flight requests (up to drain_s).

    ready_line(text) is called once listening: a JSON event when the caller wants one (see cli/serve.py)."""
    state = ServeState(coord, token, limits)
    server = make_server(host, port, state, tls)
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        h, p = server.server_address[:2]
        ready_line({"event": "ready", "host": h, "port": p, "tls": tls is not None, "models": sorted(state.names),
                    "url": f"{'https' if tls else 'http'}://{h}:{p}"})
        sys.stdout.flush()
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
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0
