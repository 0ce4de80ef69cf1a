"""A Triton Inference Server model repository from a build, so the same sub-models can be served by Triton or
KServe (Open Inference Protocol v2, like our board workers) when a user outgrows boards.

    <repo>/<name>_<format>_<quant>/config.pbtxt
    <repo>/<name>_<format>_<quant>/1/model.onnx | model.tflite
    <repo>/<name>_<format>_<quant>_python/      the same artifact as a Python-backend model
    <repo>/edvit_<format>_<quant>/              ensemble: pixel_values -> K sub-models -> fusion -> logits

ONNX models use platform "onnxruntime_onnx" with Triton batching (max_batch_size, dims without the batch).
TFLite models use backend "tflite"; ours have a fixed batch of 1 (litert-torch cannot export a dynamic batch), so
they get max_batch_size 0 and full dims [1, ...] — declaring batching would make Triton send batches the model
cannot take.

The ensemble (one per variant whose K sub-models and fusion head all exported fine) runs ED-ViT as one model:
`pixel_values` [B, C, H, W] in, `logits` and `probabilities` [B, N] out. Its steps are Python-backend models
(export/triton_python_model.py + a copy of runtime/backends.py, i.e. onnxruntime or LiteRT with the boards' own
batch and quantised-IO handling), because the Triton that pip can install (`nvidia-pytriton`) has only the Python
backend; they batch TFLite artifacts too. Torch-free: needs only the build dir.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

from ..errors import ArtifactError
from ..runtime import backends as _backends
from . import triton_python_model as _python_model
from .validate import variant_artifacts

_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int8": "TYPE_INT8", "uint8": "TYPE_UINT8",
          "int32": "TYPE_INT32", "int64": "TYPE_INT64"}


def model_name(art: dict) -> str:
    return f"{art['name']}_{art['format']}_{art['quant']}"


def _tensor(t: dict, batched: bool) -> str:
    dims = t["shape"][1:] if batched else t["shape"]
    dtype = _TYPES.get(t["dtype"])
    if dtype is None:
        raise ArtifactError(f"tensor {t['name']!r} has dtype {t['dtype']}, which has no Triton type here")
    return _io(t["name"], dims, dtype)


def config_pbtxt(art: dict, max_batch_size: int = 8) -> str:
    """config.pbtxt text for one artifact entry of the manifest."""
    batched = all(t["shape"] and t["shape"][0] == -1 for t in art["inputs"] + art["outputs"])
    lines = [f'name: "{model_name(art)}"']
    if art["format"] == "onnx":
        lines.append('platform: "onnxruntime_onnx"')
    else:
        lines.append('backend: "tflite"')
    lines.append(f"max_batch_size: {max_batch_size if batched else 0}")
    lines.append("input [\n" + ",\n".join(_tensor(t, batched) for t in art["inputs"]) + "\n]")
    lines.append("output [\n" + ",\n".join(_tensor(t, batched) for t in art["outputs"]) + "\n]")
    lines.append("instance_group [\n  {\n    kind: KIND_CPU\n    count: 1\n  }\n]")
    return "\n".join(lines) + "\n"


def python_model_name(art: dict) -> str:
    return f"{model_name(art)}_python"


def ensemble_name(fmt: str, quant: str) -> str:
    return f"edvit_{fmt}_{quant}"


def _io(name: str, dims, dtype: str = "TYPE_FP32") -> str:
    shape = ", ".join(str(int(d)) for d in dims)
    return f'  {{\n    name: "{name}"\n    data_type: {dtype}\n    dims: [ {shape} ]\n  }}'


def _io_block(kind: str, tensors: list) -> str:
    return f"{kind} [\n" + ",\n".join(_io(n, d) for n, d in tensors) + "\n]"


def _fusion_inputs(manifest: dict) -> list:
    """[(tensor name, width)] the fusion step takes, in group order: each sub-model's fusion source output."""
    source = manifest["fusion"].get("source", "features")
    dims = manifest["fusion"]["input_dims"]
    return [(f"{source}_{sm['name']}", int(d)) for sm, d in zip(manifest["submodels"], dims)]


def python_config_pbtxt(art: dict, manifest: dict, max_batch_size: int = 8) -> str:
    """config.pbtxt of the Python-backend model for one artifact: batched, dims without the batch."""
    if art["name"] == "fusion":
        n = int(manifest["fusion"]["num_classes"])
        ins, outs = _fusion_inputs(manifest), [("logits", [n]), ("probabilities", [n])]
    else:
        ins = [(t["name"], t["shape"][1:]) for t in art["inputs"]]
        outs = [(t["name"], t["shape"][1:]) for t in art["outputs"]]
    return "\n".join([f'name: "{python_model_name(art)}"', 'backend: "python"', f"max_batch_size: {max_batch_size}",
                      _io_block("input", [(n, list(d) if isinstance(d, list) else [d]) for n, d in ins]),
                      _io_block("output", outs),
                      "instance_group [\n  {\n    kind: KIND_CPU\n    count: 1\n  }\n]"]) + "\n"


