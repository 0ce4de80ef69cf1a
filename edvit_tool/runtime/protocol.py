"""Open Inference Protocol v2 (KServe v2 / Triton REST) on the wire: pure encode/decode + a small client.

Shared by the board worker and the host coordinator. Board side: stdlib + numpy only.

Tensors travel either as JSON (`{"name", "shape", "datatype", "data": [...]}`, data flat in row-major order —
nested lists are accepted too) or with Triton's binary-tensor extension: the body is a JSON header of
`Inference-Header-Content-Length` bytes followed by each binary tensor's raw little-endian bytes, in the order the
header lists them, each sized by its `parameters.binary_data_size`. A response carries an output in binary when
the request asked for it (`outputs[i].parameters.binary_data`, or the request-level
`parameters.binary_data_output` when no outputs are listed).

BYTES tensors (OIP's variable-length strings; here: encoded image files) decode to numpy object arrays of
`bytes`. In binary form each element is a 4-byte little-endian length followed by its bytes (Triton's layout);
in JSON each element is a string (UTF-8), so binary content such as a JPEG must travel as a binary tensor.

Errors: `ProtocolError(status, message)`; status is the HTTP status (400 for a malformed request or response
body) or 0 for transport failures (refused, reset, timed out) so a caller catches one type.
"""

from __future__ import annotations

import http.client
import json
import math
import re
import socket
import ssl
import sys

import numpy as np

# OIP datatype <-> numpy dtype (little-endian on the wire)
DATATYPES = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype("<u1"), "INT8": np.dtype("<i1"), "UINT16": np.dtype("<u2"),
    "INT16": np.dtype("<i2"), "UINT32": np.dtype("<u4"), "INT32": np.dtype("<i4"), "UINT64": np.dtype("<u8"),
    "INT64": np.dtype("<i8"), "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}
_BY_DTYPE = {dt: name for name, dt in DATATYPES.items()}  # np.dtype keys: '<f4' == 'float32' == float32
BYTES = "BYTES"  # variable-length elements: numpy object arrays of bytes (not in DATATYPES: no fixed itemsize)
HEADER_LENGTH = "Inference-Header-Content-Length"
JSON_TYPE = "application/json"
_DIGITS = re.compile(r"[0-9]{1,15}\Z")
BINARY_TYPE = "application/octet-stream"


class ProtocolError(Exception):
    """An OIP request or response that failed. status: HTTP status, or 0 for a transport failure."""

    def __init__(self, status: int, message: str):
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status
        self.message = message


def datatype_of(dtype) -> str:
    """numpy dtype (or its name) -> OIP datatype string."""
    dt = dtype if isinstance(dtype, np.dtype) else np.dtype(dtype)
    if dt.kind == "O":  # numpy fixed-width "S" arrays drop trailing NULs: not for file bytes
        return BYTES
    name = _BY_DTYPE.get(dt)
    if name is None:
        raise ProtocolError(400, f"dtype {dt.name} has no OIP datatype; use one of "
                                 f"{', '.join(d.name for d in _BY_DTYPE)}")
    return name


def dtype_of(datatype: str) -> np.dtype:
    """OIP datatype string -> numpy dtype."""
    if datatype not in DATATYPES:
        raise ProtocolError(400, f"datatype {datatype!r} is not supported; use one of {', '.join(DATATYPES)}")
    return DATATYPES[datatype]


def _le(a: np.ndarray) -> np.ndarray:
    """C-contiguous little-endian view/copy, ready for tobytes()."""
    a = np.ascontiguousarray(a)
    if a.dtype.byteorder == ">" or (a.dtype.byteorder == "=" and sys.byteorder == "big"):
        a = a.astype(a.dtype.newbyteorder("<"))
    return a


