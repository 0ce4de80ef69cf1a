"""Load an exported artifact into whichever interpreter the board has, behind one small `Model` interface.

Board side: stdlib + numpy + one interpreter. `.tflite` runs on ai-edge-litert (preferred) or tflite-runtime,
`.onnx` on onnxruntime. Interpreter modules are imported lazily, inside `load_model`, so importing this module is
cheap and works on a board that has only one of them.

Tensor names. Our logical names are the manifest's (`pixel_values` -> `features`, `logits`). ONNX files carry
them already. litert-torch names TFLite tensors after the signature (`args_0` -> `output_0`, `output_1`, with
tensor names like `serving_default_output_0_output`). `load_model(..., inputs=, outputs=)` takes the manifest
artifact's declared `inputs` / `outputs` lists and binds them: by name when every declared name exists, else by
position in signature order when the counts match and the non-batch shapes agree, else by a unique non-batch
shape. Without declarations the interpreter's own names are kept; `Model.bind()` can apply them later (bench
binds against the reference npz that way).

Batch. Every model reports a free batch dim (-1). A TFLite model exported with batch 1 is resized per batch size
on a separate interpreter (cached, a few sizes); when resizing fails (static reshapes in the graph, which is
usual for ViTs) that batch size runs sample by sample on the batch-1 interpreter.

Quantised IO. A TFLite tensor of an integer type with a quantisation scale is presented as float32: inputs are
quantised (round(x / scale) + zero_point, clipped), outputs dequantised ((q - zero_point) * scale).

A `Model` is not thread-safe (TFLite interpreters are not); callers serialise `run` per model.
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict

import numpy as np

BACKENDS = ("litert", "tflite-runtime", "onnxruntime")
_TFLITE_MODULES = {"litert": "ai_edge_litert.interpreter", "tflite-runtime": "tflite_runtime.interpreter"}
_PIP_NAME = {"litert": "ai-edge-litert", "tflite-runtime": "tflite-runtime", "onnxruntime": "onnxruntime"}
_MAX_CACHED_BATCHES = 4

_ORT_TYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(int16)": "int16", "tensor(int32)": "int32",
    "tensor(int64)": "int64", "tensor(bool)": "bool",
}


class BackendError(Exception):
    """The artifact cannot be loaded or run here; the message says what to install or fix."""


def _import_interpreter(backend: str):
    """The interpreter module for `backend`, or BackendError naming the pip package."""
    import importlib

    modname = _TFLITE_MODULES.get(backend, "onnxruntime")
    try:
        return importlib.import_module(modname)
    except ImportError as e:
        raise BackendError(
            f"backend {backend} is not importable here ({e}); pip install {_PIP_NAME[backend]}") from None


def backend_version(backend: str) -> str | None:
    """Installed version of a backend's package, without importing it (None if absent)."""
    from importlib import metadata

    try:
        return metadata.version(_PIP_NAME[backend])
    except metadata.PackageNotFoundError:
        return None


def available_backends() -> dict:
    """{backend: version or None if it does not import} — for board probes."""
    found = {}
    for b in BACKENDS:
        try:
            _import_interpreter(b)
            found[b] = backend_version(b) or "unknown"
        except BackendError:
            found[b] = None
    return found


def _compatible(shape_a, shape_b) -> bool:
    """Same rank and equal non-batch dims wherever both are known (> 0)."""
    if len(shape_a) != len(shape_b):
        return False
    return all(a == b or a <= 0 or b <= 0 for a, b in zip(shape_a[1:], shape_b[1:]))


