"""Quantisation of fp32 artifacts: fp16, int8-dynamic, int8-static, for ONNX and TFLite.

ONNX (onnxruntime.quantization): `quant_pre_process` first (shape inference + graph cleanup), then
  int8-dynamic = quantize_dynamic (int8 weights, activations quantised at run time),
  int8-static  = quantize_static, QDQ format, int8 weights per channel + int8 activations, MinMax calibration on
                 calib-<name>.npz (compile writes one class-stratified sample of all classes: every sub-model sees
                 every class at inference),
  fp16         = onnxruntime.transformers.float16 (onnxconverter-common's converter, shipped inside onnxruntime;
                 float32 inputs/outputs kept so callers never see half floats).
TFLite (ai-edge-quantizer, on the fp32 .tflite): chosen over litert-torch's PT2E path because it quantises the
  already-converted model (no second torch.export / conversion per attempt, so the layer-by-layer float fallback
  costs a re-quantise, not a re-convert), can keep any op float by regex, and does fp16 weights too:
  int8-dynamic = dynamic_wi8_afp32, int8-static = static_wi8_ai8 (weights symmetric per channel, activations
  asymmetric per tensor) with activation ranges = the min/max over every calibration image (not the library's
  moving average of batch-1 ranges, which clipped: 3-4x the feature error on the digits demo),
  fp16 = weight-only float16 (FLOAT_CASTING). Model inputs/outputs stay float32 in every mode.

Float fallback: `exclude` lists what is kept out of int8 compute — ONNX node names, or TFLite (regex on op output
tensor name, op) rules — as produced per layer group (layernorm, softmax, gelu, blocks.<i>) by onnx.node_groups /
tflite.node_groups. With export.int8_fallback weights (the default) their weight ops keep int8 weights unless listed
in `float_weights` (ONNX: onnx_int8_weights; TFLite: ai-edge-quantizer's weight-only config).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings

import numpy as np

from ..errors import ExportError

QUANT_MODES = ("fp32", "fp16", "int8-dynamic", "int8-static")
FORMATS = ("onnx", "tflite")
# (format, quant) pairs we can produce; anything else is refused naming what is possible
SUPPORTED = {(f, q) for f in FORMATS for q in QUANT_MODES}
NEEDS_CALIBRATION = ("int8-static",)
MIN_CALIBRATION = 8
# ops quantize_dynamic touches: a fallback step that keeps none of them float changes nothing
_WEIGHT_OPS = {"MatMul", "Gemm", "Conv"}  # export.int8_ops weights: what int8-static quantises
# the TFLite ops export.int8_ops weights quantises (what ONNX's MatMul/Gemm/Conv become in a converted ViT)
_TFLITE_WEIGHT_OPS = ("FULLY_CONNECTED", "BATCH_MATMUL", "CONV_2D", "DEPTHWISE_CONV_2D")
_ONNX_DYNAMIC_OPS = {"MatMul", "Gemm", "Conv", "Attention", "Gather", "LSTM", "EmbedLayerNormalization"}


def check_modes(formats, quants) -> None:
    """ExportError naming every unknown format / mode and every impossible pair, with the alternatives."""
    problems = []
    for f in formats:
        if f not in FORMATS:
            problems.append(f"export.formats: unknown format {f!r}; choose from {', '.join(FORMATS)}")
    for q in quants:
        if q not in QUANT_MODES:
            problems.append(f"export.quant: unknown mode {q!r}; choose from {', '.join(QUANT_MODES)}")
    for f in formats:
        for q in quants:
            if f in FORMATS and q in QUANT_MODES and (f, q) not in SUPPORTED:
                alt = [x for (ff, x) in sorted(SUPPORTED) if ff == f]
                other = [ff for (ff, x) in sorted(SUPPORTED) if x == q]
                problems.append(f"export: {f} cannot do {q}; {f} does {', '.join(alt)}"
                                + (f"; {q} is available for {', '.join(other)}" if other else ""))
    if problems:
        raise ExportError("; ".join(problems))


def check_int8_options(method: str, ops: str, fallback: str = "weights") -> None:
    """ExportError for an unknown export.calibration_method / int8_ops / int8_fallback (a hand-edited build recipe
    reaches `edvit-tool export` unvalidated): refused before anything is exported."""
    problems = [f"export.{key} {value!r}: choose from {', '.join(choices)}"
                for key, value, choices in (("calibration_method", method, CALIBRATION_METHODS),
                                            ("int8_ops", ops, INT8_OPS), ("int8_fallback", fallback, INT8_FALLBACKS))
                if value not in choices]
    if problems:
        raise ExportError("; ".join(problems))


@contextlib.contextmanager
def _quiet():
    """The quantisers log per-tensor warnings (e.g. per-channel axis on LayerNorm weights), draw tqdm bars
    (ai-edge-quantizer passes `disable=` explicitly, so TQDM_DISABLE does not reach them) and print (onnxruntime's
    histogram calibration): silence all three."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()), \
                contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