def _json_dumps(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


def _split(body: bytes, header_length) -> tuple:
    """(parsed JSON header, memoryview of the binary part)."""
    view = memoryview(body)
    if header_length is None or header_length == "":
        hlen = len(body)
    else:
        # ASCII digits only: int() takes '²', '+5', '1_0' and spends seconds on 100k digits
        if isinstance(header_length, int) and not isinstance(header_length, bool):
            hlen = header_length
        elif isinstance(header_length, str) and _DIGITS.match(header_length):
            hlen = int(header_length)
        else:
            raise ProtocolError(400, f"{HEADER_LENGTH} must be 1-15 ASCII digits, got {str(header_length)[:40]!r}")
        if not 0 < hlen <= len(body):
            raise ProtocolError(400, f"{HEADER_LENGTH} is {hlen} but the body has {len(body)} bytes")
    try:
        # a whole-JSON body is parsed in place: bytes(view) would add a copy of it to the peak memory
        header = json.loads(body if hlen == len(body) and isinstance(body, bytes) else bytes(view[:hlen]))
    except (ValueError, UnicodeDecodeError) as e:
        raise ProtocolError(400, f"body is not valid JSON ({e})") from None
    except RecursionError:
        raise ProtocolError(400, "body JSON is nested too deeply") from None
    if not isinstance(header, dict):
        raise ProtocolError(400, "body must be a JSON object")
    return header, view[hlen:]


def _shape(t: dict, where: str) -> list:
    shape = t.get("shape")
    if type(shape) is not list or not all(type(d) is int and d >= 0 for d in shape):  # bool is not int here
        raise ProtocolError(400, f"{where}: shape must be a list of non-negative integers, got {shape!r}")
    return shape


def _tensors(items, binary: memoryview, kind: str) -> dict:
    """Decode a list of OIP tensors (inputs of a request or outputs of a response) -> {name: array}."""
    if not isinstance(items, list):
        raise ProtocolError(400, f"'{kind}' must be a list of tensors")
    out: dict = {}
    offset = 0
    for i, t in enumerate(items):
        if not isinstance(t, dict) or not isinstance(t.get("name"), str):
            raise ProtocolError(400, f"{kind}[{i}] must be an object with a string 'name'")
        where = f"{kind[:-1]} {t['name']!r}"
        if t["name"] in out:
            raise ProtocolError(400, f"{where} appears twice")
        shape = _shape(t, where)
        count = math.prod(shape)
        params = t.get("parameters") or {}
        if not isinstance(params, dict):
            raise ProtocolError(400, f"{where}: parameters must be an object")
        size = params.get("binary_data_size")
        if t.get("datatype") == BYTES:
            out[t["name"]], used = _bytes_tensor(t, shape, count, size, binary[offset:], where)
            offset += used
            continue
        dt = dtype_of(t.get("datatype"))
        if size is not None:
            if not isinstance(size, int) or size < 0:
                raise ProtocolError(400, f"{where}: binary_data_size must be a non-negative integer")
            if size != count * dt.itemsize:
                raise ProtocolError(400, f"{where}: binary_data_size is {size} bytes but shape {shape} of "
                                         f"{t['datatype']} needs {count * dt.itemsize}")
            if offset + size > len(binary):
                raise ProtocolError(400, f"{where}: body ends {offset + size - len(binary)} bytes short of "
                                         "its binary data")
            arr = np.frombuffer(binary, dtype=dt, count=count, offset=offset).reshape(shape)
            offset += size
        else:
            if "data" not in t:
                raise ProtocolError(400, f"{where}: has neither 'data' nor parameters.binary_data_size")
            try:
                raw = np.asarray(t["data"])
            except (TypeError, ValueError) as e:
                raise ProtocolError(400, f"{where}: data is not a (nested) list of numbers ({e})") from None
            # numbers only, and no silent float -> int truncation
            if raw.size and (raw.dtype.kind not in "biuf" or raw.dtype.kind == "f" and dt.kind in "biu"):
                raise ProtocolError(400, f"{where}: data holds {raw.dtype.name} values, datatype is "
                                         f"{t['datatype']}")
            arr = raw.astype(dt, copy=False)
            if arr.size != count:
                raise ProtocolError(400, f"{where}: shape {shape} needs {count} values, data has {arr.size}")
            arr = arr.reshape(shape)
        out[t["name"]] = arr
    if offset != len(binary):
        raise ProtocolError(400, f"body has {len(binary) - offset} bytes of binary data that no {kind[:-1]} claims")
    return out


def _bytes_tensor(t: dict, shape: list, count: int, size, binary: memoryview, where: str) -> tuple:
    """A BYTES tensor -> (object array of bytes, binary bytes consumed)."""
    out = np.empty(count, dtype=object)
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ProtocolError(400, f"{where}: binary_data_size must be a non-negative integer")
        if size > len(binary):
            raise ProtocolError(400, f"{where}: body ends {size - len(binary)} bytes short of its binary data")
        if count * 4 > size:  # every element has a 4-byte length: refuse huge shapes before allocating
            raise ProtocolError(400, f"{where}: shape {shape} of BYTES needs at least {count * 4} bytes, "
                                     f"binary_data_size is {size}")
        pos = 0
        for i in range(count):
            if pos + 4 > size:
                raise ProtocolError(400, f"{where}: BYTES element {i} has no 4-byte length within "
                                         "binary_data_size")
            n = int.from_bytes(binary[pos:pos + 4], "little")
            if pos + 4 + n > size:
                raise ProtocolError(400, f"{where}: BYTES element {i} claims {n} bytes, more than "
                                         "binary_data_size leaves")
            out[i] = bytes(binary[pos + 4:pos + 4 + n])
            pos += 4 + n
        if pos != size:
            raise ProtocolError(400, f"{where}: {size - pos} bytes of binary_data_size follow the last BYTES "
                                     "element")
        return out.reshape(shape), size
    if "data" not in t:
        raise ProtocolError(400, f"{where}: has neither 'data' nor parameters.binary_data_size")
    flat = []

    def walk(v, depth=0):
        if isinstance(v, list) and depth < 32:
            for e in v:
                walk(e, depth + 1)
        elif isinstance(v, str):
            flat.append(v.encode("utf-8"))
        else:
            raise ProtocolError(400, f"{where}: BYTES data must be (nested lists of) strings; send binary content "
                                     "such as image files as a binary tensor")
    walk(t["data"])
    if len(flat) != count:
        raise ProtocolError(400, f"{where}: shape {shape} needs {count} values, data has {len(flat)}")
    for i, e in enumerate(flat):
        out[i] = e
    return out.reshape(shape), 0


# ---- requests ----------------------------------------------------------------------------------------------

def _encode_tensors(arrays: dict, is_binary) -> tuple:
    """{name: array} -> (OIP tensor entries, binary blobs in order); is_binary(name): send that one as binary."""
    tensors, blobs = [], []
    for name, arr in arrays.items():
        arr = np.asarray(arr)
        if arr.dtype.kind == "O":
            t, blob = _encode_bytes(name, arr, is_binary(name))
            if blob is not None:
                blobs.append(blob)
            tensors.append(t)
            continue
        arr = _le(arr)
        t = {"name": name, "shape": list(arr.shape), "datatype": datatype_of(arr.dtype)}
        if is_binary(name):
            blobs.append(memoryview(arr.reshape(-1)).cast("B") if arr.size else b"")  # no copy
            t["parameters"] = {"binary_data_size": arr.nbytes}
        else:
            t["data"] = arr.ravel().tolist()
        tensors.append(t)
    return tensors, blobs


def _encode_bytes(name: str, arr: np.ndarray, binary: bool) -> tuple:
    """A BYTES tensor (array of bytes) -> (OIP tensor entry, binary blob or None)."""
    items = [bytes(e) for e in arr.reshape(-1)]
    t = {"name": name, "shape": list(arr.shape), "datatype": BYTES}
    if binary:
        blob = b"".join(len(e).to_bytes(4, "little") + e for e in items)
        t["parameters"] = {"binary_data_size": len(blob)}
        return t, blob
    try:
        t["data"] = [e.decode("utf-8") for e in items]
    except UnicodeDecodeError:
        raise ProtocolError(400, f"tensor {name!r}: BYTES that are not UTF-8 text must be sent binary") from None
    return t, None


def encode_request(inputs: dict, outputs=None, binary: bool = True, binary_outputs: bool | None = None,
                   request_id: str | None = None) -> tuple:
    """{name: array} -> (body bytes, header length or None). outputs: names to return (None = all).

    binary: send inputs as binary tensors; binary_outputs: ask for binary outputs (default = binary).
    """
    parts, hlen = encode_request_parts(inputs, outputs, binary, binary_outputs, request_id)
    return (parts[0] if len(parts) == 1 else b"".join(parts)), hlen


def encode_request_parts(inputs: dict, outputs=None, binary: bool = True, binary_outputs: bool | None = None,
                         request_id: str | None = None) -> tuple:
    """Like encode_request, but the body as [JSON header, memoryviews of the tensors] (no copy yet)."""
    binary_outputs = binary if binary_outputs is None else binary_outputs
    req: dict = {}
    if request_id:
        req["id"] = request_id
    req["inputs"], blobs = _encode_tensors(inputs, lambda name: binary)
    if outputs is None:
        if binary_outputs:
            req["parameters"] = {"binary_data_output": True}
    else:
        req["outputs"] = [{"name": n, "parameters": {"binary_data": bool(binary_outputs)}} for n in outputs]
    header = _json_dumps(req)
    return [header] + blobs, (len(header) if binary and blobs else None)


class InferRequest:
    """A decoded request: id, inputs {name: array}, outputs [(name, binary)] or None for all, binary default."""

    __slots__ = ("id", "inputs", "outputs", "binary_output", "parameters")

    def __init__(self, id, inputs, outputs, binary_output, parameters):
        self.id, self.inputs, self.outputs = id, inputs, outputs
        self.binary_output, self.parameters = binary_output, parameters

    def wanted(self, available: list) -> list:
        """[(name, binary)] to return, given the model's output names; unknown names -> 400."""
        if self.outputs is None:
            return [(n, self.binary_output) for n in available]
        for name, _ in self.outputs:
            if name not in available:
                raise ProtocolError(400, f"unknown output {name!r}; this model has {', '.join(available)}")
        return list(self.outputs)


def decode_request(body: bytes, header_length=None, binary=None) -> InferRequest:
    """Body (+ Inference-Header-Content-Length) -> InferRequest; ProtocolError(400) on anything malformed.

    binary: the binary part already separated (then `body` is the JSON header alone) — lets a server read
    tensor bytes straight into an aligned buffer. Decoded arrays are read-only views of the body / buffer.
    """
    if binary is None:
        header, binary = _split(body, header_length)
    else:
        header, _ = _split(body, None)
        binary = memoryview(binary).cast("B")
    params = header.get("parameters") or {}
    if not isinstance(params, dict):
        raise ProtocolError(400, "parameters must be an object")
    if "inputs" not in header:
        raise ProtocolError(400, "request has no 'inputs'")
    inputs = _tensors(header["inputs"], binary, "inputs")
    outputs = None
    if header.get("outputs") is not None:
        if not isinstance(header["outputs"], list):
            raise ProtocolError(400, "'outputs' must be a list")
        outputs = []
        for i, o in enumerate(header["outputs"]):
            if not isinstance(o, dict) or not isinstance(o.get("name"), str):
                raise ProtocolError(400, f"outputs[{i}] must be an object with a string 'name'")
            op = o.get("parameters") or {}
            if not isinstance(op, dict):
                raise ProtocolError(400, f"output {o['name']!r}: parameters must be an object")
            if op.get("classification"):
                raise ProtocolError(400, f"output {o['name']!r}: the classification extension is not supported")
            outputs.append((o["name"], bool(op.get("binary_data", params.get("binary_data_output", False)))))
    rid = header.get("id")
    return InferRequest(rid if isinstance(rid, str) else None, inputs, outputs,
                        bool(params.get("binary_data_output", False)), params)


# ---- responses ---------------------------------------------------------------------------------------------

def encode_response(model_name: str, outputs: dict, binary, model_version: str = "1",
                    request_id: str | None = None) -> tuple:
    """{name: array} -> (body, header length or None). binary: bool for all, or {name: bool}."""
    res: dict = {"model_name": model_name, "model_version": model_version}
    if request_id:
        res["id"] = request_id
    res["outputs"], blobs = _encode_tensors(
        outputs, (lambda name: binary.get(name, False)) if isinstance(binary, dict) else (lambda name: binary))
    header = _json_dumps(res)
    if not blobs:
        return header, None
    return b"".join([header] + blobs), len(header)


def decode_response(body: bytes, header_length=None) -> dict:
    """Response body -> {output name: array} (arrays may be read-only views of body)."""
    header, binary = _split(body, header_length)
    if "error" in header:
        raise ProtocolError(400, str(header["error"]))
    return _tensors(header.get("outputs", []), binary, "outputs")


def error_body(message: str) -> bytes:
    return _json_dumps({"error": message})


def first_non_finite(arrays: dict) -> str | None:
    """The name of the first floating-point tensor holding NaN or Inf, else None."""
    for name, a in arrays.items():
        if a.dtype.kind in "fc" and a.size and not np.isfinite(a).all():
            return name
    return None


# ---- client ------------------------------------------------------------------------------------------------

class _NoDelayConnection(http.client.HTTPConnection):
    """HTTPConnection with Nagle off: without it a small request waits ~40 ms for delayed ACKs."""

    def connect(self):
        super().connect()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _NoDelayTlsConnection(http.client.HTTPSConnection):
    def connect(self):
        super().connect()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


_DROPPED = (http.client.RemoteDisconnected, http.client.BadStatusLine, BrokenPipeError, ConnectionResetError,
            ConnectionAbortedError)


def client_tls_context(ca_file: str) -> ssl.SSLContext:
    """A client TLS context that trusts only the CA (or self-signed certificate) in `ca_file`, checking the
    server's name; ValueError naming the file when it does not load."""
    try:
        ctx = ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as e:
        raise ValueError(f"cannot load CA file {ca_file} ({e})") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class OipClient:
    """Keep-alive HTTP/1.1 client for one OIP v2 server. Not thread-safe: one per thread (or per board).

    A request on a reused connection that the server had closed is retried once on a fresh one.
    ssl_context: speak HTTPS, verifying the server against it (see client_tls_context).
    max_response: refuse (ProtocolError 0) answers larger than this many bytes, without reading them.
    """

    def __init__(self, host: str, port: int, token: str | None = None, timeout: float = 10.0,
                 ssl_context: ssl.SSLContext | None = None, max_response: int | None = None):
        self.host, self.port, self.timeout = host, int(port), timeout
        self.ssl_context, self.max_response = ssl_context, max_response
        self._auth = {"Authorization": f"Bearer {token}"} if token else {}
        self._conn = None
        self._used = False

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn, self._used = None, False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _connect(self):
        if self.ssl_context is not None:
            return _NoDelayTlsConnection(self.host, self.port, timeout=self.timeout, context=self.ssl_context)
        return _NoDelayConnection(self.host, self.port, timeout=self.timeout)

    def _read(self, resp) -> bytes:
        cap = self.max_response
        if cap is None:
            return resp.read()
        length = resp.getheader("Content-Length")
        if length is not None and (not _DIGITS.match(length) or int(length) > cap):
            raise _TooLarge(f"answer of {length[:20]} bytes is over the {cap}-byte limit")
        data = resp.read(cap + 1)
        if len(data) > cap:
            raise _TooLarge(f"answer is over the {cap}-byte limit")
        return data

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                timeout: float | None = None) -> tuple:
        """(status, headers as a case-insensitive message, body bytes). Transport failures -> ProtocolError(0).

        timeout: for this request's socket reads (default: the client's)."""
        hdrs = dict(self._auth)
        hdrs.update(headers or {})
        for attempt in (0, 1):
            if self._conn is None:
                self._conn = self._connect()
                self._used = False
            reused = self._used
            try:
                if self._conn.sock is not None:
                    self._conn.sock.settimeout(timeout or self.timeout)
                else:
                    self._conn.timeout = timeout or self.timeout
                self._conn.request(method, path, body=body, headers=hdrs)
                resp = self._conn.getresponse()
                data = self._read(resp)
            except _DROPPED as e:
                self.close()
                if reused and attempt == 0:
                    continue  # the server dropped an idle keep-alive connection: retry once, fresh
                raise ProtocolError(0, f"{self.host}:{self.port}: connection dropped ({e!r})") from None
            except _TooLarge as e:
                self.close()  # the rest of the answer is unread: this connection is done
                raise ProtocolError(0, f"{self.host}:{self.port}: {method} {path}: {e}") from None
            except (OSError, http.client.HTTPException) as e:
                self.close()
                raise ProtocolError(0, f"{self.host}:{self.port}: {method} {path} failed ({e!r})") from None
            self._used = True
            if resp.will_close:
                self.close()
            return resp.status, resp.headers, data
        raise AssertionError("unreachable")

    # -- a request in two halves (the coordinator's fan-out) ----------------------------------------------------
    @property
    def plain(self) -> bool:
        """Plain HTTP (not TLS): the body of a started request may be written to `socket` directly."""
        return self.ssl_context is None

    def start(self, method: str, path: str, body_len: int, headers: dict | None = None,
              timeout: float | None = None):
        """Send a request's line and headers (connecting when needed) and return the socket, so that the caller
        writes exactly `body_len` body bytes to it and then calls `finish`. Plain HTTP only. On a transport
        failure the connection is closed and ProtocolError(0) raised (then use `request`, which reconnects)."""
        if not self.plain:
            raise ValueError("start/finish is for plain HTTP; use request() over TLS")
        if self._conn is None:
            self._conn = self._connect()
            self._used = False
        try:
            if self._conn.sock is not None:
                self._conn.sock.settimeout(timeout or self.timeout)
            else:
                self._conn.timeout = timeout or self.timeout
            self._conn.putrequest(method, path)
            for k, v in {**self._auth, **(headers or {}), "Content-Length": str(body_len)}.items():
                self._conn.putheader(k, v)
            self._conn.endheaders()
        except (OSError, http.client.HTTPException) as e:
            self.close()
            raise ProtocolError(0, f"{self.host}:{self.port}: {method} {path} failed ({e!r})") from None
        return self._conn.sock

    def finish(self, timeout: float | None = None):
        """The answer to the request `start` began and the caller's body completed: (status, headers, body), or
        None when a reused keep-alive connection turned out closed by the server (then retry with `request`).
        Other transport failures -> ProtocolError(0)."""
        reused = self._used
        try:
            self._conn.sock.settimeout(timeout or self.timeout)
            resp = self._conn.getresponse()
            data = self._read(resp)
        except _DROPPED as e:
            self.close()
            if reused:
                return None
            raise ProtocolError(0, f"{self.host}:{self.port}: connection dropped ({e!r})") from None
        except _TooLarge as e:
            self.close()
            raise ProtocolError(0, f"{self.host}:{self.port}: {e}") from None
        except (OSError, http.client.HTTPException, AttributeError) as e:  # AttributeError: closed under us
            self.close()
            raise ProtocolError(0, f"{self.host}:{self.port}: no answer ({e!r})") from None
        self._used = True
        if resp.will_close:
            self.close()
        return resp.status, resp.headers, data

    def _json(self, method: str, path: str, ok=(200,)) -> dict:
        status, _, data = self.request(method, path)
        if status not in ok:
            raise ProtocolError(status, _error_message(data))
        try:
            return json.loads(data) if data else {}
        except ValueError:
            raise ProtocolError(400, f"{path}: server answered invalid JSON") from None

    def live(self) -> bool:
        return self.request("GET", "/v2/health/live")[0] == 200

    def ready(self) -> bool:
        return self.request("GET", "/v2/health/ready")[0] == 200

    def model_ready(self, model: str) -> bool:
        return self.request("GET", f"/v2/models/{model}/ready")[0] == 200

    def server_metadata(self) -> dict:
        return self._json("GET", "/v2")

    def metadata(self, model: str) -> dict:
        return self._json("GET", f"/v2/models/{model}")

    def stats(self, model: str) -> dict:
        return self._json("GET", f"/v2/models/{model}/stats")

    def infer(self, model: str, inputs: dict, outputs=None, binary: bool = True) -> dict:
        """{input name: array} -> {output name: array}. outputs: names to return (None = all)."""
        # one buffer (one copy of the tensors): sending the parts separately measured 2-4x slower for a
        # 224x224x3 input on loopback, although it saves the copy
        body, hlen = encode_request(inputs, outputs, binary=binary)
        headers = {"Content-Type": BINARY_TYPE if hlen is not None else JSON_TYPE}
        if hlen is not None:
            headers[HEADER_LENGTH] = str(hlen)
        status, rh, data = self.request("POST", f"/v2/models/{model}/infer", body, headers)
        if status != 200:
            raise ProtocolError(status, _error_message(data))
        return decode_response(data, rh.get(HEADER_LENGTH))


