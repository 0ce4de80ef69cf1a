"""The real CLI on tiny digits: compile end to end, and every bad-input case of issue 2."""

import json
import os

import numpy as np
import pytest
import torch
import yaml

from edvit_tool.cli.main import main

KW = {"img_size": 16, "patch_size": 4, "in_chans": 1, "num_classes": 10, "embed_dim": 48, "depth": 2, "num_heads": 3}


def _recipe(tmp, ckpt, **extra):
    rec = {"name": "t", "model": {"name": "vit_tiny_patch16_224", "kwargs": dict(KW), "checkpoint": str(ckpt)},
           "data": {"kind": "digits", "mean": [0.5], "std": [0.5]},
           "split": {"groups": 4}, "prune": {"steps": 2, "recovery_steps": 5, "importance_batches": 2},
           "finetune": {"steps": 10}, "fusion": {"steps": 20, "kind": "mlp"}}
    for dotted, value in extra.items():
        node = rec
        *parts, last = dotted.split("__")
        for p in parts:
            node = node.setdefault(p, {})
        node[last] = value
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(rec))
    return path


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    """A tiny ViT briefly trained on digits, saved as safetensors (the 'user checkpoint')."""
    from edvit_tool.config import recipe as r
    from edvit_tool.demo_model import train_demo_model

    tmp = tmp_path_factory.mktemp("ckpt")
    ckpt = tmp / "model.safetensors"
    rec = r.validate({"model": {"name": "vit_tiny_patch16_224", "kwargs": KW, "checkpoint": str(ckpt)},
                      "data": {"kind": "digits", "mean": [0.5], "std": [0.5]}})
    train_demo_model(rec, str(ckpt), steps=60)
    return ckpt


