"""`edvit-tool serve` as a real subprocess in front of real local workers, called with a stock tritonclient.http
client: live / ready / metadata / infer (binary and JSON) give the coordinator's answers; /metrics counts them;
bearer token enforced; a dead board shows up as `degraded`; SIGTERM exits 0. ~10 s."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest

from workers import BUILD_CACHE, REPO, make_coord_build, start_local_workers

from edvit_tool.serve.coordinator import Coordinator

tritonhttp = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

pytestmark = pytest.mark.slow
ASSIGN = {"b0": ["g0"], "b1": ["g1"], "b2": ["g2"]}
SERVE_TOKEN = "serve-test-token"


@pytest.fixture(scope="module")
def stack(tmp_path_factory, pytestconfig):
    build = make_coord_build(str(pytestconfig.cache.mkdir(BUILD_CACHE)))
    tmp = tmp_path_factory.mktemp("serve")
    dep, workers = start_local_workers(build, ASSIGN, "onnx/fp32", str(tmp / "workers"), deadline_ms=1000)
    token_file = tmp / "serve-token"
    token_file.write_text(SERVE_TOKEN + "\n")
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "edvit_tool.cli.main", "serve", "--deployment", dep,
                             "--port", "0", "--json", "--token-file", str(token_file), "--max-body-mb", "1"],
                            stdout=subprocess.PIPE, stderr=open(tmp / "serve.log", "wb"), text=True, env=env)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        line = proc.stdout.readline() if ready else ""
        assert line, f"serve printed nothing (rc={proc.poll()}): {(tmp / 'serve.log').read_text()[-2000:]}"
        event = json.loads(line)
        assert event["event"] == "ready" and "edvit" in event["models"]
        url = f"127.0.0.1:{event['port']}"
        client = tritonhttp.InferenceServerClient(url)
        yield {"build": build, "dep": dep, "workers": workers, "proc": proc, "url": url, "client": client,
               "x": np.load(os.path.join(build, "reference", "eval.npz"))["x"]}
        client.close()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        workers.close()


AUTH = {"Authorization": f"Bearer {SERVE_TOKEN}"}


def _infer(client, x, binary=True, outputs=("logits", "probabilities", "degraded"), headers=None):
    # a fresh dict per call: tritonclient adds Inference-Header-Content-Length to the dict it is given
    headers = dict(AUTH) if headers is None else headers
    inp = tritonhttp.InferInput("pixel_values", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    outs = [tritonhttp.InferRequestedOutput(n, binary_data=binary) for n in outputs]
    return client.infer("edvit", [inp], outputs=outs, headers=headers)


def _metrics(url) -> dict:
    req = urllib.request.Request(f"http://{url}/metrics", headers=AUTH)
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def test_health_and_metadata_through_tritonclient(stack):
    c = stack["client"]
    assert c.is_server_live() and c.is_server_ready()
    assert c.is_model_ready("edvit", headers=AUTH)
    meta = c.get_model_metadata("edvit", headers=AUTH)
    assert meta["inputs"] == [{"name": "pixel_values", "datatype": "FP32", "shape": [-1, 1, 16, 16]}]
    assert [(o["name"], o["datatype"], o["shape"]) for o in meta["outputs"]] == [
        ("logits", "FP32", [-1, 6]), ("probabilities", "FP32", [-1, 6]), ("degraded", "BOOL", [-1])]
    assert c.get_model_metadata("tiny-coord", headers=AUTH)["name"] == "tiny-coord"  # the build's model name
    with pytest.raises(InferenceServerException, match="unknown model"):
        c.get_model_metadata("nope", headers=AUTH)


def test_tritonclient_answers_equal_the_coordinators_binary_and_json(stack):
    x = stack["x"][:5]
    with Coordinator(stack["dep"]) as coord:
        want = coord.run(x)
    for binary in (True, False):
        r = _infer(stack["client"], x, binary=binary)
        np.testing.assert_allclose(r.as_numpy("logits"), want.logits, atol=1e-5)
        np.testing.assert_allclose(r.as_numpy("probabilities"), want.probabilities, atol=1e-6)
        assert r.as_numpy("degraded").tolist() == [False] * 5
    only = _infer(stack["client"], x, outputs=("probabilities",))
    assert only.as_numpy("logits") is None and only.as_numpy("probabilities").shape == (5, 6)


def test_metrics_count_requests_and_latency(stack):
    before = _metrics(stack["url"])
    for i in range(7):
        _infer(stack["client"], stack["x"][i:i + 2])
    after = _metrics(stack["url"])
    assert after["edvit_requests_total"] - before["edvit_requests_total"] == 7
    assert after["edvit_images_total"] - before["edvit_images_total"] == 14
    assert after["edvit_request_latency_seconds_count"] - before["edvit_request_latency_seconds_count"] == 7
    assert after['edvit_request_latency_seconds_bucket{le="+Inf"}'] == after["edvit_request_latency_seconds_count"]
    assert after['edvit_request_latency_seconds_bucket{le="1.0"}'] <= after['edvit_request_latency_seconds_bucket{le="+Inf"}']
    assert after["edvit_request_latency_seconds_sum"] > before["edvit_request_latency_seconds_sum"]
    assert all(after[f'edvit_board_up{{board="{b}"}}'] == 1 for b in ASSIGN)
    assert after["edvit_degraded_total"] == 0


def test_token_is_required_and_bad_input_is_a_400(stack):
    c = stack["client"]
    with pytest.raises(InferenceServerException, match="bearer token"):
        _infer(c, stack["x"][:1], headers={})
    with pytest.raises(InferenceServerException, match="bearer token"):
        _infer(c, stack["x"][:1], headers={"Authorization": "Bearer wrong"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"http://{stack['url']}/metrics", timeout=5)
    assert e.value.code == 401
    with pytest.raises(InferenceServerException, match=r"\[B, 1, 16, 16\]"):
        _infer(c, np.zeros((1, 3, 16, 16), np.float32))
    with pytest.raises(InferenceServerException, match="limit"):  # --max-body-mb 1
        _infer(c, np.zeros((1100, 1, 16, 16), np.float32))
    assert c.is_server_ready()  # still serving


def test_non_finite_pixels_are_a_400(stack):
    x = stack["x"][:2].copy()
    x[1, 0, 5, 5] = np.inf
    for binary in (True, False):
        with pytest.raises(InferenceServerException, match="NaN or Inf") as e:
            _infer(stack["client"], x, binary=binary)
        assert int(e.value.status()) == 400


def _serve(dep, tmp, *args):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "edvit_tool.cli.main", "serve", "--deployment", dep, *args],
                          capture_output=True, text=True, env=env, timeout=60)


def test_a_non_loopback_bind_without_a_token_is_refused(stack, tmp_path):
    r = _serve(stack["dep"], tmp_path, "--host", "0.0.0.0", "--port", "0")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "Error: --host 0.0.0.0: other machines could call this endpoint without a token" in r.stderr
    assert "--token-file" in r.stderr and "--insecure" in r.stderr
    r = _serve(stack["dep"], tmp_path, "--port", "0", "--tls-cert", "x.pem")
    assert r.returncode == 2 and "--tls-cert and --tls-key go together" in r.stderr


def test_serve_over_tls_answers_verified_clients(stack, tmp_path):
    import ssl

    from tls_certs import make_self_signed

    from edvit_tool.runtime.protocol import OipClient, client_tls_context

    cert, key = make_self_signed(str(tmp_path))
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "edvit_tool.cli.main", "serve", "--deployment", stack["dep"],
                             "--port", "0", "--json", "--tls-cert", cert, "--tls-key", key],
                            stdout=subprocess.PIPE, stderr=open(tmp_path / "serve.log", "wb"), text=True, env=env)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        event = json.loads(proc.stdout.readline() if ready else "{}")
        assert event.get("tls") is True and event["url"].startswith("https://"), event
        x = stack["x"][:3]
        with Coordinator(stack["dep"]) as coord:
            want = coord.run(x)
        with OipClient("127.0.0.1", event["port"], ssl_context=client_tls_context(cert)) as c:
            assert c.ready()
            got = c.infer("edvit", {"pixel_values": x}, ["probabilities"])["probabilities"]
        np.testing.assert_allclose(got, want.probabilities, atol=1e-6)
        ctx = ssl.create_default_context(cafile=cert)
        with urllib.request.urlopen(f"https://127.0.0.1:{event['port']}/v2/health/live", timeout=5,
                                    context=ctx) as r:
            assert r.status == 200
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            urllib.request.urlopen(f"https://127.0.0.1:{event['port']}/v2/health/live", timeout=5,
                                   context=ssl.create_default_context())
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0


def test_dead_board_gives_degraded_answers_then_sigterm_exits_cleanly(stack):
    stack["workers"].kill("b1")
    r = _infer(stack["client"], stack["x"][:3])
    assert r.as_numpy("degraded").tolist() == [True] * 3
    assert r.get_response()  # a full answer despite the dead board
    m = _metrics(stack["url"])
    assert m["edvit_degraded_total"] >= 1 and m['edvit_board_up{board="b1"}'] == 0
    proc = stack["proc"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