# -- ONNX --------------------------------------------------------------------------------------------------
def onnx_preprocess(src: str, dst: str) -> None:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with _quiet():
        quant_pre_process(src, dst, skip_symbolic_shape=False)


def onnx_fallback_groups(preprocessed: str, quant: str, int8_ops: str = "weights") -> dict[str, list[str]]:
    """Node groups (see onnx.node_groups) of the preprocessed model, dropping groups that change nothing in
    this mode (int8-dynamic only quantises weight ops such as MatMul, and so does int8-static with
    export.int8_ops weights: keeping a LayerNorm or Softmax float there changes nothing)."""
    import onnx

    from .onnx import node_groups

    model = onnx.load(preprocessed)
    groups = node_groups(model)
    kept = _ONNX_DYNAMIC_OPS if quant == "int8-dynamic" else _WEIGHT_OPS if (
        quant == "int8-static" and int8_ops == "weights") else None
    if kept:
        ops = {n.name: n.op_type for n in model.graph.node}
        groups = {k: [n for n in v if ops[n] in kept] for k, v in groups.items()}
    return {k: v for k, v in groups.items() if v}


# export.calibration_method: percentile keeps this share of each activation's histogram (onnxruntime's own
# default, 99.999, clips only the rarest values)
CALIBRATION_PERCENTILE = 99.999
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
INT8_OPS = ("weights", "all")
# export.int8_fallback: what a layer group the int8 gate keeps out of int8 compute becomes — "weights": its
# activations float, its weights still int8 per output channel (stored int8, dequantised on load), so the file
# stays int8-sized; "float": everything float (the file grows by 4x the group's weights)
INT8_FALLBACKS = ("weights", "float")


def quantize_onnx(fp32: str, preprocessed: str, dst: str, quant: str, input_name: str,
                  calib: np.ndarray | None = None, exclude: list[str] | None = None,
                  method: str = "minmax", ops: str = "weights", float_weights: list[str] | None = None) -> None:
    """exclude: node names kept out of int8 compute; in int8 modes those not in float_weights (default: all of
    them float) keep int8 weights (onnx_int8_weights)."""
    exclude = list(exclude or [])
    float_weights = set(exclude if float_weights is None else float_weights)
    weight_only = [n for n in exclude if n not in float_weights]
    if quant == "fp16":
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16

        with _quiet():
            model = convert_float_to_float16(onnx.load(fp32), keep_io_types=True, node_block_list=exclude or None)
        onnx.save(model, dst)
        return
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_dynamic, quantize_static)

    if quant == "int8-dynamic":
        with _quiet():
            quantize_dynamic(preprocessed, dst, weight_type=QuantType.QInt8, nodes_to_exclude=exclude)
        if weight_only:
            onnx_int8_weights(dst, weight_only)
        return
    if quant == "int8-static":
        class Reader(CalibrationDataReader):
            def __init__(self, x: np.ndarray, batch: int = 16):
                self._it = iter([{input_name: x[i:i + batch]} for i in range(0, len(x), batch)])

            def get_next(self):
                return next(self._it, None)

        check_int8_options(method, ops)
        methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                   "entropy": CalibrationMethod.Entropy}
        reader = Reader(calib.astype(np.float32))
        extra = {"CalibPercentile": CALIBRATION_PERCENTILE} if method == "percentile" else {}
        only = {"op_types_to_quantize": sorted(_WEIGHT_OPS)} if ops == "weights" else {}
        with _quiet():
            quantize_static(preprocessed, dst, reader, quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
                            calibrate_method=methods[method], nodes_to_exclude=exclude, extra_options=extra,
                            **only)
        if weight_only:
            onnx_int8_weights(dst, weight_only)
        return
    raise ExportError(f"onnx cannot quantise to {quant!r}; choose from {', '.join(QUANT_MODES[1:])}")