@pytest.mark.slow
def test_compile_writes_a_complete_build_with_budgets_met(tmp_path, tiny_ckpt, capsys):
    recipe = _recipe(tmp_path, tiny_ckpt, data__eval_samples=120)
    out = tmp_path / "build"
    assert main(["compile", "--recipe", str(recipe), "--out", str(out), "--json", "--params-ratio", "0.3"]) == 0
    report = json.loads(capsys.readouterr().out)
    for key in ("original", "fused", "fusion_kind", "submodels", "size_ratio"):
        assert key in report
    assert set(report["original"]) >= {"accuracy", "params", "bytes"}
    assert 0 <= report["fused"]["accuracy"] <= 1
    budget = 0.3 * report["original"]["params"]
    assert len(report["submodels"]) == 4
    for sm in report["submodels"]:
        assert set(sm) >= {"group", "classes", "params", "bytes", "flops", "accuracy_in_group"}
        assert 0.9 * budget <= sm["params"] <= budget
    assert report["size_ratio"] == pytest.approx(report["original"]["bytes"] / max(s["bytes"] for s in report["submodels"]))
    for rel in ("manifest.json", "recipe.resolved.yaml", "report.json", "report.md", "submodels/g0.pt",
                "fusion/fusion.pt", "reference/eval.npz"):
        assert (out / rel).is_file(), rel
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["groups"] == [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9]]
    assert set(manifest["files"]) >= {"submodels/g0.pt", "report.json"}
    # the held-out eval subset is a seeded random sample of the test split, not its first rows
    ev = np.load(out / "reference/eval.npz")
    assert ev["pixels"].dtype == np.uint8 and "x" not in ev.files   # compact: uint8 at model resolution
    assert ev["pixels"].shape == (120, 16, 16, 1) and 120 == manifest["accuracy"]["eval_samples"]
    assert len(set(ev["y"].tolist())) == 10
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]

    # the sub-model rebuilds from its state dict + manifest arch and matches its recorded size
    from edvit_tool.compile.prune.surgery import build_pruned, count_params
    sm = manifest["submodels"][1]
    model = build_pruned(manifest["model"]["name"], manifest["model"]["kwargs"], sm["arch"])
    model.load_state_dict(torch.load(out / sm["checkpoint"], weights_only=True))
    assert count_params(model) == sm["params"]
    # default views: sub-model 0 sees the plain image, the others their own 1-px offsets (recorded in the arch)
    views = [tuple(s["arch"].get("view", (0, 0))) for s in manifest["submodels"]]
    assert views[0] == (0, 0) and len(set(views)) == 4 and all(max(map(abs, v)) == 1 for v in views[1:])

    # re-export the finished build (atomic, reports refreshed) and gate it with `check`
    assert main(["export", str(out), "--formats", "onnx", "--quant", "fp32", "-q"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert {a["file"] for a in manifest["artifacts"]} >= {"submodels/g0.fp32.onnx", "fusion/fusion.fp32.onnx"}
    assert "onnx/fp32" in json.loads((out / "report.json").read_text())["exported_accuracy"]
    assert main(["check", str(out)]) == 0


@pytest.mark.slow
def test_same_seed_gives_the_same_build(tmp_path, tiny_ckpt):
    recipe = _recipe(tmp_path, tiny_ckpt, split__groups=2, fusion__kind="logits")
    for name in ("a", "b"):
        assert main(["compile", "--recipe", str(recipe), "--out", str(tmp_path / name), "-q"]) == 0
    a = torch.load(tmp_path / "a/submodels/g1.pt", weights_only=True)
    b = torch.load(tmp_path / "b/submodels/g1.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_compile_with_timm_training_augmentation(tmp_path, tiny_ckpt, capsys):
    """finetune.augment: random-resized-crop + RandAugment batches from DataLoader workers, teacher on the fly,
    for the trunk, the sub-models, the joint phase and the peer."""
    aug = {"scale": [0.6, 1.0], "hflip": False, "auto_augment": "rand-m5-mstd0.5"}
    recipe = _recipe(tmp_path, tiny_ckpt, split__groups=2, finetune__augment=aug, data__workers=1,
                     data__eval_samples=100)
    out = tmp_path / "build"
    assert main(["compile", "--recipe", str(recipe), "--out", str(out), "--json", "--peer"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert 0 < report["fused"]["accuracy"] <= 1 and "peer" in report
    resolved = yaml.safe_load((out / "recipe.resolved.yaml").read_text())
    assert resolved["finetune"]["augment"] == aug


def _expect_error(capsys, argv, *needles):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), err
    for n in needles:
        assert n in lines[0], lines[0]


def test_bad_recipes_give_one_clear_line_and_no_build(tmp_path, tiny_ckpt, capsys):
    out = tmp_path / "out"
    cases = [
        ({"prune__critrion": "x"}, ["unknown key prune.critrion"]),
        ({"split__groups": "four"}, ["split.groups must be an integer"]),
        ({"prune__target": {"params_ratio": 1.5}}, ["prune.target.params_ratio must be in (0, 1], got 1.5"]),
        ({"split__groups": 11}, ["split.groups must be between 1 and the number of classes (10), got 11"]),
        ({"split__groups": 1}, ["split.groups: 1 gives no ensemble", "compile --peer"]),
        ({"model__checkpoint": str(tmp_path / "nope.pt")}, ["nope.pt: checkpoint file not found"]),
        ({"model__name": "resnet18", "model__kwargs": {"num_classes": 10}}, ["not a timm VisionTransformer"]),
        ({"model__kwargs": dict(KW, embed_dim=96, num_heads=4)}, ["tensor", "has shape", "expects"]),
        ({"model__name": "vit_does_not_exist"}, ["unknown timm model 'vit_does_not_exist'"]),
        ({"finetune__augment": {"flip": True}}, ["finetune.augment: unknown setting(s) flip", "hflip"]),
    ]
    for extra, needles in cases:
        recipe = _recipe(tmp_path, tiny_ckpt, **extra)
        _expect_error(capsys, ["compile", "--recipe", str(recipe), "--out", str(out)], *needles)
        assert not out.exists() and not (tmp_path / "out.partial").exists()
        assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


def test_checkpoint_formats_and_wrappers_load(tmp_path, tiny_ckpt):
    from safetensors.torch import load_file

    from edvit_tool.compile.checkpoint import load_model

    sd = load_file(str(tiny_ckpt))
    ref = load_model("vit_tiny_patch16_224", KW, str(tiny_ckpt))
    x = torch.randn(2, 1, 16, 16)
    for name, obj in (("raw.pth", sd), ("wrapped.pt", {"state_dict": sd, "epoch": 3}), ("ema.pt", {"model_ema": sd}),
                      ("ddp.pt", {"module." + k: v for k, v in sd.items()})):
        torch.save(obj, tmp_path / name)
        m = load_model("vit_tiny_patch16_224", KW, str(tmp_path / name))
        assert torch.allclose(m(x), ref(x))


def test_empty_class_folder_is_named(tmp_path, tiny_ckpt, capsys):
    from PIL import Image

    root = tmp_path / "imgs"
    for c in ("cat", "dog"):
        (root / "train" / c).mkdir(parents=True)
    for i in range(4):
        Image.fromarray((np.random.rand(16, 16) * 255).astype("uint8")).save(root / "train" / "cat" / f"{i}.png")
    recipe = _recipe(tmp_path, tiny_ckpt, data__kind="imagefolder", data__root=str(root))
    _expect_error(capsys, ["compile", "--recipe", str(recipe), "--out", str(tmp_path / "o")],
                  "dog: class folder is empty")


def test_npz_data_with_wrong_class_count_is_explained(tmp_path, tiny_ckpt, capsys):
    npz = tmp_path / "d.npz"
    np.savez(npz, x=np.random.rand(30, 16, 16).astype("float32"), y=np.arange(30) % 3)
    recipe = _recipe(tmp_path, tiny_ckpt, data__kind="npz", data__root=str(npz))
    _expect_error(capsys, ["compile", "--recipe", str(recipe), "--out", str(tmp_path / "o")],
                  "data has 3 classes but the model has num_classes=10")
