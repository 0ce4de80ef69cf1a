"""A Triton Inference Server model repository from a build, so the same sub-models can be served by Triton or
KServe (Open Inference Protocol v2, like our board workers) when a user outgrows boards.

    <repo>/<name>_<format>_<quant>/config.pbtxt
    <repo>/<name>_<format>_<quant>/1/model.onnx | model.tflite

ONNX models use platform "onnxruntime_onnx" with Triton batching (max_batch_size, dims without the batch).
TFLite models use backend "tflite"; ours have a fixed batch of 1 (litert-torch cannot export a dynamic batch), so
they get max_batch_size 0 and full dims [1, ...] — declaring batching would make Triton send batches the model
cannot take. Torch-free: needs only the build dir.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from ..errors import ArtifactError

_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int8": "TYPE_INT8", "uint8": "TYPE_UINT8",
          "int32": "TYPE_INT32", "int64": "TYPE_INT64"}


def model_name(art: dict) -> str:
    return f"{art['name']}_{art['format']}_{art['quant']}"


def _tensor(t: dict, batched: bool) -> str:
    dims = t["shape"][1:] if batched else t["shape"]
    dtype = _TYPES.get(t["dtype"])
    if dtype is None:
        raise ArtifactError(f"tensor {t['name']!r} has dtype {t['dtype']}, which has no Triton type here")
    return (f'  {{\n    name: "{t["name"]}"\n    data_type: {dtype}\n'
            f'    dims: [ {", ".join(str(int(d)) for d in dims)} ]\n  }}')


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


def write_triton_repo(build_dir: str, manifest: dict, repo_dir: str, max_batch_size: int = 8) -> list[str]:
    """Write one Triton model per shippable artifact (status ok) into repo_dir; returns the model names.
    Each model dir is assembled beside its destination and renamed into place; other models in repo_dir stay."""
    os.makedirs(repo_dir, exist_ok=True)
    names = []
    for art in manifest.get("artifacts", []):
        if art.get("status", "ok") != "ok":
            continue
        src = os.path.join(build_dir, art["file"])
        if not os.path.isfile(src):
            raise ArtifactError(f"{src}: missing; run `edvit-tool check {build_dir}` and re-export")
        name = model_name(art)
        tmp = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=repo_dir)
        try:
            os.makedirs(os.path.join(tmp, "1"))
            shutil.copyfile(src, os.path.join(tmp, "1", f"model.{art['format']}"))
            with open(os.path.join(tmp, "config.pbtxt"), "w", encoding="utf-8") as f:
                f.write(config_pbtxt(art, max_batch_size))
            dest = os.path.join(repo_dir, name)
            if os.path.exists(dest):
                shutil.rmtree(dest)
            os.rename(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        names.append(name)
    return names