# weight input and output-channel axis of each weight op: MatMul x @ W (W [.., in, out]); Gemm B ([in, out], or
# [out, in] with transB); Conv W [out, in, kh, kw]
_WEIGHT_INPUT = {"MatMul": 1, "Gemm": 1, "Conv": 1}


def _out_axis(node, rank: int) -> int:
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return rank - 1


def onnx_int8_weights(path: str, nodes: list[str]) -> int:
    """Weight-only int8 for the named float nodes of the ONNX model at `path` (rewritten in place): each weight
    op's constant weight becomes an int8 initializer (symmetric, one scale per output channel, as int8-static's
    own weights) read through a DequantizeLinear, so the op computes in float on float activations — none of the
    activation rounding that made the gate keep it out of int8 — while the file keeps int8 weights. Returns the
    number of weights converted."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(path)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    wanted = set(nodes)
    replaced, new_nodes, done = set(), [], 0
    for node in graph.node:
        idx = _WEIGHT_INPUT.get(node.op_type)
        if node.name in wanted and idx is not None and len(node.input) > idx and node.input[idx] in inits:
            t = inits[node.input[idx]]
            w = numpy_helper.to_array(t)
            if w.dtype == np.float32 and w.ndim >= 2 and w.size >= 64:
                axis = _out_axis(node, w.ndim)
                other = tuple(a for a in range(w.ndim) if a != axis)
                scale = (np.abs(w).max(axis=other) / 127.0).astype(np.float32)
                scale[scale == 0] = 1.0
                shape = [1] * w.ndim
                shape[axis] = -1
                q = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
                base = f"{node.name}_w"
                graph.initializer.extend([numpy_helper.from_array(q, f"{base}_int8"),
                                          numpy_helper.from_array(scale, f"{base}_scale"),
                                          numpy_helper.from_array(np.zeros_like(scale, np.int8), f"{base}_zp")])
                new_nodes.append(helper.make_node("DequantizeLinear", [f"{base}_int8", f"{base}_scale", f"{base}_zp"],
                                                  [f"{base}_dq"], name=f"{base}_DequantizeLinear", axis=axis))
                replaced.add(t.name)
                node.input[idx] = f"{base}_dq"
                done += 1
        new_nodes.append(node)
    if not done:
        return 0
    del graph.node[:]
    graph.node.extend(new_nodes)  # each DequantizeLinear right before its op: still topologically sorted
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    for name in replaced - used:  # the float weights no other op reads
        graph.initializer.remove(inits[name])
    onnx.save(model, path)
    return done


# -- TFLite ------------------------------------------------------------------------------------------------
def _calibrate_tflite(fp32: str, qt, samples: list, ranges: str):
    """Activation ranges of the fp32 .tflite over `samples` (batch-1 feeds). ranges='minmax': the true min/max over
    every sample (ai-edge-quantizer's Quantizer.calibrate instead keeps an exponential moving average, factor
    0.95, of each sample's min/max, which with batch-1 samples tracks the last ~20 images and clips the rest);
    'ema': the library's own calibration."""
    if ranges == "ema":
        return qt.calibrate({"serving_default": samples}, num_threads=1)
    from ai_edge_quantizer import calibrator, recipe_manager
    from ai_edge_quantizer.utils import qsv_utils

    manager = recipe_manager.RecipeManager()
    manager.load_quantization_recipe(qt.get_quantization_recipe())
    cal = calibrator.Calibrator(fp32, num_threads=1, qsv_update_func=qsv_utils.min_max_update)
    cal.calibrate({"serving_default": samples}, manager)
    return cal.get_model_qsvs()


def quantize_tflite(fp32: str, dst: str, quant: str, input_name: str, calib: np.ndarray | None = None,
                    exclude: list[tuple[str, str]] | None = None, qsv_cache: dict | None = None,
                    ranges: str = "minmax", float_weights: list | None = None, ops: str = "all") -> None:
    """exclude: [(regex on op output tensor names, TFLite op name or '*')] kept out of int8 compute; in int8 modes the
    rules not in float_weights (default: all of them float) keep their fully-connected / conv weights int8.
    ops (export.int8_ops, int8-static): 'weights' quantises only the weight ops and the attention matmuls (int8
    weights and inputs; LayerNorm, softmax, GELU and the residual adds stay float, as ONNX's default), 'all'
    every op the quantiser supports.
    qsv_cache: reuse calibration ranges (those of the plain recipe, which cover every fallback step's) across
    fallback attempts on the same fp32 file."""
    from ai_edge_quantizer import quantizer, recipe
    from ai_edge_quantizer.algorithm_manager import AlgorithmName
    from ai_edge_quantizer.qtyping import TFLOperationName

    qt = quantizer.Quantizer(fp32)
    float_weights = set(map(tuple, exclude or [])) if float_weights is None else set(map(tuple, float_weights))
    if quant == "int8-dynamic":
        qt.load_quantization_recipe(recipe.dynamic_wi8_afp32())
    elif quant == "int8-static" and ops == "weights":
        qt.update_quantization_recipe(regex=".*", operation_name=TFLOperationName.ALL_SUPPORTED,
                                      algorithm_key=AlgorithmName.NO_QUANTIZE)
        for op in _TFLITE_WEIGHT_OPS:
            qt.add_static_config(".*", TFLOperationName(op), 8, 8)
    elif quant == "int8-static":
        qt.load_quantization_recipe(recipe.static_wi8_ai8())
    elif quant == "fp16":
        qt.add_weight_only_config(".*", TFLOperationName.ALL_SUPPORTED, 16,
                                  algorithm_key=AlgorithmName.FLOAT_CASTING)
    else:
        raise ExportError(f"tflite cannot quantise to {quant!r}; choose from {', '.join(QUANT_MODES[1:])}")
    # float32 in and out, so boards and the coordinator never handle int8 tensors
    for io in (TFLOperationName.INPUT, TFLOperationName.OUTPUT):
        qt.update_quantization_recipe(regex=".*", operation_name=io, algorithm_key=AlgorithmName.NO_QUANTIZE)
    for regex, op in exclude or []:
        qt.update_quantization_recipe(regex=regex, operation_name=TFLOperationName(op),
                                      algorithm_key=AlgorithmName.NO_QUANTIZE)
        if quant.startswith("int8") and op == "*" and (regex, op) not in float_weights:
            # weight-only int8 for the group's weight ops (a later rule wins): float activations, int8 weights
            for weight_op in (TFLOperationName.FULLY_CONNECTED, TFLOperationName.CONV_2D,
                              TFLOperationName.DEPTHWISE_CONV_2D):
                qt.add_weight_only_config(regex, weight_op, 8)
    with _quiet():
        result = None
        if qt.need_calibration:
            key = (fp32, quant, ranges)
            if qsv_cache is not None and key in qsv_cache:
                result = qsv_cache[key]
            else:
                # ranges of the plain recipe (every op int8): they cover every fallback step's, and a recipe that
                # keeps every op float calibrates nothing while the quantiser still asks for ranges
                plain = quantizer.Quantizer(fp32)
                plain.load_quantization_recipe(recipe.static_wi8_ai8())
                samples = [{input_name: calib[i:i + 1].astype(np.float32)} for i in range(len(calib))]
                result = _calibrate_tflite(fp32, plain, samples, ranges)
                if qsv_cache is not None:
                    qsv_cache[key] = result
        out = qt.quantize(result, enable_progress_bar=False, enable_progress_report=False)
    with open(dst, "wb") as f:
        f.write(bytes(out.quantized_model))
