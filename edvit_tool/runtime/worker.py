"""The board worker: serves sub-models over the Open Inference Protocol v2 REST API (KServe v2 / Triton).

    python -m edvit_tool.runtime.worker --manifest build/manifest.json --models g0,g1 \\
        --host 10.0.0.21 --port 8001 --token-file ~/.edvit/token [--variant tflite/int8-static] [--threads 2]

Routes: GET /v2/health/live, /v2/health/ready (200 once every model is loaded; no token needed for these two),
GET /v2 (server metadata), GET /v2/models/<m>[/versions/1] (model metadata), GET /v2/models/<m>/ready,
GET /v2/models/<m>/stats (ours: request count, errors, p50 of the last 1000 answered requests' time in the
worker from headers read to answer ready, of the interpreter call alone, and of image preprocessing, the last
two also per wire format; `recent_ms`: [interpreter ms, preprocessing ms] of the last 100 answered requests in
arrival order, for per-request comparisons across boards),
POST /v2/models/<m>[/versions/1]/infer (JSON tensors and the binary-tensor extension).
Everything else needs `Authorization: Bearer <token file contents>`. Inputs with NaN/Inf are refused (400).

A sub-model's image input (the manifest's input.name) is also accepted as UINT8 pixels [B, H, W, C] or as BYTES
[B] (the png/jpg files), preprocessed here with the build's own transform (runtime/wire.py); --max-image-mb and
--max-image-pixels bound each file.

Traffic is plain HTTP unless --tls-cert/--tls-key are given: on a LAN anyone on the path can read the tensors
and the bearer token. Limits (httpd.Limits): --max-connections, --max-inflight per model, --max-body-mb for
binary tensors and a lower --max-json-mb for JSON, --header-timeout-s, --idle-timeout-s.

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
from . import preprocess as pp
from . import wire

log = logging.getLogger("edvit.worker")
STATS_WINDOW = 1000  # latencies kept per model for the p50
RECENT_WINDOW = 100  # per-request (interpreter, preprocessing) ms kept in order for /stats recent_ms
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
        self.prep_ms: collections.deque = collections.deque(maxlen=STATS_WINDOW)
        self.prep_by_wire: dict = {}  # wire format -> deque of preprocessing ms (deploy --wire auto's probe)
        self.infer_by_wire: dict = {}  # wire format -> deque of interpreter ms (a board's own preprocessing can
                                       # slow the run after it, e.g. under a CPU quota)
        self.recent: collections.deque = collections.deque(maxlen=RECENT_WINDOW)
        self.image_spec: dict | None = None  # the manifest's input spec when this model takes the image

    @property
    def inputs(self) -> list:
        return self.art.get("inputs") or (self.model.inputs if self.model else [])

    @property
    def outputs(self) -> list:
        return self.art.get("outputs") or (self.model.outputs if self.model else [])

    def record(self, ok: bool, request_ms: float, infer_ms: float | None, prep_ms: float | None = None,
               wire_format: str | None = None) -> None:
        with self._stats_lock:
            self.count += 1
            self.errors += not ok
            if ok:  # latencies of answered requests only; fast 4xx would drag the p50 down
                self.request_ms.append(request_ms)
            if ok and infer_ms is not None:
                self.infer_ms.append(infer_ms)
                self.recent.append((round(infer_ms, 4), round(prep_ms or 0.0, 4)))
                if wire_format:
                    self.infer_by_wire.setdefault(wire_format, collections.deque(maxlen=STATS_WINDOW)).append(infer_ms)
            if ok and prep_ms is not None:
                self.prep_ms.append(prep_ms)
                if wire_format:
                    self.prep_by_wire.setdefault(wire_format, collections.deque(maxlen=STATS_WINDOW)).append(prep_ms)

    def stats(self) -> dict:
        with self._stats_lock:
            req, inf, prep = sorted(self.request_ms), sorted(self.infer_ms), sorted(self.prep_ms)
            count, errors = self.count, self.errors
            by_wire = {w: sorted(d) for w, d in self.prep_by_wire.items()}
            infer_by_wire = {w: sorted(d) for w, d in self.infer_by_wire.items()}
            recent = [list(r) for r in self.recent]
        return {"name": self.name, "count": count, "errors": errors, "window": len(req),
                "p50_ms": _median(req), "infer_p50_ms": _median(inf), "preprocess_p50_ms": _median(prep),
                "preprocess_p50_ms_by_wire": {w: _median(v) for w, v in by_wire.items()},
                "infer_p50_ms_by_wire": {w: _median(v) for w, v in infer_by_wire.items()}, "recent_ms": recent}

    def take_image_input(self, spec: dict | None, inputs: list) -> None:
        """Accept uint8 / encoded images for the model's input when it is the manifest's image input."""
        if not spec:
            return
        try:
            c, h, w = pp.transform_of(spec).channels, *pp.transform_of(spec).size
        except pp.ImageError as e:
            log.warning("%s: takes FP32 input only: %s", self.name, e)
            return
        for t in inputs:
            if t["name"] == spec.get("name", "pixel_values") and t.get("dtype", "float32") == "float32" \
                    and len(t["shape"]) == 4 and all(d == want or not isinstance(d, int) or d < 0
                                                     for d, want in zip(t["shape"][1:], (c, h, w))):
                self.image_spec = spec

    def image_inputs(self, inputs: dict, limits: dict, early: "wire.EarlyDecoder | None" = None) -> tuple:
        """uint8 / encoded image input -> the model's float32 input (other inputs untouched). -> (inputs, ms
        spent preprocessing or None, the wire format or None). With `early` (the file decoded while the body
        arrived) the time counted is the decoding left after the last byte plus the rest of the preprocessing."""
        spec = self.image_spec
        name = spec.get("name", "pixel_values") if spec else None
        arr = inputs.get(name) if name else None
        kind = wire.wire_of(arr) if arr is not None else None
        if kind in (None, "fp32"):  # other dtypes: validate() names them
            return inputs, None, kind
        t0 = time.perf_counter()
        try:
            used = early is not None and early.image is not None and kind == "encoded"
            x = wire.to_model_input(arr, spec, name, decoded={0: early.image} if used else None, **limits)
        except wire.WireError as e:
            raise httpd.HttpError(400, str(e)) from None
        return {**inputs, name: x}, (time.perf_counter() - t0) * 1000 + (early.tail_ms if used else 0.0), kind

    def metadata(self) -> dict:
        def spec(t):
            return {"name": t["name"], "datatype": oip.datatype_of(t.get("dtype", "float32")),
                    "shape": list(t["shape"])}
        params = {"artifact": self.art.get("file"), "format": self.art.get("format"),
                  "quant": self.art.get("quant"), "sha256": self.art.get("sha256")}
        if self.model is not None:
            params.update(backend=self.model.backend_name, backend_version=self.model.backend_version)
        if self.image_spec:
            params["image_datatypes"] = "FP32,UINT8,BYTES"
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
        bad = oip.first_non_finite(inputs)
        if bad is not None:  # NaN/Inf would flow through the model into the fusion head unnoticed
            raise httpd.HttpError(400, f"input {bad!r} holds NaN or Inf; send finite values")
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
    def __init__(self, models: dict, token: str, limits: httpd.Limits, image_limits: dict | None = None):
        super().__init__(token, limits)
        self.models = models
        self.image_limits = image_limits or {}  # wire.to_model_input's max_bytes / max_pixels

    def ready(self) -> bool:
        return all(m.model is not None for m in self.models.values())


class Handler(httpd.Handler):
    server_version = f"edvit-worker/{__version__}"
    logger = log
    realm = "edvit-worker"
    token_hint = "the token from deployment.json"
    state: WorkerState                  # set on the subclass made by make_server
    _served: ServedModel | None = None  # per request: the model an infer hit (for its stats)
    _infer_ms: float | None = None
    _prep_ms: float | None = None
    _wire: str | None = None
    _early: wire.EarlyDecoder | None = None  # per request: the image file decoded while the body arrived

    def _finished(self, method: str, status: int, t0: float, ready: float | None) -> None:
        if self._served is not None:
            self._served.record(status == 200, ((ready or time.perf_counter()) - t0) * 1000, self._infer_ms,
                                self._prep_ms, self._wire)
        self._served = self._infer_ms = self._prep_ms = self._wire = self._early = None

    def _body_progress(self, header: bytes, data):
        served = self._served
        if served is None or not served.image_spec:
            return None
        lim = self.state.image_limits
        self._early = wire.EarlyDecoder.for_request(header, data, served.image_spec.get("name", "pixel_values"),
                                                    lim.get("max_bytes", wire.MAX_ENCODED_BYTES),
                                                    lim.get("max_pixels", pp.MAX_PIXELS))
        return self._early.feed if self._early is not None else None

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
        model = httpd.model_path(parts)
        if model is not None and method == "POST" and model[1] == ["infer"] and model[0] in st.models:
            served = self._served = st.models[model[0]]
            with st.slot(served.name):  # the body is read only with a slot: bounded memory under load
                return self._infer(served, self._request_body(method))
        self._request_body(method)  # a POST to another route: read, so the connection stays usable
        if parts == ["v2"] and method == "GET":
            return 200, oip._json_dumps({"name": "edvit-worker", "version": __version__,
                                         "extensions": ["binary_tensor_data"]}), oip.JSON_TYPE, None
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
        raise httpd.HttpError(404, f"no route {method} {path}; OIP v2 routes live under /v2")

    def _infer(self, served: ServedModel, body) -> tuple:
        if served.model is None:
            raise httpd.HttpError(503, f"model {served.name!r} is still loading")
        req = self._decode_request(body)
        inputs, self._prep_ms, self._wire = served.image_inputs(req.inputs, self.state.image_limits, self._early)
        served.validate(inputs)
        wanted = req.wanted([t["name"] for t in served.outputs])
        t0 = time.perf_counter()
        with served.lock:
            outs = served.model.run(inputs)
        self._infer_ms = (time.perf_counter() - t0) * 1000
        payload, hlen = oip.encode_response(served.name, {n: outs[n] for n, _ in wanted}, dict(wanted),
                                            request_id=req.id)
        if hlen is None:
            return 200, payload, oip.JSON_TYPE, None
        return 200, payload, oip.BINARY_TYPE, {oip.HEADER_LENGTH: hlen}


def make_server(host: str, port: int, state: WorkerState, tls=None) -> httpd.Server:
    try:
        return httpd.bind(host, port, Handler, state, ssl_context=tls)
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


def load_models(served: dict, backend: str | None, threads: int, image_spec: dict | None = None) -> None:
    for s in served.values():
        t0 = time.perf_counter()
        try:
            model = backends.load_model(s.path, backend=backend, threads=threads,
                                        inputs=s.art.get("inputs"), outputs=s.art.get("outputs"))
        except backends.BackendError as e:
            raise WorkerError(f"{s.name}: {e}") from None
        s.take_image_input(image_spec, s.art.get("inputs") or model.inputs)  # before: `model` set = ready
        s.model = model
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
    p.add_argument("--max-json-mb", type=float, default=None,
                   help="limit for JSON bodies, which grow ~14x once parsed (default: a quarter of --max-body-mb)")
    p.add_argument("--max-image-mb", type=float, default=wire.MAX_ENCODED_BYTES / (1 << 20),
                   help="largest image file accepted in a BYTES input (each)")
    p.add_argument("--max-image-pixels", type=int, default=pp.MAX_PIXELS,
                   help="refuse image files whose header claims more pixels (checked before decoding)")
    p.add_argument("--max-connections", type=int, default=64, help="open connections served at once (503 above)")
    p.add_argument("--max-inflight", type=int, default=2,
                   help="requests per model being read, decoded or run at once (the rest wait, then 503)")
    p.add_argument("--header-timeout-s", type=float, default=10.0,
                   help="a request's line and headers must arrive within this many seconds")
    p.add_argument("--idle-timeout-s", type=float, default=15.0, help="close keep-alive connections idle this long")
    p.add_argument("--tls-cert", help="PEM certificate: serve HTTPS instead of plain HTTP (with --tls-key)")
    p.add_argument("--tls-key", help="PEM private key of --tls-cert")
    p.add_argument("--drain-s", type=float, default=10.0, help="on SIGTERM, wait this long for in-flight requests")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.add_argument("--pidfile", help="write our pid here; removed on exit")
    a = p.parse_args(argv)
    if a.threads < 1 or a.max_body_mb <= 0 or not 0 <= a.port <= 65535:
        raise WorkerError("--threads must be >= 1, --max-body-mb > 0 and --port in 0..65535")
    if a.max_json_mb is not None and a.max_json_mb <= 0:
        raise WorkerError("--max-json-mb must be > 0")
    if a.max_image_mb <= 0 or a.max_image_pixels <= 0:
        raise WorkerError("--max-image-mb and --max-image-pixels must be > 0")
    problem = limits_from(a).check()
    if problem:
        raise WorkerError(f"--max-connections / --max-inflight / --*-timeout-s: {problem}")
    if bool(a.tls_cert) != bool(a.tls_key):
        raise WorkerError("--tls-cert and --tls-key go together; give both (PEM files) or neither")
    return a


def limits_from(a) -> httpd.Limits:
    max_body = int(a.max_body_mb * (1 << 20))
    max_json = int(a.max_json_mb * (1 << 20)) if a.max_json_mb else max(1, max_body // 4)
    return httpd.Limits(max_body=max_body, max_json=min(max_json, max_body), max_connections=a.max_connections,
                        max_inflight=a.max_inflight, header_timeout_s=a.header_timeout_s,
                        idle_timeout_s=a.idle_timeout_s)


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
    image_limits = {"max_bytes": int(args.max_image_mb * (1 << 20)), "max_pixels": args.max_image_pixels}
    state = WorkerState(served, read_token(args.token_file), limits_from(args), image_limits)
    tls = None
    if args.tls_cert:
        try:
            tls = httpd.tls_context(args.tls_cert, args.tls_key)
        except ValueError as e:
            raise WorkerError(f"--tls-cert/--tls-key: {e}; give a PEM certificate and its key") from None

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server = make_server(args.host, args.port, state, tls)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    try:
        if args.pidfile:
            _write_pidfile(args.pidfile)
        thread.start()  # live answers while models load; ready only after
        load_models(served, args.backend, args.threads, manifest.get("input"))
        host, port = server.server_address[:2]
        _emit({"event": "ready", "host": host, "port": port, "pid": os.getpid(), "tls": tls is not None,
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
