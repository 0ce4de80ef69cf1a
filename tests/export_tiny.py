"""A tiny *trained* ED-ViT build for the export / check tests: two timm ViT sub-models (digits 0-4 and 5-9, plus
"other") and an MLP fusion head, trained a few hundred steps on sklearn's digits upscaled to 16x16 so top-1
agreement of quantised artifacts means something (~90 % fused accuracy).

Everything is cached on disk under pytest's basetemp (one build per session however many test files ask):
`trained(tmp_path_factory)` -> (models, manifest skeleton, data dir), `exported(tmp_path_factory)` -> build dir.
"""

from __future__ import annotations

import copy
import json
import os
import shutil

import numpy as np

GROUPS = [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
EMBED = 48
N_EVAL = 300
STEPS = 250
EXPORT_CFG = {"formats": ["onnx", "tflite"], "quant": ["fp32", "fp16", "int8-dynamic", "int8-static"],
              "opset": 17, "simplify": "onnxslim", "calibration_samples": 64, "reference_samples": 32}
GATE = {"max_accuracy_drop_pp": 1.0, "max_quant_drop_pp": 2.0}


def digits():
    """(x [1797,1,16,16] normalised, y) from sklearn, split into train / eval by position."""
    import torch
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    x = torch.nn.functional.interpolate(x, size=16, mode="bilinear", align_corners=False)
    x = ((x - 0.5) / 0.5).numpy().astype(np.float32)
    return x, d.target.astype(np.int64)


def make_vit(num_classes: int):
    import timm
    import torch

    class SubModel(torch.nn.Module):
        """timm ViT -> (pre-logits features, logits), as compile's sub-models."""

        def __init__(self):
            super().__init__()
            self.vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=4,
                                         in_chans=1, num_classes=num_classes, embed_dim=EMBED, depth=2,
                                         num_heads=3)

        def forward(self, x):
            f = self.vit.forward_head(self.vit.forward_features(x), pre_logits=True)
            return f, self.vit.head(f)

    return SubModel()


def make_fusion(in_dim: int, n_cls: int):
    import torch

    return torch.nn.Sequential(torch.nn.Linear(in_dim, 32), torch.nn.GELU(), torch.nn.Linear(32, n_cls))


