"""`python -m edvit_tool.runtime.bench`, run as a board would (board-like copy of the runtime, torch/timm/click/
yaml blocked). ~8 s; the first run on a machine also exports the tiny build (cached in .pytest_cache)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tiny_build import board_env, make_board_runtime, make_import_shim, shared_tiny_build
from tiny_build import cache_dir as _cache_dir

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def env(tmp_path_factory, pytestconfig):
    tmp = tmp_path_factory.mktemp("bench")
    build = shared_tiny_build(tmp_path_factory, _cache_dir(pytestconfig))
    return {"build": build, "board": make_board_runtime(str(tmp / "board")),
            "shim": make_import_shim(str(tmp / "shim")), "tmp": tmp}


def _bench(env, *args, shim=None):
    r = subprocess.run([sys.executable, "-m", "edvit_tool.runtime.bench", *args], cwd=env["board"],
                       env=board_env(env["board"], shim or env["shim"]), capture_output=True, text=True, timeout=60)
    return r


def _ok_json(r) -> dict:
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1, r.stdout
    return json.loads(lines[0])


def _paths(env, rel):
    b = env["build"]
    return (os.path.join(b, rel), os.path.join(b, "reference", "inputs.npz"),
            os.path.join(b, "reference", f"outputs-{os.path.basename(rel)}.npz"))


@pytest.mark.parametrize("rel,backend", [("submodels/g0.fp32.onnx", "onnxruntime"),
                                         ("submodels/g0.fp32.tflite", "litert"),
                                         ("fusion/fusion.onnx", "onnxruntime")])
def test_bench_prints_one_json_line_with_sane_figures_and_parity(env, rel, backend):
    art, inputs, ref = _paths(env, rel)
    out = _ok_json(_bench(env, art, "--runs", "30", "--warmup", "3", "--threads", "1", "--inputs", inputs,
                          "--reference", ref, "--tolerance", "1e-4"))
    from edvit_tool.runtime.manifest import sha256_file
    assert out["artifact"] == art and out["sha256"] == sha256_file(art) and out["bytes"] == os.path.getsize(art)
    assert out["backend"] == backend and out["backend_version"]
    assert (out["runs"], out["warmup"], out["threads"], out["batch"]) == (30, 3, 1, 1)
    lat = out["latency_ms"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"] < 1000
    assert lat["min"] <= lat["mean"] <= lat["max"]
    assert 0 < out["load_ms"] < 10_000 and 10 < out["peak_rss_mb"] < 2000
    par = out["parity"]
    assert par["ok"] is True and par["max_abs_diff"] <= 1e-4 and par["top1_agreement"] == 1.0
    assert par["samples"] == 8 and "logits" in par["compared"] and par["missing"] == []


def test_tampered_reference_fails_parity_but_exits_0(env, tmp_path):
    art, inputs, ref = _paths(env, "submodels/g0.fp32.tflite")
    with np.load(ref) as z:
        arrays = {k: z[k].copy() for k in z.files}
    arrays["logits"][:, 0] += 0.5  # a board whose interpreter is off by this much must be caught
    bad = tmp_path / "outputs-tampered.npz"
    np.savez(bad, **arrays)
    out = _ok_json(_bench(env, art, "--runs", "3", "--warmup", "0", "--inputs", inputs, "--reference", str(bad)))
    assert out["parity"]["ok"] is False
    assert out["parity"]["max_abs_diff"] == pytest.approx(0.5, abs=1e-3)


def test_manifest_names_tensors_and_supplies_the_tolerance(env):
    art, inputs, ref = _paths(env, "submodels/g0.fp32.tflite")
    out = _ok_json(_bench(env, art, "--runs", "3", "--manifest", os.path.join(env["build"], "manifest.json"),
                          "--inputs", inputs, "--reference", ref, "--batch", "3"))
    assert [o["name"] for o in out["outputs"]] == ["features", "logits"]  # litert-torch calls them output_0/1
    assert out["parity"]["tolerance"] == 1e-4 and out["parity"]["ok"] is True and out["batch"] == 3


def test_random_input_when_no_inputs_given(env):
    out = _ok_json(_bench(env, os.path.join(env["build"], "submodels/g1.fp32.onnx"), "--runs", "5"))
    assert out["parity"] is None and out["latency_ms"]["p50"] > 0


@pytest.mark.parametrize("args,message", [
    (["missing.onnx", "--runs", "3"], "missing.onnx: no such file"),
    (["{build}/submodels/g1.fp32.onnx", "--runs", "zero"], "--runs: invalid int value"),
    (["{build}/submodels/g1.fp32.onnx", "--runs", "0"], "--runs, --threads and --batch must be >= 1"),
    (["{build}/submodels/g1.fp32.onnx", "--inputs", "nope.npz"], "--inputs nope.npz: no such file"),
])
def test_bad_arguments_exit_2_with_one_line(env, args, message):
    r = _bench(env, *[a.format(build=env["build"]) for a in args])
    assert r.returncode == 2 and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and message in r.stderr, r.stderr


def test_onnx_without_onnxruntime_says_what_to_install(env, tmp_path):
    shim = make_import_shim(str(tmp_path / "shim"), blocked=("torch", "timm", "onnxruntime"))
    r = _bench(env, os.path.join(env["build"], "submodels/g1.fp32.onnx"), shim=shim)
    assert r.returncode == 3 and "pip install onnxruntime" in r.stderr, r.stderr


def test_runtime_imports_only_stdlib_numpy_and_one_interpreter(env):
    """Importing every runtime module (and probing) pulls no torch, timm, click, yaml or host module."""
    code = ("import sys, json\n"
            "import edvit_tool.runtime.backends, edvit_tool.runtime.protocol, edvit_tool.runtime.worker\n"
            "import edvit_tool.runtime.bench, edvit_tool.runtime.manifest\n"
            "from edvit_tool.runtime.__main__ import probe\n"
            "p = probe()\n"
            "print(json.dumps({'mods': sorted(sys.modules), 'file': edvit_tool.__file__, 'probe': p}))\n")
    # no shim here: prove it by what gets imported, not only by what fails
    env_vars = board_env(env["board"], str(env["tmp"] / "empty"))
    r = subprocess.run([sys.executable, "-c", code], cwd=env["board"], env=env_vars, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["file"].startswith(env["board"])
    bad = [m for m in out["mods"] if m.split(".")[0] in ("torch", "timm", "click", "yaml", "rich", "paramiko")
           or (m.startswith("edvit_tool.") and not m.startswith("edvit_tool.runtime"))]
    assert bad == []
    assert out["probe"]["backends"]["onnxruntime"] and out["probe"]["backends"]["litert"]
    assert out["probe"]["cores"] >= 1 and out["probe"]["memory"]["total_mb"] > 0
