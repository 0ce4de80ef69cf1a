"""Real timm ViT families through compile → export → parity (issue 9): each variant narrow and shallow, random
weights, 1–2 steps. What is checked is the machinery (surgery, sub-model heads, export, parity), not accuracy."""

import json

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file

from edvit_tool.cli.main import main

NARROW = {"embed_dim": 48, "depth": 2, "num_heads": 3, "num_classes": 6}
VARIANTS = {
    "vit_small_patch16_224": {"img_size": 32},
    "vit_base_patch16_224": {"img_size": 32},
    "deit_small_patch16_224": {"img_size": 32},
    "avg_pool": {"name": "vit_small_patch16_224", "img_size": 32, "global_pool": "avg"},
    "reg4": {"name": "vit_base_patch16_reg4_gap_256", "img_size": 32},
    "no_class_token": {"name": "vit_small_patch16_224", "img_size": 32, "class_token": False,
                       "global_pool": "avg"},
    "patch14": {"name": "vit_small_patch14_dinov2", "img_size": 28, "patch_size": 14},
    "patch32": {"name": "vit_base_patch32_224", "img_size": 64},
    "384px": {"name": "vit_small_patch16_384", "img_size": 48},
}


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variant_compiles_exports_and_passes_parity(variant, tmp_path, capsys):
    import timm

    kw = dict(VARIANTS[variant])
    name = kw.pop("name", variant)
    kwargs = {**NARROW, **kw}
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, **kwargs)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "m.safetensors"))
    rng = np.random.default_rng(0)
    size = kwargs["img_size"]
    x = rng.integers(0, 256, (90, size + 5, size + 9, 3), dtype=np.uint8)   # odd sizes: resize + centre crop
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(90) % 6)
    rec = {"name": variant, "threads": 1,
           "model": {"name": name, "kwargs": kwargs, "checkpoint": str(tmp_path / "m.safetensors")},
           "data": {"kind": "npz", "root": str(tmp_path / "d.npz"), "check_labels": False},
           "split": {"groups": 2}, "prune": {"steps": 1, "recovery_steps": 0, "importance_batches": 1},
           "finetune": {"steps": 2, "batch_size": 8}, "fusion": {"kind": "logits"},
           "export": {"formats": ["onnx"], "quant": ["fp32"], "simplify": "none"},
           "gate": {"max_accuracy_drop_pp": 100.0}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(rec))
    out = tmp_path / "b"
    assert main(["compile", "--recipe", str(tmp_path / "r.yaml"), "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["submodels"]) == 2
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["input"]["shape"] == [3, size, size] and manifest["input"]["crop_pct"] > 0
    arts = [a for a in manifest["artifacts"] if a["format"] == "onnx"]
    assert len(arts) == 3 and all(a["status"] == "ok" and a["max_abs_diff"] < 1e-3 for a in arts), arts
    assert main(["check", str(out)]) == 0
