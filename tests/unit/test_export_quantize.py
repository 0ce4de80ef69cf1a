"""Quantisation edge cases: bad input is refused with a message naming the file/field and the fix; the int8 gate
falls back layer by layer to float and marks what still fails. Real quantisers and interpreters throughout.

Runtime: ~40 s on 2 cores (two ONNX-only exports of the tiny trained ViTs; the error cases stop before export).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import export_tiny as et
from edvit_tool import reference
from edvit_tool.errors import ExportError
from edvit_tool.export import export_build
from edvit_tool.export import validate as V

ONNX_STATIC = {"formats": ["onnx"], "quant": ["fp32", "int8-static"], "opset": 17, "simplify": "onnxslim",
               "calibration_samples": 64, "reference_samples": 32}
STRICT = {"max_accuracy_drop_pp": 1.0, "max_quant_drop_pp": 1.0}


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    return et.trained(tmp_path_factory)


@pytest.fixture
def staged(tmp_path, models):
    """A build dir with eval + calibration data and the manifest skeleton, as compile hands it over."""
    root = str(tmp_path / "build")
    manifest = et.write_inputs(root, models)
    return root, manifest


def _export(staged, models, cfg=None, gate=None):
    root, manifest = staged
    return export_build(root, manifest, models, cfg or ONNX_STATIC, gate or STRICT)


# -- bad input ----------------------------------------------------------------------------------------------
def test_unknown_quant_mode_is_refused_naming_the_alternatives(staged, models):
    with pytest.raises(ExportError) as e:
        _export(staged, models, {**ONNX_STATIC, "quant": ["fp32", "int4"]})
    msg = str(e.value)
    assert "export.quant" in msg and "'int4'" in msg
    for mode in ("fp32", "fp16", "int8-dynamic", "int8-static"):
        assert mode in msg
    assert not os.path.exists(os.path.join(staged[0], "submodels"))  # refused before any work


def test_unknown_int8_options_are_refused_before_any_work(staged, models):
    with pytest.raises(ExportError) as e:
        _export(staged, models, {**ONNX_STATIC, "int8_ops": "most", "calibration_method": "kl"})
    assert str(e.value) == ("export.calibration_method 'kl': choose from minmax, percentile, entropy; "
                            "export.int8_ops 'most': choose from weights, all")
    assert not os.path.exists(os.path.join(staged[0], "submodels"))


def test_unknown_format_is_refused(staged, models):
    with pytest.raises(ExportError, match=r"export.formats: unknown format 'coreml'; choose from onnx, tflite"):
        _export(staged, models, {**ONNX_STATIC, "formats": ["onnx", "coreml"]})


def test_onnxsim_when_not_installed_names_the_alternative(staged, models):
    try:
        import onnxsim  # noqa: F401
        pytest.skip("onnxsim is installed here")
    except ImportError:
        pass
    with pytest.raises(ExportError, match="onnxsim is not installed; use `simplify: onnxslim`"):
        _export(staged, models, {**ONNX_STATIC, "simplify": "onnxsim"})


def test_calibration_set_too_small_names_the_file_and_the_fix(staged, models):
    root, _ = staged
    x = V.load_npz(os.path.join(root, "reference", "calib-g1.npz"))["x"]
    np.savez(os.path.join(root, "reference", "calib-g1.npz"), x=x[:3])
    os.remove(os.path.join(root, "reference", "calib-fusion.npz"))
    with pytest.raises(ExportError) as e:
        _export(staged, models)
    msg = str(e.value)
    # both problems in one message
    assert "reference/calib-g1.npz: 3 calibration samples is too few for int8-static" in msg
    assert "use int8-dynamic" in msg
    assert "reference/calib-fusion.npz: not found" in msg


def test_calibration_data_of_the_wrong_shape_is_refused(staged, models):
    root, _ = staged
    np.savez(os.path.join(root, "reference", "calib-g0.npz"), x=np.zeros((64, 3, 16, 16), np.float32))
    with pytest.raises(ExportError, match=r"calib-g0.npz: x has shape \[64, 3, 16, 16\], expected \[M, 1, 16, 16\]"):
        _export(staged, models)


def test_missing_eval_set_and_missing_model_are_named(staged, models):
    root, _ = staged
    with pytest.raises(ExportError, match=r"export: no model for \['fusion'\]"):
        _export(staged, {k: v for k, v in models.items() if k != "fusion"})
    os.remove(os.path.join(root, "reference", "eval.npz"))
    with pytest.raises(ExportError, match=r"reference/eval.npz: not found"):
        _export(staged, models)


# -- the gate and the float fallback ------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("int8_ops", ["weights", "all"])
def test_outlier_channel_falls_back_to_float_layers_until_int8_passes(staged, models, tmp_path, int8_ops):
    """g0 with a 300x outlier channel in every block's norm1 (compensated in qkv, so float is unchanged): plain
    int8-static breaks it; the fallback keeps layer groups float until parity and the gate pass. With
    export.int8_ops weights only groups holding weight ops are tried (a float LayerNorm would change nothing)."""
    outlier = et.with_outlier(models)
    root, manifest = staged
    failures = _export(staged, outlier, {**ONNX_STATIC, "int8_ops": int8_ops})
    assert failures == []
    arts = {(a["name"], a["quant"]): a for a in manifest["artifacts"]}
    g0 = arts[("g0", "int8-static")]
    assert g0["status"] == "ok"
    if int8_ops == "all":
        assert g0["float_layers"][:3] == ["layernorm", "softmax", "gelu"]  # the usual culprits first ...
    else:
        assert g0["float_layers"][:2] == ["head", "embed"]                 # the small groups first ...
    assert "blocks.0" in g0["float_layers"]                               # ... then whole blocks
    assert g0["top1_agreement"] >= 0.95
    assert arts[("g1", "int8-static")]["float_layers"] == []           # only the broken model paid for it
    acc = manifest["accuracy"]["exported"]
    assert (acc["onnx/fp32"] - acc["onnx/int8-static"]) * 100 <= STRICT["max_quant_drop_pp"] + 1e-9

    # proof the fallback was needed: the same model quantised without it disagrees with PyTorch
    from edvit_tool.export.quantize import onnx_preprocess, quantize_onnx

    fp32 = os.path.join(root, "submodels", "g0.fp32.onnx")
    pre, plain = str(tmp_path / "pre.onnx"), str(tmp_path / "plain.onnx")
    onnx_preprocess(fp32, pre)
    calib = reference.load(os.path.join(root, "reference", "calib-g0.npz"), manifest["input"])[0]
    quantize_onnx(fp32, pre, plain, "int8-static", "pixel_values", calib, [], ops=int8_ops)
    refs = V.load_npz(os.path.join(root, "reference", "inputs.npz"))
    ref = V.load_npz(os.path.join(root, g0["reference"]))
    stats = V.compare(V.Runner(plain, "onnx").run({"pixel_values": refs["pixel_values"]}), ref)
    assert stats["top1_agreement"] < 0.95


@pytest.mark.slow
def test_a_gate_that_cannot_pass_marks_every_artifact_failed_with_the_reason(staged, models, monkeypatch):
    """PyTorch's fused answers on the validation split replaced by the labels (a fault injected: PyTorch at
    100 %): no exported variant can be within 1 pp, so every artifact is marked failed after the fallback ran out
    of layer groups, and the failures come back to the caller."""
    from edvit_tool import export as export_mod

    root, manifest = staged
    monkeypatch.setattr(export_mod._Exporter, "_torch_correct", lambda self, y: np.ones(len(y), bool))
    cfg = {**ONNX_STATIC, "quant": ["fp32", "int8-dynamic"]}
    failures = _export(staged, models, cfg)
    assert any(f.startswith("onnx/fp32: fused accuracy") for f in failures)
    assert any(f.startswith("onnx/int8-dynamic: fused accuracy") for f in failures)
    assert all("gate.max_accuracy_drop_pp 1" in f for f in failures)
    for a in manifest["artifacts"]:
        assert a["status"] == "failed" and "pp below PyTorch's 100.00 %" in a["reason"], a["file"]
        if a["quant"] == "int8-dynamic" and a["name"] != "fusion":
            # int8-dynamic only quantises weight ops (MatMul, Gemm, Conv): only the groups holding them can be kept
            # float (head: the head's Gemm; embed: the patch embedding's Conv; the blocks' MatMuls)
            assert a["float_layers"] == ["head", "embed", "blocks.0", "blocks.1"], a["float_layers"]
    assert set(manifest["accuracy"]["exported"]) == {"onnx/fp32", "onnx/int8-dynamic"}


@pytest.mark.slow
def test_quant_gate_at_half_a_point_keeps_layers_float_where_int8_drops_more(models, tmp_path):
    """g0 with a milder outlier channel than above: plain int8-static still agrees with PyTorch on >= 95 % of the
    images (so the agreement check keeps nothing float) but loses more than 0.5 pp of fused accuracy against fp32.
    At the default gate (max_quant_drop_pp 0.5) the fallback keeps g0's layer groups float until the drop is gone.

    Which outlier scale lands in that window depends on the trained weights and the quantiser's version, so the
    test tries a few: for each, an export with the int8 gate opened shows plain int8's drop; where it is over
    0.5 pp, the same models exported at the default gate must have kept layers float and be within 0.5 pp (plus
    one image where one image is worth more). A drop within the gate rightly keeps plain
    int8, so that scale is passed over; at least one scale must show the fallback at work."""
    from edvit_tool.export import DEFAULT_GATE

    assert DEFAULT_GATE["max_quant_drop_pp"] == 0.5
    gate = {**DEFAULT_GATE, "max_accuracy_drop_pp": 100.0}  # only the int8-vs-fp32 gate may act here
    seen = []
    for scale in (40.0, 70.0, 100.0, 30.0, 35.0, 38.0, 25.0, 20.0):
        outlier = et.with_outlier(models, scale=scale)
        open_root = str(tmp_path / f"open-{scale:g}")
        open_manifest = et.write_inputs(open_root, outlier)
        assert export_build(open_root, open_manifest, outlier, ONNX_STATIC,
                            {**gate, "max_quant_drop_pp": 100.0, "min_quant_agreement": 0.0}) == []
        plain = {a["name"]: a for a in open_manifest["artifacts"] if a["quant"] == "int8-static"}
        open_val = open_manifest["accuracy"]["exported_val"]
        open_drop = (open_val["onnx/fp32"] - open_val["onnx/int8-static"]) * 100
        seen.append(f"scale {scale:g}: plain int8 keeps {plain['g0']['float_layers'] or 'nothing'} float, "
                    f"drop {open_drop:.2f} pp")
        if plain["g0"]["float_layers"] != [] or open_drop <= 0.5:
            continue  # the agreement check already acts, or plain int8 is within the gate: not this window
        root = str(tmp_path / f"gated-{scale:g}")
        manifest = et.write_inputs(root, outlier)
        assert export_build(root, manifest, outlier, ONNX_STATIC, gate) == []
        arts = {(a["name"], a["quant"]): a for a in manifest["artifacts"]}
        seen[-1] += f"; gated keeps {arts[('g0', 'int8-static')]['float_layers'] or 'nothing'} float"
        if arts[("g0", "int8-static")]["float_layers"] == []:
            continue  # within the gate
        assert arts[("g1", "int8-static")]["float_layers"] == []
        val = manifest["accuracy"]["exported_val"]
        n_val = len(reference.load(os.path.join(root, "reference", "val.npz"), manifest["input"])[1])
        assert (val["onnx/fp32"] - val["onnx/int8-static"]) * 100 <= max(0.5, 100.0 / n_val) + 1e-9, seen
        return
    # Session 7's machine: no scale landed in the window (where the agreement check did not already keep layers
    # float, plain int8 lost at most 0.33 pp = 1 of 300 images), so the fallback cannot be shown with these models
    # here. Reported as a skip naming every scale, not as a pass (README, Known limits).
    pytest.skip("no outlier scale put plain int8 in the window where the 0.5-pp fallback acts on this machine: "
                + "; ".join(seen))


def test_tflite_int8_activation_ranges_cover_every_calibration_sample(models, tmp_path):
    """ai-edge-quantizer's Quantizer.calibrate keeps a moving average (0.95) of each batch-1 sample's min/max, so a
    range reached only by an early sample is forgotten and clipped; quantize_tflite takes the true min/max. One
    calibration image is 4x brighter than the rest: the int8 input's representable range must cover it."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu

    from edvit_tool.export.onnx import random_example
    from edvit_tool.export.quantize import quantize_tflite
    from edvit_tool.export.tflite import convert_tflite

    src = str(tmp_path / "g0.fp32.tflite")
    convert_tflite(models["g0"], "submodel", random_example([1, 16, 16]), src)
    calib = et.digits()[0][:16].copy()
    calib[0] *= 4.0

    def input_range(ranges):
        dst = str(tmp_path / f"g0.{ranges}.tflite")
        quantize_tflite(src, dst, "int8-static", "pixel_values", calib, [], ranges=ranges)
        with open(dst, "rb") as f:
            m = fu.read_model(f.read())
        sg = m.subgraphs[0]
        first = next(op for op in sg.operators if sg.inputs[0] in list(op.inputs))  # the QUANTIZE of the input
        q = sg.tensors[first.outputs[0]].quantization
        return (-128 - q.zeroPoint[0]) * q.scale[0], (127 - q.zeroPoint[0]) * q.scale[0], q.scale[0]

    lo, hi, step = input_range("minmax")  # within one step: the zero point is rounded to an integer
    assert lo <= calib.min() + step and hi >= calib.max() - step
    ema_lo, ema_hi, _ = input_range("ema")  # the library's own calibration clips the bright image (why we replace it)
    assert ema_lo > 0.8 * calib.min() and ema_hi < 0.8 * calib.max()


