"""A latency ladder: a build of one ViT's structure pruned to several widths, for `profile` to time on each board.

    write_ladder(recipe, "ladder/")          # compile --recipe R --ladder ladder/
    edvit-tool profile --boards boards.yaml --build ladder/ --out profiles.json
    edvit-tool compile --recipe R --boards boards.yaml --profiles profiles.json

Random weights (latency depends on the structure only; parity on the board is still checked against PyTorch's
outputs). Structures: the full model and keep ratios of embedding channels / heads / MLP neurons spread over the
range pruning produces, so the fitted latency model (cluster/latency_model.py) covers what sizing will ask for.
The manifest has the usual schema (one "group" per rung, all classes in rung 0) so profile/payload read it as a
build; `ladder: true` marks it.
"""

from __future__ import annotations

import os
import time

from ..config.recipe import Recipe

# (embed, heads, mlp) keep ratios. Interleaved so that any prefix spans the range; bench/hetero.py holds the
# last ones out to measure the model's error on structures it was not fitted on.
RUNGS = [(1.0, 1.0, 1.0), (0.5, 1.0, 0.25), (0.75, 0.5, 0.5), (0.375, 0.5, 0.125), (0.625, 1.0, 0.75),
         (0.5, 0.75, 0.5), (0.875, 0.75, 0.25), (0.25, 0.5, 0.25), (0.75, 1.0, 0.375), (0.5, 0.5, 0.75),
         (0.625, 0.75, 0.125), (0.375, 1.0, 0.5)]


def rung_arch(base: dict, embed: float, heads: float, mlp: float, num_outputs: int) -> dict:
    """vit_arch-style sizes at the given keep ratios (every block alike; at least 8 channels, 1 head, 1 neuron)."""
    return {"embed_dim": max(8, int(round(base["embed_dim"] * embed))), "head_dim": base["head_dim"],
            "heads": [max(1, int(round(h * heads))) for h in base["heads"]],
            "mlp_hidden": [max(1, int(round(m * mlp))) for m in base["mlp_hidden"]], "num_outputs": num_outputs}


def write_ladder(recipe: Recipe, out_dir: str, rungs=None, formats=None, log=None) -> str:
    import numpy as np
    import torch

    from ..artifacts import staged_dir, write_manifest
    from .checkpoint import create_model
    from ..compile.data import input_spec
    from ..export.onnx import export_onnx, random_example
    from .prune import surgery
    from ..runtime.manifest import sha256_file
    from ..cluster.latency_model import geometry_of_model

    log = log or (lambda s: None)
    m = recipe.model
    model = create_model(m.name, m.kwargs)
    surgery.check_supported(model)
    base = surgery.vit_arch(model)
    spec = input_spec(model, recipe.data)
    shape = list(spec["shape"])
    formats = list(formats or recipe.export.formats or ["onnx"])
    n_cls = model.num_classes
    torch.manual_seed(recipe.seed)
    x = random_example(shape, batch=4, seed=recipe.seed)
    subs, arts = [], []

    def io(name, dims):
        return {"name": name, "shape": [-1] + list(dims), "dtype": "float32"}

    with staged_dir(out_dir) as root:
        for sub in ("submodels", "reference", "fusion"):
            os.makedirs(os.path.join(root, sub))
        np.savez(os.path.join(root, "reference", "inputs.npz"), pixel_values=x.numpy())
        for i, (re_, rh, rm) in enumerate(rungs or RUNGS):
            arch = rung_arch(base, re_, rh, rm, n_cls + 1)
            sub = surgery.build_pruned(m.name, m.kwargs, arch).eval()
            wrapped = surgery.SubModelWrapper(sub).eval()
            with torch.no_grad():
                feats, logits = wrapped(x)
            name = f"l{i}"
            t0 = time.perf_counter()
            for fmt in formats:
                ext = "onnx" if fmt == "onnx" else "tflite"
                rel = f"submodels/{name}.fp32.{ext}"
                if fmt == "onnx":
                    export_onnx(wrapped, "submodel", x[:2], os.path.join(root, rel), recipe.export.opset,
                                recipe.export.simplify)
                else:
                    from ..export.tflite import convert_tflite

                    convert_tflite(wrapped, "submodel", x[:2], os.path.join(root, rel))
                ref = f"reference/outputs-{name}.fp32.{ext}.npz"
                np.savez(os.path.join(root, ref), features=feats.numpy(), logits=logits.numpy())
                arts.append({"name": name, "file": rel, "format": fmt, "quant": "fp32",
                             "bytes": os.path.getsize(os.path.join(root, rel)),
                             "sha256": sha256_file(os.path.join(root, rel)),
                             "inputs": [io("pixel_values", shape)],
                             "outputs": [io("features", [arch["embed_dim"]]), io("logits", [n_cls + 1])],
                             "reference": ref, "tolerance": 1e-3, "status": "ok", "reason": "", "float_layers": []})
            subs.append({"name": name, "group": i, "classes": list(range(n_cls)) if i == 0 else [],
                         "arch": arch, "params": surgery.count_params(sub), "feature_dim": arch["embed_dim"],
                         "num_outputs": n_cls + 1, "keep": {"embed": re_, "heads": rh, "mlp": rm}})
            log(f"{name}: embed {arch['embed_dim']}, heads {sum(arch['heads'])}, mlp {sum(arch['mlp_hidden'])}, "
                f"{subs[-1]['params']:,} params, exported in {time.perf_counter() - t0:.1f} s")
        manifest = {
            "schema_version": 1, "ladder": True, "name": f"{recipe.name}-ladder",
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "model": {"name": m.name, "kwargs": m.kwargs, "params": surgery.count_params(model)},
            "geometry": geometry_of_model(model).to_dict(),
            "input": spec, "classes": [str(c) for c in range(n_cls)],
            "groups": [list(range(n_cls))] + [[] for _ in subs[1:]], "submodels": subs,
            "fusion": {"kind": "none", "input_dims": [], "num_classes": n_cls, "checkpoint": None},
            "artifacts": arts, "accuracy": {},
        }
        write_manifest(root, manifest)
    return os.path.abspath(out_dir)
