"""The coordinator: fans a batch out to every board, gathers the sub-models' outputs, runs the fusion head.

    with Coordinator("deployment.json") as coord:
        answers = coord.infer(batch, top_k=5)

batch: float32 [B, C, H, W] preprocessed per the manifest, uint8 pixels [B, H, W, C], or the image files
(a list of bytes). What goes on the wire follows deployment.json's `wire` (deploy --wire auto|fp32|uint8|encoded;
missing: fp32, what older workers take) and what the batch allows (serve/wire.py): uint8 and encoded inputs are
preprocessed on the boards with the build's own transform.

One request per board and batch (a board with several sub-models runs them one after the other, as the
assignment assumed), all boards at once, binary OIP v2 tensors on keep-alive connections (a pool of idle ones per
board, TCP_NODELAY via protocol.OipClient). The request body is encoded once and reused for every board. Over
plain HTTP the calling thread itself starts every board's first request: the request lines and headers go out
first (each board wakes and parses while the bodies travel), then the bodies, written without blocking and
interleaved as each link drains (protocol.send_bodies), and the calling thread reads the answers as they arrive
(one selector): no thread hand-off per board, which cost up to ~1.5 ms on the last board at K = 4 on a loaded
2-core host, and a busy pool cannot hold back these requests. Boards running several sub-models, TLS boards,
requests that could not start here and retries go through the pool (`fan_out="pool"`: everything does).

Faults. A board that refuses, resets or answers 503 is marked down; its sub-models go to a replica
(deployment.json `replicas`) within the same request's deadline, else their slice of the fusion input stays
zeros and the answer is `degraded` with those groups in `missing`. A board that misses the deadline twice in a
row is marked down too. A background thread probes down boards about once a second (`/v2/health/ready`, plus a
real inference within half the deadline for boards that were down for being slow) and puts them back. Other
errors (401, 404, bad shapes: a deployment that does not match its build) fail that request's slice only.
When no sub-model answers at all, `NoBoardAnswered` (exit 2) names every board and why.

A slice that comes back non-finite (NaN/Inf), of the wrong dtype or shape counts as missing too (the
replica is tried). Calls still queued in the pool at the deadline are cancelled, never sent; answers are read
with a size cap (a board cannot make us buffer more than its slice needs, plus headroom).

Transport: plain HTTP on the LAN, or HTTPS for `https://` endpoints, verified against the CA file given as
`tls_ca` (argument, or deployment.json's `tls_ca`).

Host side: numpy + the fusion head's interpreter (via runtime.backends) only — no torch.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import dataclasses
import json
import logging
import os
import selectors
import socket
import threading
import time

import numpy as np

from ..cluster.deployment import DeploymentError, read_token  # noqa: F401 (DeploymentError, read_token: re-exported)
from ..cluster.deployment import load as load_deployment
from ..cluster.deployment import parse_endpoint as _parse_endpoint
from ..errors import ArtifactError, EdvitError
from ..runtime import backends
from ..runtime import manifest as mf
from ..runtime import preprocess as pp
from ..runtime import protocol as oip
from ..runtime import wire as rw
from . import wire as host_wire

log = logging.getLogger("edvit.coordinator")

DEFAULT_DEADLINE_MS = 2000
HEALTH_INTERVAL_S = 1.0
SLOW_STRIKES = 2                      # consecutive deadline misses before a board is taken out of rotation
MAX_REQUEST_BYTES = 8 << 20           # batches are split so one body stays under the workers' 16 MiB default cap
RESPONSE_HEADROOM = 1 << 20           # on top of a slice's bytes: the JSON header, error messages
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_WINDOW = 10000                       # latencies kept for percentiles


class NoBoardAnswered(EdvitError):
    """Not one sub-model answered a request."""


@dataclasses.dataclass
class Result:
    """One batch through the ensemble."""

    logits: np.ndarray                 # [B, N] fused logits
    probabilities: np.ndarray          # [B, N] softmax of logits
    degraded: bool
    missing: list                      # group (sub-model) names whose slice was zeros
    board_ms: dict                     # board -> round-trip ms (None: failed or late)
    served_by: dict                    # sub-model -> board that answered it
    latency_ms: float                  # end to end, this batch
    wire: str = "fp32"                 # the input format sent to the boards
    request_bytes: int = 0             # body bytes of one board's request (each board got its own copy)


@dataclasses.dataclass
class Answer:
    """One image's answer."""

    top: list                          # [(class id, class name, probability)], best first
    degraded: bool
    missing: list
    board_ms: dict
    latency_ms: float                  # of the request this image travelled in
    wire: str = "fp32"                 # the input format that request sent the boards

    def to_json(self) -> dict:
        return {"top": [{"class": c, "name": n, "probability": round(p, 6)} for c, n, p in self.top],
                "degraded": self.degraded, "missing": list(self.missing), "wire": self.wire,
                "board_ms": {b: (None if v is None else round(v, 3)) for b, v in self.board_ms.items()},
                "latency_ms": round(self.latency_ms, 3)}


