"""The build manifest: its schema, loading and validation.

Board side: stdlib + json only. The host imports the schema from here so there is one definition.

Shape (schema_version 1), all paths relative to the build dir:

    {
      "schema_version": 1, "tool_version": "0.1.0", "created": "<iso time>",
      "model": {"name": str, "kwargs": {...}, "params": int, "bytes": int, "flops": int},
      "input": {"name": "pixel_values", "shape": [C, H, W], "layout": "NCHW", "dtype": "float32",
                "mean": [..C], "std": [..C], "interpolation": "bicubic", "value_range": [0.0, 1.0],
                "crop_pct": 0.9, "crop_mode": "center", "resize_size": [H', W'], "image_mode": "RGB"|"L"},
                                                # the checkpoint's timm eval transform, applied by
                                                # runtime/preprocess.py (no crop_pct: an older build, stretched)
      "classes": [str, ...],                    # N class names, index = class id
      "groups": [[int, ...], ...],              # K groups of class ids
      "submodels": [{"name": "g0", "group": 0, "classes": [int], "arch": {...},
                     "params": int, "bytes": int, "flops": int, "feature_dim": int,
                     "num_outputs": int, "checkpoint": "submodels/g0.pt",
                     "accuracy_in_group": float}],
      "fusion": {"kind": "mlp"|"ensemble"|"logits", "source": "features"|"logits", "input_dims": [int per sub-model],
                 "num_classes": int, "checkpoint": "fusion/fusion.pt"},
      "files": {"<relpath>": {"bytes": int, "sha256": str}},   # every file in the build except manifest.json
      "artifacts": [{"name": "g0"|"fusion", "file": relpath, "format": "onnx"|"tflite",
                     "quant": "fp32"|"fp16"|"int8-dynamic"|"int8-static",
                     "bytes": int, "sha256": str,
                     "inputs": [{"name": str, "shape": [-1, ...], "dtype": "float32"}],
                     "outputs": [{"name": str, "shape": [-1, ...], "dtype": "float32"}],
                     "reference": relpath to npz with one array per output name,
                     "tolerance": float, "max_abs_diff": float, "top1_agreement": float,
                     "float_layers": [str],   # layer groups computed in float (the int8 gate's fallback)
                     "float_weights": [str],  # those of them whose weights are float too (the rest: int8 weights)
                     "status": "ok"|"failed", "reason": str}],
      "accuracy": {"original": float, "fused": float, "fused_logits": float, "exported": {"onnx/fp32": float},
                   "exported_val": {...}, "quant_agreement": {"onnx/int8-static": {"val": float, "held_out": float}}}
    }

Sub-model artifacts take `pixel_values` [B, C, H, W] and return `features` [B, D] and `logits` [B, |g|+1]
(last logit = "other"). The fusion artifact takes `features` [B, sum(input_dims)] (the sub-models' `source`
outputs concatenated in group order; a missing sub-model's slice is zeros) and returns `logits` [B, N].
"""

from __future__ import annotations

import hashlib
import json
import os

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
REFERENCE_INPUTS = "reference/inputs.npz"
FORMATS = ("onnx", "tflite")
QUANT_MODES = ("fp32", "fp16", "int8-dynamic", "int8-static")


class ManifestError(Exception):
    """The manifest is missing or malformed. Host code re-raises it as an ArtifactError."""


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _require(obj: dict, key: str, kind, where: str, problems: list[str]):
    if not isinstance(obj, dict) or key not in obj:
        problems.append(f"{where}.{key} is missing")
        return None
    value = obj[key]
    if kind is not None and not isinstance(value, kind) or isinstance(value, bool) and kind in (int, float):
        problems.append(f"{where}.{key} must be {getattr(kind, '__name__', kind)}, got {type(value).__name__}")
        return None
    return value


def validate(manifest: dict) -> list[str]:
    """Every schema problem found, as 'field: what is wrong' strings (empty list = valid)."""
    p: list[str] = []
    if not isinstance(manifest, dict):
        return ["manifest must be a JSON object"]
    version = _require(manifest, "schema_version", int, "manifest", p)
    if version is not None and version != SCHEMA_VERSION:
        p.append(f"manifest.schema_version is {version}, this tool reads {SCHEMA_VERSION}: rebuild with this version")
    inp = _require(manifest, "input", dict, "manifest", p) or {}
    shape = _require(inp, "shape", list, "input", p)
    if shape is not None and (len(shape) != 3 or not all(isinstance(s, int) and s > 0 for s in shape)):
        p.append(f"input.shape must be [C, H, W] positive ints, got {shape}")
    for key in ("mean", "std"):
        _require(inp, key, list, "input", p)
    classes = _require(manifest, "classes", list, "manifest", p) or []
    groups = _require(manifest, "groups", list, "manifest", p) or []
    seen = sorted(c for g in groups if isinstance(g, list) for c in g)
    if classes and seen != list(range(len(classes))):
        p.append("groups must cover every class id exactly once")
    subs = _require(manifest, "submodels", list, "manifest", p) or []
    for i, sm in enumerate(subs):
        for key, kind in (("name", str), ("classes", list), ("feature_dim", int), ("num_outputs", int)):
            _require(sm, key, kind, f"submodels[{i}]", p)
    fusion = _require(manifest, "fusion", dict, "manifest", p) or {}
    _require(fusion, "kind", str, "fusion", p)
    _require(fusion, "input_dims", list, "fusion", p)
    files = _require(manifest, "files", dict, "manifest", p) or {}
    for rel, meta in files.items():
        _require(meta, "sha256", str, f"files[{rel}]", p)
        _require(meta, "bytes", int, f"files[{rel}]", p)
    for i, art in enumerate(manifest.get("artifacts", []) or []):
        where = f"artifacts[{i}]"
        for key, kind in (("name", str), ("file", str), ("format", str), ("quant", str), ("sha256", str),
                          ("bytes", int), ("inputs", list), ("outputs", list)):
            _require(art, key, kind, where, p)
        if isinstance(art, dict):
            if art.get("format") not in FORMATS:
                p.append(f"{where}.format must be one of {', '.join(FORMATS)}, got {art.get('format')!r}")
            if art.get("quant") not in QUANT_MODES:
                p.append(f"{where}.quant must be one of {', '.join(QUANT_MODES)}, got {art.get('quant')!r}")
    return p


