"""Placement solvers, the cost matrix from profiles, and `edvit-tool assign` (fast: ~10 s in all)."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edvit_tool.cluster import assign as A
from edvit_tool.config.boards import Board, boards_from_yaml, validate_plan_boards
from edvit_tool.errors import EdvitError

INF = math.inf


# ---------------------------------------------------------------------------------------------------------
# helpers

def brute_force(subs, boards, t, m, M, c, R):
    """Least makespan over every assignment (None if none fits)."""
    best = None
    per_sub = [list(itertools.combinations(boards, R)) for _ in subs]
    for combo in itertools.product(*per_sub):
        assignment = dict(zip(subs, combo))
        if any(not math.isfinite(t[s][d]) for s, ds in assignment.items() for d in ds):
            continue
        per, makespan, mem = A.evaluate(assignment, boards, t, m, c)
        if all(mem[d] <= M[d] + 1e-9 for d in boards):
            best = makespan if best is None else min(best, makespan)
    return best


def check_plan(plan, subs, boards, t, m, M, c, R):
    for s in subs:
        assert len(plan.assignment[s]) == R and len(set(plan.assignment[s])) == R
        assert all(math.isfinite(t[s][d]) for d in plan.assignment[s])
    per, makespan, mem = A.evaluate(plan.assignment, boards, t, m, c)
    assert all(mem[d] <= M[d] * (1 + 1e-6) + 1e-6 for d in boards)
    assert makespan == pytest.approx(plan.makespan_ms)


@st.composite
def instances(draw, max_k=4, max_d=3, max_r=2, allow_inf=True):
    K = draw(st.integers(1, max_k))
    D = draw(st.integers(1, max_d))
    R = draw(st.integers(1, min(D, max_r)))
    subs = [f"g{i}" for i in range(K)]
    boards = [f"b{j}" for j in range(D)]
    times = st.floats(0.1, 100, allow_nan=False)
    # about 1 pair in 8 cannot run (no usable variant there)
    maybe = st.tuples(times, st.integers(0, 7)).map(lambda v: INF if v[1] == 0 else v[0])
    t = {s: {d: draw(maybe if allow_inf else times) for d in boards} for s in subs}
    m = {s: {d: draw(st.floats(1, 100, allow_nan=False)) for d in boards} for s in subs}
    M = {d: draw(st.floats(0, 150 * K, allow_nan=False)) for d in boards}
    c = {d: draw(st.sampled_from([0.0, 0.5, 3.0])) for d in boards}
    return subs, boards, t, m, M, c, R


# ---------------------------------------------------------------------------------------------------------
# solvers

@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instances())
def test_exact_equals_brute_force_on_small_instances(inst):
    subs, boards, t, m, M, c, R = inst
    best = brute_force(subs, boards, t, m, M, c, R)
    if best is None:
        with pytest.raises(EdvitError):
            A.solve_exact(subs, boards, t, m, M, c, R)
        return
    plan = A.solve_exact(subs, boards, t, m, M, c, R)
    check_plan(plan, subs, boards, t, m, M, c, R)
    assert plan.optimal and plan.solver == "milp-highs"
    assert plan.makespan_ms == pytest.approx(best, rel=1e-7, abs=1e-7)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instances(max_k=8, max_d=5, max_r=3, allow_inf=False))
def test_exact_is_never_worse_than_greedy(inst):
    subs, boards, t, m, M, c, R = inst
    try:
        greedy = A.solve_greedy(subs, boards, t, m, M, c, R)
    except EdvitError:
        return  # greedy stuck: says nothing about optimality
    check_plan(greedy, subs, boards, t, m, M, c, R)
    exact = A.solve_exact(subs, boards, t, m, M, c, R)  # greedy found one, so one exists
    check_plan(exact, subs, boards, t, m, M, c, R)
    assert exact.makespan_ms <= greedy.makespan_ms * (1 + 1e-7) + 1e-7


def test_greedy_can_be_beaten_and_transfer_is_paid_once_per_used_board():
    t = {"g0": {"a": 10, "b": 12}, "g1": {"a": 8, "b": 9}, "g2": {"a": 5, "b": 6}}
    m = {s: {"a": 100, "b": 100} for s in t}
    M = {"a": 250, "b": 250}
    c = {"a": 1.0, "b": 1.0}
    exact = A.solve_exact(list(t), ["a", "b"], t, m, M, c)
    greedy = A.solve_greedy(list(t), ["a", "b"], t, m, M, c)
    # heaviest first: g0 -> a (11), g1 -> b (10), g2 -> b would be 16 vs a 16: tie on finish, a is faster for g2
    assert greedy.assignment == {"g0": ["a"], "g1": ["b"], "g2": ["a"]}
    assert greedy.makespan_ms == pytest.approx(16.0)
    assert exact.assignment == {"g0": ["b"], "g1": ["a"], "g2": ["a"]}
    assert exact.makespan_ms == pytest.approx(14.0)
    assert exact.per_board_ms == {"a": 14.0, "b": 13.0}
    assert exact.memory_mb == {"a": 200.0, "b": 100.0}


def test_time_limit_returns_a_valid_placement_no_worse_than_greedy_and_says_so():
    subs, boards = [f"g{i}" for i in range(16)], [f"b{j}" for j in range(8)]
    t = {s: {d: 5.0 + 3 * i for d in boards} for i, s in enumerate(subs)}   # identical boards: many ties
    m = {s: {d: 10.0 for d in boards} for s in subs}
    M = {d: 100.0 for d in boards}
    plan = A.solve_exact(subs, boards, t, m, M, None, 1, time_limit_s=0.001)
    check_plan(plan, subs, boards, t, m, M, {}, 1)
    assert not plan.optimal and "limit" in plan.solver
    assert plan.makespan_ms <= A.solve_greedy(subs, boards, t, m, M).makespan_ms + 1e-9


def test_unused_board_pays_no_transfer_and_inf_latency_forbids_a_board():
    t = {"g0": {"a": 1.0, "b": INF}}
    plan = A.solve_exact(["g0"], ["a", "b"], t, {"g0": {"a": 1, "b": 1}}, {"a": 10, "b": 10}, {"a": 0, "b": 50})
    assert plan.assignment == {"g0": ["a"]}
    assert plan.per_board_ms == {"a": 1.0, "b": 0.0}


def test_replicas_go_on_distinct_boards():
    subs, boards = ["g0", "g1", "g2"], ["a", "b", "c"]
    t = {s: {"a": 3.0, "b": 4.0, "c": 5.0} for s in subs}
    m = {s: {d: 10.0 for d in boards} for s in subs}
    M = {d: 100.0 for d in boards}
    for R in (1, 2, 3):
        for solve in (A.solve_exact, A.solve_greedy):
            plan = solve(subs, boards, t, m, M, None, R)
            check_plan(plan, subs, boards, t, m, M, {}, R)
    assert A.solve_exact(subs, boards, t, m, M, None, 3).makespan_ms == pytest.approx(15.0)


def test_memory_shortfall_names_submodel_board_and_megabytes():
    t = {"g0": {"pi-1": 5, "pi-2": 5}, "g2": {"pi-1": 5, "pi-2": 5}}
    m = {"g0": {"pi-1": 50, "pi-2": 50}, "g2": {"pi-1": 210, "pi-2": 210}}
    M = {"pi-1": 100, "pi-2": 180}
    for solve in (A.solve_exact, A.solve_greedy):
        with pytest.raises(EdvitError, match=r"g2 needs 210 MB but the largest budget is 180 MB on pi-2 "
                                             r"\(short by 30 MB\)"):
            solve(["g0", "g2"], ["pi-1", "pi-2"], t, m, M)


def test_joint_memory_shortfall_names_what_is_left():
    subs, boards = ["g0", "g1", "g2"], ["pi-1", "pi-2"]
    t = {s: {d: 1.0 for d in boards} for s in subs}
    m = {s: {d: 100.0 for d in boards} for s in subs}
    with pytest.raises(EdvitError) as err:
        A.solve_exact(subs, boards, t, m, {"pi-1": 150, "pi-2": 120})
    msg = str(err.value)
    assert "needs 100 MB but the largest budget left is 50 MB on pi-1 (short by 50 MB)" in msg
    assert "in all they need at least 300 MB but the boards have 270 MB (short by 30 MB)" in msg


def test_replica_shortfall_names_the_boards_that_can_hold_it():
    boards = ["pi-1", "pi-2", "pi-3"]
    t = {"g1": {d: 1.0 for d in boards}}
    m = {"g1": {"pi-1": 50, "pi-2": 50, "pi-3": 90}}
    M = {"pi-1": 100, "pi-2": 100, "pi-3": 70}
    with pytest.raises(EdvitError, match=r"replicas=3 but only 2 board\(s\) can hold g1 \(pi-1, pi-2; "
                                         r"pi-3 short by 20 MB\)"):
        A.solve_exact(["g1"], boards, t, m, M, replicas=3)
    with pytest.raises(EdvitError, match="replicas=4 but there are only 3 board"):
        A.solve_exact(["g1"], boards, t, m, M, replicas=4)


def test_submodel_that_runs_nowhere_is_named():
    with pytest.raises(EdvitError, match="g0 cannot run on any board"):
        A.solve_exact(["g0"], ["a"], {"g0": {"a": INF}}, {"g0": {"a": 1}}, {"a": 10})


# ---------------------------------------------------------------------------------------------------------
# cost matrix from profiles

def _sha(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()


def _art(name, fmt, quant, nbytes=4 << 20, status="ok"):
    return {"name": name, "file": f"submodels/{name}.{quant}.{fmt}", "format": fmt, "quant": quant,
            "bytes": nbytes, "sha256": _sha(f"{name}{fmt}{quant}"), "inputs": [], "outputs": [],
            "status": status}


def _board(name, budget=512.0, cores=4, port=2201) -> Board:
    return Board(name=name, host="127.0.0.1", port=port, user="pi", identity=None, device_profile="tiny",
                 device_profile_path="/dev/null", memory_budget_mb=budget, cores=cores, threads=None,
                 preferred_backend=None, python="python3", address="127.0.0.1", worker_port=port + 6000)


def _result(board, art, p50, rss, usable=True):
    return {"board": board, "artifact": f"{art['name']}:{art['format']}/{art['quant']}", "name": art["name"],
            "format": art["format"], "quant": art["quant"], "sha256": art["sha256"], "bytes": art["bytes"],
            "load_ms": 3.0, "latency_ms": {"p50": p50, "p90": p50 * 1.1, "p99": p50 * 1.3, "mean": p50},
            "peak_rss_mb": rss, "backend": "onnxruntime", "parity": {"ok": usable}, "usable": usable}


@pytest.fixture
def build_and_profiles():
    arts = {
        "g0/fp32": _art("g0", "onnx", "fp32"),
        "g0/int8": _art("g0", "onnx", "int8-static", 1 << 20),
        "g0/tflite": _art("g0", "tflite", "fp32", status="failed"),
        "g1/fp32": _art("g1", "onnx", "fp32"),
        "g1/int8": _art("g1", "onnx", "int8-dynamic", 1 << 20),
    }
    manifest = {"input": {"shape": [3, 16, 16]},
                "submodels": [{"name": "g0", "flops": 2_000_000}, {"name": "g1", "flops": 1_000_000}],
                "artifacts": list(arts.values())}
    results = [
        _result("pi-1", arts["g0/fp32"], 10.0, 90.0),
        _result("pi-1", arts["g0/int8"], 4.0, 70.0, usable=False),     # faster but failed parity
        _result("pi-1", arts["g0/tflite"], 1.0, 60.0),                  # failed in the build: never chosen
        _result("pi-1", arts["g1/fp32"], 6.0, 85.0),
        _result("pi-1", arts["g1/int8"], 3.0, 75.0),                    # fastest usable
        _result("pi-2", arts["g0/fp32"], 20.0, 100.0),                  # g1 not profiled on pi-2
        _result("pi-3", arts["g0/fp32"], 5.0, 80.0, usable=False),
        _result("pi-3", arts["g0/int8"], 4.0, 80.0, usable=False),      # g0: every variant failed on pi-3
        _result("pi-3", {**arts["g1/fp32"], "sha256": _sha("stale")}, 0.1, 1.0),  # another build's g1
    ]
    profiles = {"schema_version": 1,
                "boards": {"pi-1": {"target": "pi@h:1", "reachable": True, "error": None, "probe": {}}},
                "results": results}
    return manifest, profiles, arts


def test_costs_pick_the_fastest_usable_variant_and_label_estimates(build_and_profiles):
    manifest, profiles, arts = build_and_profiles
    boards = [_board("pi-1"), _board("pi-2", port=2202), _board("pi-3", cores=2, port=2203)]
    costs = A.costs_from_profiles(manifest, profiles, boards)

    g0 = costs.choices[("g0", "pi-1")]
    assert (g0.variant, g0.latency_ms, g0.memory_mb, g0.estimated) == ("onnx/fp32", 10.0, 90.0, False)
    g1 = costs.choices[("g1", "pi-1")]
    assert (g1.variant, g1.latency_ms, g1.memory_mb, g1.estimated) == ("onnx/int8-dynamic", 3.0, 75.0, False)
    assert costs.choices[("g0", "pi-2")].estimated is False

    est = costs.choices[("g1", "pi-2")]   # pi-2 ran 2 MFLOP of g0/fp32 in 20 ms -> 0.1 MFLOP/ms
    assert est.estimated and "not profiled on pi-2" in est.note
    assert est.variant == "onnx/fp32"  # the variant whose rate was measured on this board
    assert est.latency_ms == pytest.approx(1_000_000 / (2_000_000 / 20.0))
    assert est.memory_mb == pytest.approx(4.0 + (100.0 - 4.0))  # artifact + pi-2's measured overhead

    assert ("g0", "pi-3") not in costs.choices
    assert "failed parity on pi-3" in costs.excluded[("g0", "pi-3")]
    assert costs.t["g0"]["pi-3"] == INF
    g1_pi3 = costs.choices[("g1", "pi-3")]   # only a stale measurement: estimated from per-core rates
    assert g1_pi3.estimated and "per core" in g1_pi3.note
    assert any("not in this build" in n for n in costs.notes)
    assert any(n.startswith("g0 will not be placed on pi-3: every variant failed parity") for n in costs.notes)

    assert all(ch.artifact["status"] != "failed" for ch in costs.choices.values())
    assert costs.budgets_mb == {"pi-1": 512.0, "pi-2": 512.0, "pi-3": 512.0}


def test_costs_prefer_filters_variants_and_bad_profiles_are_rejected(build_and_profiles):
    manifest, profiles, _ = build_and_profiles
    costs = A.costs_from_profiles(manifest, profiles, [_board("pi-1")], prefer="onnx/fp32")
    assert costs.choices[("g1", "pi-1")].variant == "onnx/fp32"
    with pytest.raises(EdvitError, match="g0 has no usable artifact matching --prefer tflite"):
        A.costs_from_profiles(manifest, profiles, [_board("pi-1")], prefer="tflite")
    bad = {"schema_version": 1, "results": [{"board": "pi-1", "sha256": "x", "usable": True}]}
    with pytest.raises(EdvitError, match=r"p.json: results\[0\].latency_ms.p50 must be a number"):
        A.costs_from_profiles(manifest, bad, [_board("pi-1")], source="p.json")


def test_costs_without_any_measurement_fall_back_to_cores(build_and_profiles):
    manifest, _, _ = build_and_profiles
    empty = {"schema_version": 1, "boards": {}, "results": []}
    costs = A.costs_from_profiles(manifest, empty, [_board("a", cores=4), _board("b", cores=1, port=2202)])
    a, b = costs.choices[("g0", "a")], costs.choices[("g0", "b")]
    assert a.estimated and b.estimated and "default rate" in a.note
    assert b.latency_ms == pytest.approx(4 * a.latency_ms)
    assert a.variant == "onnx/fp32"  # without measurements the safest variant
    assert a.memory_mb == pytest.approx(4.0 + A.DEFAULT_RSS_OVERHEAD_MB)
    assert sum("has no measurements in the profiles" in n for n in costs.notes) == 2


# ---------------------------------------------------------------------------------------------------------
# CLI

def _write_build(root):
    """A hand-written but schema-valid build: 3 sub-models with real files whose sha256 the manifest records."""
    from edvit_tool.artifacts import write_manifest

    os.makedirs(root / "submodels")
    arts = []
    for k in range(3):
        for quant in ("fp32", "int8-static"):
            rel = f"submodels/g{k}.{quant}.onnx"
            data = os.urandom(100_000 if quant == "fp32" else 30_000)
            (root / rel).write_bytes(data)
            arts.append({"name": f"g{k}", "file": rel, "format": "onnx", "quant": quant, "bytes": len(data),
                         "sha256": hashlib.sha256(data).hexdigest(),
                         "inputs": [{"name": "pixel_values", "shape": [-1, 1, 16, 16], "dtype": "float32"}],
                         "outputs": [{"name": "features", "shape": [-1, 8], "dtype": "float32"}],
                         "status": "ok"})
    manifest = {"schema_version": 1,
                "input": {"name": "pixel_values", "shape": [1, 16, 16], "mean": [0.5], "std": [0.5]},
                "classes": [str(i) for i in range(6)], "groups": [[0, 1], [2, 3], [4, 5]],
                "submodels": [{"name": f"g{k}", "group": k, "classes": [2 * k, 2 * k + 1], "feature_dim": 8,
                               "num_outputs": 3, "flops": 1_000_000 * (k + 1)} for k in range(3)],
                "fusion": {"kind": "mlp", "input_dims": [8, 8, 8]},
                "artifacts": arts}
    write_manifest(str(root), manifest)
    return manifest


def _write_cluster(tmp_path, budget_mb):
    (tmp_path / "tiny.yaml").write_text(f"name: tiny\narch: aarch64\ncores: 4\nmemory_mb: 1024\n"
                                        f"memory_budget_mb: {budget_mb}\npreferred_backend: onnxruntime\n"
                                        "threads: 4\n")
    (tmp_path / "boards.yaml").write_text("boards:\n" + "".join(
        f"  - {{name: pi-{j}, host: 127.0.0.1, port: {2200 + j}, user: pi, device_profile: tiny.yaml, "
        f"worker_port: {8500 + j}}}\n" for j in (1, 2)))
    return str(tmp_path / "boards.yaml")


def _write_profiles(tmp_path, manifest):
    results = []
    for art in manifest["artifacts"]:
        k = int(art["name"][1])
        int8 = art["quant"] == "int8-static"
        # g2 is not profiled on pi-2; g0's int8 fails parity on pi-1
        for board, speed in (("pi-1", 1.0), ("pi-2", 2.0)):
            if board == "pi-2" and k == 2:
                continue
            usable = not (board == "pi-1" and k == 0 and int8)
            results.append(_result(board, art, (k + 1) * speed * (0.5 if int8 else 1.0), 60.0 + k, usable))
    path = tmp_path / "profiles.json"
    path.write_text(json.dumps({"schema_version": 1, "boards": {}, "results": results}))
    return str(path)


def _run(argv, capsys):
    from edvit_tool.cli.main import main

    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_assign_writes_a_valid_plan(tmp_path, capsys):
    build = tmp_path / "build"
    manifest = _write_build(build)
    boards_file = _write_cluster(tmp_path, 512)
    profiles = _write_profiles(tmp_path, manifest)
    out = tmp_path / "plans" / "plan.json"
    code, stdout, stderr = _run(["assign", "--build", str(build), "--profiles", profiles, "--boards", boards_file,
                                 "--replicas", "1", "--out", str(out)], capsys)
    assert code == 0, stderr
    plan = json.loads(out.read_text())
    assert plan["schema_version"] == 1 and plan["solver"] == "milp-highs" and plan["replicas"] == 1
    from edvit_tool.runtime.manifest import sha256_file
    assert plan["build"]["manifest_sha256"] == sha256_file(str(build / "manifest.json"))
    assert sorted(p["submodel"] for p in plan["placements"]) == ["g0", "g1", "g2"]
    by_sm = {p["submodel"]: p for p in plan["placements"]}
    shas = {a["sha256"]: a for a in manifest["artifacts"]}
    for p in plan["placements"]:
        art = shas[p["sha256"]]
        assert art["file"] == p["artifact"] and art["name"] == p["submodel"]
        assert (build / p["artifact"]).is_file()
        assert p["board"] in plan["boards"]
    if by_sm["g0"]["board"] == "pi-1":
        assert by_sm["g0"]["quant"] == "fp32"  # int8 failed parity there
    assert by_sm["g2"]["estimated"] is (by_sm["g2"]["board"] == "pi-2")
    assert plan["makespan_ms"] <= plan["greedy_makespan_ms"] + 1e-9
    assert plan["makespan_ms"] == pytest.approx(max(b["predicted_ms"] for b in plan["boards"].values()))
    for info in plan["boards"].values():
        assert info["memory_mb"] <= info["memory_budget_mb"] and info["target"].startswith("pi@127.0.0.1:")
    assert "greedy/exact" in stdout and "makespan (exact, milp-highs)" in stdout
    validate_plan_boards(plan, boards_from_yaml(boards_file))
    assert not [f for f in os.listdir(out.parent) if f != "plan.json"]  # no temp files left behind

    code, stdout, _ = _run(["assign", "--build", str(build), "--profiles", profiles, "--boards", boards_file,
                            "--replicas", "2", "--out", str(out), "--json"], capsys)
    assert code == 0
    plan2 = json.loads(stdout)
    assert plan2 == json.loads(out.read_text())
    for s in ("g0", "g1", "g2"):
        assert sorted(p["board"] for p in plan2["placements"] if p["submodel"] == s) == ["pi-1", "pi-2"]
    (g2_pi2,) = [p for p in plan2["placements"] if p["submodel"] == "g2" and p["board"] == "pi-2"]
    # not profiled: estimated with the variant that ran fastest per FLOP on pi-2 (int8: 1 MFLOP/ms)
    assert g2_pi2["estimated"] and g2_pi2["quant"] == "int8-static"
    assert g2_pi2["predicted_ms"] == pytest.approx(3.0)


def test_cli_assign_infeasible_is_one_error_line_exit_2(tmp_path, capsys):
    build = tmp_path / "build"
    manifest = _write_build(build)
    boards_file = _write_cluster(tmp_path, 40)   # every variant needs ≥ 60 MB
    profiles = _write_profiles(tmp_path, manifest)
    out = tmp_path / "plan.json"
    code, stdout, stderr = _run(["assign", "--build", str(build), "--profiles", profiles, "--boards", boards_file,
                                 "--out", str(out)], capsys)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: g")
    assert "short by 20 MB" in lines[0] and "MB on pi-" in lines[0]
    assert not out.exists()


def test_cli_assign_help_has_an_example(capsys):
    code, stdout, _ = _run(["assign", "--help"], capsys)
    assert code == 0 and "edvit-tool assign --build build/" in stdout and "--replicas" in stdout


# -- measured links -> per-board transfer cost -------------------------------------------------------------------

def _link_boards():
    import types

    return [types.SimpleNamespace(name=n) for n in ("fast", "slow", "unmeasured")]


def test_transfer_costs_use_each_boards_measured_link_and_the_flag_elsewhere():
    manifest = {"input": {"shape": [3, 224, 224]}}
    profiles = {"boards": {"fast": {"link": {"mbps": 1000.0, "rtt_ms": 0.5}},
                           "slow": {"link": {"mbps": 100.0, "rtt_ms": 2.0}},
                           "unmeasured": {"link": {"address": "x", "error": "cannot reach"}}}}
    c = A.transfer_costs(manifest, _link_boards(), 500.0, profiles)
    n = 3 * 224 * 224 * 4
    assert c["fast"] == pytest.approx(n * 8 / 1e9 * 1e3 + 0.5)
    assert c["slow"] == pytest.approx(n * 8 / 1e8 * 1e3 + 2.0)
    assert c["unmeasured"] == pytest.approx(n * 8 / 5e8 * 1e3)
    u8 = A.transfer_costs(manifest, _link_boards(), 500.0, profiles, wire="uint8")
    assert u8["slow"] == pytest.approx(n / 4 * 8 / 1e8 * 1e3 + 2.0)
    assert A.transfer_costs(manifest, _link_boards(), 0, profiles)["unmeasured"] == 0.0
    basis = A.transfer_basis(_link_boards(), 500.0, profiles)
    assert [basis[b]["source"] for b in ("fast", "slow", "unmeasured")] == ["measured", "measured",
                                                                            "--bandwidth-mbps"]


def test_measured_links_change_the_placement():
    """Two equal boards, one behind a slow link: with one sub-model the fast-link board wins."""
    manifest = {"input": {"shape": [3, 224, 224]}}
    boards = _link_boards()[:2]
    profiles = {"boards": {"fast": {"link": {"mbps": 1000.0, "rtt_ms": 0.2}},
                           "slow": {"link": {"mbps": 10.0, "rtt_ms": 0.2}}}}
    c = A.transfer_costs(manifest, boards, 1000.0, profiles)
    t = {"g0": {"fast": 10.0, "slow": 9.0}}
    m = {"g0": {"fast": 1.0, "slow": 1.0}}
    plan = A.solve_exact(["g0"], ["fast", "slow"], t, m, {"fast": 10, "slow": 10}, c)
    assert plan.assignment == {"g0": ["fast"]}
    flat = A.transfer_costs(manifest, boards, 1000.0, None)
    assert A.solve_exact(["g0"], ["fast", "slow"], t, m, {"fast": 10, "slow": 10}, flat).assignment == {"g0": ["slow"]}


def test_the_link_probe_measures_a_local_link_through_its_protocol():
    from edvit_tool.cluster.link import measure_link
    from edvit_tool.cluster.transport import LocalTransport

    link = measure_link(LocalTransport("here", sys.executable), "127.0.0.1", max_mb=4, min_seconds=0.01, pings=5)
    assert link["address"] == "127.0.0.1" and link["method"] == "tcp"
    assert link["rtt_ms"] > 0 and link["mbps"] > 0 and link["bytes"] >= 1 << 20
