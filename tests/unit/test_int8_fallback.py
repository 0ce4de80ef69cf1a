"""The int8 gate's fallback with export.int8_fallback weights: a layer group kept out of int8 compute keeps int8
weights (float activations, weights dequantised on load), so the artifact stays int8-sized and close to fp32.
Real quantisers and interpreters (onnxruntime, ai-edge-quantizer + LiteRT) on the tiny trained ViT.

Runtime: ~40 s on 2 cores (one ONNX export, one TFLite conversion, a few quantisations).
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
import torch

import export_tiny as et
from edvit_tool.export import validate as V
from edvit_tool.export.onnx import export_onnx, node_groups as onnx_groups
from edvit_tool.export.quantize import onnx_int8_weights, onnx_preprocess, quantize_onnx, quantize_tflite


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    models = et.trained(tmp_path_factory)
    x, _ = et.digits()
    return models["g0"], x[:200]


def _run(path, fmt, x):
    return V.Runner(path, fmt).run({"pixel_values": x})


def _rel_err(got, ref):
    return float(np.abs(got - ref).max() / max(1e-6, np.abs(ref).max()))


def test_onnx_weight_only_fallback_keeps_int8_weights_and_float_activations(tiny, tmp_path):
    model, x = tiny
    fp32, pre = str(tmp_path / "g0.onnx"), str(tmp_path / "g0.pre.onnx")
    export_onnx(model, "submodel", torch.from_numpy(x[:2]), fp32, 17, "onnxslim")
    onnx_preprocess(fp32, pre)
    graph = onnx.load(pre).graph
    inits = {t.name for t in graph.initializer}
    nodes = {n.name: n for n in graph.node}
    grouped = [n for v in onnx_groups(onnx.load(pre)).values() for n in v]  # what the fallback can exclude
    weight_ops = [n for n in grouped if nodes[n].op_type in ("MatMul", "Gemm", "Conv") and nodes[n].input[1] in inits]
    assert len(weight_ops) >= 6  # patch embedding, qkv/proj/fc1/fc2 per block, head
    calib = x[:64]
    ref = _run(fp32, "onnx", x)
    paths = {}
    for kind, float_weights in (("plain", None), ("weight-only", []), ("float", grouped)):
        paths[kind] = str(tmp_path / f"{kind}.onnx")
        exclude = [] if kind == "plain" else grouped
        quantize_onnx(fp32, pre, paths[kind], "int8-static", "pixel_values", calib, exclude,
                      float_weights=float_weights)
    size = {k: os.path.getsize(p) for k, p in paths.items()}
    assert size["weight-only"] < 0.45 * os.path.getsize(fp32)   # int8-sized ...
    assert size["float"] > 0.9 * os.path.getsize(fp32)          # ... where the old fallback kept fp32 weights
    graph = onnx.load(paths["weight-only"]).graph
    assert not [n for n in graph.node if n.op_type == "QuantizeLinear"]  # no activation is rounded to int8
    inits = {t.name: t for t in graph.initializer}
    dq = {n.output[0]: n for n in graph.node if n.op_type == "DequantizeLinear"}
    for node in graph.node:
        if node.name in weight_ops:  # every weight op reads its weight through an int8 DequantizeLinear
            src = dq[node.input[1]]
            assert inits[src.input[0]].data_type == onnx.TensorProto.INT8, node.name
    err = {k: _rel_err(_run(p, "onnx", x)["features"], ref["features"]) for k, p in paths.items()}
    assert err["weight-only"] < err["plain"] / 2, err  # activation rounding was most of int8's error
    assert err["weight-only"] < 0.05, err
    agree = np.mean(_run(paths["weight-only"], "onnx", x)["logits"].argmax(-1) == ref["logits"].argmax(-1))
    assert agree >= 0.99


def test_onnx_int8_weights_leaves_unnamed_and_activation_matmuls_alone(tiny, tmp_path):
    model, x = tiny
    fp32 = str(tmp_path / "g0.onnx")
    export_onnx(model, "submodel", torch.from_numpy(x[:2]), fp32, 17, "onnxslim")
    before = onnx.load(fp32)
    # attention's q @ k^T MatMuls take two activations: named or not, nothing to convert
    act_matmuls = [n.name for n in before.graph.node if n.op_type == "MatMul"
                   and not any(i in {t.name for t in before.graph.initializer} for i in n.input)]
    assert act_matmuls
    path = str(tmp_path / "copy.onnx")
    onnx.save(before, path)
    assert onnx_int8_weights(path, act_matmuls + ["no-such-node"]) == 0
    assert os.path.getsize(path) == os.path.getsize(fp32)


def test_tflite_weight_only_fallback_is_int8_sized_and_close_to_fp32(tiny, tmp_path):
    from edvit_tool.export.tflite import convert_tflite, node_groups

    model, x = tiny
    fp32 = str(tmp_path / "g0.tflite")
    convert_tflite(model, "submodel", torch.from_numpy(x[:2]), fp32)
    rules = [r for v in node_groups(fp32).values() for r in v]
    ref = _run(fp32, "tflite", x)
    out = {}
    for kind, float_weights in (("weight-only", []), ("float", rules)):
        out[kind] = str(tmp_path / f"{kind}.tflite")
        quantize_tflite(fp32, out[kind], "int8-static", "pixel_values", x[:64], rules, float_weights=float_weights)
    assert os.path.getsize(out["weight-only"]) < 0.5 * os.path.getsize(out["float"])
    got = _run(out["weight-only"], "tflite", x)
    assert _rel_err(got["features"], ref["features"]) < 0.05
    assert np.mean(got["logits"].argmax(-1) == ref["logits"].argmax(-1)) >= 0.99


def test_fused_agreement_gate_counts_changed_answers_not_net_accuracy():
    ref = np.arange(400) % 10
    pred = ref.copy()
    pred[:6] = (pred[:6] + 1) % 10  # 6 of 400 answers changed: 98.5 % agreement
    assert V.fused_agreement_problem(pred, ref, 0.0, "onnx/fp32") is None   # off
    assert V.fused_agreement_problem(pred, ref, 0.98, "onnx/fp32") is None  # 8 may differ
    msg = V.fused_agreement_problem(pred, ref, 0.99, "onnx/fp32")           # 4 may differ
    assert msg == ("fused answers equal onnx/fp32's on 0.9850 of 400 validation images (6 differ; "
                   "gate.min_quant_agreement 0.99)")
    # one changed answer never fails a variant, however small the split
    assert V.fused_agreement_problem(pred[:50], ref[:50], 0.999, "x") is not None
    one = ref[:20].copy()
    one[0] = (one[0] + 1) % 10
    assert V.fused_agreement_problem(one, ref[:20], 0.999, "x") is None


def test_unknown_int8_fallback_is_refused_naming_the_choices():
    from edvit_tool.errors import ExportError
    from edvit_tool.export.quantize import check_int8_options

    with pytest.raises(ExportError, match=r"^export.int8_fallback 'fp16': choose from weights, float$"):
        check_int8_options("minmax", "weights", "fp16")