def _bind(raw: list, declared, kind: str, path: str) -> list:
    """Logical names for the interpreter's tensors `raw` (list of specs), per the module docstring's rules."""
    names = [t["name"] for t in raw]
    if not declared:
        return names
    want = [d["name"] for d in declared]
    if all(w in names for w in want):
        return names
    if len(declared) == len(raw) and all(_compatible(r["shape"], d.get("shape", r["shape"]))
                                         for r, d in zip(raw, declared)):
        return want
    out = list(names)
    taken = set()
    for d in declared:
        hits = [i for i, r in enumerate(raw) if i not in taken and _compatible(r["shape"], d.get("shape", []))]
        if len(hits) != 1:
            raise BackendError(
                f"{path}: cannot match declared {kind} {d['name']!r} {d.get('shape')} to the model's {kind} "
                f"{[(r['name'], r['shape']) for r in raw]}; re-export the artifact or fix the manifest")
        taken.add(hits[0])
        out[hits[0]] = d["name"]
    return out


class Model:
    """An artifact loaded in an interpreter. `inputs` / `outputs`: lists of {name, shape, dtype}, batch = -1."""

    backend_name = ""
    backend_version = ""

    def __init__(self, path: str):
        self.path = path
        self._inputs: list = []   # [{name, shape, dtype, ...backend fields}]
        self._outputs: list = []

    @property
    def inputs(self) -> list:
        return [{"name": t["name"], "shape": list(t["shape"]), "dtype": t["dtype"]} for t in self._inputs]

    @property
    def outputs(self) -> list:
        return [{"name": t["name"], "shape": list(t["shape"]), "dtype": t["dtype"]} for t in self._outputs]

    def bind(self, inputs=None, outputs=None) -> "Model":
        """Rename tensors to declared logical names (see module docstring); returns self."""
        for specs, declared, kind in ((self._inputs, inputs, "input"), (self._outputs, outputs, "output")):
            for t, name in zip(specs, _bind(specs, declared, kind, self.path)):
                t["name"] = name
            for d in declared or []:
                t = next((t for t in specs if t["name"] == d["name"]), None)
                if t is not None and d.get("dtype") and d["dtype"] != t["dtype"]:
                    raise BackendError(f"{self.path}: {kind} {d['name']!r} is {t['dtype']} in the model, "
                                       f"declared {d['dtype']}; re-export the artifact or fix the manifest")
        return self

    def _feeds(self, feeds: dict) -> tuple:
        """Check names, cast dtypes; returns (list of arrays in input order, batch size)."""
        arrays = []
        for t in self._inputs:
            if t["name"] not in feeds:
                raise BackendError(f"{self.path}: missing input {t['name']!r}; got {sorted(feeds)}")
            # aligned too: a tensor decoded in place from a request body sits at an arbitrary byte offset, and
            # interpreters copy unaligned input slowly (+0.23 ms for 224x224x3 fp32 in onnxruntime here)
            arrays.append(np.require(feeds[t["name"]], dtype=t["dtype"], requirements=("C", "A")))
        batches = {a.shape[0] if a.ndim else 1 for a in arrays}
        if len(batches) != 1:
            raise BackendError(f"{self.path}: inputs disagree on batch size {sorted(batches)}")
        return arrays, batches.pop()

    def run(self, feeds: dict) -> dict:
        """{input name: array} -> {output name: array} (logical names, logical dtypes)."""
        raise NotImplementedError


class _OrtModel(Model):
    backend_name = "onnxruntime"

    def __init__(self, path: str, threads: int):
        super().__init__(path)
        ort = _import_interpreter("onnxruntime")
        self.backend_version = getattr(ort, "__version__", "unknown")
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3  # warnings about unused initialisers are noise on a board
        try:
            self._sess = ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own exception classes (Fail, InvalidGraph, ...)
            raise BackendError(f"{path}: onnxruntime cannot load it ({str(e).splitlines()[0]}); "
                               "re-export the artifact or upgrade onnxruntime") from None
        for src, dst in ((self._sess.get_inputs(), self._inputs), (self._sess.get_outputs(), self._outputs)):
            for i, t in enumerate(src):
                shape = [d if isinstance(d, int) and d > 0 else -1 for d in (t.shape or [])]
                if shape:
                    shape[0] = -1
                dst.append({"name": t.name, "raw": t.name, "shape": shape,
                            "dtype": _ORT_TYPES.get(t.type, t.type)})

    def run(self, feeds: dict) -> dict:
        arrays, _ = self._feeds(feeds)
        res = self._sess.run([t["raw"] for t in self._outputs],
                             {t["raw"]: a for t, a in zip(self._inputs, arrays)})
        return {t["name"]: r for t, r in zip(self._outputs, res)}