class _Board:
    def __init__(self, name: str, host: str, port: int, models: list, endpoint: str):
        self.name, self.host, self.port, self.models, self.endpoint = name, host, port, models, endpoint
        self.up = True                 # optimistic: the first request finds out
        self.slow = False              # down because it missed deadlines (needs a timed probe to come back)
        self.reason = ""
        self.down_since = None
        self.strikes = 0
        self.cancelled = 0             # calls dropped unsent because the request's deadline had passed
        self.requests = 0
        self.failures = 0
        self.misses = 0
        self.ms: collections.deque = collections.deque(maxlen=1000)


def _percentile(values, q: float):
    if not values:
        return None
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


class Coordinator:
    """Thread-safe: any number of threads may call `infer` / `run` at once."""

    def __init__(self, deployment_path: str, deadline_ms: float | None = None, fusion_backend: str = "onnxruntime",
                 health_interval_s: float = HEALTH_INTERVAL_S, max_workers: int | None = None,
                 tls_ca: str | None = None, fan_out: str = "caller"):
        if fan_out not in ("caller", "pool"):
            raise ValueError(f"fan_out must be 'caller' or 'pool', got {fan_out!r}")
        self.fan_out = fan_out
        doc, self.manifest, self.build_dir, self._token, self.replicas = load_deployment(deployment_path)
        self.deployment_path = deployment_path
        self.deployment = doc
        self.deadline_ms = float(deadline_ms or doc.get("deadline_ms") or DEFAULT_DEADLINE_MS)
        if self.deadline_ms <= 0:
            raise DeploymentError(f"deadline must be > 0 ms, got {self.deadline_ms}")
        spec = self.manifest["input"]
        self.input_spec = spec
        self.wire = doc.get("wire") or "fp32"
        if self.wire not in rw.WIRE_CHOICES:
            raise DeploymentError(f"{deployment_path}: wire must be one of {', '.join(rw.WIRE_CHOICES)}, got "
                                  f"{self.wire!r}; redeploy with `edvit-tool deploy --wire ...`")
        self.input_name = spec.get("name", "pixel_values")
        self.input_shape = tuple(spec["shape"])
        try:
            pp.transform_of(spec)
        except pp.ImageError as e:
            raise ArtifactError(f"{self.build_dir}: manifest {e}; rebuild") from None
        self.classes = list(self.manifest["classes"])
        fusion = self.manifest["fusion"]
        self.source = fusion.get("source", "features")
        subs = mf.ordered_submodels(self.manifest)
        self.models = [s["name"] for s in subs]
        dims = fusion.get("input_dims") or [s["feature_dim"] for s in subs]
        if len(dims) != len(self.models):
            raise ArtifactError(f"{self.build_dir}: fusion.input_dims has {len(dims)} entries for "
                                f"{len(self.models)} sub-models; rebuild")
        offsets = np.cumsum([0] + list(dims))
        self._slices = {m: (int(offsets[i]), int(offsets[i + 1])) for i, m in enumerate(self.models)}
        self._width = int(offsets[-1])
        self._load_fusion(doc, fusion_backend)

        self.boards: dict = {}
        for b in doc["boards"]:
            host, port = _parse_endpoint(b["endpoint"], b["name"])
            self.boards[b["name"]] = _Board(b["name"], host, port, list(b["models"]), b["endpoint"])
        self._tls = self._tls_context(tls_ca, doc, deployment_path)
        self._lock = threading.Lock()
        self._idle: dict = {name: [] for name in self.boards}  # keep-alive clients not in use, per board
        self._clients: list = []       # every OipClient made, so close() can close them
        n = max_workers or max(8, 4 * len(self.boards))
        self._pool = cf.ThreadPoolExecutor(max_workers=n, thread_name_prefix="edvit-board")
        self._stop = threading.Event()
        self._health_interval = health_interval_s
        self._health = threading.Thread(target=self._health_loop, name="edvit-health", daemon=True)
        self._health.start()
        self._requests = self._images = self._degraded = self._failed = 0
        self._buckets = [0] * (len(LATENCY_BUCKETS_S) + 1)
        self._latency_sum = 0.0
        self._latencies: collections.deque = collections.deque(maxlen=_WINDOW)
        self._closed = False

    # -- setup -----------------------------------------------------------------------------------------------
    def _tls_context(self, tls_ca: str | None, doc: dict, path: str):
        """The client TLS context for https:// boards (None when every board is plain http)."""
        https = [b.name for b in self.boards.values() if b.endpoint.startswith("https://")]
        if not https:
            return None
        ca, where = (tls_ca, "--tls-ca") if tls_ca else (doc.get("tls_ca"), f"{path}: tls_ca")
        if not ca:
            raise DeploymentError(f"{path}: boards {', '.join(https)} are https:// but no CA file is given to "
                                  "verify them; set tls_ca in the deployment or pass --tls-ca")
        if not os.path.isabs(ca) and not tls_ca:
            ca = os.path.join(os.path.dirname(os.path.abspath(path)), ca)
        try:
            return oip.client_tls_context(ca)
        except ValueError as e:
            raise DeploymentError(f"{where}: {e}; give the PEM file of the CA that signed the boards' "
                                  "certificates") from None

    def _load_fusion(self, doc: dict, backend: str | None) -> None:
        rel = (doc.get("fusion") or {}).get("artifact")
        arts = [a for a in self.manifest.get("artifacts", []) if a.get("name") == "fusion"]
        if rel:
            art = next((a for a in arts if a.get("file") == rel), None)
        else:
            try:
                art, _ = mf.select_artifact(self.manifest, "fusion", "onnx/fp32")
            except mf.ManifestError as e:
                raise ArtifactError(f"{self.build_dir}: {e}") from None
            rel = art["file"]
        path = os.path.join(self.build_dir, rel)
        if not os.path.isfile(path):
            raise ArtifactError(f"{path}: fusion artifact not found (deployment.json fusion.artifact = {rel!r}); "
                                "re-run `edvit-tool export` or fix the deployment")
        if art is not None and mf.sha256_file(path) != art.get("sha256"):
            raise ArtifactError(f"{path}: sha256 differs from the manifest; the build was modified, re-export it")
        if backend == "onnxruntime" and path.endswith(".tflite"):
            backend = None  # the default names the .onnx interpreter; a .tflite head takes the best TFLite one
        try:
            self._fusion = backends.load_model(path, backend=backend, threads=1,
                                               inputs=art.get("inputs") if art else None,
                                               outputs=art.get("outputs") if art else None)
        except backends.BackendError as e:
            raise ArtifactError(f"fusion head: {e}") from None
        self._fusion_in = self._fusion.inputs[0]["name"]
        outs = [t["name"] for t in self._fusion.outputs]
        self._fusion_out = "logits" if "logits" in outs else outs[0]
        declared = self._fusion.inputs[0]["shape"]
        if len(declared) == 2 and declared[1] > 0 and declared[1] != self._width:
            raise ArtifactError(f"{path}: the fusion head takes {declared[1]} features but the sub-models give "
                                f"{self._width} (fusion.input_dims); rebuild")
        # TFLite interpreters are not thread-safe; onnxruntime sessions are
        self._fusion_lock = threading.Lock() if self._fusion.backend_name != "onnxruntime" else None
        self.fusion_artifact = rel

    # -- public ----------------------------------------------------------------------------------------------
    def infer(self, batch, top_k: int = 5) -> list:
        """A batch (float32 [B, C, H, W], uint8 [B, H, W, C] or image files) -> one Answer per image (split
        into requests under the body cap)."""
        answers = []
        for res in self._chunks(batch):
            k = max(1, min(int(top_k), res.probabilities.shape[1]))
            order = np.argsort(-res.probabilities, axis=1, kind="stable")[:, :k]
            for i in range(res.probabilities.shape[0]):
                top = [(int(c), self.classes[c], float(res.probabilities[i, c])) for c in order[i]]
                answers.append(Answer(top, res.degraded, list(res.missing), dict(res.board_ms), res.latency_ms,
                                      res.wire))
        return answers

    def run(self, batch) -> Result:
        """The whole batch -> fused logits and probabilities (what `serve` answers); one request per board
        unless the batch is over the body cap, then several, merged."""
        parts = list(self._chunks(batch))
        if len(parts) == 1:
            return parts[0]
        board_ms = {}  # summed over the parts; None when any part lacked that board
        for b in parts[0].board_ms:
            vals = [p.board_ms.get(b) for p in parts]
            board_ms[b] = None if any(v is None for v in vals) else sum(vals)
        return Result(np.concatenate([p.logits for p in parts]), np.concatenate([p.probabilities for p in parts]),
                      any(p.degraded for p in parts), sorted({m for p in parts for m in p.missing}), board_ms,
                      {m: b for p in parts for m, b in p.served_by.items()}, sum(p.latency_ms for p in parts),
                      parts[0].wire, sum(p.request_bytes for p in parts))

    def check_batch(self, batch) -> np.ndarray:
        """A preprocessed float32 batch, checked (shape, dtype, finite) -> contiguous float32."""
        return host_wire.check_fp32(np.asarray(batch), pp.transform_of(self.input_spec))

    def prepare(self, batch) -> host_wire.Payload:
        """What this deployment sends for `batch` (see serve/wire.py)."""
        return host_wire.prepare(batch, self.wire, self.input_spec)

    def stats(self) -> dict:
        """A consistent snapshot of the counters (for /metrics and `status`)."""
        with self._lock:
            lat = list(self._latencies)
            out = {"requests": self._requests, "images": self._images, "degraded": self._degraded,
                   "failed": self._failed, "latency_sum_s": self._latency_sum,
                   "latency_buckets": list(zip(LATENCY_BUCKETS_S + (float("inf"),), np.cumsum(self._buckets)
                                               .tolist())),
                   "boards": {b.name: {"up": b.up, "reason": b.reason, "endpoint": b.endpoint, "models": b.models,
                                       "requests": b.requests, "failures": b.failures, "deadline_misses": b.misses,
                                       "cancelled": b.cancelled,
                                       "p50_ms": _percentile(list(b.ms), 50)}
                              for b in self.boards.values()}}
        out["latency_p50_ms"] = _percentile(lat, 50)
        out["latency_p99_ms"] = _percentile(lat, 99)
        return out

    def ready(self) -> bool:
        """True when every sub-model has a board in rotation (else answers would be degraded or fail)."""
        with self._lock:
            return all(any(self.boards[b].up for b in self.replicas[m]) for m in self.models)

    def any_up(self) -> bool:
        with self._lock:
            return any(b.up for b in self.boards.values())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._health.join(timeout=5)
        with self._lock:
            clients, self._clients = self._clients, []
        for c in clients:
            c.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- one request -----------------------------------------------------------------------------------------
    def _chunks(self, batch):
        for part in self.prepare(batch).split(MAX_REQUEST_BYTES):
            yield self._run(part)

    def _pick(self, model: str, tried: set):
        """First board in rotation for `model` that this request has not tried yet (replica order = preference)."""
        for name in self.replicas[model]:
            b = self.boards[name]
            if b.up and name not in tried:
                return name
        return None

    def _run(self, payload: host_wire.Payload) -> Result:
        t0 = time.perf_counter()
        deadline = t0 + self.deadline_ms / 1000
        batch = payload.array
        body, hlen = oip.encode_request({self.input_name: batch}, [self.source], binary=True)
        headers = {"Content-Type": oip.BINARY_TYPE, oip.HEADER_LENGTH: str(hlen)}
        got, served_by, board_ms, errors = {}, {}, {}, {}
        tried = {m: set() for m in self.models}
        pending: dict = {}             # pool future -> (board, models)
        waiting: dict = {}             # socket of a request started here -> (board, model, client)
        n = batch.shape[0]
        wake_r, wake_w = socket.socketpair()  # a pool call that ends wakes the selector below
        sel = selectors.DefaultSelector()
        sel.register(wake_r, selectors.EVENT_READ)

        def submit(name, ms, client):
            try:
                fut = self._pool.submit(self._call_board, name, ms, body, headers, deadline, n, client)
            except RuntimeError:  # pool shut down: the coordinator was closed under us
                client.close()
                raise EdvitError("the coordinator was closed while a request was in flight") from None
            fut.add_done_callback(lambda _: _wake(wake_w))
            pending[fut] = (name, ms)

        def dispatch(models, first: bool):
            plan: dict = {}
            with self._lock:
                for m in models:
                    name = self._pick(m, tried[m])
                    if name is not None:
                        tried[m].add(name)
                        plan.setdefault(name, []).append(m)
            clients = {name: self._checkout(name) for name in plan}
            here = {name: ms for name, ms in plan.items()
                    if first and self.fan_out == "caller" and len(ms) == 1 and clients[name].plain}
            socks = self._start_all(here, clients, body, headers, deadline)
            for name, ms in plan.items():
                if name in socks:
                    waiting[socks[name]] = (name, ms[0], clients[name])
                    sel.register(socks[name], selectors.EVENT_READ)
                else:
                    submit(name, ms, clients[name])

        def settle(name, ms, outs, err, down, elapsed, retry):
            board_ms[name] = None if err else elapsed
            self._record_board(name, err, down, elapsed)
            if err:
                errors[name] = err
            for m in ms:
                if m in outs:
                    got[m], served_by[m] = outs[m], name
                else:
                    retry.append(m)

        try:
            dispatch(self.models, first=True)
            while pending or waiting:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                retry: list = []
                for key, _ in sel.select(remaining):
                    if key.fileobj is wake_r:
                        _drain(wake_r)
                        continue
                    sel.unregister(key.fileobj)
                    name, m, client = waiting.pop(key.fileobj)
                    outs, err, down = self._read_started(m, client, deadline, n)
                    if outs is None:  # the board had closed that keep-alive connection: ask again, fresh
                        submit(name, [m], client)
                        continue
                    self._checkin(name, client)
                    settle(name, [m], outs, err, down, _ms(t0), retry)
                for fut in [f for f in pending if f.done()]:
                    name, ms = pending.pop(fut)
                    settle(name, ms, *fut.result(), retry)
                if retry:
                    dispatch(retry, first=False)
        finally:
            sel.close()
            wake_r.close()
            wake_w.close()
        for name, _, client in waiting.values():  # started here, no answer by the deadline
            client.close()                          # its answer, if it ever comes, is not for the next request
            self._checkin(name, client)             # (a closed client reconnects when next used)
            board_ms[name] = None
            errors[name] = f"no answer within the {self.deadline_ms:.0f} ms deadline"
            self._record_miss(name)
        for fut, (name, ms) in pending.items():
            board_ms[name] = None
            if fut.cancel():  # still queued in the pool: never sent, no thread spent on it
                errors[name] = f"not sent: the pool was busy until the {self.deadline_ms:.0f} ms deadline"
                self._record_cancelled(name)
            else:  # running: its answer (or its socket timeout at the deadline) is dropped
                errors[name] = f"no answer within the {self.deadline_ms:.0f} ms deadline"
                self._record_miss(name)

        missing = [m for m in self.models if m not in got]
        if not got:
            self._record_request(batch.shape[0], time.perf_counter() - t0, degraded=True, failed=True)
            raise NoBoardAnswered(self._nobody_message(errors))
        feats = np.zeros((n, self._width), dtype=np.float32)
        for m, arr in got.items():
            a, b = self._slices[m]
            feats[:, a:b] = arr
        if self._fusion_lock is None:
            logits = self._fusion.run({self._fusion_in: feats})[self._fusion_out]
        else:
            with self._fusion_lock:
                logits = self._fusion.run({self._fusion_in: feats})[self._fusion_out]
        logits = np.asarray(logits, dtype=np.float32)
        probs = softmax(logits.astype(np.float64)).astype(np.float32)
        elapsed = time.perf_counter() - t0
        self._record_request(batch.shape[0], elapsed, degraded=bool(missing))
        if missing:
            log.warning("degraded answer: %s missing (%s)", ", ".join(missing),
                        "; ".join(f"{b}: {e}" for b, e in errors.items()) or "no board in rotation")
        for name in self.boards:
            board_ms.setdefault(name, None)
        return Result(logits, probs, bool(missing), missing, board_ms, served_by, elapsed * 1000, payload.wire,
                      len(body))

    def _nobody_message(self, errors: dict) -> str:
        parts = []
        with self._lock:
            for b in self.boards.values():
                why = errors.get(b.name) or (f"out of rotation: {b.reason}" if not b.up else "not asked")
                parts.append(f"{b.name} ({b.endpoint}: {why})")
        return (f"no board answered: {'; '.join(parts)}. Run `edvit-tool status --deployment "
                f"{self.deployment_path}` to see the boards and `edvit-tool deploy` to restart them")

    def _checkout(self, name: str) -> oip.OipClient:
        """An idle keep-alive client of board `name`, or a new one; give it back with _checkin."""
        with self._lock:
            if self._idle[name]:
                return self._idle[name].pop()
        b = self.boards[name]
        # the socket timeout bounds how long a hung board can hold a pool thread
        c = oip.OipClient(b.host, b.port, token=self._token, timeout=self.deadline_ms / 1000 + 0.5,
                          ssl_context=self._tls if b.endpoint.startswith("https://") else None)
        with self._lock:
            self._clients.append(c)
        return c

    def _checkin(self, name: str, client: oip.OipClient) -> None:
        with self._lock:
            if not self._closed:
                self._idle[name].append(client)
                return
        client.close()

    def _start_all(self, plan: dict, clients: dict, body: bytes, headers: dict, deadline: float) -> dict:
        """Start each planned board's request (one model each) from this thread: every request line and header
        first, then the bodies together (protocol.send_bodies). -> {board: its socket} for the requests that went
        out whole; a board that failed here is asked again the ordinary way, on a pool thread (fresh connection)."""
        socks = {}
        for name, ms in plan.items():
            try:
                socks[name] = clients[name].start("POST", f"/v2/models/{ms[0]}/infer", len(body), headers,
                                                  timeout=max(0.05, deadline - time.perf_counter()) + 0.25)
            except oip.ProtocolError as e:
                log.debug("%s: starting the request here failed (%s); a pool thread asks again", name, e.message)
        sent = oip.send_bodies([(name, sock, body) for name, sock in socks.items()], deadline)
        for name, err in sent.items():
            if err is not None:
                log.debug("%s: %s; a pool thread asks again", name, err)
                clients[name].close()
                del socks[name]
        return socks

    def _read_started(self, m: str, client: oip.OipClient, deadline: float, n: int) -> tuple:
        """The answer to a request _start_all sent -> (outputs or None to ask again, error or None, down?)."""
        a, b = self._slices[m]
        client.max_response = n * (b - a) * 4 + RESPONSE_HEADROOM
        try:
            got = client.finish(timeout=max(0.05, deadline - time.perf_counter()) + 0.25)
        except oip.ProtocolError as e:
            return {}, e.message, e.status == 0
        if got is None:
            return None, None, False
        arr, err, down = self._answer(m, got, n)
        return ({m: arr} if err is None else {}), err, down

    def _answer(self, m: str, got: tuple, n: int) -> tuple:
        """(status, headers, body) of sub-model m's answer -> (its slice, error or None, board down?)."""
        status, rh, data = got
        if status != 200:
            return None, f"{m}: HTTP {status}: {_error_text(data)}", status in (502, 503, 504)
        try:
            arr = oip.decode_response(data, rh.get(oip.HEADER_LENGTH)).get(self.source)
        except oip.ProtocolError as e:
            return None, f"{m}: {e.message}", False
        a, b = self._slices[m]
        problem = _slice_problem(arr, n, b - a)
        if problem:
            return None, (f"{m}: answered {problem} for {self.source!r}, expected finite float32 [{n}, {b - a}]; "
                          "the board serves a different or broken build: redeploy"), False
        return arr, None, False

    def _call_board(self, name: str, models: list, body: bytes, headers: dict, deadline: float, n: int,
                    client: oip.OipClient) -> tuple:
        """Runs on a pool thread; never raises. -> (outputs {model: array}, error or None, board down?, ms)."""
        t0 = time.perf_counter()
        outs = {}
        try:
            for m in models:
                if time.perf_counter() >= deadline:
                    return outs, "deadline passed before all its sub-models ran", False, _ms(t0)
                a, b = self._slices[m]
                client.max_response = n * (b - a) * 4 + RESPONSE_HEADROOM
                # the socket gives up just after the deadline (the miss is recorded first), so a hung board
                # frees this pool thread in time
                left = deadline - time.perf_counter()
                got = client.request("POST", f"/v2/models/{m}/infer", body, headers, timeout=max(0.05, left) + 0.25)
                arr, err, down = self._answer(m, got, n)
                if err:
                    return outs, err, down, _ms(t0)
                outs[m] = arr
        except oip.ProtocolError as e:
            return outs, e.message, e.status == 0, _ms(t0)
        finally:
            self._checkin(name, client)
        return outs, None, False, _ms(t0)

    # -- bookkeeping -----------------------------------------------------------------------------------------
    def _record_board(self, name: str, err, down: bool, ms: float) -> None:
        with self._lock:
            b = self.boards[name]
            b.requests += 1
            if err:
                b.failures += 1
            else:
                b.ms.append(ms)
                b.strikes = 0
            if down and b.up:
                b.up, b.slow, b.reason, b.down_since = False, False, err, time.time()
                log.warning("board %s out of rotation: %s", name, err)

    def _record_cancelled(self, name: str) -> None:
        with self._lock:
            self.boards[name].cancelled += 1

    def _record_miss(self, name: str) -> None:
        with self._lock:
            b = self.boards[name]
            b.requests += 1
            b.misses += 1
            b.strikes += 1
            if b.strikes >= SLOW_STRIKES and b.up:
                b.up, b.slow, b.down_since = False, True, time.time()
                b.reason = f"missed the {self.deadline_ms:.0f} ms deadline {b.strikes} times in a row"
                log.warning("board %s out of rotation: %s", name, b.reason)

    def _record_request(self, images: int, seconds: float, degraded: bool, failed: bool = False) -> None:
        with self._lock:
            self._requests += 1
            self._images += images
            self._degraded += degraded and not failed
            self._failed += failed
            if not failed:
                self._latency_sum += seconds
                self._latencies.append(seconds * 1000)
                i = next((i for i, le in enumerate(LATENCY_BUCKETS_S) if seconds <= le), len(LATENCY_BUCKETS_S))
                self._buckets[i] += 1

    # -- background health checks ----------------------------------------------------------------------------
    def _health_loop(self) -> None:
        probes: dict = {}
        try:
            while not self._stop.wait(self._health_interval):
                with self._lock:
                    down = [(b.name, b.slow) for b in self.boards.values() if not b.up]
                for name, slow in down:
                    if self._stop.is_set():
                        break
                    if self._probe(name, slow, probes):
                        with self._lock:
                            b = self.boards[name]
                            b.up, b.slow, b.reason, b.strikes, b.down_since = True, False, "", 0, None
                        log.warning("board %s is back in rotation", name)
        finally:
            for c in probes.values():
                c.close()

    def _probe(self, name: str, slow: bool, probes: dict) -> bool:
        b = self.boards[name]
        c = probes.get(name)
        if c is None:
            c = probes[name] = oip.OipClient(b.host, b.port, token=self._token,
                                             timeout=min(1.0, self.deadline_ms / 1000),
                                             ssl_context=self._tls if b.endpoint.startswith("https://") else None,
                                             max_response=RESPONSE_HEADROOM + 4 * self._width)
        try:
            if not c.ready():
                return False
            if not slow:
                return True
            # it was too slow, not dead: it must answer a real inference well within the deadline
            x = np.zeros((1,) + self.input_shape, dtype=np.float32)
            t0 = time.perf_counter()
            for m in b.models:
                c.infer(m, {self.input_name: x}, [self.source])
            return _ms(t0) <= self.deadline_ms / 2
        except oip.ProtocolError:
            return False


def _slice_problem(arr, n: int, width: int) -> str | None:
    """What is wrong with a board's slice (None when it is finite float32 [n, width])."""
    if arr is None:
        return "no output"
    if arr.dtype != np.float32:
        return f"datatype {oip.datatype_of(arr.dtype)}"
    if arr.shape != (n, width):
        return f"shape {list(arr.shape)}"
    if not np.isfinite(arr).all():
        return "NaN or Inf values"
    return None


def _error_text(data: bytes) -> str:
    try:
        return str(json.loads(data)["error"])
    except (ValueError, KeyError, TypeError):
        return data[:200].decode("utf-8", "replace") or "(empty body)"


def _wake(sock) -> None:
    try:
        sock.send(b"x")
    except OSError as e:  # the request is over and closed the pair: nobody waits for this wake-up
        log.debug("wake-up after the request ended: %s", e)


def _drain(sock) -> None:
    sock.setblocking(False)
    try:
        while sock.recv(4096):
            pass
    except BlockingIOError:
        return


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000
