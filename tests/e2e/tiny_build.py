"""A tiny but real build dir (manifest + ONNX/TFLite artifacts + reference npz) for runtime tests and benches.

Two sub-models (g0, g1: `pixel_values` [B,1,16,16] -> `features` [B,16], `logits` [B,3]) and a fusion head
(`features` [B,32] -> `logits` [B,4]), exported with the same tools the real export uses (torch.onnx,
litert-torch), plus a board-like copy of the runtime (edvit_tool/__init__.py + edvit_tool/runtime/) and a
PYTHONPATH shim dir whose `torch` / `timm` raise ImportError, so a stray import fails loudly.
Building takes ~5 s (litert-torch conversion); callers cache it per session.
"""

from __future__ import annotations

import os
import shutil

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
N_REF = 8


def _modules():
    import torch

    class SubModel(torch.nn.Module):
        """Patch-embed + MLP stand-in for a pruned ViT: features and logits, like the real sub-models."""

        def __init__(self, seed: int):
            super().__init__()
            torch.manual_seed(seed)
            self.embed = torch.nn.Conv2d(1, 8, 4, 4)
            self.fc = torch.nn.Linear(8, 16)
            self.norm = torch.nn.LayerNorm(16)
            self.head = torch.nn.Linear(16, 3)

        def forward(self, x):
            tokens = self.embed(x).flatten(2).transpose(1, 2)       # [B, 16, 8]
            feats = self.norm(torch.nn.functional.gelu(self.fc(tokens)).mean(1))
            return feats, self.head(feats)

    class Fusion(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(7)
            self.mlp = torch.nn.Sequential(torch.nn.Linear(32, 24), torch.nn.GELU(), torch.nn.Linear(24, 4))

        def forward(self, f):
            return self.mlp(f)

    return SubModel, Fusion


def _export_onnx(module, example, path, inputs, outputs):
    import torch

    dyn = {n: {0: "batch"} for n in inputs + outputs}
    torch.onnx.export(module, (example,), path, opset_version=17, dynamo=False, input_names=inputs,
                      output_names=outputs, dynamic_axes=dyn)


def make_tiny_build(root: str, tflite: bool = True) -> str:
    """Write the build into `root` (created); returns root."""
    import torch
    import warnings

    from edvit_tool.artifacts import write_manifest

    SubModel, Fusion = _modules()
    os.makedirs(os.path.join(root, "submodels"), exist_ok=True)
    os.makedirs(os.path.join(root, "fusion"), exist_ok=True)
    os.makedirs(os.path.join(root, "reference"), exist_ok=True)
    rng = np.random.default_rng(0)
    pixels = rng.standard_normal((N_REF, 1, 16, 16)).astype(np.float32)
    subs = {"g0": SubModel(0).eval(), "g1": SubModel(1).eval()}
    fusion = Fusion().eval()
    with torch.no_grad():
        outs = {n: [t.numpy() for t in m(torch.from_numpy(pixels))] for n, m in subs.items()}
        feats = np.concatenate([outs["g0"][0], outs["g1"][0]], axis=1)
        fused = fusion(torch.from_numpy(feats)).numpy()
    np.savez(os.path.join(root, "reference", "inputs.npz"), pixel_values=pixels, features=feats)

    sub_io = ([{"name": "pixel_values", "shape": [-1, 1, 16, 16], "dtype": "float32"}],
              [{"name": "features", "shape": [-1, 16], "dtype": "float32"},
               {"name": "logits", "shape": [-1, 3], "dtype": "float32"}])
    fusion_io = ([{"name": "features", "shape": [-1, 32], "dtype": "float32"}],
                 [{"name": "logits", "shape": [-1, 4], "dtype": "float32"}])
    artifacts = []

    def add(name, rel, fmt, ref_arrays, io):
        ref_rel = f"reference/outputs-{os.path.basename(rel)}.npz"
        np.savez(os.path.join(root, ref_rel), **ref_arrays)
        path = os.path.join(root, rel)
        from edvit_tool.runtime.manifest import sha256_file
        artifacts.append({"name": name, "file": rel, "format": fmt, "quant": "fp32",
                          "bytes": os.path.getsize(path), "sha256": sha256_file(path),
                          "inputs": io[0], "outputs": io[1], "reference": ref_rel, "tolerance": 1e-4,
                          "max_abs_diff": 0.0, "top1_agreement": 1.0, "float_layers": [], "status": "ok",
                          "reason": ""})

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        for name, m in subs.items():
            rel = f"submodels/{name}.fp32.onnx"
            _export_onnx(m, torch.from_numpy(pixels[:1]), os.path.join(root, rel), ["pixel_values"],
                         ["features", "logits"])
            add(name, rel, "onnx", {"features": outs[name][0], "logits": outs[name][1]}, sub_io)
        _export_onnx(fusion, torch.from_numpy(feats[:1]), os.path.join(root, "fusion/fusion.onnx"), ["features"],
                     ["logits"])
        add("fusion", "fusion/fusion.onnx", "onnx", {"logits": fused}, fusion_io)
    if tflite:
        import litert_torch

        rel = "submodels/g0.fp32.tflite"
        litert_torch.convert(subs["g0"], (torch.from_numpy(pixels[:1]),)).export(os.path.join(root, rel))
        add("g0", rel, "tflite", {"features": outs["g0"][0], "logits": outs["g0"][1]}, sub_io)

    manifest = {
        "schema_version": 1, "tool_version": "0.1.0", "created": "2025-01-01T00:00:00Z",
        "model": {"name": "tiny", "kwargs": {}, "params": 0, "bytes": 0, "flops": 0},
        "input": {"name": "pixel_values", "shape": [1, 16, 16], "layout": "NCHW", "dtype": "float32",
                  "mean": [0.5], "std": [0.5], "interpolation": "bilinear"},
        "classes": ["a", "b", "c", "d"], "groups": [[0, 1], [2, 3]],
        "submodels": [{"name": n, "group": i, "classes": [2 * i, 2 * i + 1], "arch": {}, "params": 0, "bytes": 0,
                       "flops": 0, "feature_dim": 16, "num_outputs": 3, "checkpoint": f"submodels/{n}.pt",
                       "accuracy_in_group": 0.0} for i, n in enumerate(subs)],
        "fusion": {"kind": "mlp", "source": "features", "input_dims": [16, 16], "num_classes": 4,
                   "checkpoint": "fusion/fusion.pt"},
        "artifacts": artifacts, "accuracy": {},
    }
    write_manifest(root, manifest)
    return root


def make_board_runtime(root: str) -> str:
    """A board-like dir: edvit_tool/__init__.py + edvit_tool/runtime/*.py only, as deploy copies it."""
    pkg = os.path.join(root, "edvit_tool")
    os.makedirs(os.path.join(pkg, "runtime"), exist_ok=True)
    shutil.copy(os.path.join(REPO, "edvit_tool", "__init__.py"), pkg)
    src = os.path.join(REPO, "edvit_tool", "runtime")
    for n in os.listdir(src):
        if n.endswith(".py"):
            shutil.copy(os.path.join(src, n), os.path.join(pkg, "runtime", n))
    return root


def make_import_shim(root: str, blocked=("torch", "timm", "click", "yaml")) -> str:
    """A dir to put first on PYTHONPATH: importing any of `blocked` raises ImportError."""
    for mod in blocked:
        os.makedirs(os.path.join(root, mod), exist_ok=True)
        with open(os.path.join(root, mod, "__init__.py"), "w") as f:
            f.write(f"raise ImportError('{mod} is not available on boards (test shim)')\n")
    return root


def board_env(board_dir: str, shim_dir: str) -> dict:
    """Environment for running the runtime as a board would: shim first, then the board copy, nothing else."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([shim_dir, board_dir])
    env["PYTHONNOUSERSITE"] = "1"
    env.pop("PYTHONSTARTUP", None)
    return env


def _cache_key() -> str:
    """Changes whenever the builder, the manifest code or the exporters change."""
    import hashlib
    from importlib import metadata

    h = hashlib.sha256()
    for rel in ("tests/e2e/tiny_build.py", "edvit_tool/runtime/manifest.py", "edvit_tool/artifacts.py"):
        with open(os.path.join(REPO, rel), "rb") as f:
            h.update(f.read())
    for dist in ("torch", "litert-torch", "onnx"):
        h.update(metadata.version(dist).encode())
    return h.hexdigest()[:16]


def cache_dir(pytestconfig) -> str | None:
    """pytest's cache dir for the exported files (None when the cache plugin is off: -p no:cacheprovider)."""
    cache = getattr(pytestconfig, "cache", None)
    return str(cache.mkdir("edvit-tiny-build")) if cache is not None else None


def shared_tiny_build(tmp_path_factory, cache_dir: str | None = None) -> str:
    """The tiny build, made once per pytest session however many test files ask (keyed by basetemp path).

    cache_dir (e.g. pytest's `config.cache.mkdir(...)`): keep the exported files across sessions, keyed by
    `_cache_key()`, so only the first run pays for importing torch + litert-torch and converting (~20 s here).
    """
    root = tmp_path_factory.getbasetemp() / "tiny_build"
    if (root / ".complete").exists():
        return str(root)
    if root.exists():
        shutil.rmtree(root)
    cached = os.path.join(cache_dir, _cache_key()) if cache_dir else None
    if cached and os.path.isfile(os.path.join(cached, ".complete")):
        shutil.copytree(cached, root)
        return str(root)
    make_tiny_build(str(root))
    (root / ".complete").write_text("ok\n")
    if cached:
        tmp = f"{cached}.tmp-{os.getpid()}"
        shutil.copytree(root, tmp)
        shutil.rmtree(cached, ignore_errors=True)
        os.replace(tmp, cached)
    return str(root)