def load(build_dir: str) -> dict:
    """Read and schema-check BUILD_DIR/manifest.json; raise ManifestError listing every problem."""
    path = os.path.join(build_dir, MANIFEST_NAME)
    if not os.path.isfile(path):
        raise ManifestError(f"{path}: not found; is {build_dir} a build directory made by `edvit-tool compile`?")
    return _read_checked(path)


def _read_checked(path: str) -> dict:
    """Parse the manifest file at `path` and schema-check it; ManifestError listing every problem."""
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError) as e:
        raise ManifestError(f"{path}: not valid JSON ({e}); rebuild or restore it") from None
    problems = validate(manifest)
    if problems:
        raise ManifestError(f"{path}: " + "; ".join(problems))
    return manifest


def artifact(manifest: dict, name: str, fmt: str, quant: str) -> dict | None:
    for art in manifest.get("artifacts", []):
        if art["name"] == name and art["format"] == fmt and art["quant"] == quant:
            return art
    return None


def artifact_key(art: dict) -> str:
    """'g0:onnx/int8-static' — the human name of an artifact."""
    return f"{art['name']}:{art['format']}/{art['quant']}"


def load_path(path: str) -> tuple:
    """A build dir or a manifest file (any name) -> (manifest, the dir its relative paths start from)."""
    if os.path.isdir(path):
        return load(path), path
    build_dir = os.path.dirname(os.path.abspath(path))
    if os.path.basename(path) == MANIFEST_NAME:
        return load(build_dir), build_dir
    if not os.path.isfile(path):
        raise ManifestError(f"{path}: not found; pass a build directory or its manifest.json")
    return _read_checked(path), build_dir


def parse_variant(text: str) -> tuple:
    """'onnx/int8-static' -> ('onnx', 'int8-static'); ManifestError naming the valid choices otherwise."""
    fmt, _, quant = text.strip().partition("/")
    if fmt not in FORMATS or quant not in QUANT_MODES:
        raise ManifestError(f"variant {text!r} must be FORMAT/QUANT with FORMAT in {', '.join(FORMATS)} and "
                            f"QUANT in {', '.join(QUANT_MODES)}, e.g. onnx/fp32")
    return fmt, quant


def select_artifact(manifest: dict, name: str, variant: str | None = None) -> tuple:
    """The artifact to run for model `name` -> (artifact, note or None).

    variant 'fmt/quant' picks that one; if it is absent or failed, onnx/fp32 is used and the note says so.
    Without a variant: the first artifact with status ok. ManifestError when nothing usable exists.
    """
    arts = [a for a in manifest.get("artifacts", []) if a.get("name") == name]
    if not arts:
        known = sorted({a.get("name") for a in manifest.get("artifacts", [])})
        raise ManifestError(f"no artifact for model {name!r}; the manifest has {', '.join(known) or 'none'}")
    ok = [a for a in arts if a.get("status", "ok") == "ok"]
    if variant:
        want = artifact(manifest, name, *parse_variant(variant))
        if want is not None and want in ok:
            return want, None
        why = "is not in the manifest" if want is None else f"failed ({want.get('reason', 'no reason given')})"
        fallback = artifact(manifest, name, "onnx", "fp32")
        if fallback is not None and fallback in ok:
            return fallback, f"{name}: {variant} {why}; using onnx/fp32 instead"
        raise ManifestError(f"{name}: {variant} {why} and there is no usable onnx/fp32 fallback; "
                            f"usable: {', '.join(artifact_key(a) for a in ok) or 'none'}")
    if not ok:
        raise ManifestError(f"{name}: every artifact failed its checks; re-run `edvit-tool export`")
    return ok[0], None


def artifact_by_sha256(manifest: dict, sha256: str) -> dict | None:
    """The artifact whose file has this sha256 (boards cache files by hash, not by name)."""
    return next((a for a in manifest.get("artifacts", []) if a.get("sha256") == sha256), None)


def ordered_submodels(manifest: dict) -> list:
    """Sub-models in group order: the order of the fusion head's input slices."""
    subs = list(manifest["submodels"])
    return sorted(subs, key=lambda s: s.get("group", subs.index(s)))
