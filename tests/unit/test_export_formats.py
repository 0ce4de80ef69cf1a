"""Export of a tiny trained timm ViT build in every format x quant, checked in the real interpreters.

The build (2 sub-models + fusion head, onnx + tflite x fp32/fp16/int8-dynamic/int8-static) is made once per
session by tests/export_tiny.py (~60 s on 2 cores, most of it torch.onnx / litert-torch conversion); the tests
here take a few seconds on top.
"""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest

import export_tiny as et
from edvit_tool import reference
from edvit_tool.export import validate as V
from edvit_tool.runtime import manifest as mf

ALL = {(n, f, q) for n in ("g0", "g1", "fusion") for f in ("onnx", "tflite")
       for q in ("fp32", "fp16", "int8-dynamic", "int8-static")}


@pytest.fixture(scope="session")
def build(tmp_path_factory):
    return et.exported(tmp_path_factory)


@pytest.fixture(scope="session")
def manifest(build):
    return mf.load(build)


@pytest.fixture(scope="session")
def torch_outputs(tmp_path_factory, build):
    """Fresh PyTorch outputs on the reference inputs, independent of the npz files export wrote."""
    import torch

    models = et.trained(tmp_path_factory)
    refs = V.load_npz(os.path.join(build, "reference", "inputs.npz"), ("pixel_values", "features"))
    with torch.no_grad():
        out = {}
        x = torch.from_numpy(refs["pixel_values"])
        for n in ("g0", "g1"):
            f, lo = models[n](x)
            out[n] = {"features": f.numpy(), "logits": lo.numpy()}
        feats = np.concatenate([out["g0"]["features"], out["g1"]["features"]], 1)
        out["fusion"] = {"logits": models["fusion"](torch.from_numpy(feats)).numpy()}
    return refs, out, feats


def test_every_format_and_quant_is_exported_and_passes_its_gates(build, manifest):
    assert et.failures_of(build) == []
    got = {(a["name"], a["format"], a["quant"]) for a in manifest["artifacts"]}
    assert got == ALL
    assert all(a["status"] == "ok" and a["reason"] == "" for a in manifest["artifacts"])
    assert mf.validate(manifest) == []


def test_each_artifact_matches_pytorch_in_its_interpreter(build, manifest, torch_outputs):
    refs, outs, feats = torch_outputs
    assert np.allclose(refs["features"], feats, atol=1e-6)  # the fusion reference input is the torch features
    for art in manifest["artifacts"]:
        runner = V.Runner(os.path.join(build, art["file"]), art["format"])
        inp = "features" if art["name"] == "fusion" else "pixel_values"
        got = runner.run({inp: refs[inp]})
        stats = V.compare(got, outs[art["name"]])
        key = mf.artifact_key(art)
        if art["quant"] == "fp32":
            assert stats["max_abs_diff"] <= 1e-4 * max(1.0, stats["scale"]), key
            assert stats["max_abs_diff"] <= 1e-4, key  # these outputs are small: the plain bound holds too
        else:
            assert stats["top1_agreement"] >= 0.95, key
            assert stats["max_abs_diff"] > 0, key  # really quantised, not a copy of fp32
        # the figures recorded in the manifest are the ones measured here
        assert stats["max_abs_diff"] == pytest.approx(art["max_abs_diff"], rel=1e-3, abs=1e-6), key
        assert stats["top1_agreement"] == art["top1_agreement"], key


def test_reference_files_hold_the_torch_outputs_per_artifact(build, manifest, torch_outputs):
    _, outs, _ = torch_outputs
    for art in manifest["artifacts"]:
        assert art["reference"] == f"reference/outputs-{os.path.basename(art['file'])}.npz"
        ref = V.load_npz(os.path.join(build, art["reference"]))
        assert sorted(ref) == sorted(t["name"] for t in art["outputs"])
        for k, v in ref.items():
            np.testing.assert_allclose(v, outs[art["name"]][k], atol=1e-5)


