"""Heterogeneous boards end to end (issue 13 item 2) on two real loopback SSH boards, one at a full core and one
at 25 % of a core: a latency ladder profiled on both → `compile --boards --profiles` gives the faster board the
bigger sub-model (and at least as many classes) → `profile` + `assign` keep each sub-model on the board it was
sized for. An untrained (random-weight) tiny ViT: sizes and latency do not depend on the weights. ~1-2 min.
"""

from __future__ import annotations

import json
import os

import pytest
import yaml

from edvit_tool.cli.main import main

KW = {"img_size": 16, "patch_size": 2, "in_chans": 1, "num_classes": 10, "embed_dim": 64, "depth": 2,
      "num_heads": 4}
NAMES = ["fast", "slow"]


def _boards_yaml(tmp_path, boards):
    from boards import write_boards_yaml

    return write_boards_yaml(str(tmp_path / "boards.yaml"), NAMES, boards, cores=1)


def _recipe(tmp_path) -> str:
    from safetensors.torch import save_file

    from edvit_tool.compile.checkpoint import create_model

    ckpt = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in create_model("vit_tiny_patch16_224", KW).state_dict().items()},
              str(ckpt))
    rec = {"name": "hetero", "threads": 1, "device": "cpu",
           "model": {"name": "vit_tiny_patch16_224", "kwargs": KW, "checkpoint": str(ckpt)},
           "data": {"kind": "digits", "mean": [0.5], "std": [0.5], "check_labels": False},
           "split": {"groups": 2, "latency_stat": "mean"},
           "prune": {"steps": 1, "recovery_steps": 0, "importance_batches": 1, "target": {"params_ratio": 0.3}},
           "finetune": {"steps": 5}, "fusion": {"kind": "logits", "augment_views": 0},
           "export": {"formats": ["onnx"], "quant": ["fp32"]},
           "gate": {"max_accuracy_drop_pp": 100.0, "max_quant_drop_pp": 100.0}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(rec))
    return str(path)


def _assert_report_shows_sizing(build: str, sizing: dict) -> None:
    """compile's report.html has the sizing section: its plot (decodes, not blank) and each board's budget."""
    import numpy as np
    from PIL import Image

    text = open(os.path.join(build, "report.html"), encoding="utf-8").read()
    assert "Sized for the boards" in text
    for board, budget in zip(sizing["boards"], sizing["params_targets"]):
        assert board in text and f"{budget:,}" in text
    px = np.asarray(Image.open(os.path.join(build, "report-plots", "sizing.png")).convert("RGB"), dtype=np.float32)
    assert px.shape[0] > 100 and px.std() > 0


@pytest.mark.slow
def test_sizing_gives_the_faster_board_the_bigger_submodel_and_assign_keeps_the_pairing(boards, tmp_path):
    from edvit_tool.compile import ladder
    from edvit_tool.config import recipe as R

    recipe = _recipe(tmp_path)
    lad = str(tmp_path / "ladder")
    ladder.write_ladder(R.load(recipe), lad, rungs=ladder.RUNGS[:7])  # 7 widths: enough for a board's own fit
    bs = boards(2, cpu_quota=[None, 0.25])
    byaml = _boards_yaml(tmp_path, bs)
    lp = str(tmp_path / "ladder-profiles.json")
    assert main(["profile", "--boards", byaml, "--build", lad, "--runs", "40", "--no-link", "--out", lp,
                 "--known-hosts", bs[0].known_hosts]) == 0

    build = str(tmp_path / "build")
    assert main(["compile", "--recipe", recipe, "--out", build, "-k", "2", "--boards", byaml, "--profiles", lp,
                 "-q"]) == 0
    with open(os.path.join(build, "manifest.json")) as f:
        man = json.load(f)
    sizing = man["sizing"]
    assert sizing["pairing"] == {"g0": "fast", "g1": "slow"}
    assert [m["source"] for m in sizing["models"].values()] == ["fitted", "fitted"]
    subs = {sm["name"]: sm for sm in man["submodels"]}
    assert subs["g0"]["params"] > subs["g1"]["params"]
    assert len(subs["g0"]["classes"]) >= len(subs["g1"]["classes"])
    assert sizing["predicted_ms"][0] < sizing["uniform_predicted_ms"][1]  # sized beats uniform on the slow one
    _assert_report_shows_sizing(build, sizing)

    prof = str(tmp_path / "profiles.json")
    assert main(["profile", "--boards", byaml, "--build", build, "--artifacts", "g0,g1", "--runs", "5",
                 "--no-link", "--out", prof, "--known-hosts", bs[0].known_hosts]) == 0
    plan = str(tmp_path / "plan.json")
    assert main(["assign", "--build", build, "--profiles", prof, "--boards", byaml, "--out", plan]) == 0
    with open(plan) as f:
        doc = json.load(f)
    assert doc["sized_for"] == {"g0": "fast", "g1": "slow"}
    assert {p["submodel"]: p["board"] for p in doc["placements"]} == {"g0": "fast", "g1": "slow"}