def ensemble_config_pbtxt(manifest: dict, subs: list, fusion: dict, max_batch_size: int = 8) -> str:
    """config.pbtxt of the ensemble for one variant: pixel_values -> every sub-model -> fusion -> logits."""
    c_h_w = subs[0]["inputs"][0]["shape"][1:]
    n = int(manifest["fusion"]["num_classes"])
    source = manifest["fusion"].get("source", "features")
    steps = []
    for art, (tensor, _) in zip(subs, _fusion_inputs(manifest)):
        steps.append(f'    {{\n      model_name: "{python_model_name(art)}"\n      model_version: -1\n'
                     f'      input_map {{ key: "pixel_values" value: "pixel_values" }}\n'
                     f'      output_map {{ key: "{source}" value: "{tensor}" }}\n    }}')
    maps = "".join(f'      input_map {{ key: "{t}" value: "{t}" }}\n' for t, _ in _fusion_inputs(manifest))
    steps.append(f'    {{\n      model_name: "{python_model_name(fusion)}"\n      model_version: -1\n{maps}'
                 f'      output_map {{ key: "logits" value: "logits" }}\n'
                 f'      output_map {{ key: "probabilities" value: "probabilities" }}\n    }}')
    return "\n".join([f'name: "{ensemble_name(subs[0]["format"], subs[0]["quant"])}"', 'platform: "ensemble"',
                      f"max_batch_size: {max_batch_size}", _io_block("input", [("pixel_values", c_h_w)]),
                      _io_block("output", [("logits", [n]), ("probabilities", [n])]),
                      "ensemble_scheduling {\n  step [\n" + ",\n".join(steps) + "\n  ]\n}"]) + "\n"


def _link_or_copy(src: str, dst: str) -> None:
    """Hard link when on one filesystem (a Python model shares its artifact's bytes), else copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _write_model(repo_dir: str, name: str, config: str, files: dict) -> None:
    """Assemble <repo>/<name> beside its destination ({relpath in version 1: ("text", str) | ("copy", path) |
    ("link", path)}) and
    rename it into place; an existing model of that name is replaced, other models stay."""
    tmp = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=repo_dir)
    try:
        os.makedirs(os.path.join(tmp, "1"))
        for rel, src in files.items():
            dst = os.path.join(tmp, "1", rel)
            how, what = src
            if how == "text":
                with open(dst, "w", encoding="utf-8") as f:
                    f.write(what)
            elif how == "link":
                _link_or_copy(what, dst)
            else:
                shutil.copyfile(what, dst)
        with open(os.path.join(tmp, "config.pbtxt"), "w", encoding="utf-8") as f:
            f.write(config)
        dest = os.path.join(repo_dir, name)
        if os.path.exists(dest):
            shutil.rmtree(dest)
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _artifact_file(build_dir: str, art: dict) -> str:
    src = os.path.join(build_dir, art["file"])
    if not os.path.isfile(src):
        raise ArtifactError(f"{src}: missing; run `edvit-tool check {build_dir}` and re-export")
    return src


def _python_model_files(build_dir: str, art: dict, manifest: dict) -> dict:
    spec = {"file": f"model.{art['format']}", "role": "fusion" if art["name"] == "fusion" else "submodel",
            "inputs": art["inputs"], "outputs": art["outputs"], "threads": 1}
    if art["name"] == "fusion":
        spec["fusion_inputs"] = [t for t, _ in _fusion_inputs(manifest)]
    return {spec["file"]: ("link", _artifact_file(build_dir, art)), "model.py": ("copy", _python_model.__file__),
            "edvit_backends.py": ("copy", _backends.__file__), "edvit_model.json": ("text", json.dumps(spec, indent=1))}


def write_triton_repo(build_dir: str, manifest: dict, repo_dir: str, max_batch_size: int = 8,
                      ensembles: bool = True) -> list[str]:
    """Write one Triton model per shippable artifact (status ok) into repo_dir and, with `ensembles`, one
    ensemble per complete variant plus the Python-backend models it runs; returns the model names written."""
    os.makedirs(repo_dir, exist_ok=True)
    names = []
    for art in manifest.get("artifacts", []):
        if art.get("status", "ok") != "ok":
            continue
        name = model_name(art)
        _write_model(repo_dir, name, config_pbtxt(art, max_batch_size),
                     {f"model.{art['format']}": ("copy", _artifact_file(build_dir, art))})
        names.append(name)
    if not ensembles:
        return names
    variants = sorted({(a["format"], a["quant"]) for a in manifest.get("artifacts", []) if a.get("name") != "fusion"})
    for fmt, quant in variants:
        subs, fusion = variant_artifacts(manifest, fmt, quant)
        parts = subs + [fusion]
        if not subs or any(a is None or a.get("status", "ok") != "ok" for a in parts):
            continue  # an incomplete variant cannot answer as ED-ViT
        for art in parts:
            name = python_model_name(art)
            if name not in names:  # a fp32 fusion head can serve several variants
                _write_model(repo_dir, name, python_config_pbtxt(art, manifest, max_batch_size),
                             _python_model_files(build_dir, art, manifest))
                names.append(name)
        name = ensemble_name(fmt, quant)
        _write_model(repo_dir, name, ensemble_config_pbtxt(manifest, subs, fusion, max_batch_size), {})
        names.append(name)
    return names