def _signature_order(names: list) -> list:
    """litert-torch signature outputs are `output_0..output_N`; order them numerically (output_10 after 9)."""
    if names and all(re.fullmatch(r"(args|output)_\d+", n) for n in names):
        return sorted(names, key=lambda n: int(n.rsplit("_", 1)[1]))
    return list(names)


def quantize(x: np.ndarray, scale: float, zero_point: int, dtype) -> np.ndarray:
    """float -> integer tensor with TFLite's affine quantisation (round half to even, clipped to the type)."""
    info = np.iinfo(dtype)
    q = np.round(np.asarray(x, dtype=np.float32) / np.float32(scale)) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return ((q.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)).astype(np.float32)


class _TfliteModel(Model):
    def __init__(self, path: str, threads: int, backend: str):
        super().__init__(path)
        mod = _import_interpreter(backend)
        self.backend_name = backend
        self.backend_version = backend_version(backend) or "unknown"
        self._cls = mod.Interpreter
        self._threads = threads
        self._base = self._new_interpreter()
        try:
            self._base.allocate_tensors()
        except (RuntimeError, ValueError) as e:
            raise BackendError(f"{path}: {backend} cannot allocate it ({e}); re-export the artifact") from None
        in_idx, out_idx = self._signature_indices()
        details = {d["index"]: d for d in self._base.get_input_details() + self._base.get_output_details()}
        for order, dst in ((in_idx, self._inputs), (out_idx, self._outputs)):
            for name, idx in order:
                dst.append(self._spec(name, details[idx]))
        self._base_batch = int(details[in_idx[0][1]]["shape"][0]) if in_idx else 1
        self._resized: OrderedDict = OrderedDict()  # batch -> interpreter
        self._per_sample: set = set()                 # batch sizes that cannot be resized

    def _new_interpreter(self):
        try:
            return self._cls(model_path=self.path, num_threads=self._threads)
        except (RuntimeError, ValueError) as e:
            raise BackendError(f"{self.path}: {self.backend_name} cannot load it ({e}); "
                               "is it a .tflite file made by `edvit-tool export`?") from None

    def _signature_indices(self) -> tuple:
        """([(name, tensor index)] for inputs, same for outputs), in signature (= export) order."""
        sigs = self._base.get_signature_list() if hasattr(self._base, "get_signature_list") else {}
        if len(sigs) == 1:
            key, sig = next(iter(sigs.items()))
            runner = self._base.get_signature_runner(key)
            ins, outs = runner.get_input_details(), runner.get_output_details()
            return ([(n, ins[n]["index"]) for n in _signature_order(sig["inputs"])],
                    [(n, outs[n]["index"]) for n in _signature_order(sig["outputs"])])
        return ([(d["name"], d["index"]) for d in self._base.get_input_details()],
                [(d["name"], d["index"]) for d in self._base.get_output_details()])

    @staticmethod
    def _spec(name: str, d: dict) -> dict:
        qdtype = np.dtype(d["dtype"])
        scale, zp = d.get("quantization", (0.0, 0))
        quantised = qdtype.kind in "iu" and scale and scale > 0
        shape = [int(s) if int(s) > 0 else -1 for s in d.get("shape_signature", d["shape"])]
        if shape:
            shape[0] = -1  # any batch runs: resized or sample by sample
        return {"name": name, "index": d["index"], "shape": shape,
                "dtype": "float32" if quantised else qdtype.name, "qdtype": qdtype,
                "scale": float(scale) if quantised else None, "zero_point": int(zp)}

    def _interpreter_for(self, batch: int, arrays: list):
        """An allocated interpreter whose inputs take `batch`, or None to run sample by sample."""
        if batch == self._base_batch:
            return self._base
        if batch in self._per_sample:
            return None
        if batch in self._resized:
            self._resized.move_to_end(batch)
            return self._resized[batch]
        interp = self._new_interpreter()
        try:
            for t, a in zip(self._inputs, arrays):
                interp.resize_tensor_input(t["index"], list(a.shape))
            interp.allocate_tensors()
            if any(int(d["shape"][0]) != batch for d in interp.get_output_details()):
                raise ValueError("outputs did not follow the new batch size")
        except (RuntimeError, ValueError):
            self._per_sample.add(batch)  # static batch in the graph (usual for litert-torch ViTs)
            return None
        self._resized[batch] = interp
        while len(self._resized) > _MAX_CACHED_BATCHES:
            self._resized.popitem(last=False)
        return interp

    def _invoke(self, interp, arrays: list) -> list:
        for t, a in zip(self._inputs, arrays):
            if t["scale"] is not None:
                a = quantize(a, t["scale"], t["zero_point"], t["qdtype"])
            interp.set_tensor(t["index"], a)
        interp.invoke()
        out = []
        for t in self._outputs:
            r = interp.get_tensor(t["index"])  # a copy, safe across the next invoke
            out.append(dequantize(r, t["scale"], t["zero_point"]) if t["scale"] is not None else r)
        return out

    def run(self, feeds: dict) -> dict:
        arrays, batch = self._feeds(feeds)
        interp = self._interpreter_for(batch, arrays)
        if interp is not None:
            try:
                res = self._invoke(interp, arrays)
            except RuntimeError:
                if interp is self._base:
                    raise
                # resized fine but failed at run time: drop it and go sample by sample from now on
                self._resized.pop(batch, None)
                self._per_sample.add(batch)
                interp = None
        if interp is None:
            parts = [self._invoke(self._base, [a[i:i + 1] for a in arrays]) for i in range(batch)]
            res = [np.concatenate([p[j] for p in parts]) for j in range(len(self._outputs))]
        return {t["name"]: r for t, r in zip(self._outputs, res)}