def _train(model, x, y, steps, lr=3e-3, seed=0):
    import torch

    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr, weight_decay=0.01)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(xt), (64,), generator=g)
        out = model(xt[idx])
        logits = out[1] if isinstance(out, tuple) else out
        loss = torch.nn.functional.cross_entropy(logits, yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def relabel(y, group):
    """Group classes -> 0..|g|-1, everything else -> |g| ("other")."""
    out = np.full_like(y, len(group))
    for i, c in enumerate(group):
        out[y == c] = i
    return out


def manifest_skeleton(feature_dims, fused_acc):
    return {
        "schema_version": 1, "tool_version": "0.1.0", "created": "2025-01-01T00:00:00+00:00",
        "model": {"name": "vit_tiny_patch16_224", "kwargs": {}, "params": 0, "bytes": 400_000, "flops": 0},
        "input": {"name": "pixel_values", "shape": [1, 16, 16], "layout": "NCHW", "dtype": "float32",
                  "mean": [0.5], "std": [0.5], "interpolation": "bilinear"},
        "classes": [str(i) for i in range(10)], "groups": GROUPS,
        "submodels": [{"name": f"g{i}", "group": i, "classes": g, "arch": {}, "params": 0, "bytes": 0, "flops": 0,
                       "feature_dim": feature_dims[i], "num_outputs": len(g) + 1,
                       "checkpoint": f"submodels/g{i}.pt", "accuracy_in_group": 0.0}
                      for i, g in enumerate(GROUPS)],
        "fusion": {"kind": "mlp", "source": "features", "input_dims": list(feature_dims), "num_classes": 10,
                   "checkpoint": "fusion/fusion.pt"},
        "accuracy": {"original": fused_acc, "fused": fused_acc, "exported": {}},
        "artifacts": [],
    }


def train_models(cache: str) -> dict:
    """Train (or load from `cache`) g0, g1 and the fusion head; returns modules in eval mode."""
    import torch

    torch.manual_seed(0)
    models = {f"g{i}": make_vit(len(g) + 1) for i, g in enumerate(GROUPS)}
    models["fusion"] = make_fusion(EMBED * len(GROUPS), 10)
    path = os.path.join(cache, "models.pt")
    if os.path.exists(path):
        state = torch.load(path, weights_only=True)
        for n, m in models.items():
            m.load_state_dict(state[n])
        return {n: m.eval() for n, m in models.items()}
    torch.set_num_threads(1)  # tiny models: threads only add contention
    x, y = digits()
    xtr, ytr = x[:-N_EVAL], y[:-N_EVAL]
    for i, g in enumerate(GROUPS):
        _train(models[f"g{i}"], xtr, relabel(ytr, g), STEPS, seed=i)
    with torch.no_grad():
        feats = torch.cat([models[f"g{i}"](torch.from_numpy(xtr))[0] for i in range(len(GROUPS))], 1).numpy()
    _train(models["fusion"], feats, ytr, 400, lr=3e-3, seed=9)
    torch.save({n: m.state_dict() for n, m in models.items()}, path)
    return {n: m.eval() for n, m in models.items()}


def fused_torch_accuracy(models, x, y) -> float:
    import torch

    with torch.no_grad():
        t = torch.from_numpy(x)
        feats = torch.cat([models[f"g{i}"](t)[0] for i in range(len(GROUPS))], 1)
        return float((models["fusion"](feats).argmax(1).numpy() == y).mean())


def write_inputs(root: str, models) -> dict:
    """reference/val.npz, eval.npz and calib-*.npz in the form builds before uint8 `pixels` had (float32 `x`,
    already normalised: still read, see edvit_tool/reference.py; compile's `pixels` form is covered by
    tests/unit/test_reference_sets.py and tests/e2e/test_compile_cli.py); returns the manifest skeleton."""
    import torch

    from edvit_tool.compile.data import stratified_sample

    x, y = digits()
    xtr, ytr = x[:-N_EVAL], y[:-N_EVAL]
    xev, yev = x[-N_EVAL:], y[-N_EVAL:]
    os.makedirs(os.path.join(root, "reference"), exist_ok=True)
    np.savez(os.path.join(root, "reference", "eval.npz"), x=xev, y=yev)
    # the tiny models trained on all of xtr: the gate needs unseen images, so here val repeats the held-out set
    np.savez(os.path.join(root, "reference", "val.npz"), x=xev, y=yev)
    cal = stratified_sample(torch.from_numpy(ytr), 64, seed=0).numpy()
    for i in range(len(GROUPS)):
        np.savez(os.path.join(root, "reference", f"calib-g{i}.npz"), x=xtr[cal])
    with torch.no_grad():
        feats = torch.cat([models[f"g{i}"](torch.from_numpy(xtr[cal]))[0] for i in range(len(GROUPS))], 1)
    np.savez(os.path.join(root, "reference", "calib-fusion.npz"), x=feats.numpy())
    return manifest_skeleton([EMBED] * len(GROUPS), fused_torch_accuracy(models, xev, yev))


def make_build(root: str, models, export_cfg=None, gate=None) -> tuple[dict, list]:
    """A complete build at `root` (manifest written); returns (manifest, gate failures)."""
    from edvit_tool.artifacts import write_manifest
    from edvit_tool.export import export_build

    os.makedirs(root, exist_ok=True)
    manifest = write_inputs(root, models)
    failures = export_build(root, manifest, models, export_cfg or EXPORT_CFG, gate or GATE)
    write_manifest(root, manifest)
    return manifest, failures


def _cache(tmp_path_factory, name: str) -> str:
    return str(tmp_path_factory.getbasetemp() / name)


def trained(tmp_path_factory) -> dict:
    cache = _cache(tmp_path_factory, "export_models")
    os.makedirs(cache, exist_ok=True)
    return train_models(cache)


def exported(tmp_path_factory) -> str:
    """The full build (onnx + tflite x fp32/fp16/int8-dynamic/int8-static), made once per session."""
    root = _cache(tmp_path_factory, "export_build")
    done = root + ".complete.json"  # beside, not inside: a build holds only what its manifest lists
    if not os.path.exists(done):
        if os.path.exists(root):
            shutil.rmtree(root)
        _, failures = make_build(root, trained(tmp_path_factory))
        with open(done, "w") as f:
            json.dump({"failures": failures}, f)
    return root


def failures_of(root: str) -> list:
    with open(root + ".complete.json") as f:
        return json.load(f)["failures"]


def copy_build(src: str, dst: str) -> str:
    shutil.copytree(src, dst)
    return dst


def with_outlier(models, scale: float = 300.0):
    """A copy of the models whose g0 block-0 norm1 output has one channel `scale`x larger, compensated in qkv: the
    float function is unchanged, but per-tensor int8 activations of that LayerNorm's output lose every other
    channel — the classic ViT outlier-channel failure that the float fallback exists for."""
    import torch

    out = {n: copy.deepcopy(m) for n, m in models.items()}
    for blk in out["g0"].vit.blocks:
        with torch.no_grad():
            blk.norm1.weight[0] *= scale
            blk.norm1.bias[0] *= scale
            blk.attn.qkv.weight[:, 0] /= scale
    return out