def test_tflite_fallback_keeps_the_named_ops_float(models, staged, tmp_path):
    """ai-edge-quantizer honours our per-op float rules: LayerNorm ops stay float32 while FCs are int8."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu

    from edvit_tool.export.onnx import random_example
    from edvit_tool.export.quantize import quantize_tflite
    from edvit_tool.export.tflite import convert_tflite, node_groups

    # the working fp32 copy export quantises from keeps litert-torch's module-path tensor names
    src = str(tmp_path / "g0.fp32.tflite")
    convert_tflite(models["g0"], "submodel", random_example([1, 16, 16]), src)
    calib = reference.load(os.path.join(staged[0], "reference", "calib-g0.npz"), staged[1]["input"])[0][:16]
    groups = node_groups(src)
    assert list(groups)[:3] == ["layernorm", "softmax", "gelu"] and "blocks.1" in groups

    ops = {v: k for k, v in vars(schema.BuiltinOperator).items() if isinstance(v, int)}
    types = {v: k for k, v in vars(schema.TensorType).items() if isinstance(v, int)}

    def out_types(path, pick):
        with open(path, "rb") as f:
            m = fu.read_model(f.read())
        found = []
        for sg in m.subgraphs:
            for op in sg.operators:
                oc = m.operatorCodes[op.opcodeIndex]
                code = ops[max(oc.builtinCode, oc.deprecatedBuiltinCode)]
                t = sg.tensors[op.outputs[0]]
                name = t.name.decode() if isinstance(t.name, bytes) else t.name
                if pick(code, name):
                    found.append(types[t.type])
        return set(found)

    def is_ln(code, name):
        return "LayerNorm_" in name and code not in ("QUANTIZE", "DEQUANTIZE")
    plain, kept = str(tmp_path / "plain.tflite"), str(tmp_path / "kept.tflite")
    quantize_tflite(src, plain, "int8-static", "pixel_values", calib, [])
    quantize_tflite(src, kept, "int8-static", "pixel_values", calib, groups["layernorm"])
    assert out_types(plain, is_ln) == {"INT8"}
    assert out_types(kept, is_ln) == {"FLOAT32"}
    assert "INT8" in out_types(kept, lambda c, n: c == "FULLY_CONNECTED")
    # export.int8_ops weights (the default): the matmuls in int8, LayerNorm / softmax / GELU float without a rule
    weights = str(tmp_path / "weights.tflite")
    quantize_tflite(src, weights, "int8-static", "pixel_values", calib, [], ops="weights")
    matmuls = ("FULLY_CONNECTED", "BATCH_MATMUL", "CONV_2D", "DEPTHWISE_CONV_2D")
    assert out_types(weights, lambda c, n: c not in matmuls + ("QUANTIZE",)) == {"FLOAT32"}
    assert out_types(weights, lambda c, n: c in matmuls) == {"INT8"}
    # float in, float out in every mode: boards never see int8 tensors
    runner = V.Runner(kept, "tflite")
    assert [t["dtype"] for t in runner.inputs + runner.outputs] == ["float32"] * 3

    # shipped artifacts get short tensor names (a quarter of a small model's bytes); IO names survive
    from edvit_tool.export.tflite import compact_tensor_names

    before = os.path.getsize(kept)
    compact_tensor_names(kept)
    assert os.path.getsize(kept) < 0.9 * before and node_groups(kept) == {"softmax": groups["softmax"],
                                                                          "gelu": groups["gelu"]}
    assert [t["name"] for t in V.Runner(kept, "tflite").outputs] == ["features", "logits"]


def _matmul_onnx(path: str) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.eye(8, dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["pixel_values", "w"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, [None, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 8])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def _input_scale(path: str) -> float:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(path)
    inits = {i.name: i for i in model.graph.initializer}
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "pixel_values")
    return float(numpy_helper.to_array(inits[q.input[1]]))


def test_percentile_calibration_clips_a_rare_outlier_that_minmax_spends_the_int8_range_on(tmp_path):
    """export.calibration_method percentile: one activation of 1000 among 320,000 N(0, 1) values sets min/max
    calibration's scale (asymmetric int8: (max - min) / 255); the 99.999th percentile leaves it out."""
    from edvit_tool.export.quantize import onnx_preprocess, quantize_onnx

    fp32, pre = str(tmp_path / "m.onnx"), str(tmp_path / "pre.onnx")
    _matmul_onnx(fp32)
    onnx_preprocess(fp32, pre)
    calib = np.random.default_rng(0).standard_normal((40000, 8)).astype(np.float32)
    calib[7, 3] = 1000.0
    scales = {}
    for m in ("minmax", "percentile"):
        dst = str(tmp_path / f"{m}.onnx")
        quantize_onnx(fp32, pre, dst, "int8-static", "pixel_values", calib, [], method=m)
        scales[m] = _input_scale(dst)
    assert scales["minmax"] == pytest.approx((1000.0 - calib.min()) / 255, rel=0.02)
    assert scales["percentile"] < scales["minmax"] / 20, scales