def test_reference_inputs_cover_every_group(build, manifest):
    refs = V.load_npz(os.path.join(build, "reference", "inputs.npz"))
    x, y = reference.load(os.path.join(build, "reference", "eval.npz"), manifest["input"])
    rows = {x[i].tobytes(): int(y[i]) for i in range(len(y))}
    labels = {rows[x.tobytes()] for x in refs["pixel_values"]}
    for group in manifest["groups"]:
        assert labels & set(group), group
    assert refs["features"].shape == (len(refs["pixel_values"]), sum(manifest["fusion"]["input_dims"]))


def test_onnx_files_are_single_file_opset17_dynamic_batch_with_scoped_names(build, manifest):
    import onnxruntime as ort

    for art in (a for a in manifest["artifacts"] if a["format"] == "onnx"):
        path = os.path.join(build, art["file"])
        model = onnx.load(path, load_external_data=False)
        assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
        assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
        assert not any(p.key.startswith("pkg.torch") for n in model.graph.node for p in n.metadata_props)
        assert art["inputs"][0]["shape"][0] == -1 and all(t["shape"][0] == -1 for t in art["outputs"])
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        dim = art["inputs"][0]["shape"][1:]
        for batch in (1, 3):
            outs = sess.run(None, {art["inputs"][0]["name"]: np.zeros([batch, *dim], np.float32)})
            assert all(o.shape[0] == batch for o in outs)
        if art["name"] != "fusion" and art["quant"] == "fp32":
            names = [n.name for n in model.graph.node]
            assert any(n.startswith("vit.blocks.0.attn") for n in names), names[:10]
            assert any(n.startswith("vit.blocks.1.mlp") for n in names)


def test_tflite_files_have_a_named_batch1_signature(build, manifest):
    from ai_edge_litert.interpreter import Interpreter

    for art in (a for a in manifest["artifacts"] if a["format"] == "tflite"):
        sig = Interpreter(model_path=os.path.join(build, art["file"])).get_signature_list()
        ins = ["features"] if art["name"] == "fusion" else ["pixel_values"]
        outs = ["logits"] if art["name"] == "fusion" else ["features", "logits"]
        assert sig == {"serving_default": {"inputs": ins, "outputs": outs}}
        assert all(t["shape"][0] == 1 and t["dtype"] == "float32" for t in art["inputs"] + art["outputs"])


def test_quantised_artifacts_are_smaller_than_fp32(manifest):
    arts = {(a["name"], a["format"], a["quant"]): a for a in manifest["artifacts"]}
    limit = {"fp16": 0.7, "int8-dynamic": 0.5, "int8-static": 0.6}  # static keeps scales + float biases
    for name in ("g0", "g1"):
        for fmt in ("onnx", "tflite"):
            fp32 = arts[(name, fmt, "fp32")]["bytes"]
            for quant, ratio in limit.items():
                a = arts[(name, fmt, quant)]
                # layers kept float by the gate's fallback cost size; fully quantised ones must be small
                assert a["bytes"] < (ratio if not a["float_layers"] else 1.0) * fp32, (name, fmt, quant)


def test_manifest_records_accuracy_and_tooling(build, manifest):
    acc = manifest["accuracy"]["exported"]
    assert set(acc) == {f"{f}/{q}" for _, f, q in ALL}
    fused = manifest["accuracy"]["fused"]
    for variant, value in acc.items():
        assert fused - value <= 0.01 + 1e-9, variant  # GATE max_accuracy_drop_pp = 1.0
    assert acc["onnx/fp32"] == pytest.approx(fused, abs=1e-9)  # fp32 computes what torch computes
    info = manifest["export"]
    assert info["onnx"]["opset"] == 17 and info["onnx"]["simplifier"].startswith("onnxslim")
    for n in ("g0", "g1", "fusion"):
        nodes = info["onnx"]["nodes"][n]
        assert 0 < nodes["after"] <= nodes["before"]
    assert info["tflite"]["converter"].startswith("litert-torch") and info["tflite"]["batch"] == 1
    assert info["calibration_samples"] == {"g0": 64, "g1": 64, "fusion": 64}
    with open(os.path.join(build, "manifest.json")) as f:
        on_disk = json.load(f)
    for a in on_disk["artifacts"]:
        assert a["sha256"] == mf.sha256_file(os.path.join(build, a["file"]))
        assert on_disk["files"][a["file"]]["sha256"] == a["sha256"]
