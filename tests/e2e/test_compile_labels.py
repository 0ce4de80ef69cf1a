"""Issue 8: class order from model.classes, the permuted-head check, calibration covering every class, and the
test split never reaching a choice (poisoned test labels leave the build identical)."""

import json

import numpy as np
import pytest
import torch
import yaml

from edvit_tool.cli.main import main
from synth_images import digits_checkpoint

KW = {"img_size": 16, "patch_size": 4, "in_chans": 1, "num_classes": 10, "embed_dim": 48, "depth": 2, "num_heads": 3}
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return digits_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.safetensors", steps=400, kwargs=KW)


def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images * (255 / 16)).astype(np.uint8), d.target


def _imagefolder(root, n_per_class=40):
    """digits as an ImageFolder whose folder names (words) sort into a different order than the head's."""
    from PIL import Image

    x, y = _digits()
    for c, word in enumerate(WORDS):
        d = root / "train" / word
        d.mkdir(parents=True)
        for i, j in enumerate(np.flatnonzero(y == c)[:n_per_class]):
            Image.fromarray(x[j]).resize((16, 16), Image.BILINEAR).save(d / f"{i}.png")
    return root


def _recipe(tmp, ckpt, data, **model):
    rec = {"name": "t", "model": {"name": "vit_tiny_patch16_224", "kwargs": dict(KW), "checkpoint": str(ckpt),
                                  **model},
           "data": {"mean": [0.5], "std": [0.5], **data},
           "split": {"groups": 2}, "prune": {"steps": 1, "recovery_steps": 0, "importance_batches": 1},
           "finetune": {"steps": 5}, "fusion": {"steps": 10, "kind": "auto", "augment_views": 0}}
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(rec))
    return path


def test_calibration_sample_of_a_class_sorted_split_covers_every_class():
    from edvit_tool.compile.data import stratified_sample

    y = torch.arange(10).repeat_interleave(50)            # class-sorted: 50 of class 0, then 50 of class 1, ...
    idx = stratified_sample(y, 64, seed=3)
    assert len(idx) == 64 and len(set(idx.tolist())) == 64
    assert set(y[idx].tolist()) == set(range(10))
    assert min(np.bincount(y[idx].numpy())) >= 6           # every class gets its share, not just one image
    assert torch.equal(idx, stratified_sample(y, 64, seed=3))
    assert not torch.equal(idx, stratified_sample(y, 64, seed=4))
    imbalanced = torch.cat([torch.zeros(500, dtype=torch.long), torch.arange(1, 10)])   # one image of 1..9
    assert set(imbalanced[stratified_sample(imbalanced, 20, seed=0)].tolist()) == set(range(10))


def test_model_classes_sets_the_label_of_each_class_folder(tmp_path):
    from edvit_tool.config import recipe as r
    from edvit_tool.compile.data import load_data

    root = _imagefolder(tmp_path / "imgs", n_per_class=10)
    (tmp_path / "classes.txt").write_text("\n".join(WORDS) + "\n")
    spec = {"shape": [1, 16, 16], "mean": [0.5], "std": [0.5]}
    rec = r.validate({"model": {"classes": str(tmp_path / "classes.txt")},
                      "data": {"kind": "imagefolder", "root": str(root)}})
    data = load_data(rec, spec, 10)
    assert data.classes == WORDS
    # the images of folder "three" are labelled 3 (its line in classes.txt), not 8 (its sorted position)
    from PIL import Image

    three = np.asarray(Image.open(root / "train" / "three" / "0.png"))
    splits = (data.finetune, data.fusion, data.val, data.test)
    allx = np.concatenate([sp.x.uint8()[..., 0] for sp in splits])
    ally = torch.cat([sp.y for sp in splits])
    hit = np.flatnonzero((allx == three).all(axis=(1, 2)))
    assert len(hit) >= 1 and set(ally[hit].tolist()) == {3}
    assert len(ally) == 100 and np.bincount(ally.numpy()).tolist() == [10] * 10