def load_model(path: str, backend: str | None = None, threads: int = 1, inputs=None, outputs=None) -> Model:
    """Load an artifact by file extension. backend: force one of BACKENDS (None = best available).

    inputs / outputs: the manifest artifact's declared lists, to bind logical names (module docstring).
    """
    if backend is not None and backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if not os.path.isfile(path):
        raise BackendError(f"{path}: no such file")
    threads = max(1, int(threads))
    ext = os.path.splitext(path)[1].lower()
    if ext == ".onnx":
        if backend not in (None, "onnxruntime"):
            raise BackendError(f"{path}: an .onnx artifact needs onnxruntime, not {backend}")
        model: Model = _OrtModel(path, threads)
    elif ext == ".tflite":
        if backend == "onnxruntime":
            raise BackendError(f"{path}: a .tflite artifact needs litert or tflite-runtime, not onnxruntime")
        if backend is None:
            backend = next((b for b in ("litert", "tflite-runtime") if _importable(b)), None)
            if backend is None:
                raise BackendError(f"{path}: no TFLite interpreter here; pip install ai-edge-litert "
                                   "(or tflite-runtime on boards it does not support)")
        model = _TfliteModel(path, threads, backend)
    else:
        raise BackendError(f"{path}: unknown artifact type {ext or '(no extension)'}; expected .onnx or .tflite")
    return model.bind(inputs, outputs)


def _importable(backend: str) -> bool:
    try:
        _import_interpreter(backend)
        return True
    except BackendError:
        return False
