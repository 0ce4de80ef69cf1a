"""PyTorch -> ONNX: torch.onnx (the torch.export-based exporter, the default since torch 2.9; the TorchScript one
is deprecated), dynamic batch, named inputs/outputs, one file, then simplified (onnxslim / onnxsim).

Nodes are renamed after the module they came from (`blocks.0.attn.qkv/MatMul_12`), from the exporter's
`pkg.torch.onnx.name_scopes` metadata, so that the int8 fallback can exclude "every node of block 0" by name.
The rest of that metadata (stack traces with local paths) is dropped: it bloats the file and leaks paths.
"""

from __future__ import annotations

import ast
import re

import numpy as np
import onnx
import torch

from ..errors import ExportError

_BLOCK = re.compile(r"(?:^|[./])blocks[./](\d+)(?=[./]|$)")
WRAP_ATTR = "model"  # our IO wrappers hold the user's module under this attribute


class SubModelIO(torch.nn.Module):
    """pixel_values -> (features, logits), whatever the wrapped module's argument is called."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        features, logits = self.model(pixel_values)
        return features, logits


class FusionIO(torch.nn.Module):
    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, features):
        return self.model(features)


def io_wrapper(model: torch.nn.Module, kind: str) -> torch.nn.Module:
    return (SubModelIO(model) if kind == "submodel" else FusionIO(model)).eval()


def _scope(node) -> str:
    props = {p.key: p.value for p in node.metadata_props}
    try:
        scopes = ast.literal_eval(props.get("pkg.torch.onnx.name_scopes", "[]"))
    except (ValueError, SyntaxError):
        return ""
    module = scopes[-2] if len(scopes) >= 2 else ""
    prefix = WRAP_ATTR + "."
    return module[len(prefix):] if module.startswith(prefix) else ("" if module == WRAP_ATTR else module)


def _rename_and_strip(model: onnx.ModelProto) -> None:
    for i, node in enumerate(model.graph.node):
        scope = _scope(node)
        node.name = f"{scope}/{node.op_type}_{i}" if scope else f"{node.op_type}_{i}"
        del node.metadata_props[:]
    for coll in (model.graph.input, model.graph.output, model.graph.value_info, model.graph.initializer):
        for v in coll:
            del v.metadata_props[:]
    del model.metadata_props[:]


def simplify(model: onnx.ModelProto, tool: str) -> tuple[onnx.ModelProto, str]:
    """(simplified model, 'tool version'); tool is onnxslim | onnxsim | none."""
    if tool == "none":
        return model, "none"
    if tool == "onnxslim":
        import onnxslim

        return onnxslim.slim(model), f"onnxslim {getattr(onnxslim, '__version__', '?')}"
    if tool == "onnxsim":
        try:
            import onnxsim
        except ImportError:
            raise ExportError("export.simplify: onnxsim is not installed; use `simplify: onnxslim` (installed) "
                              "or `none`, or pip install onnxsim") from None
        simplified, ok = onnxsim.simplify(model)
        if not ok:
            raise ExportError("export.simplify: onnxsim could not validate the simplified model; "
                              "use `simplify: onnxslim` or `none`")
        return simplified, f"onnxsim {getattr(onnxsim, '__version__', '?')}"
    raise ExportError(f"export.simplify must be onnxslim, onnxsim or none, got {tool!r}")


def export_onnx(model: torch.nn.Module, kind: str, example: torch.Tensor, path: str, opset: int,
                simplifier: str) -> dict:
    """Export `model` (kind 'submodel' | 'fusion') to `path`; returns {nodes_before, nodes_after, simplifier}."""
    if opset < 17:
        raise ExportError(f"export.opset must be >= 17 (LayerNormalization), got {opset}")
    wrapper = io_wrapper(model, kind)
    inputs, outputs = (["pixel_values"], ["features", "logits"]) if kind == "submodel" else (["features"], ["logits"])
    batch = torch.export.Dim("batch", min=1, max=4096)
    try:
        with torch.no_grad():
            program = torch.onnx.export(
                wrapper, (example,), None, input_names=inputs, output_names=outputs,
                opset_version=max(18, opset),  # the exporter's lowest opset; converted down below if asked
                dynamic_shapes=({0: batch},), dynamo=True, external_data=False, optimize=True, verbose=False)
    except Exception as e:  # torch.export / onnxscript raise many types; say which model failed
        raise ExportError(f"torch.onnx.export failed for a {kind} ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}); the model has an op the exporter "
                          "cannot trace with a dynamic batch") from e
    proto = program.model_proto
    _rename_and_strip(proto)
    if opset < proto.opset_import[0].version:
        from onnx import version_converter

        proto = version_converter.convert_version(proto, opset)
    before = len(proto.graph.node)
    proto, tool = simplify(proto, simplifier)
    if proto.ByteSize() >= 2 ** 31 - 1:
        raise ExportError("the ONNX model is over 2 GB, which a single-file ONNX cannot hold; "
                          "prune harder or export TFLite only")
    onnx.checker.check_model(proto)
    onnx.save(proto, path)
    return {"nodes_before": before, "nodes_after": len(proto.graph.node), "simplifier": tool}


def compact_names(path: str, node_names: bool) -> None:
    """Rewrite `path` with short internal tensor names (v0, v1, ...) and no value_info: the exporter's and the
    quantiser's generated names are a third of a small int8 model's bytes. Graph inputs/outputs keep their
    names; node names are kept (scoped, useful in profiles) unless node_names is True (quantiser noise)."""
    model = onnx.load(path)
    g = model.graph
    keep = {v.name for v in list(g.input) + list(g.output)}
    table: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        return table.setdefault(name, f"v{len(table)}")
    for t in g.initializer:
        t.name = short(t.name)
    for i, n in enumerate(g.node):
        n.input[:] = [short(x) for x in n.input]
        n.output[:] = [short(x) for x in n.output]
        if node_names:
            n.name = f"n{i}"
        n.doc_string = ""
    del g.value_info[:]
    onnx.save(model, path)


# -- node groups for the int8 fallback ---------------------------------------------------------------------
def node_groups(model: onnx.ModelProto) -> dict[str, list[str]]:
    """{label: [node names]} for the float fallback: layernorm, softmax, gelu, then head (every node after the
    last block: final pooling, head Gemm), embed (every node before the first block: patch embedding, class
    token, position embedding), then blocks.<i> in order. head and embed are small, so keeping them float costs
    few bytes; without them a fallback that kept every block float still quantised them."""
    groups: dict[str, list[str]] = {"layernorm": [], "softmax": [], "gelu": [], "head": [], "embed": []}
    blocks: dict[int, list[str]] = {}
    block_at: list[int] = []  # graph positions of block nodes
    nodes = list(model.graph.node)
    for pos, node in enumerate(nodes):
        name, op = node.name, node.op_type
        scope = name.rsplit("/", 1)[0] if "/" in name else ""
        last = scope.rsplit(".", 1)[-1]
        if op in ("LayerNormalization", "SimplifiedLayerNormalization") or "norm" in last.lower():
            groups["layernorm"].append(name)
        if op == "Softmax":
            groups["softmax"].append(name)
        if op in ("Gelu", "FastGelu", "Erf") or last == "act":
            groups["gelu"].append(name)
        m = _BLOCK.search(scope)
        if m:
            blocks.setdefault(int(m.group(1)), []).append(name)
            block_at.append(pos)
    if block_at:  # nodes are in topological order: before the first block is the embedding, after the last the head
        groups["embed"] = [n.name for n in nodes[:block_at[0]] if n.name]
        groups["head"] = [n.name for n in nodes[block_at[-1] + 1:] if n.name]
    for i in sorted(blocks):
        groups[f"blocks.{i}"] = blocks[i]
    return groups


def random_example(shape: list, batch: int = 2, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.standard_normal([batch, *shape]).astype(np.float32))
