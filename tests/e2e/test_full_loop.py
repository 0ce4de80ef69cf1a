"""The whole ED-ViT loop (issue 5, item 4): compile a tiny digits ViT → profile → assign → deploy → the whole
held-out set through the deployment → the accuracy equals the build's exported accuracy → stop.

On 3 real loopback SSH boards through the CLI; as `edvit-tool demo` with local workers; and interrupted (as by
Ctrl-C) during and after deploy, where every worker must still be stopped. ~100 s on 2 cores (the tiny build is
compiled once per module, ~20 s); needs root + openssh-server for the SSH test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

from boards import worker_pids
from edvit_tool.cli.main import main

EDVIT = os.path.join(os.path.dirname(sys.executable), "edvit-tool")
KW = {"img_size": 16, "patch_size": 4, "in_chans": 1, "num_classes": 10, "embed_dim": 48, "depth": 2, "num_heads": 3}
K = 3
NAMES = ["pi-1", "pi-2", "pi-3"]


def _cli(*args, timeout=300):
    return subprocess.run([EDVIT, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def digits_build(tmp_path_factory):
    """(recipe path, build dir): a tiny ViT trained briefly on digits, compiled to K=3 sub-models with ONNX
    fp32 + int8-static artifacts (no TFLite: its conversion is slow). Loose gates: the model is undertrained."""
    from edvit_tool.config import recipe as r
    from edvit_tool.demo_model import train_demo_model

    tmp = tmp_path_factory.mktemp("loop")
    ckpt = tmp / "model.safetensors"
    rec = {"name": "tiny-loop", "threads": 1,
           "model": {"name": "vit_tiny_patch16_224", "kwargs": KW, "checkpoint": str(ckpt)},
           "data": {"kind": "digits", "mean": [0.5], "std": [0.5]},
           "split": {"groups": K}, "prune": {"steps": 1, "recovery_steps": 5, "importance_batches": 2},
           "finetune": {"steps": 20}, "fusion": {"kind": "logits"},
           "export": {"formats": ["onnx"], "quant": ["fp32", "int8-static"], "calibration_samples": 32},
           "gate": {"max_accuracy_drop_pp": 100.0, "max_quant_drop_pp": 100.0}}
    train_demo_model(r.validate(rec), str(ckpt), steps=250)
    recipe = tmp / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(rec))
    build = tmp / "build"
    assert main(["compile", "--recipe", str(recipe), "--out", str(build), "-q"]) == 0
    return str(recipe), str(build)


@pytest.fixture(scope="module")
def local_profiles(digits_build, tmp_path_factory):
    """profiles.json of digits_build on local-1..local-K, measured once for the tests that copy it in."""
    from edvit_tool.cluster import profile as prof

    path = str(tmp_path_factory.mktemp("profiles") / "profiles.json")
    prof.write_profiles(prof.profile_local_many(K, digits_build[1], runs=3, warmup=1), path)
    return path


def _manifest(build):
    with open(os.path.join(build, "manifest.json")) as f:
        return json.load(f)


def _eval(build):
    from edvit_tool import reference

    return reference.load(os.path.join(build, "reference", "eval.npz"), _manifest(build)["input"])


def _worker_pids(marker: str) -> list[int]:
    """Live worker processes whose command line mentions `marker` (their pidfile path holds the run dir)."""
    return worker_pids(marker=marker)


def _ssh_worker_pids(users) -> list[int]:
    import pwd

    return worker_pids(uids={pwd.getpwnam(u).pw_uid for u in users})


def _boards_yaml(tmp_path, boards):
    from boards import write_boards_yaml

    return write_boards_yaml(str(tmp_path / "boards.yaml"), NAMES, boards, cores=2)


def _infer_accuracy(dep, build, batch):
    r = _cli("infer", "--deployment", dep, os.path.join(build, "reference", "eval.npz"), "--json",
             "--batch", str(batch))
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)["summary"]
    assert summary["degraded"] == 0 and summary["images"] == len(_eval(build)[1])
    return summary["accuracy"]


@pytest.mark.slow
def test_full_loop_on_three_ssh_boards_reproduces_the_exported_accuracy(boards, digits_build, tmp_path):
    from edvit_tool.serve import evaluate as ev

    _, build = digits_build
    bs = boards(K)
    kh = bs[0].known_hosts
    byaml = _boards_yaml(tmp_path, bs)
    profiles, plan = str(tmp_path / "profiles.json"), str(tmp_path / "plan.json")
    dep = str(tmp_path / "run" / "deployment.json")
    manifest = _manifest(build)
    x, y = _eval(build)

    # --no-link: these loopback boards are equal; a link round trip measured on a busy machine (ms of noise
    # against ~1 ms of compute) would make the optimal plan stack sub-models (tests/e2e/test_links.py covers links)
    r = _cli("profile", "--boards", byaml, "--build", build, "--known-hosts", kh, "--runs", "5", "--warmup", "1",
             "--no-link", "--out", profiles)
    assert r.returncode == 0, r.stderr
    results = json.load(open(profiles))["results"]
    assert len(results) == K * 2 * (K + 1) and all(r["usable"] for r in results)  # fp32 + int8, subs + fusion

    # every sub-model as onnx/fp32: the deployment runs exactly the artifacts export measured onnx/fp32 with
    r = _cli("assign", "--build", build, "--profiles", profiles, "--boards", byaml, "--prefer", "onnx/fp32",
             "--out", plan)
    assert r.returncode == 0, r.stderr
    placements = json.load(open(plan))["placements"]
    assert sorted(p["submodel"] for p in placements) == [f"g{i}" for i in range(K)]
    assert sorted(p["board"] for p in placements) == sorted(NAMES)  # equal boards: one sub-model each
    try:
        r = _cli("deploy", "--plan", plan, "--known-hosts", kh, "--out", dep)
        assert r.returncode == 0, r.stderr
        assert len(_ssh_worker_pids([b.user for b in bs])) == K
        got = _infer_accuracy(dep, build, batch=32)
        assert got == manifest["accuracy"]["exported"]["onnx/fp32"]  # exactly: same interpreter, same inputs
        d = ev.deployed_artifacts(dep)
        exp = ev.expected_accuracy(d, x, y, batch=32)
        assert exp["manifest_strict"] and exp["variant"] == "onnx/fp32" and exp["accuracy"] == got

        # int8-static on the same boards: the accuracy the same artifacts give here, run locally
        r = _cli("assign", "--build", build, "--profiles", profiles, "--boards", byaml, "--prefer",
                 "onnx/int8-static", "--out", plan)
        assert r.returncode == 0, r.stderr
        r = _cli("deploy", "--plan", plan, "--known-hosts", kh, "--out", dep)
        assert r.returncode == 0, r.stderr
        got8 = _infer_accuracy(dep, build, batch=32)
        exp8 = ev.expected_accuracy(ev.deployed_artifacts(dep), x, y, batch=32)
        assert exp8["variant"] == "onnx/int8-static" and got8 == exp8["accuracy"]
        if exp8["manifest_strict"]:
            assert got8 == manifest["accuracy"]["exported"]["onnx/int8-static"]
    finally:
        r = _cli("stop", "--deployment", dep)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("stopped pid") == K
    assert _ssh_worker_pids([b.user for b in bs]) == []


@pytest.mark.slow
def test_demo_runs_the_loop_on_local_workers_and_stops_them(digits_build, tmp_path, capsys):
    recipe, build = digits_build
    run = tmp_path / "run"
    built_at = os.path.getmtime(os.path.join(build, "manifest.json"))
    rc = main(["demo", "--recipe", recipe, "--out", build, "--run-dir", str(run), "--runs", "5", "--no-peer"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert os.path.getmtime(os.path.join(build, "manifest.json")) == built_at  # same recipe: the build is reused

    loop = json.load(open(run / "loop.json"))
    got, exp = loop["measured"], loop["expected"]
    assert loop["accuracy_ok"] and got["accuracy"] == exp["accuracy"] and loop["mismatched_predictions"] == 0
    if exp["manifest_strict"]:
        assert got["accuracy"] == _manifest(build)["accuracy"]["exported"][exp["variant"]]
    assert got["images"] == len(_eval(build)[1]) and got["degraded"] == 0
    assert got["batched_agree"] == got["images"]
    assert 0 < got["latency_p50_ms"] <= got["latency_p99_ms"] and got["throughput_images_per_s"] > 0
    assert loop["profile"]["boards"] == ["local-1", "local-2", "local-3"]
    assert sorted(p["submodel"] for p in loop["plan"]["placements"]) == ["g0", "g1", "g2"]
    assert loop["plan"]["greedy_makespan_ms"] >= loop["plan"]["makespan_ms"] > 0
    assert all(r["error"] is None and r["stopped"] for r in loop["stopped"])
    assert _worker_pids(str(run)) == []
    for line in ("Accuracy through the deployment", "EQUAL", "Latency per image", "Throughput",
                 "original ViT (fp32, torch)", "ED-ViT distributed"):
        assert line in out.out, line
    assert f"Report: {os.path.join(os.path.abspath(build), 'report.html')}" in out.out
    assert os.path.getmtime(os.path.join(build, "report.html")) >= built_at

    # a second run reuses the profiles too
    rc = main(["demo", "--recipe", recipe, "--out", build, "--run-dir", str(run), "--runs", "5", "--no-peer"])
    assert rc == 0, capsys.readouterr().err
    assert json.load(open(run / "loop.json"))["profile"]["reused"] is True


@pytest.mark.slow
@pytest.mark.parametrize("when", ["deploy: local-2: ready", "infer:"])
def test_an_interrupted_loop_still_stops_every_worker(digits_build, local_profiles, tmp_path, when):
    """Ctrl-C while deploy is starting workers (deployment.json not written yet) or while images are in flight:
    KeyboardInterrupt propagates and no worker of the run is left."""
    import shutil

    from edvit_tool.loop import run_loop

    _, build = digits_build
    run = str(tmp_path / "run")
    os.makedirs(run)
    shutil.copy(local_profiles, run)  # reused by the loop: this test is about stopping, not measuring
    seen = []

    def log(message):
        seen.append(message)
        if message.startswith(when):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_loop(build, run, runs=3, warmup=1, log=log)
    assert any(m.startswith(when) for m in seen) and any(m.startswith("profile: reusing") for m in seen)
    assert _worker_pids(run) == []
    assert not [n for n in os.listdir(run) if n.startswith(".stop-")]
    if when.startswith("deploy"):
        assert not os.path.exists(os.path.join(run, "deployment.json"))
        # deploy rolled back the workers it had started (nothing had run before); the loop's stop from the plan
        # (there is no deployment.json) reached every board and found nothing left
        assert not any("NOT stopped" in m for m in seen)


def test_profile_local_measures_this_machine_as_n_boards(tiny_build, tmp_path):
    """`profile --local N`: boards local-1..N, same result format as SSH profiling, parity checked; the peak
    RSS is the bench's own even when the calling process is big (Linux keeps ru_maxrss across execve)."""
    from edvit_tool.cluster import profile as prof

    ballast = np.ones(300 << 17)  # 300 MB resident in this (the calling) process
    doc = prof.profile_local_many(2, tiny_build, artifacts=["g0"], runs=3, warmup=1)
    assert ballast.sum() > 0
    assert set(doc["boards"]) == {"local-1", "local-2"}
    for b in doc["boards"].values():
        assert b["reachable"] and b["error"] is None and b["target"] == "local"
        assert b["probe"]["cores"] >= 1 and b["probe"]["interpreters"]["onnxruntime"]["ok"]
    assert [r["artifact"] for r in doc["results"]] == ["g0:onnx/fp32"] * 2  # one per board
    for r in doc["results"]:
        assert r["usable"] and r["parity"]["ok"] and r["runs"] == 3, r
        assert 0 < r["latency_ms"]["p50"] < 10_000 and 5 < r["peak_rss_mb"] < 250, r

    out = tmp_path / "profiles.json"
    r = _cli("profile", "--local", "2", "--build", tiny_build, "--artifacts", "g0:onnx/fp32", "--runs", "2",
             "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "all THIS machine" in r.stderr and "local-2" in r.stdout
    assert {x["board"] for x in json.load(open(out))["results"]} == {"local-1", "local-2"}
    r = _cli("profile", "--local", "2", "--host", "pi@127.0.0.1", "--build", tiny_build)
    assert r.returncode == 2 and r.stderr.startswith("Error: --local cannot be combined with --host/--boards")
