"""The exported Triton repository served by a real tritonserver (2.51, bundled in the nvidia-pytriton wheel) on
127.0.0.1, called with stock tritonclient.http: each variant's ensemble answers the build's held-out set with the
predictions and accuracy of the same artifacts run here with onnxruntime / LiteRT.

The server and its venv: tests/triton_server.py.
~40 s on 2 cores on top of the shared tiny build.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import export_tiny as et
from edvit_tool import reference
from edvit_tool.export import validate as V
from edvit_tool.export.triton import ensemble_name, write_triton_repo
from edvit_tool.runtime import manifest as mf
from triton_server import TritonServer, TritonUnavailable

pytestmark = pytest.mark.slow
VARIANTS = [("onnx", "fp32"), ("tflite", "int8-static")]
BATCH = 8


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(build, tritonclient, server log path): the tiny build's repository loaded into a live tritonserver."""
    root = tmp_path_factory.mktemp("triton")
    build = et.exported(tmp_path_factory)
    repo = str(root / "repo")
    write_triton_repo(build, mf.load(build), repo, max_batch_size=BATCH)
    server = TritonServer(repo, [ensemble_name(f, q) for f, q in VARIANTS], str(root))
    try:
        server.start()
    except TritonUnavailable as e:
        pytest.fail(str(e), pytrace=False)
    try:
        yield build, server.client(), server.log_path
    finally:
        server.close()


def _host_logits(build: str, manifest: dict, fmt: str, quant: str, x: np.ndarray) -> np.ndarray:
    """The variant's fused logits through its artifacts here, in the same batches as the requests."""
    subs, fusion = V.variant_artifacts(manifest, fmt, quant)
    runners = [V.Runner(os.path.join(build, a["file"]), a["format"]) for a in subs]
    head = V.Runner(os.path.join(build, fusion["file"]), fusion["format"])
    source = manifest["fusion"].get("source", "features")
    out = []
    for i in range(0, len(x), BATCH):
        feats = np.concatenate([r.run({"pixel_values": x[i:i + BATCH]})[source] for r in runners], axis=1)
        out.append(head.run({"features": feats})["logits"])
    return np.concatenate(out)


@pytest.mark.parametrize("fmt,quant", VARIANTS)
def test_ensemble_answers_like_the_exported_artifacts(served, fmt, quant):
    import tritonclient.http as th

    build, client, log_path = served
    manifest = mf.load(build)
    name = ensemble_name(fmt, quant)
    assert client.is_model_ready(name), open(log_path).read()[-3000:]
    x, y = reference.load(os.path.join(build, "reference", "eval.npz"), manifest["input"])
    logits, probs = [], []
    for i in range(0, len(x), BATCH):
        inp = th.InferInput("pixel_values", list(x[i:i + BATCH].shape), "FP32")
        inp.set_data_from_numpy(x[i:i + BATCH], binary_data=True)
        res = client.infer(name, [inp], outputs=[th.InferRequestedOutput("logits", binary_data=True),
                                                 th.InferRequestedOutput("probabilities", binary_data=True)])
        logits.append(res.as_numpy("logits"))
        probs.append(res.as_numpy("probabilities"))
    logits, probs = np.concatenate(logits), np.concatenate(probs)
    assert logits.shape == (len(x), len(manifest["classes"]))

    want = _host_logits(build, manifest, fmt, quant, x)
    diff = float(np.abs(logits - want).max())
    accuracy = float((logits.argmax(1) == y).mean())
    recorded = manifest["accuracy"]["exported"][f"{fmt}/{quant}"]
    print(f"{name}: max |triton - host| logits {diff:.2e} over {len(x)} images; accuracy {accuracy:.4f}, "
          f"recorded {recorded:.4f}")
    assert diff <= 1e-4
    np.testing.assert_array_equal(logits.argmax(1), want.argmax(1))
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(probs.argmax(1), logits.argmax(1))
    assert abs(accuracy - recorded) <= 1.0 / len(y) + 1e-9, (accuracy, recorded)


def test_stock_client_sees_one_model_with_the_manifest_io(served):
    build, client, _ = served
    manifest = mf.load(build)
    meta = client.get_model_metadata(ensemble_name("onnx", "fp32"))
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == \
        [("pixel_values", "FP32", [-1, *manifest["input"]["shape"]])]
    assert sorted(t["name"] for t in meta["outputs"]) == ["logits", "probabilities"]
    with pytest.raises(Exception, match="pixel_values"):  # the wrong input shape is refused, not crashed on
        import tritonclient.http as th

        bad = th.InferInput("pixel_values", [1, 3, 16, 16], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 3, 16, 16), np.float32))
        client.infer(ensemble_name("onnx", "fp32"), [bad])
