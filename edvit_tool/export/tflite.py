"""PyTorch -> TFLite with litert-torch (no TensorFlow).

Named signature: input `pixel_values` (fusion: `features`), outputs `features`, `logits` (fusion: `logits`), via
keyword sample inputs and a dict-returning wrapper. Batch is fixed at 1: litert-torch 0.10 cannot lower a dynamic
batch (its JAX bridge needs concrete shapes for the ViT's reshapes; upstream google-ai-edge/litert-torch#870), so
the manifest records [1, ...] shapes for TFLite artifacts and runners loop over a batch.
"""

from __future__ import annotations

import contextlib
import os
import re

import torch

from ..errors import ExportError

_BLOCK = re.compile(r"_blocks/[\w.]+?_(\d+)(?=[/;]|$)")


class _SubModelDict(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        features, logits = self.model(pixel_values)
        return {"features": features, "logits": logits}


class _FusionDict(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, features):
        return {"logits": self.model(features)}


@contextlib.contextmanager
def quiet_env(**values):
    """Set environment variables for the duration (litert-torch / tqdm read them when they start work)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def convert_tflite(model: torch.nn.Module, kind: str, example: torch.Tensor, path: str) -> dict:
    """Convert `model` (kind 'submodel' | 'fusion') to a batch-1 fp32 .tflite at `path`."""
    import litert_torch

    wrapper = (_SubModelDict(model) if kind == "submodel" else _FusionDict(model)).eval()
    arg = "pixel_values" if kind == "submodel" else "features"
    try:
        with quiet_env(LITERT_TORCH_SHOW_PROGRESS="n", TQDM_DISABLE="1"), torch.no_grad():
            edge = litert_torch.convert(wrapper, sample_kwargs={arg: example[:1]})
            edge.export(path)
    except Exception as e:  # torch.export / MLIR lowering errors come in many types
        raise ExportError(f"litert-torch could not convert the {kind} ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}); export ONNX only "
                          "(export.formats: [onnx]) or simplify the model") from e
    return {"converter": f"litert-torch {litert_torch.__version__}", "batch": 1}


def compact_tensor_names(path: str) -> None:
    """Rewrite `path` with short tensor names (t0, t1, ...): litert-torch names every tensor after its full module
    path, a quarter of a small int8 model's bytes. The signature (our IO names) and the IO tensors keep theirs."""
    from ai_edge_litert.tools import flatbuffer_utils as fb

    if os.path.getsize(path) > 1 << 30:  # the object API round trip is for models well under 2 GB
        return
    with open(path, "rb") as f:
        model = fb.read_model_from_bytearray(bytearray(f.read()))
    for gi, sg in enumerate(model.subgraphs):
        keep = set(sg.inputs) | set(sg.outputs)
        for sd in model.signatureDefs or []:
            if sd.subgraphIndex == gi:
                keep |= {t.tensorIndex for t in (sd.inputs or []) + (sd.outputs or [])}
        for i, t in enumerate(sg.tensors):
            if i not in keep:
                t.name = f"t{i}".encode()
    data = fb.convert_object_to_bytearray(model)
    with open(path, "wb") as f:
        f.write(bytes(data))


def op_table(path: str) -> list[tuple[str, str]]:
    """[(op name, output tensor name)] of a .tflite, in graph order (ai-edge-quantizer's flatbuffer reader)."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu

    with open(path, "rb") as f:
        model = fu.read_model(f.read())
    codes = {v: k for k, v in vars(_builtin_ops()).items() if isinstance(v, int) and not k.startswith("_")}
    table = []
    for sg in model.subgraphs:
        for op in sg.operators:
            oc = model.operatorCodes[op.opcodeIndex]
            code = max(oc.builtinCode, oc.deprecatedBuiltinCode)
            name = sg.tensors[op.outputs[0]].name if len(op.outputs) else b""
            table.append((codes.get(code, str(code)), name.decode() if isinstance(name, bytes) else str(name)))
    return table


def _builtin_ops():
    from ai_edge_litert import schema_py_generated as schema

    return schema.BuiltinOperator


def node_groups(path: str) -> dict[str, list[tuple[str, str]]]:
    """{label: [(regex on output tensor name, TFLite op or '*')]} for the float fallback, only for labels that
    match something in this model: layernorm, softmax, gelu, then head (every op after the last block: final norm,
    pooling, classifier) and embed (every op before the first: patch embedding, tokens, position), then
    blocks.<i> in order. Without them a fallback that kept every block float still ran the head and the patch
    embedding in int8 (as ONNX did before session 8)."""
    table = op_table(path)
    names = [n for _, n in table]
    ops = {op for op, _ in table}
    groups: dict[str, list[tuple[str, str]]] = {}
    if any("LayerNorm_" in n for n in names):
        groups["layernorm"] = [(r"LayerNorm_", "*")]
    if "SOFTMAX" in ops:
        groups["softmax"] = [(r".*", "SOFTMAX")]
    if "GELU" in ops or any("GELU_" in n for n in names):
        groups["gelu"] = [(r"GELU_", "*"), (r".*", "GELU")] if "GELU" in ops else [(r"GELU_", "*")]
    blocks = sorted({int(m.group(1)) for n in names for m in _BLOCK.finditer(n)})
    in_block = [i for i, n in enumerate(names) if _BLOCK.search(n)]
    if in_block:  # by position in graph order, exact names (a shipped, compacted file has no blocks: none).
        # ai-edge-quantizer matches a rule against the op's scope: its output tensor names joined by ';' and
        # ending in ';'
        for label, part in (("head", names[in_block[-1] + 1:]), ("embed", names[:in_block[0]])):
            rules = [(f"^{re.escape(n)};", "*") for n in dict.fromkeys(part) if n]
            if rules:
                groups[label] = rules
    for i in blocks:
        groups[f"blocks.{i}"] = [(rf"_blocks/[\w.]+?_{i}(?=[/;]|$)", "*")]
    return groups
