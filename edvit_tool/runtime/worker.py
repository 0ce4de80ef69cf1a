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
import json
import logging
import os
import signal
import sys
import threading
import time

from .. import __version__
from . import backends
from . import httpd
from . import manifest as mf
from . import protocol as oip

log = logging.getLogger("edvit.worker")
STATS_WINDOW = 1000  # latencies kept per model for the p50
_PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "litert": "tensorflow_lite", "tflite-runtime": "tensorflow_lite"}


class WorkerError(Exception):
    """Startup failed for a reason the user can fix; exit 2 with this message."""


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
        """Names, datatypes and shapes against the manifest; httpd.HttpError(400) naming the tensor otherwise."""
        declared = {t["name"]: t for t in self.inputs}
        for name in inputs:
            if name not in declared:
                raise httpd.HttpError(400, f"unknown input {name!r}; model {self.name} takes {_describe(self.inputs)}")
        batches = set()
        for name, t in declared.items():
            if name not in inputs:
                raise httpd.HttpError(400, f"missing input {name!r}; model {self.name} takes {_describe(self.inputs)}")
            arr, want = inputs[name], t.get("dtype", "float32")
            if arr.dtype != want:
                raise httpd.HttpError(400, f"input {name!r}: datatype {oip.datatype_of(arr.dtype)}, expected "
                                      f"{oip.datatype_of(want)}")
            shape = list(t["shape"])
            if (arr.ndim != len(shape) or arr.ndim == 0 or arr.shape[0] < 1
                    or any(d > 0 and d != a for a, d in zip(arr.shape[1:], shape[1:]))):
                raise httpd.HttpError(400, f"input {name!r}: shape {list(arr.shape)}, expected {shape} "
                                      "(first dim = batch, any size >= 1)")
            batches.add(arr.shape[0])
        if len(batches) > 1:
            raise httpd.HttpError(400, f"inputs disagree on the batch size: {sorted(batches)}")


def _describe(specs: list) -> str:
    return ", ".join(f"{t['name']} {oip.datatype_of(t.get('dtype', 'float32'))} {list(t['shape'])}"
                     for t in specs) or "nothing"


def _median(values: list):
    if not values:
        return None
    n = len(values)
    mid = n // 2
    return round(values[mid] if n % 2 else (values[mid - 1] + values[mid]) / 2, 4)


class WorkerState(httpd.ServerState):
    def __init__(self, models: dict, token: str, max_body: int):
        super().__init__(token, max_body)
        self.models = models

    def ready(self) -> bool:
        return all(m.model is not None for m in self.models.values())


class _Headers(dict):
    """Request headers, names lower-cased; `get` is case-insensitive like http.client's message."""

    def get(self, name, default=None):
        return dict.get(self, name.lower(), default)


_SINGLE = ("content-length", "authorization", "transfer-encoding", oip.HEADER_LENGTH.lower())


class Handler(httpd.Handler):
    server_version = f"edvit-worker/{__version__}"
    logger = log
    realm = "edvit-worker"
    token_hint = "the token from deployment.json"
    state: WorkerState                  # set on the subclass made by make_server
    _served: ServedModel | None = None  # per request: the model an infer hit (for its stats)
    _infer_ms: float | None = None

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

    def _finished(self, method: str, status: int, t0: float, ready: float | None) -> None:
        if self._served is not None:
            self._served.record(status == 200, ((ready or time.perf_counter()) - t0) * 1000, self._infer_ms)
        self._served = self._infer_ms = None

    # -- routing ---------------------------------------------------------------------------------------------
    def _route(self, method: str, path: str, parts: list) -> tuple:
        st = self.state
        if method == "GET" and parts == ["v2", "health", "live"]:
            return 200, b'{"live":true}', oip.JSON_TYPE, None
        if method == "GET" and parts == ["v2", "health", "ready"]:
            if st.ready() and not st.draining:
                return 200, b'{"ready":true}', oip.JSON_TYPE, None
            raise httpd.HttpError(503, "not ready: " + ("shutting down" if st.draining else "loading models"))
        self._authorise(method)
        body = self._request_body(method)
        if parts == ["v2"] and method == "GET":
            return 200, oip._json_dumps({"name": "edvit-worker", "version": __version__,
                                         "extensions": ["binary_tensor_data"]}), oip.JSON_TYPE, None
        model = httpd.model_path(parts)
        if model is not None:
            name, rest = model
            served = st.models.get(name)
            if served is None:
                raise httpd.HttpError(404, f"unknown model {name!r}; this worker serves {', '.join(st.models)}")
            if method == "GET" and not rest:
                return 200, oip._json_dumps(served.metadata()), oip.JSON_TYPE, None
            if method == "GET" and rest == ["ready"]:
                if served.model is None:
                    raise httpd.HttpError(503, f"model {name!r} is still loading")
                return 200, b'{"ready":true}', oip.JSON_TYPE, None
            if method == "GET" and rest == ["stats"]:
                return 200, oip._json_dumps(served.stats()), oip.JSON_TYPE, None
            if method == "POST" and rest == ["infer"]:
                self._served = served
                return self._infer(served, body)
        raise httpd.HttpError(404, f"no route {method} {path}; OIP v2 routes live under /v2")

    def _infer(self, served: ServedModel, body) -> tuple:
        if served.model is None:
            raise httpd.HttpError(503, f"model {served.name!r} is still loading")
        req = self._decode_request(body)
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


def make_server(host: str, port: int, state: WorkerState) -> httpd.Server:
    try:
        return httpd.bind(host, port, Handler, state)
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
        token = httpd.read_token_file(path)
    except ValueError as e:
        raise WorkerError(f"--token-file {path}: {e}; write the deployment's token there") from None
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
