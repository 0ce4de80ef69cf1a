"""The exported Triton repository served by a real tritonserver (2.51, bundled in the nvidia-pytriton wheel) on
127.0.0.1, called with stock tritonclient.http: each variant's ensemble answers the build's held-out set with the
predictions and accuracy of the same artifacts run here with onnxruntime / LiteRT.

The server comes from its own venv (scripts/make-triton-venv.sh, made on first use like the board venv): the
wheel's Python backend needs numpy 1.x. Our ensemble's steps are Python-backend models, whose interpreter is the
system libpython3.11 and ignores PYTHONPATH; the backend directory made here holds the wheel's backend files plus
links to that venv's packages (numpy, onnxruntime, ai-edge-litert), as the backend directory is on its sys.path.
~40 s on 2 cores on top of the shared tiny build.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import numpy as np
import pytest

import export_tiny as et
from boards import free_port
from edvit_tool import reference
from edvit_tool.export import validate as V
from edvit_tool.export.triton import ensemble_name, write_triton_repo
from edvit_tool.runtime import manifest as mf

pytestmark = pytest.mark.slow
VARIANTS = [("onnx", "fp32"), ("tflite", "int8-static")]
BATCH = 8


REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRITON_VENV = os.environ.get("EDVIT_TRITON_VENV", os.path.join(REPO, ".venv-triton"))


def _triton_site() -> str:
    """site-packages of the Triton venv, creating it (scripts/make-triton-venv.sh) when missing."""
    r = subprocess.run(["bash", os.path.join(REPO, "scripts", "make-triton-venv.sh"), TRITON_VENV],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail(f"scripts/make-triton-venv.sh failed ({r.returncode}): {r.stderr.strip()[-1500:]}",
                    pytrace=False)
    return os.path.join(TRITON_VENV, "lib", "python3.11", "site-packages")


def _backend_dir(root: str, site: str) -> str:
    """backends/python: the wheel's Python backend + the 3.11 stub + links to the venv's packages."""
    dist = os.path.join(site, "pytriton", "tritonserver")
    py = os.path.join(root, "backends", "python")
    os.makedirs(py)
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        os.symlink(os.path.join(dist, "backends", "python", name), os.path.join(py, name))
    os.symlink(os.path.join(dist, "python_backend_stubs", "3.11", "triton_python_backend_stub"),
               os.path.join(py, "triton_python_backend_stub"))
    for name in os.listdir(site):
        if not name.startswith(("_", "pip", "setuptools", "pytriton")) and not name.endswith((".pth", ".dist-info")):
            os.symlink(os.path.join(site, name), os.path.join(py, name))
    return os.path.dirname(py)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(build, tritonclient, server log path): the tiny build's repository loaded into a live tritonserver."""
    import tritonclient.http as th

    site = _triton_site()
    dist, libs = os.path.join(site, "pytriton", "tritonserver"), os.path.join(site, "nvidia_pytriton.libs")
    root = tmp_path_factory.mktemp("triton")
    build = et.exported(tmp_path_factory)
    repo = str(root / "repo")
    write_triton_repo(build, mf.load(build), repo, max_batch_size=BATCH)
    backends = _backend_dir(str(root), site)
    port = free_port()
    log_path = str(root / "tritonserver.log")
    cmd = [os.path.join(dist, "bin", "tritonserver"), f"--model-repository={repo}", f"--backend-directory={backends}",
           "--http-address=127.0.0.1", f"--http-port={port}", "--allow-grpc=false", "--allow-metrics=false",
           "--model-control-mode=explicit", *[f"--load-model={ensemble_name(f, q)}" for f, q in VARIANTS],
           "--backend-config=python,shm-default-byte-size=4194304",
           f"--backend-config=python,shm-region-prefix-name=edvit{os.getpid()}_"]
    env = {**os.environ, "LD_LIBRARY_PATH": libs, "PYTHONNOUSERSITE": "1"}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    client = th.InferenceServerClient(f"127.0.0.1:{port}", network_timeout=120.0)
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"tritonserver exited ({proc.returncode}):\n{open(log_path).read()[-4000:]}",
                            pytrace=False)
            try:
                if client.is_server_ready():
                    break
            except Exception:  # not listening yet
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"tritonserver not ready after 180 s:\n{open(log_path).read()[-4000:]}", pytrace=False)
            time.sleep(0.5)
        yield build, client, log_path
    finally:
        client.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the server and its Python-backend stubs
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


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