def test_a_folder_missing_from_classes_txt_is_named(tmp_path, ckpt, capsys):
    root = _imagefolder(tmp_path / "imgs", n_per_class=3)
    (tmp_path / "classes.txt").write_text("\n".join(WORDS[:9] + ["ten"]) + "\n")
    recipe = _recipe(tmp_path, ckpt, {"kind": "imagefolder", "root": str(root)}, classes=str(tmp_path / "classes.txt"))
    assert main(["compile", "--recipe", str(recipe), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("Error: ") and len(err.splitlines()) == 1
    assert "nine" in err and "classes.txt" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_a_permuted_head_stops_compile_with_the_classes_txt_to_write(tmp_path, ckpt, capsys):
    """Folders sorted alphabetically (eight, five, four, ...) against a head trained in digit order: compile stops
    before pruning, shows the permutation that fits and the classes.txt; with that file it compiles."""
    root = _imagefolder(tmp_path / "imgs")
    recipe = _recipe(tmp_path, ckpt, {"kind": "imagefolder", "root": str(root)})
    out = tmp_path / "o"
    assert main(["compile", "--recipe", str(recipe), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("Error: ")]
    assert len(errors) == 1 and err[-1] == errors[0], err     # progress lines above it, one error line last
    err = errors[0]
    assert "Write this classes.txt" in err and "model.classes" in err
    suggested = err.split("model.classes to it: ")[1].split(" (data.check_labels")[0].split(" | ")
    assert suggested == WORDS
    assert not out.exists()
    (tmp_path / "classes.txt").write_text("\n".join(suggested) + "\n")
    recipe = _recipe(tmp_path, ckpt, {"kind": "imagefolder", "root": str(root)},
                     classes=str(tmp_path / "classes.txt"))
    assert main(["compile", "--recipe", str(recipe), "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["original"]["accuracy"] > 0.5


def _npz(path, x, y, xt, yt):
    np.savez(path, x=x, y=y, x_test=xt, y_test=yt)
    return path


@pytest.mark.slow
def test_poisoned_test_labels_leave_the_build_identical(tmp_path, ckpt):
    """Every choice (fusion kind, gate, float fallback, calibration) is made without the test split: the same data
    with shuffled test labels gives byte-identical sub-models, fusion head and artifacts; only the reported
    figures change."""
    x, y = _digits()
    x = x.astype(np.float32) / 255.0
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(y))
    tr, te = perm[:1400], perm[1400:]
    poisoned = rng.permutation(y[te])
    builds = {}
    for name, yt in (("clean", y[te]), ("poisoned", poisoned)):
        npz = _npz(tmp_path / f"{name}.npz", x[tr], y[tr], x[te], yt)
        recipe = _recipe(tmp_path, ckpt, {"kind": "npz", "root": str(npz)})
        rec = yaml.safe_load(recipe.read_text())
        rec["export"] = {"formats": ["onnx"], "quant": ["fp32", "int8-static"], "calibration_samples": 32}
        recipe.write_text(yaml.safe_dump(rec))
        out = tmp_path / name
        assert main(["compile", "--recipe", str(recipe), "--out", str(out), "-q"]) in (0, 1)
        builds[name] = json.loads((out / "manifest.json").read_text())
    clean, bad = builds["clean"], builds["poisoned"]
    made = [f for f in clean["files"] if f.startswith(("submodels/", "fusion/", "reference/calib", "reference/val",
                                                       "reference/inputs", "reference/outputs"))]
    assert any(f.endswith(".onnx") for f in made) and "fusion/fusion.pt" in made
    for f in made:
        assert clean["files"][f] == bad["files"][f], f
    assert clean["fusion"]["kind"] == bad["fusion"]["kind"]
    # fusion.kind auto: the head with the best validation accuracy (ties: fewest fitted numbers) is the one built
    choice = clean["accuracy"]["fusion_choice"]
    assert {"logits_val", "ensemble_val", "mlp_val", "joint_val"} <= set(choice)
    assert choice["kind"] == max(("logits", "ensemble", "mlp", "joint"), key=lambda k: choice[f"{k}_val"])
    # the jointly trained head is an MLP in the build
    assert clean["fusion"]["kind"] == {"joint": "mlp"}.get(choice["kind"], choice["kind"])
    strip = lambda arts: [{k: v for k, v in a.items() if k != "reference"} for a in arts]  # noqa: E731
    assert strip(clean["artifacts"]) == strip(bad["artifacts"])
    assert clean["accuracy"]["fused"] != bad["accuracy"]["fused"]    # the report did read the (poisoned) labels
