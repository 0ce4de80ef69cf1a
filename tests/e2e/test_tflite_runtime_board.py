"""A board whose only interpreter is tflite-runtime (the boards' fallback; numpy<2, no LiteRT, no onnxruntime)
beside a LiteRT board, both real loopback SSH boards (issue 11, item 14).

What tflite-runtime 2.14 (its last release) does with our exports, measured here: fp32 and fp16 TFLite match
the PyTorch reference; the int8-dynamic artifacts (ai-edge-quantizer's dynamic-range quantisation) load but
compute wrongly (max |diff| ~7 on the logits, top-1 agreement ~0.5) while LiteRT runs them within tolerance.
So `profile` must mark them failed on that board only, and `assign` must never put them there. ~90 s (a
tiny ViT build exported to TFLite, cached for the session)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import export_tiny as et

EDVIT = os.path.join(os.path.dirname(sys.executable), "edvit-tool")


@pytest.fixture(scope="module")
def tflite_build(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("tflite-rt") / "build")
    cfg = dict(et.EXPORT_CFG, formats=["tflite"], quant=["fp32", "int8-dynamic"])
    _, failures = et.make_build(root, et.trained(tmp_path_factory), cfg)
    assert failures == []  # LiteRT (the host's interpreter) passes every artifact at export
    return root


def _cli(*args):
    return subprocess.run([EDVIT, *args], capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_profile_marks_what_tflite_runtime_computes_wrongly_and_assign_keeps_it_off_that_board(
        boards, tflite_build, tmp_path):
    litert, tfl = boards(2, venv=["default", "tflite-runtime"])
    r = subprocess.run([tfl.python, "-c", "import numpy, tflite_runtime; print(numpy.__version__)"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("1.")
    for mod in ("ai_edge_litert", "onnxruntime"):
        assert subprocess.run([tfl.python, "-c", f"import {mod}"], capture_output=True).returncode != 0

    prof_yaml = tmp_path / "loopback.yaml"
    prof_yaml.write_text("name: loopback\narch: x86_64\ncores: 2\nmemory_mb: 4096\nmemory_budget_mb: 1024\n"
                         "preferred_backend: tflite-runtime\nthreads: 1\npython: python3\n")
    byaml = tmp_path / "boards.yaml"
    byaml.write_text("boards:\n" + "".join(
        f"  - {{name: {n}, host: 127.0.0.1, port: {b.port}, user: {b.user}, identity: {b.identity}, "
        f"device_profile: {prof_yaml}, python: {b.python}, worker_port: {p}}}\n"
        for n, b, p in (("litert", litert, 8500), ("tfl", tfl, 8501))))
    profiles = str(tmp_path / "profiles.json")
    r = _cli("profile", "--boards", str(byaml), "--build", tflite_build, "--known-hosts", litert.known_hosts,
             "--runs", "3", "--warmup", "1", "--out", profiles)
    assert r.returncode == 1, r.stderr  # some artifacts are unusable somewhere: profile says so
    doc = json.load(open(profiles))
    assert doc["boards"]["tfl"]["probe"]["interpreters"]["tflite_runtime"]["ok"]
    res = {(x["board"], x["artifact"]): x for x in doc["results"]}
    names = ("g0", "g1", "fusion")
    for n in names:
        fp32 = res[("tfl", f"{n}:tflite/fp32")]
        assert fp32["usable"] and fp32["backend"] == "tflite-runtime" and fp32["parity"]["ok"]
        wrong = res[("tfl", f"{n}:tflite/int8-dynamic")]
        assert wrong["usable"] is False and wrong["backend"] == "tflite-runtime"
        assert wrong["parity"]["ok"] is False and "PARITY FAILED on the board" in wrong["error"]
        assert wrong["parity"]["max_abs_diff"] > wrong["parity"]["tolerance"]
        for q in ("fp32", "int8-dynamic"):  # the same files are fine under LiteRT
            ok = res[("litert", f"{n}:tflite/{q}")]
            assert ok["usable"] and ok["backend"] == "litert" and ok["parity"]["ok"], ok
    for n in names:
        assert f"tfl {n}:tflite/int8-dynamic: UNUSABLE: PARITY FAILED" in r.stderr

    # every sub-model on both boards: the tflite-runtime board can only get what passed there
    plan = str(tmp_path / "plan.json")
    r = _cli("assign", "--build", tflite_build, "--profiles", profiles, "--boards", str(byaml), "--replicas", "2",
             "--out", plan)
    assert r.returncode == 0, r.stderr
    places = json.load(open(plan))["placements"]
    on_tfl = [p for p in places if p["board"] == "tfl"]
    assert sorted(p["submodel"] for p in on_tfl) == ["g0", "g1"]
    assert all(p["quant"] == "fp32" and not p["estimated"] for p in on_tfl), on_tfl
    # asking for int8-dynamic only: the tflite-runtime board is no candidate at all
    r = _cli("assign", "--build", tflite_build, "--profiles", profiles, "--boards", str(byaml),
             "--prefer", "tflite/int8-dynamic", "--out", plan)
    assert r.returncode == 0, r.stderr
    assert {p["board"] for p in json.load(open(plan))["placements"]} == {"litert"}
