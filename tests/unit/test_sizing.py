"""Heterogeneous boards: the latency model (cluster/latency_model.py), capacity-aware sizing (compile/sizing.py)
and assign keeping the sized pairing. Pure: synthetic latencies from a known linear law, a real timm ViT
structure for the planner, scipy's HiGHS for assign."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from edvit_tool.compile.checkpoint import create_model
from edvit_tool.cluster import assign as A
from edvit_tool.cluster import latency_model as lm
from edvit_tool.compile import ladder, sizing
from edvit_tool.config import recipe as R
from edvit_tool.errors import EdvitError, RecipeError
from edvit_tool.compile.prune import surgery

KW = {"img_size": 16, "patch_size": 2, "in_chans": 1, "num_classes": 10, "embed_dim": 96, "depth": 4,
      "num_heads": 4}  # the digits demo's ViT with 2x2 patches (65 tokens): fine-grained enough to balance
LAW = np.array([0.01, 0.002, 1 / 40, 1 / 25, 0.002])  # ms per TERMS unit: a made-up but fixed board


@pytest.fixture(scope="module")
def vit():
    return create_model("vit_tiny_patch16_224", KW)


def _rows(model, rungs=ladder.RUNGS):
    geo = lm.geometry_of_model(model)
    base = surgery.vit_arch(model)
    return [lm.structure_terms(ladder.rung_arch(base, *r, 11), geo) for r in rungs]


def test_fitted_model_predicts_held_out_structures_of_a_linear_law(vit):
    rows = _rows(vit)
    ms = [float(r @ LAW) for r in rows]
    model = lm.LatencyModel.fit(rows[:8], ms[:8])
    assert np.all(model.coef >= 0)
    errors = lm.relative_errors(model, rows[8:], ms[8:])
    assert np.max(np.abs(errors)) < 0.02


def test_latency_grows_with_every_width(vit):
    geo = lm.geometry_of_model(vit)
    base = surgery.vit_arch(vit)
    model = lm.LatencyModel(LAW)
    ref = model.predict(lm.structure_terms(ladder.rung_arch(base, 0.5, 0.5, 0.5, 11), geo))
    for bigger in ((0.75, 0.5, 0.5), (0.5, 1.0, 0.5), (0.5, 0.5, 1.0)):
        assert model.predict(lm.structure_terms(ladder.rung_arch(base, *bigger, 11), geo)) > ref


def test_geometry_from_the_manifest_matches_the_model(vit):
    man = {"model": {"name": "vit_tiny_patch16_224", "kwargs": KW}, "input": {"shape": [1, 16, 16]}}
    assert lm.geometry_of_manifest(man) == lm.geometry_of_model(vit)


def test_boards_get_own_scaled_or_speed_models(vit):
    rows = _rows(vit)
    fast = [(r, float(r @ LAW)) for r in rows[:8]]
    slow_one = [(rows[0], 2 * float(rows[0] @ LAW))]
    models = lm.fit_boards({"fast": fast, "slow": slow_one}, {"fast": 1.0, "slow": 0.5, "slowest": 0.25})
    assert [models[b].source for b in ("fast", "slow", "slowest")] == ["fitted", "scaled", "speed"]
    probe = rows[5]
    t_fast, t_slow, t_slowest = (float(models[b].predict(probe)) for b in ("fast", "slow", "slowest"))
    assert t_slow == pytest.approx(2 * t_fast, rel=0.05)
    assert t_slowest == pytest.approx(4 * t_fast, rel=0.05)


def test_balance_equalises_predicted_latency_at_the_same_total(vit):
    models = {"x1": lm.LatencyModel(LAW), "x05": lm.LatencyModel(2 * LAW), "x025": lm.LatencyModel(4 * LAW)}
    total = 3 * surgery.count_params(vit) // 4
    budgets = sizing.balance(sizing.latency_curves(vit, models), total)
    budgets = sizing.balance(sizing.latency_curves(vit, models, around=budgets), total)
    assert budgets["x1"] > budgets["x05"] > budgets["x025"]
    assert sum(budgets.values()) == pytest.approx(total, rel=0.01)
    geo = lm.geometry_of_model(vit)
    pred = [float(models[b].predict(lm.structure_terms(sizing.representative_arch(vit, p), geo)))
            for b, p in budgets.items()]
    assert max(pred) / min(pred) - 1 < sizing.TOLERANCE


@pytest.mark.parametrize("weights,n", [([5, 2, 1], 10), ([1, 1, 1], 10), ([100, 1, 1], 3), ([1, 3], 7)])
def test_classes_are_shared_by_weight_at_least_one_each(weights, n):
    counts = sizing.share_classes(n, weights)
    assert sum(counts) == n and min(counts) >= 1
    for i in range(len(weights)):
        for j in range(len(weights)):
            if weights[i] > weights[j]:
                assert counts[i] >= counts[j]


def _boards_yaml(tmp_path, speeds):
    lines = ["boards:"]
    for i, s in enumerate(speeds):
        prof = tmp_path / f"p{i}.yaml"
        prof.write_text(f"name: p{i}\narch: x86_64\ncores: 1\nmemory_mb: 4096\nmemory_budget_mb: 1024\n"
                        f"preferred_backend: onnxruntime\nthreads: 1\nspeed: {s}\n")
        lines.append(f"  - {{name: b{i}, host: 127.0.0.1, port: {2200 + i}, user: pi, worker_port: {8600 + i}, "
                     f"device_profile: {prof}}}")
    path = tmp_path / "boards.yaml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _recipe(boards_path, **split):
    return R.validate({"model": {"name": "vit_tiny_patch16_224", "kwargs": KW},
                       "split": {"groups": 3, "boards": boards_path, **split},
                       "prune": {"target": {"params_ratio": 0.25}}})


def test_device_profile_speeds_size_the_faster_board_bigger(vit, tmp_path):
    rec = _recipe(_boards_yaml(tmp_path, [0.25, 1.0, 0.5]))
    s = sizing.size_for_boards(rec, vit, 10, 3, int(0.25 * surgery.count_params(vit)))
    assert s.boards == ["b0", "b1", "b2"]
    t = dict(zip(s.boards, s.params_targets))
    n = dict(zip(s.boards, map(len, s.groups)))
    assert t["b1"] > t["b2"] > t["b0"] and n["b1"] >= n["b2"] >= n["b0"]
    assert sorted(c for g in s.groups for c in g) == list(range(10))
    assert s.spread < sizing.TOLERANCE
    assert max(s.predicted_ms) < max(s.uniform_predicted_ms)
    d = s.to_dict()
    assert d["pairing"] == {"g0": "b0", "g1": "b1", "g2": "b2"}
    json.dumps(d)


def test_sizing_refuses_a_board_count_other_than_k(vit, tmp_path):
    rec = _recipe(_boards_yaml(tmp_path, [1.0, 0.5]))
    with pytest.raises(RecipeError, match="has 2 boards but split.groups is 3"):
        sizing.size_for_boards(rec, vit, 10, 3, 1000)


def test_profiles_from_a_ladder_build_feed_the_boards_models(vit, tmp_path):
    geo_man = {"model": {"name": "vit_tiny_patch16_224", "kwargs": KW}, "input": {"shape": [1, 16, 16]}}
    base = surgery.vit_arch(vit)
    subs, arts, results = [], [], []
    for i, r in enumerate(ladder.RUNGS[:8]):
        arch = ladder.rung_arch(base, *r, 11)
        subs.append({"name": f"l{i}", "arch": arch})
        arts.append({"name": f"l{i}", "format": "onnx", "quant": "fp32", "sha256": f"sha{i}"})
        ms = float(lm.structure_terms(arch, lm.geometry_of_model(vit)) @ LAW)
        for board, factor in (("b0", 4.0), ("b1", 1.0)):
            results.append({"board": board, "sha256": f"sha{i}", "usable": True,
                            "latency_ms": {"p50": ms * factor, "mean": ms * factor * 1.1}})
    man = {**geo_man, "submodels": subs, "artifacts": arts}
    samples, used = lm.samples_from_profiles({"results": results}, [man], "mean")
    assert used == {"b0": "onnx/fp32", "b1": "onnx/fp32"} and len(samples["b0"]) == 8
    models = lm.fit_boards(samples)
    probe = _rows(vit)[10]
    assert float(models["b0"].predict(probe)) == pytest.approx(4 * float(models["b1"].predict(probe)), rel=0.05)


def test_assign_keeps_the_sized_pairing_where_free_placement_would_not():
    t = {"g0": {"fast": 1.0, "slow": 3.0}, "g1": {"fast": 1.0, "slow": 1.5}}
    m = {s: {d: 1.0 for d in row} for s, row in t.items()}
    free = A.solve_exact(list(t), ["fast", "slow"], t, m, {"fast": 10, "slow": 10})
    assert free.assignment == {"g0": ["fast"], "g1": ["slow"]}
    pairs = sizing.pairing({"sizing": {"pairing": {"g0": "slow", "g1": "fast"}}})
    pinned = sizing.pin_to_pairing(t, pairs, ["fast", "slow"], "boards.yaml")
    plan = A.solve_exact(list(t), ["fast", "slow"], pinned, m, {"fast": 10, "slow": 10})
    assert plan.assignment == {"g0": ["slow"], "g1": ["fast"]} and math.isfinite(plan.makespan_ms)


def test_assign_pairing_with_a_board_missing_names_it():
    with pytest.raises(EdvitError, match="sized for board.*pi-9.*--ignore-sizing"):
        sizing.pin_to_pairing({"g0": {"a": 1.0}}, {"g0": "pi-9"}, ["a"], "boards.yaml")


def test_device_profile_speed_must_be_positive():
    from edvit_tool.config.device_profile import validate_profile

    base = {"name": "x", "arch": "x86_64", "cores": 1, "memory_mb": 10, "memory_budget_mb": 5,
            "preferred_backend": "onnxruntime", "threads": 1}
    assert validate_profile({**base, "speed": 2.5}, "p.yaml") == []
    assert any("speed must be a positive number" in p for p in validate_profile({**base, "speed": 0}, "p.yaml"))


def test_near_identical_structures_give_a_scale_not_a_fit(vit):
    """Six sub-models of one uniform build differ by a few neurons: fitting five terms on them would extrapolate
    from noise, so each board gets a MACs-proportional shape times its measured scale."""
    geo = lm.geometry_of_model(vit)
    base = surgery.vit_arch(vit)
    rows = [lm.structure_terms(ladder.rung_arch(base, 0.5, 0.5, 0.25 + 0.004 * i, 5), geo) for i in range(6)]
    rng = np.random.default_rng(0)
    samples = {"a": [(r, float(r @ LAW) * (1 + 0.1 * rng.standard_normal())) for r in rows],
               "b": [(r, 3 * float(r @ LAW)) for r in rows]}
    models = lm.fit_boards(samples)
    assert {m.source for m in models.values()} == {"scaled"}
    big = lm.structure_terms(base | {"num_outputs": 5}, geo)
    assert float(models["b"].predict(big)) == pytest.approx(3 * float(models["a"].predict(big)), rel=0.2)
    assert float(models["a"].predict(big)) > float(models["a"].predict(rows[0]))


def test_compile_with_a_board_count_other_than_k_fails_before_any_work(tmp_path, capsys):
    from edvit_tool.cli.main import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {checkpoint: none.safetensors}\n")
    assert main(["compile", "--recipe", str(recipe), "-k", "3", "--boards", _boards_yaml(tmp_path, [1.0, 0.5])]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and "has 2 boards but split.groups is 3; one sub-model per board: pass -k 2" in err