def test_entropy_calibration_gives_a_working_int8_model(tmp_path):
    from edvit_tool.export.quantize import onnx_preprocess, quantize_onnx

    fp32, pre, dst = str(tmp_path / "m.onnx"), str(tmp_path / "pre.onnx"), str(tmp_path / "q.onnx")
    _matmul_onnx(fp32)
    onnx_preprocess(fp32, pre)
    x = np.random.default_rng(1).standard_normal((256, 8)).astype(np.float32)
    quantize_onnx(fp32, pre, dst, "int8-static", "pixel_values", x, [], method="entropy")
    y = V.Runner(dst, "onnx").run({"pixel_values": x[:32]})
    out = next(iter(y.values())) if isinstance(y, dict) else y[0]
    scale = _input_scale(dst)
    inside = np.abs(x[:32]) < 127 * scale   # values beyond the calibrated range are clipped by design
    assert np.abs(np.asarray(out) - x[:32])[inside].max() <= 2 * scale


def test_unknown_calibration_method_is_refused_naming_the_choices(tmp_path):
    from edvit_tool.export.quantize import onnx_preprocess, quantize_onnx

    fp32, pre = str(tmp_path / "m.onnx"), str(tmp_path / "pre.onnx")
    _matmul_onnx(fp32)
    onnx_preprocess(fp32, pre)
    with pytest.raises(ExportError, match="export.calibration_method 'kl': choose from minmax, percentile, entropy$"):
        quantize_onnx(fp32, pre, str(tmp_path / "q.onnx"), "int8-static", "pixel_values",
                      np.zeros((16, 8), np.float32), [], method="kl")


def test_drop_gate_counts_every_image_except_where_one_image_is_worth_more_than_the_limit():
    from edvit_tool.export.validate import drop_problem

    def problem(n, lost, won=0, limit=0.5):
        ref = np.ones(n, bool)
        got = ref.copy()
        got[:lost] = False
        ref[n - won:] = False  # images only the artifacts get right
        return drop_problem(ref, got, limit, "fp32", "int8", "max_quant_drop_pp")

    assert problem(300, 1) is None                      # 0.33 pp
    assert "0.67 pp below" in problem(300, 2)           # 0.67 pp > 0.5: no image given back any more
    assert problem(300, 3, won=2) is None               # net one image
    assert problem(1000, 5) is None and problem(1000, 6) is not None   # 0.5 pp exactly passes, 0.6 fails
    assert problem(100, 1) is None                      # one image (1 pp) never fails an artifact
    assert problem(100, 2) is not None
