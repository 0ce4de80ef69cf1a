"""The coordinator and `edvit-tool infer` against real local workers (subprocesses serving real ONNX artifacts).

Faults are real: SIGKILL (a dead board), SIGSTOP (a hung board), a stopped cluster, a wrong token. ~25 s
(the first run also exports the tiny build, ~5 s).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time

import numpy as np
import pytest

from workers import BUILD_CACHE, CLASSES, LocalWorkers, local_fused, make_coord_build, start_local_workers, \
    write_deployment

from edvit_tool.cli.main import main as cli_main
from edvit_tool.serve.coordinator import Coordinator, DeploymentError, NoBoardAnswered, softmax
from edvit_tool.errors import EdvitError

pytestmark = pytest.mark.slow
ONE_EACH = {"b0": ["g0"], "b1": ["g1"], "b2": ["g2"]}
DEADLINE_MS = 600


@pytest.fixture(scope="session")
def build(pytestconfig):
    return make_coord_build(str(pytestconfig.cache.mkdir(BUILD_CACHE)))


@pytest.fixture(scope="session")
def eval_set(build):
    z = np.load(os.path.join(build, "reference", "eval.npz"))
    return z["x"], z["y"]


@pytest.fixture(scope="module")
def cluster(build, tmp_path_factory):
    """Three healthy boards, one sub-model each; tests here must not kill them."""
    dep, workers = start_local_workers(build, ONE_EACH, "onnx/fp32", str(tmp_path_factory.mktemp("cluster")),
                                       deadline_ms=DEADLINE_MS)
    with workers:
        yield dep, workers


@pytest.fixture
def fresh(build, tmp_path):
    """Factory for a private cluster a test may break: fresh(assignment) -> (deployment path, workers)."""
    made = []

    def start(assignment, **kw):
        kw.setdefault("deadline_ms", DEADLINE_MS)
        dep, workers = start_local_workers(build, assignment, "onnx/fp32", str(tmp_path / f"c{len(made)}"), **kw)
        made.append(workers)
        return dep, workers

    yield start
    for w in made:
        w.close()


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


# -- accuracy ------------------------------------------------------------------------------------------------

def test_answers_and_accuracy_equal_the_same_artifacts_run_locally(cluster, build, eval_set):
    dep, _ = cluster
    x, y = eval_set
    ref_probs = softmax(local_fused(build, x).astype(np.float64))
    with Coordinator(dep) as coord:
        answers = []
        for i in range(0, len(x), 16):
            answers += coord.infer(x[i:i + 16], top_k=3)
        res = coord.run(x)
    assert len(answers) == len(x)
    assert not any(a.degraded for a in answers) and not res.degraded
    pred = np.array([a.top[0][0] for a in answers])
    np.testing.assert_array_equal(pred, ref_probs.argmax(1))
    np.testing.assert_allclose(res.probabilities, ref_probs, atol=1e-5)
    top3 = np.array([[c for c, _, _ in a.top] for a in answers])
    np.testing.assert_array_equal(top3, np.argsort(-ref_probs, axis=1, kind="stable")[:, :3])
    assert answers[0].top[0][1] == CLASSES[answers[0].top[0][0]]
    acc = float((pred == y).mean())
    assert acc == pytest.approx(float((ref_probs.argmax(1) == y).mean()))
    assert res.served_by == {"g0": "b0", "g1": "b1", "g2": "b2"}
    assert all(v is not None and v > 0 for v in res.board_ms.values())


def test_infer_cli_prints_accuracy_latency_and_top_k_from_an_npz(cluster, build, eval_set, capsys):
    dep, _ = cluster
    x, y = eval_set
    ref = local_fused(build, x).argmax(1)
    rc = cli_main(["infer", "--deployment", dep, os.path.join(build, "reference", "eval.npz"), "--json",
                   "--batch", "8", "--top-k", "2"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0
    s = out["summary"]
    assert s["images"] == len(x) and s["requests"] == len(x) // 8 and s["degraded"] == 0
    assert s["accuracy"] == pytest.approx(float((ref == y).mean()))
    assert 0 < s["latency_ms"]["p50"] <= s["latency_ms"]["p99"]
    assert [a["top"][0]["class"] for a in out["answers"]] == ref.tolist()
    assert all(len(a["top"]) == 2 and not a["degraded"] for a in out["answers"])

    rc = cli_main(["infer", "--deployment", dep, os.path.join(build, "reference", "eval.npz"), "--summary"])
    text = capsys.readouterr().out
    assert rc == 0 and "accuracy 75.00 %" in text and "p99" in text


def test_concurrent_callers_get_their_own_answers(cluster, build, eval_set):
    dep, _ = cluster
    x, _ = eval_set
    ref = local_fused(build, x).argmax(1)
    errors, got = [], {}
    with Coordinator(dep) as coord:
        def worker(t):
            try:
                for i in range(t, len(x), 4):
                    got[i] = coord.infer(x[i:i + 1])[0].top[0][0]
            except Exception as e:  # surfaced by the assert below
                errors.append(e)
        threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stats = coord.stats()
    assert not errors
    assert [got[i] for i in range(len(x))] == ref.tolist()
    assert stats["requests"] == len(x) and stats["images"] == len(x) and stats["degraded"] == 0


# -- faults --------------------------------------------------------------------------------------------------

def test_killed_board_degrades_every_later_answer_then_restart_recovers(fresh, build, eval_set):
    dep, workers = fresh(ONE_EACH)
    x, _ = eval_set
    full = local_fused(build, x[:1])
    without_g1 = local_fused(build, x[:1], drop={"g1"})
    assert not np.allclose(full, without_g1)  # the zero slice must matter for the check below to mean anything
    records, killed_at = [], []
    with Coordinator(dep, health_interval_s=0.2) as coord:
        for i in range(60):
            if i == 20:
                workers.kill("b1")
                killed_at.append(time.perf_counter())
            t0 = time.perf_counter()
            records.append((t0, coord.run(x[:1])))
        after = [r for t0, r in records if killed_at and t0 > killed_at[0]]
        assert len(after) == 40
        assert not any(r.degraded for _, r in records[:20])
        assert all(r.degraded and r.missing == ["g1"] for r in after)
        np.testing.assert_allclose(after[-1].logits, without_g1, atol=1e-4)  # zeros for the missing slice
        assert coord.stats()["boards"]["b1"]["up"] is False
        assert coord.stats()["degraded"] == 40

        workers.start(["b1"])  # same port: deployment.json stays valid
        t_end = time.monotonic() + 5
        while True:
            res = coord.run(x[:1])
            if not res.degraded or time.monotonic() > t_end:
                break
            time.sleep(0.1)
        assert not res.degraded, "answers still degraded 5 s after the worker came back"
        np.testing.assert_allclose(res.logits, full, atol=1e-4)


def test_replicas_keep_answers_whole_when_a_board_dies(fresh, build, eval_set):
    dep, workers = fresh({"b0": ["g0", "g1"], "b1": ["g1", "g2"], "b2": ["g2", "g0"]})
    x, _ = eval_set
    full = local_fused(build, x[:4])
    with Coordinator(dep) as coord:
        assert coord.replicas == {"g0": ["b0", "b2"], "g1": ["b0", "b1"], "g2": ["b1", "b2"]}
        assert coord.run(x[:4]).served_by == {"g0": "b0", "g1": "b0", "g2": "b1"}
        workers.kill("b0")
        for _ in range(10):
            res = coord.run(x[:4])
            assert not res.degraded and res.missing == []
            np.testing.assert_allclose(res.logits, full, atol=1e-4)
        assert res.served_by == {"g0": "b2", "g1": "b1", "g2": "b1"}
        workers.kill("b1")  # g1 had two boards, both dead now
        res = coord.run(x[:4])
        assert res.degraded and res.missing == ["g1"]


def _wait_stopped(pid: int, timeout: float = 5.0) -> None:
    """SIGSTOP is asynchronous: on a busy machine a worker thread could still answer one request after os.kill
    returned (seen under load). Wait until every thread of `pid` is in the stopped state."""
    t_end = time.monotonic() + timeout
    while True:
        states = []
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                states.append(f.read().rsplit(")", 1)[1].split()[0])
        if all(s == "T" for s in states):
            return
        assert time.monotonic() < t_end, f"worker {pid} not stopped {timeout} s after SIGSTOP: {states}"
        time.sleep(0.01)


def test_hung_board_is_skipped_after_missing_the_deadline_and_readmitted_when_it_answers(fresh, eval_set):
    dep, workers = fresh(ONE_EACH, deadline_ms=400)
    x, _ = eval_set
    with Coordinator(dep, health_interval_s=0.2) as coord:
        assert not coord.run(x[:1]).degraded
        os.kill(workers.pid("b2"), signal.SIGSTOP)  # alive, connected, never answers
        _wait_stopped(workers.pid("b2"))
        try:
            asked = []
            for _ in range(6):
                res = coord.run(x[:1])
                assert res.degraded and res.missing == ["g2"] and res.board_ms["b2"] is None
                asked.append(coord.stats()["boards"]["b2"]["requests"])
            b2 = coord.stats()["boards"]["b2"]
            assert not b2["up"] and b2["deadline_misses"] == 2 and "deadline" in b2["reason"]
            # after two misses the hung board is no longer asked (nor waited for): its request count stops
            assert asked[1] == asked[0] + 1 and asked[2:] == [asked[1]] * 4, asked
        finally:
            os.kill(workers.pid("b2"), signal.SIGCONT)
        t_end = time.monotonic() + 5
        while coord.run(x[:1]).degraded and time.monotonic() < t_end:
            time.sleep(0.1)
        assert not coord.run(x[:1]).degraded


# -- bad input and bad deployments ---------------------------------------------------------------------------

def test_all_boards_down_exits_2_and_points_at_status(build, tmp_path, eval_set, capsys):
    workers = LocalWorkers(build, ONE_EACH, "onnx/fp32", str(tmp_path), str(tmp_path / "token"))
    (tmp_path / "token").write_text("t0k3n\n")
    ports = dict(zip(ONE_EACH, _free_ports(3)))  # nothing listens there: a stopped cluster
    dep = write_deployment(str(tmp_path / "deployment.json"), build, workers, ports=ports)
    rc = cli_main(["infer", "--deployment", dep, os.path.join(build, "reference", "eval.npz"), "--summary"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "Error: no board answered" in err and "edvit-tool status" in err
    for b, p in ports.items():
        assert f"{b} (http://127.0.0.1:{p}" in err
    with Coordinator(dep) as coord, pytest.raises(NoBoardAnswered):
        coord.infer(eval_set[0][:1])
    assert coord.stats()["failed"] == 1


def test_one_board_down_answers_degraded_from_the_cli(fresh, build, capsys):
    dep, workers = fresh(ONE_EACH)
    workers.kill("b2")
    rc = cli_main(["infer", "--deployment", dep, os.path.join(build, "reference", "eval.npz"), "--batch", "32"])
    cap = capsys.readouterr()
    assert rc == 0
    lines = [ln for ln in cap.out.splitlines() if ln.startswith(os.path.join(build, "reference", "eval.npz["))]
    assert len(lines) == 64 and all("DEGRADED (missing g2)" in ln for ln in lines)
    assert "64 of 64 answers DEGRADED" in cap.err


def test_wrong_token_is_reported_per_board(cluster, build, tmp_path, eval_set):
    dep, _ = cluster
    doc = json.load(open(dep))
    bad = tmp_path / "token"
    bad.write_text("not-the-token\n")
    doc["token_file"] = str(bad)
    path = tmp_path / "deployment.json"
    path.write_text(json.dumps(doc))
    with Coordinator(str(path)) as coord, pytest.raises(NoBoardAnswered, match="HTTP 401"):
        coord.infer(eval_set[0][:1])


def test_images_are_resized_and_channel_matched_or_rejected_clearly(cluster, build, tmp_path, capsys):
    from PIL import Image

    dep, _ = cluster
    rng = np.random.default_rng(3)
    gray = rng.integers(0, 256, (32, 32), dtype=np.uint8)
    Image.fromarray(gray, "L").save(tmp_path / "gray32.png")
    Image.fromarray(np.repeat(gray[..., None], 3, axis=2), "RGB").save(tmp_path / "rgb32.png")
    Image.fromarray(gray[:16, :16], "L").save(tmp_path / "gray16.png")
    rc = cli_main(["infer", "--deployment", dep, str(tmp_path / "gray32.png"), str(tmp_path / "rgb32.png"),
                   str(tmp_path / "gray16.png"), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0
    a = out["answers"]
    assert [x["input"] for x in a] == [str(tmp_path / n) for n in ("gray32.png", "rgb32.png", "gray16.png")]
    # RGB with equal channels -> the same gray image -> the same answer
    assert a[0]["top"] == a[1]["top"]
    # a 16x16 image needs no resize: its answer is the local pipeline's on (x/255 - 0.5) / 0.5
    x16 = ((gray[:16, :16].astype(np.float32) / 255 - 0.5) / 0.5)[None, None]
    probs = softmax(local_fused(build, x16).astype(np.float64))[0]
    assert a[2]["top"][0]["class"] == int(probs.argmax())
    assert a[2]["top"][0]["probability"] == pytest.approx(float(probs.max()), abs=1e-5)

    two_channel = tmp_path / "two.npz"
    np.savez(two_channel, x=rng.integers(0, 256, (3, 16, 16, 2), dtype=np.uint8))
    rc = cli_main(["infer", "--deployment", dep, str(two_channel)])
    err = capsys.readouterr().err
    assert rc == 2
    assert str(two_channel) in err and "[3, 16, 16, 2]" in err and "2 channels" in err and "[1, 16, 16]" in err

    pre = tmp_path / "pre.npz"
    np.savez(pre, x=rng.standard_normal((2, 3, 16, 16)).astype(np.float32))
    rc = cli_main(["infer", "--deployment", dep, str(pre)])
    err = capsys.readouterr().err
    assert rc == 2 and str(pre) in err and "already preprocessed" in err

    rc = cli_main(["infer", "--deployment", dep, str(tmp_path / "nope.png")])
    assert rc == 2 and "nope.png: no such file" in capsys.readouterr().err


def test_coordinator_rejects_a_batch_of_the_wrong_shape(cluster):
    dep, _ = cluster
    with Coordinator(dep) as coord:
        with pytest.raises(EdvitError, match=r"batch has shape \[2, 3, 16, 16\].*\[B, 1, 16, 16\]"):
            coord.infer(np.zeros((2, 3, 16, 16), np.float32))


def test_bad_deployment_files_name_the_problem(cluster, tmp_path, capsys):
    dep, _ = cluster
    rc = cli_main(["infer", "--deployment", str(tmp_path / "missing.json"), "x.png"])
    assert rc == 2 and "missing.json: deployment file not found" in capsys.readouterr().err
    doc = json.load(open(dep))
    doc["boards"][0]["models"] = ["g7"]
    p = tmp_path / "d.json"
    p.write_text(json.dumps(doc))
    with pytest.raises(DeploymentError, match=r"boards\[0\] \(b0\): model 'g7' is not a sub-model"):
        Coordinator(str(p))
    doc = json.load(open(dep))
    doc["boards"] = [b for b in doc["boards"] if b["name"] != "b1"]
    doc.pop("replicas")
    p.write_text(json.dumps(doc))
    with pytest.raises(DeploymentError, match="sub-model g1 is on no board"):
        Coordinator(str(p))
    doc = json.load(open(dep))
    doc["build"]["manifest_sha256"] = "0" * 64
    p.write_text(json.dumps(doc))
    with pytest.raises(DeploymentError, match="changed since it was deployed"):
        Coordinator(str(p))


def test_a_batch_over_the_body_cap_is_split_into_requests_and_merged(cluster, build, eval_set, monkeypatch):
    import edvit_tool.serve.coordinator as coordinator

    dep, _ = cluster
    x, _ = eval_set
    monkeypatch.setattr(coordinator, "MAX_REQUEST_BYTES", 10 * x[0].nbytes)  # 10 images per request
    with Coordinator(dep) as coord:
        res = coord.run(x)
        assert coord.stats()["requests"] == 7 and coord.stats()["images"] == len(x)
    np.testing.assert_allclose(res.probabilities, softmax(local_fused(build, x).astype(np.float64)), atol=1e-5)
    assert not res.degraded and all(v is not None for v in res.board_ms.values())


# -- hardening (issue 11): bad slices, the deadline, answer size, TLS --------------------------------------------

def test_a_nan_or_fp64_slice_from_a_board_counts_as_missing(build, eval_set, tmp_path):
    from workers import make_broken_build

    broken = make_broken_build(build, str(tmp_path / "broken"), {"g1": "nan", "g2": "float64"})
    x, _ = eval_set
    dep, workers = start_local_workers(build, ONE_EACH, "onnx/fp32", str(tmp_path / "w"), deadline_ms=DEADLINE_MS,
                                       worker_build=broken)
    with workers, Coordinator(dep) as coord:
        res = coord.run(x[:3])
        assert res.degraded and res.missing == ["g1", "g2"] and res.served_by == {"g0": "b0"}
        np.testing.assert_allclose(res.logits, local_fused(build, x[:3], drop={"g1", "g2"}), atol=1e-4)
        assert np.isfinite(res.probabilities).all()
        boards = coord.stats()["boards"]
        assert boards["b1"]["failures"] == 1 and boards["b2"]["failures"] == 1
        assert boards["b1"]["up"] and boards["b2"]["up"]  # a broken build, not a dead board


def test_a_nan_batch_is_refused_before_any_board_is_asked(cluster, eval_set):
    dep, _ = cluster
    x = eval_set[0][:2].copy()
    x[0, 0, 0, 0] = np.nan
    with Coordinator(dep) as coord, pytest.raises(EdvitError, match="NaN or Inf"):
        coord.run(x)
    assert coord.stats()["requests"] == 0


def test_calls_still_queued_at_the_deadline_are_cancelled_unsent(fresh, eval_set):
    from edvit_tool.runtime.protocol import OipClient

    dep, workers = fresh(ONE_EACH, deadline_ms=400)
    x, _ = eval_set
    token = open(json.load(open(dep))["token_file"]).read().strip()
    counts = {}
    for b, port in workers.ports.items():
        with OipClient("127.0.0.1", port, token=token) as c:
            counts[b] = c.stats(ONE_EACH[b][0])["count"]
    # fan_out="pool": every call goes through the pool; one pool thread: b0's call blocks b1's and b2's
    with Coordinator(dep, max_workers=1, fan_out="pool") as coord:
        os.kill(workers.pid("b0"), signal.SIGSTOP)
        _wait_stopped(workers.pid("b0"))
        try:
            with pytest.raises(NoBoardAnswered, match="not sent"):
                coord.run(x[:1])
            boards = coord.stats()["boards"]
            assert boards["b0"]["deadline_misses"] == 1 and boards["b0"]["cancelled"] == 0
            assert boards["b1"]["cancelled"] == 1 and boards["b2"]["cancelled"] == 1
        finally:
            os.kill(workers.pid("b0"), signal.SIGCONT)
        time.sleep(1.0)  # time for the pool thread to come free and run whatever was still queued
    for b in ("b1", "b2"):  # the cancelled calls were never sent, not even late
        with OipClient("127.0.0.1", workers.ports[b], token=token) as c:
            assert c.stats(ONE_EACH[b][0])["count"] == counts[b], b


def test_requests_sent_by_the_caller_do_not_wait_for_a_busy_pool(fresh, eval_set):
    """The default fan-out: the calling thread sends every one-model board its request and reads the answers
    itself, so with a single pool thread and a frozen b0 the other boards still answer within the deadline."""
    dep, workers = fresh(ONE_EACH, deadline_ms=400)
    x, _ = eval_set
    with Coordinator(dep, max_workers=1) as coord:
        os.kill(workers.pid("b0"), signal.SIGSTOP)
        _wait_stopped(workers.pid("b0"))
        try:
            res = coord.run(x[:2])
        finally:
            os.kill(workers.pid("b0"), signal.SIGCONT)
        assert res.degraded and res.missing == ["g0"] and res.served_by == {"g1": "b1", "g2": "b2"}
        boards = coord.stats()["boards"]
        assert boards["b0"]["deadline_misses"] == 1 and boards["b0"]["cancelled"] == 0
        assert res.board_ms["b0"] is None and res.board_ms["b1"] is not None
        time.sleep(0.2)
        again = coord.run(x[:2])  # b0's late answer went with its closed connection, not into this request
        assert not again.degraded
        full = Coordinator(dep, fan_out="pool")
        with full:
            np.testing.assert_allclose(again.logits, full.run(x[:2]).logits, atol=1e-6)


def test_an_oversized_answer_is_refused_unread_and_the_slice_is_missing(cluster, build, eval_set, tmp_path):
    """A board that announces a 1 GiB answer (a fault a real worker cannot make: a stdlib server plays it)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Huge(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Length", str(1 << 30))
            self.end_headers()
            self.wfile.write(b"\0" * 65536)  # then stall: a client that reads it all would wait or fill memory

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Huge)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        dep, workers = cluster
        doc = json.load(open(dep))
        for b in doc["boards"]:
            if b["name"] == "b0":
                b["endpoint"] = f"http://127.0.0.1:{srv.server_address[1]}"
        path = tmp_path / "deployment.json"
        path.write_text(json.dumps(doc))
        x, _ = eval_set
        with Coordinator(str(path)) as coord:
            res = coord.run(x[:2])
            assert res.degraded and res.missing == ["g0"]
            assert coord.stats()["boards"]["b0"]["deadline_misses"] == 0  # refused at once, not timed out
        np.testing.assert_allclose(res.logits, local_fused(build, x[:2], drop={"g0"}), atol=1e-4)
    finally:
        srv.shutdown()
        srv.server_close()


