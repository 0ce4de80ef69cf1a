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


def _plain(names):
    return [n for n in names if not n.endswith("_python") and not n.startswith("edvit_")]


def test_one_model_per_artifact_with_the_file_in_version_1(repo):
    build, out, names = repo
    manifest = mf.load(build)
    assert sorted(_plain(names)) == sorted(f"{a['name']}_{a['format']}_{a['quant']}" for a in manifest["artifacts"])
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
    failed = manifest["artifacts"][0]
    names = write_triton_repo(build, manifest, str(tmp_path / "repo"))
    assert len(_plain(names)) == len(manifest["artifacts"]) - 1
    assert f"{failed['name']}_{failed['format']}_{failed['quant']}" not in names
    # nor is the ensemble of its variant: it could not answer as ED-ViT
    assert f"edvit_{failed['format']}_{failed['quant']}" not in names
    assert f"{failed['name']}_{failed['format']}_{failed['quant']}_python" not in names


def test_cli_export_with_only_triton_repo_uses_the_existing_artifacts(tmp_path_factory, tmp_path, capsys):
    """`edvit-tool export BUILD --triton-repo DIR` needs no torch models: it leaves the build untouched."""
    from edvit_tool.cli.main import main

    src = et.exported(tmp_path_factory)
    build = et.copy_build(src, str(tmp_path / "b"))
    before = mf.sha256_file(os.path.join(build, "manifest.json"))
    out = str(tmp_path / "repo")
    assert main(["export", build, "--triton-repo", out, "--json"]) == 0
    assert mf.sha256_file(os.path.join(build, "manifest.json")) == before
    listed = json.loads(capsys.readouterr().out)["triton_models"]
    assert sorted(n for n in os.listdir(out) if not n.startswith(".")) == sorted(listed)
    assert len(_plain(listed)) == len(mf.load(build)["artifacts"]) and "edvit_onnx_fp32" in listed
    assert json.loads(json.dumps(mf.load(build)))  # still a valid manifest


def test_one_ensemble_per_complete_variant_wired_to_python_models(repo):
    """edvit_<fmt>_<quant>: pixel_values -> each sub-model's fusion source -> the fusion head; every step is a
    Python-backend model of this repository whose tensors match the ensemble's maps."""
    from google.protobuf import text_format

    pb = _model_config_pb2()
    build, out, names = repo
    manifest = mf.load(build)

    def parse(name):
        with open(os.path.join(out, name, "config.pbtxt")) as f:
            return text_format.Parse(f.read(), pb.ModelConfig())

    variants = sorted({(a["format"], a["quant"]) for a in manifest["artifacts"]})
    assert sorted(n for n in names if n.startswith("edvit_")) == sorted(f"edvit_{f}_{q}" for f, q in variants)
    source = manifest["fusion"]["source"]
    n_cls = len(manifest["classes"])
    for fmt, quant in variants:
        ens = parse(f"edvit_{fmt}_{quant}")
        assert ens.platform == "ensemble" and ens.max_batch_size == 8
        assert os.path.isdir(os.path.join(out, f"edvit_{fmt}_{quant}", "1"))
        assert [(t.name, list(t.dims)) for t in ens.input] == [("pixel_values", manifest["input"]["shape"])]
        assert [(t.name, list(t.dims)) for t in ens.output] == [("logits", [n_cls]), ("probabilities", [n_cls])]
        steps = ens.ensemble_scheduling.step
        subs = [sm["name"] for sm in manifest["submodels"]]
        assert [s.model_name for s in steps[:-1]] == [f"{g}_{fmt}_{quant}_python" for g in subs]
        for step, g in zip(steps[:-1], subs):
            assert dict(step.input_map) == {"pixel_values": "pixel_values"}
            assert dict(step.output_map) == {source: f"{source}_{g}"}
            cfg = parse(step.model_name)
            assert cfg.backend == "python" and cfg.max_batch_size == 8
            assert source in [t.name for t in cfg.output]
        fusion = parse(steps[-1].model_name)
        assert fusion.backend == "python"
        assert [(t.name, list(t.dims)) for t in fusion.input] == \
            [(f"{source}_{g}", [d]) for g, d in zip(subs, manifest["fusion"]["input_dims"])]
        assert dict(steps[-1].input_map) == {f"{source}_{g}": f"{source}_{g}" for g in subs}
        assert set(dict(steps[-1].output_map).values()) == {"logits", "probabilities"}


def test_python_models_carry_their_artifact_and_the_board_loader(repo):
    import edvit_tool.export.triton_python_model as pym
    import edvit_tool.runtime.backends as backends

    build, out, names = repo
    manifest = mf.load(build)
    for a in manifest["artifacts"]:
        d = os.path.join(out, f"{a['name']}_{a['format']}_{a['quant']}_python", "1")
        if not os.path.isdir(d):  # a fusion head of another quant may serve this variant instead
            assert a["name"] == "fusion"
            continue
        assert mf.sha256_file(os.path.join(d, f"model.{a['format']}")) == a["sha256"]
        for name, src in (("model.py", pym.__file__), ("edvit_backends.py", backends.__file__)):
            with open(os.path.join(d, name)) as f, open(src) as g:
                assert f.read() == g.read()
        spec = json.load(open(os.path.join(d, "edvit_model.json")))
        assert spec["inputs"] == a["inputs"] and spec["outputs"] == a["outputs"]
        assert spec["role"] == ("fusion" if a["name"] == "fusion" else "submodel")
