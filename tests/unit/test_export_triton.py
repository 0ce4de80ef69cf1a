"""Triton model repository from a build: parsed back with Triton's own ModelConfig protobuf schema.

Uses the session's tiny build (tests/export_tiny.py); the tests themselves take < 1 s.
"""

from __future__ import annotations

import importlib.util
import json
import os

import pytest

import export_tiny as et
from edvit_tool.runtime import manifest as mf


def _model_config_pb2():
    """tritonclient ships Triton's model_config_pb2 under tritonclient.grpc, whose __init__ needs grpcio (not
    installed): load the generated module by path — it only needs protobuf."""
    tritonclient = pytest.importorskip("tritonclient")
    path = os.path.join(os.path.dirname(tritonclient.__file__), "grpc", "model_config_pb2.py")
    if not os.path.isfile(path):
        pytest.skip("this tritonclient has no model_config_pb2")
    spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    from edvit_tool.export.triton import write_triton_repo

    build = et.exported(tmp_path_factory)
    out = str(tmp_path_factory.mktemp("triton"))
    names = write_triton_repo(build, mf.load(build), out)
    return build, out, names


def test_one_model_per_artifact_with_the_file_in_version_1(repo):
    build, out, names = repo
    manifest = mf.load(build)
    assert sorted(names) == sorted(f"{a['name']}_{a['format']}_{a['quant']}" for a in manifest["artifacts"])
    assert sorted(n for n in os.listdir(out) if not n.startswith(".")) == sorted(names)
    for a in manifest["artifacts"]:
        d = os.path.join(out, f"{a['name']}_{a['format']}_{a['quant']}")
        model = os.path.join(d, "1", f"model.{a['format']}")
        assert mf.sha256_file(model) == a["sha256"]
        assert os.path.isfile(os.path.join(d, "config.pbtxt"))


def test_configs_parse_as_triton_model_configs(repo):
    from google.protobuf import text_format

    pb = _model_config_pb2()
    build, out, _ = repo
    for a in mf.load(build)["artifacts"]:
        name = f"{a['name']}_{a['format']}_{a['quant']}"
        with open(os.path.join(out, name, "config.pbtxt")) as f:
            cfg = text_format.Parse(f.read(), pb.ModelConfig())
        assert cfg.name == name
        ins = [(t.name, t.data_type, list(t.dims)) for t in cfg.input]
        outs = [(t.name, t.data_type, list(t.dims)) for t in cfg.output]
        if a["format"] == "onnx":
            assert cfg.platform == "onnxruntime_onnx" and cfg.backend == ""
            assert cfg.max_batch_size == 8  # dynamic batch: Triton batches, dims exclude it
            want_in = [(t["name"], pb.TYPE_FP32, t["shape"][1:]) for t in a["inputs"]]
            want_out = [(t["name"], pb.TYPE_FP32, t["shape"][1:]) for t in a["outputs"]]
        else:
            assert cfg.backend == "tflite" and cfg.platform == ""
            assert cfg.max_batch_size == 0  # batch-1 model: full dims, no Triton batching
            want_in = [(t["name"], pb.TYPE_FP32, t["shape"]) for t in a["inputs"]]
            want_out = [(t["name"], pb.TYPE_FP32, t["shape"]) for t in a["outputs"]]
        assert ins == want_in and outs == want_out, name
        if a["name"] != "fusion":
            assert ins[0][0] == "pixel_values" and ins[0][2][-3:] == [1, 16, 16]
            assert [o[0] for o in outs] == ["features", "logits"]
        assert cfg.instance_group[0].kind == pb.ModelInstanceGroup.KIND_CPU


def test_failed_artifacts_are_not_served(tmp_path_factory, tmp_path):
    from edvit_tool.export.triton import write_triton_repo

    build = et.copy_build(et.exported(tmp_path_factory), str(tmp_path / "b"))
    manifest = mf.load(build)
    manifest["artifacts"][0].update(status="failed", reason="test")
    names = write_triton_repo(build, manifest, str(tmp_path / "repo"))
    assert len(names) == len(manifest["artifacts"]) - 1
    assert f"{manifest['artifacts'][0]['name']}_{manifest['artifacts'][0]['format']}_" \
           f"{manifest['artifacts'][0]['quant']}" not in names


def test_cli_export_with_only_triton_repo_uses_the_existing_artifacts(tmp_path_factory, tmp_path):
    """`edvit-tool export BUILD --triton-repo DIR` needs no torch models: it leaves the build untouched."""
    from edvit_tool.cli.main import main

    src = et.exported(tmp_path_factory)
    build = et.copy_build(src, str(tmp_path / "b"))
    before = mf.sha256_file(os.path.join(build, "manifest.json"))
    out = str(tmp_path / "repo")
    assert main(["export", build, "--triton-repo", out, "--json"]) == 0
    assert mf.sha256_file(os.path.join(build, "manifest.json")) == before
    assert len([n for n in os.listdir(out) if not n.startswith(".")]) == len(mf.load(build)["artifacts"])
    assert json.loads(json.dumps(mf.load(build)))  # still a valid manifest