def test_https_boards_are_verified_against_the_deployments_ca(build, eval_set, tmp_path):
    from tls_certs import make_self_signed

    cert, key = make_self_signed(str(tmp_path / "tls"))
    other, _ = make_self_signed(str(tmp_path / "other"), name="someone-else")
    dep, workers = start_local_workers(build, ONE_EACH, "onnx/fp32", str(tmp_path / "w"), deadline_ms=2000,
                                       extra_args=["--tls-cert", cert, "--tls-key", key])
    x, _ = eval_set
    with workers:
        doc = json.load(open(dep))
        for b in doc["boards"]:
            b["endpoint"] = b["endpoint"].replace("http://", "https://")
        p = tmp_path / "deployment.json"
        p.write_text(json.dumps(doc))
        with pytest.raises(DeploymentError, match="https:// but no CA file"):
            Coordinator(str(p))
        doc["tls_ca"] = cert
        p.write_text(json.dumps(doc))
        with Coordinator(str(p)) as coord:
            res = coord.run(x[:4])
        assert not res.degraded
        np.testing.assert_allclose(res.logits, local_fused(build, x[:4]), atol=1e-4)
        with Coordinator(str(p), tls_ca=other) as coord, pytest.raises(NoBoardAnswered,
                                                                       match="CERTIFICATE_VERIFY_FAILED"):
            coord.run(x[:1])
        doc["tls_ca"] = None
        plain = tmp_path / "plain.json"
        plain.write_text(json.dumps({**doc, "boards": [{**b, "endpoint": b["endpoint"].replace("https://",
                                                                                          "http://")}
                                                        for b in doc["boards"]]}))
        with Coordinator(str(plain)) as coord, pytest.raises(NoBoardAnswered):
            coord.run(x[:1])  # plain HTTP to a TLS worker gets nowhere