def send_bodies(items: list, deadline: float) -> dict:
    """Write each (key, socket, body) body in full to its socket, all at once: non-blocking writes interleaved
    as the sockets drain, so a slow link holds back neither a fast one nor the bodies after it. deadline:
    time.perf_counter() value. -> {key: None when sent, else what went wrong}. Each socket gets its timeout back."""
    import selectors
    import time

    out, left = {}, {}
    for key, sock, body in items:
        left[sock] = [key, memoryview(body).cast("B"), 0, sock.gettimeout()]
        sock.setblocking(False)
    sel = selectors.DefaultSelector()
    try:
        ready = list(left)
        while True:
            for sock in ready:
                key, view, off, _ = st = left[sock]
                try:
                    while off < len(view):
                        off += sock.send(view[off:])
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError as e:
                    out[key] = f"sending the request failed ({e!r})"
                st[2] = off
                if key in out or off >= len(view):
                    out.setdefault(key, None)
                    if sock in sel.get_map():
                        sel.unregister(sock)
                elif sock not in sel.get_map():
                    sel.register(sock, selectors.EVENT_WRITE)
            if not sel.get_map():
                return out
            wait = deadline - time.perf_counter()
            if wait <= 0:
                for key in list(sel.get_map().values()):
                    out[left[key.fileobj][0]] = "the request was not sent within the deadline"
                return out
            ready = [k.fileobj for k, _ in sel.select(wait)]
    finally:
        sel.close()
        for sock, (_, _, _, timeout) in left.items():
            try:
                sock.settimeout(timeout)
            except OSError as e:  # closed meanwhile: the caller sees it on its next use
                out.setdefault(left[sock][0], f"socket closed ({e!r})")


class _TooLarge(Exception):
    pass


def _error_message(data: bytes) -> str:
    try:
        return str(json.loads(data)["error"])
    except (ValueError, KeyError, TypeError):
        return data[:200].decode("utf-8", "replace") or "(empty body)"
