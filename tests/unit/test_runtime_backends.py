"""Pure parts of the board backends (name binding, quantised IO) and the runtime's Python 3.9 syntax. <1 s."""

from __future__ import annotations

import ast
import os

import numpy as np
import pytest

from edvit_tool.runtime import backends
from edvit_tool.runtime.backends import BackendError, _bind, _signature_order, dequantize, quantize

RUNTIME = os.path.join(os.path.dirname(__file__), "..", "..", "edvit_tool", "runtime")


def _raw(*specs):
    return [{"name": n, "shape": s} for n, s in specs]


def test_bind_keeps_names_that_already_match():
    raw = _raw(("features", [-1, 16]), ("logits", [-1, 3]))
    assert _bind(raw, [{"name": "logits", "shape": [-1, 3]}], "output", "m") == ["features", "logits"]


def test_bind_maps_litert_names_by_signature_order():
    raw = _raw(("output_0", [-1, 16]), ("output_1", [-1, 3]))
    declared = [{"name": "features", "shape": [-1, 16]}, {"name": "logits", "shape": [-1, 3]}]
    assert _bind(raw, declared, "output", "m") == ["features", "logits"]


def test_bind_falls_back_to_shape_when_order_disagrees():
    raw = _raw(("output_0", [-1, 3]), ("output_1", [-1, 16]))
    declared = [{"name": "features", "shape": [-1, 16]}, {"name": "logits", "shape": [-1, 3]}]
    assert _bind(raw, declared, "output", "m") == ["logits", "features"]
    # a subset (e.g. a reference npz with only logits) binds by shape too
    assert _bind(raw, [{"name": "logits", "shape": [-1, 3]}], "output", "m") == ["logits", "output_1"]


def test_bind_refuses_ambiguous_or_missing_matches():
    raw = _raw(("output_0", [-1, 3]), ("output_1", [-1, 3]), ("output_2", [-1, 5]))
    with pytest.raises(BackendError, match="cannot match declared output 'logits'"):
        _bind(raw, [{"name": "logits", "shape": [-1, 3]}], "output", "m")
    with pytest.raises(BackendError, match="cannot match declared output 'x'"):
        _bind(raw, [{"name": "x", "shape": [-1, 7]}], "output", "m")


def test_signature_outputs_sort_numerically():
    names = ["output_10", "output_2", "output_0", "output_1"]
    assert _signature_order(names) == ["output_0", "output_1", "output_2", "output_10"]
    assert _signature_order(["b", "a"]) == ["b", "a"]  # other names keep the interpreter's order


@pytest.mark.parametrize("dtype,scale,zp", [(np.int8, 0.05, -3), (np.uint8, 0.1, 128), (np.int16, 0.001, 0)])
def test_quantised_io_roundtrips_within_half_a_step(dtype, scale, zp):
    info = np.iinfo(dtype)
    lo, hi = (info.min - zp) * scale, (info.max - zp) * scale
    x = np.linspace(lo, hi, 101, dtype=np.float32)
    q = quantize(x, scale, zp, dtype)
    assert q.dtype == dtype
    back = dequantize(q, scale, zp)
    assert back.dtype == np.float32 and np.max(np.abs(back - x)) <= scale / 2 + 1e-6
    # out-of-range values clip instead of wrapping around
    assert quantize(np.array([hi * 10, lo * 10], np.float32), scale, zp, dtype).tolist() == [info.max, info.min]


def test_load_model_errors_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(BackendError, match="no such file"):
        backends.load_model(str(tmp_path / "m.onnx"))
    p = tmp_path / "m.bin"
    p.write_bytes(b"x")
    with pytest.raises(BackendError, match=r"unknown artifact type \.bin; expected \.onnx or \.tflite"):
        backends.load_model(str(p))
    p = tmp_path / "m.onnx"
    p.write_bytes(b"not a model")
    with pytest.raises(BackendError, match="needs onnxruntime, not litert"):
        backends.load_model(str(p), backend="litert")
    with pytest.raises(BackendError, match="onnxruntime cannot load it"):
        backends.load_model(str(p))
    t = tmp_path / "m.tflite"
    t.write_bytes(b"not a model either")
    with pytest.raises(BackendError, match="cannot load it"):
        backends.load_model(str(t))
    with pytest.raises(BackendError, match="unknown backend 'tvm'"):
        backends.load_model(str(t), backend="tvm")


def test_runtime_sources_parse_as_python_3_9():
    """Boards run Python >= 3.9: no match statements, no 3.10+ syntax in the shipped runtime."""
    names = sorted(n for n in os.listdir(RUNTIME) if n.endswith(".py"))
    assert {"backends.py", "protocol.py", "worker.py", "bench.py", "manifest.py"} <= set(names)
    for name in names:
        with open(os.path.join(RUNTIME, name)) as f:
            ast.parse(f.read(), filename=name, feature_version=(3, 9))


# ---- manifest helpers the worker uses to pick artifacts ----------------------------------------------------

def _art(name, fmt, quant, status="ok", sha="0"):
    return {"name": name, "format": fmt, "quant": quant, "status": status, "sha256": sha, "reason": "gate"}


def test_select_artifact_takes_the_variant_or_falls_back_to_onnx_fp32():
    from edvit_tool.runtime import manifest as mf

    man = {"artifacts": [_art("g0", "tflite", "int8-static", "failed"), _art("g0", "onnx", "fp32"),
                         _art("g0", "tflite", "fp32"), _art("g1", "onnx", "int8-dynamic")]}
    assert mf.select_artifact(man, "g0") == (man["artifacts"][1], None)  # first usable
    assert mf.select_artifact(man, "g0", "tflite/fp32") == (man["artifacts"][2], None)
    art, note = mf.select_artifact(man, "g0", "tflite/int8-static")
    assert art is man["artifacts"][1] and "tflite/int8-static failed (gate); using onnx/fp32" in note
    with pytest.raises(mf.ManifestError, match="no usable onnx/fp32 fallback; usable: g1:onnx/int8-dynamic"):
        mf.select_artifact(man, "g1", "onnx/fp16")
    with pytest.raises(mf.ManifestError, match="no artifact for model 'g7'; the manifest has g0, g1"):
        mf.select_artifact(man, "g7")
    with pytest.raises(mf.ManifestError, match="FORMAT/QUANT"):
        mf.select_artifact(man, "g0", "onnx-fp32")
    assert mf.artifact_by_sha256({"artifacts": [_art("g0", "onnx", "fp32", sha="ab")]}, "ab")["name"] == "g0"
