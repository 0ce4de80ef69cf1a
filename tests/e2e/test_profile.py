"""`edvit-tool profile` / edvit_tool.profile against real sshd boards on loopback. ~60 s; needs root +
openssh-server; the boards run the slim board venv (no torch), so a torch import in the runtime fails here."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from edvit_tool.cluster import profile as prof
from edvit_tool.config.device_profile import load_device_profile
from edvit_tool.runtime import manifest as mf

EDVIT = os.path.join(os.path.dirname(sys.executable), "edvit-tool")


def _manifest(build):
    with open(os.path.join(build, "manifest.json")) as f:
        return json.load(f)


def _cli(args, b):
    """Run the real CLI against board b's key and known_hosts; returns the CompletedProcess."""
    cmd = [EDVIT, "profile", "--identity", b.identity, "--known-hosts", b.known_hosts, "--python", b.python, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_two_boards_give_sane_figures_and_a_rerun_uploads_nothing(boards, tiny_build, tmp_path):
    b0, b1 = boards(2)
    shas = {mf.artifact_key(a): a["sha256"] for a in _manifest(tiny_build)["artifacts"]}
    kw = dict(runs=10, warmup=2, identity=b0.identity, known_hosts=b0.known_hosts, python=b0.python)
    doc = prof.profile_many([("pi-a", b0.target), ("pi-b", b1.target)], tiny_build, **kw)

    assert set(doc["boards"]) == {"pi-a", "pi-b"}
    for name, b in doc["boards"].items():
        assert b["reachable"] and b["error"] is None, b["error"]
        p = b["probe"]
        assert p["arch"] == os.uname().machine and p["cores"] >= 1 and p["memory_total_mb"] > 0
        assert p["python_executable"].startswith(os.path.dirname(os.path.dirname(b0.python)))
        assert p["numpy"] and p["interpreters"]["onnxruntime"]["ok"] and p["interpreters"]["ai_edge_litert"]["ok"]
        assert b["uploads"]["files"] > 0 and b["uploads"]["bytes"] > 0
    assert len(doc["results"]) == 2 * len(shas)
    for r in doc["results"]:
        assert r["usable"] and r["error"] is None, r
        assert r["sha256"] == shas[r["artifact"]]
        lat = r["latency_ms"]
        assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"]
        assert r["load_ms"] > 0 and 5 < r["peak_rss_mb"] < 4096
        assert r["backend"] == "onnxruntime" and r["runs"] == 10 and r["threads"] == 1
        assert r["parity"]["ok"] and r["parity"]["max_abs_diff"] <= r["parity"]["tolerance"]

    # the board venv is the slim one: the runtime ran without torch
    rc = subprocess.run([b0.python, "-c", "import torch"], capture_output=True).returncode
    assert rc != 0

    out = str(tmp_path / "profiles.json")
    prof.write_profiles(doc, out)
    again = prof.profile_many([("pi-a", b0.target), ("pi-b", b1.target)], tiny_build, **kw)
    for b in again["boards"].values():
        assert b["uploads"]["files"] == 0 and b["uploads"]["bytes"] == 0 and b["uploads"]["cached"] > 0
    merged = prof.write_profiles(again, out)
    keys = [(r["board"], r["sha256"]) for r in merged["results"]]
    assert len(keys) == len(set(keys)) == 2 * len(shas)  # updated, not duplicated
    assert merged["build"]["manifest_sha256"] == mf.sha256_file(os.path.join(tiny_build, "manifest.json"))


@pytest.mark.slow
def test_a_board_under_a_cpu_quota_reports_it_and_still_profiles(boards, tiny_build):
    """The probe reads the board's cgroup CPU quota (the figure `assign` sees beside the latencies). How much
    slower such a board measures is a timing figure: it belongs to bench/, not to an assertion here."""
    fast, slow = boards(2, cpu_quota=[None, 0.25])
    doc = prof.profile_many([("fast", fast.target), ("slow", slow.target)], tiny_build, artifacts=["g0"],
                            runs=5, warmup=1, identity=fast.identity, known_hosts=fast.known_hosts,
                            python=fast.python)
    assert doc["boards"]["slow"]["probe"]["cpu_quota"] == pytest.approx(0.25)
    assert doc["boards"]["fast"]["probe"]["cpu_quota"] is None
    assert sorted(r["board"] for r in doc["results"]) == ["fast", "slow"]
    assert all(r["usable"] and r["latency_ms"]["p50"] > 0 for r in doc["results"])


@pytest.mark.slow
def test_unreachable_board_is_reported_while_the_others_finish(boards, tiny_build, tmp_path):
    from boards import free_port

    b, = boards(1)
    dead = f"pi@127.0.0.1:{free_port()}"
    out = tmp_path / "profiles.json"
    r = _cli(["--host", b.target, "--host", dead, "--name", "alive", "--name", "dead", "--build", tiny_build,
              "--runs", "5", "--warmup", "1", "--out", str(out), "--json"], b)
    assert r.returncode == 1, r.stderr
    doc = json.loads(r.stdout)
    assert doc["boards"]["dead"]["reachable"] is False
    assert "connection refused" in doc["boards"]["dead"]["error"] and dead in doc["boards"]["dead"]["error"]
    alive = [x for x in doc["results"] if x["board"] == "alive"]
    assert alive and all(x["usable"] for x in alive)
    assert not [x for x in doc["results"] if x["board"] == "dead"]
    assert "dead: UNREACHABLE" in r.stderr
    assert json.loads(out.read_text())["boards"]["dead"]["reachable"] is False  # written before exiting 1


@pytest.mark.slow
def test_tampered_reference_is_caught_by_parity_on_the_board(boards, tiny_build, tmp_path):
    from boards import tamper_reference

    bad = str(tmp_path / "tampered")
    shutil.copytree(tiny_build, bad)
    tamper_reference(bad, "g0", delta=0.5)
    b, = boards(1)
    out = tmp_path / "profiles.json"
    r = _cli(["--host", b.target, "--name", "pi", "--build", bad, "--artifacts", "g0,g1", "--runs", "5",
              "--out", str(out)], b)
    assert r.returncode == 1
    assert "PARITY FAILED" in r.stderr and "g0:onnx/fp32" in r.stderr
    assert "FAIL" in r.stdout  # the table row is flagged too
    res = {x["artifact"]: x for x in json.loads(out.read_text())["results"]}
    g0, g1 = res["g0:onnx/fp32"], res["g1:onnx/fp32"]
    assert g0["usable"] is False and g0["parity"]["ok"] is False
    assert g0["parity"]["max_abs_diff"] == pytest.approx(0.5, abs=1e-3)
    assert g0["latency_ms"]["p50"] > 0  # still measured, just not usable
    assert g1["usable"] is True and g1["parity"]["ok"] is True


@pytest.mark.slow
def test_changed_host_key_makes_profile_refuse_the_board(boards, tiny_build):
    b, = boards(1)
    b.new_host_key()
    b.restart()
    doc = prof.profile_many([("pi", b.target)], tiny_build, runs=2, warmup=0, identity=b.identity,
                            known_hosts=b.known_hosts, python=b.python)
    board = doc["boards"]["pi"]
    assert board["reachable"] is False and "HOST KEY CHANGED" in board["error"] and doc["results"] == []


@pytest.mark.slow
def test_cli_table_and_measured_device_profile(boards, tiny_build, tmp_path):
    b, = boards(1)
    pdir = tmp_path / "device_profiles"
    r = _cli(["--host", b.target, "--name", "lab-pi", "--build", tiny_build, "--artifacts", "fusion",
              "--runs", "5", "--out", str(tmp_path / "p.json"), "--write-profile", str(pdir)], b)
    assert r.returncode == 0, r.stderr
    assert "lab-pi" in r.stdout and "fusion:onnx/fp32" in r.stdout and "ok" in r.stdout
    dp = load_device_profile(str(pdir / "lab-pi.yaml"))
    assert dp.name == "lab-pi" and dp.arch == os.uname().machine and dp.python == b.python
    assert dp.preferred_backend == "ai-edge-litert" and 0 < dp.memory_budget_mb <= dp.memory_mb


def test_cli_usage_errors_exit_2(tiny_build, tmp_path):
    r = subprocess.run([EDVIT, "profile", "--build", tiny_build], capture_output=True, text=True)
    assert r.returncode == 2 and "--host" in r.stderr
    r = subprocess.run([EDVIT, "profile", "--host", "pi@127.0.0.1:1", "--build", tiny_build, "--artifacts",
                        "tflite/int8-static"], capture_output=True, text=True)
    assert r.returncode == 2 and "tflite/int8-static" in r.stderr and "g0:onnx/fp32" in r.stderr
    r = subprocess.run([EDVIT, "profile", "--host", "a", "--host", "b", "--name", "x", "--build", tiny_build],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "--name" in r.stderr
    r = subprocess.run([EDVIT, "profile", "--host", "pi@h", "--build", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 2 and "manifest.json" in r.stderr


def test_merge_updates_by_board_and_sha256_and_keeps_unreached_boards_results():
    def res(board, sha, p50):
        return {"board": board, "sha256": sha, "artifact": f"g0:{sha}", "usable": True, "latency_ms": {"p50": p50}}

    old = {"schema_version": 1, "build": {}, "boards": {"a": {"reachable": True, "probe": {"cores": 4}},
                                                        "b": {"reachable": True, "probe": {"cores": 2}}},
           "results": [res("a", "s1", 1.0), res("a", "s2", 2.0), res("b", "s1", 3.0)]}
    new = {"schema_version": 1, "build": {"path": "x"}, "boards": {
        "a": {"reachable": True, "error": None, "probe": {"cores": 8}},
        "b": {"reachable": False, "error": "refused", "probe": None}},
        "results": [res("a", "s1", 0.5)]}
    m = prof.merge(old, new)
    got = {(r["board"], r["sha256"]): r["latency_ms"]["p50"] for r in m["results"]}
    assert got == {("a", "s1"): 0.5, ("a", "s2"): 2.0, ("b", "s1"): 3.0}
    assert m["boards"]["a"]["probe"] == {"cores": 8}
    assert m["boards"]["b"]["reachable"] is False and m["boards"]["b"]["probe"] == {"cores": 2}
    assert m["build"] == {"path": "x"}


@pytest.mark.slow
def test_a_bench_over_its_timeout_is_reported_and_stopped_on_the_board(boards, tiny_build):
    import pwd
    import time

    from boards import _pids_of_uid

    b, = boards(1)
    out = prof.profile_board(b.target, tiny_build, artifacts=["g0"], runs=10_000_000, warmup=0,
                             identity=b.identity, known_hosts=b.known_hosts, python=b.python, bench_timeout=2)
    r, = out["results"]
    assert r["usable"] is False and "did not finish within 2s" in r["error"]

    def benches():
        found = []
        for pid in _pids_of_uid(pwd.getpwnam(b.user).pw_uid):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if b"edvit_tool.runtime.bench" in f.read():
                        found.append(pid)
            except OSError:
                continue
        return found

    deadline = time.monotonic() + 10
    while benches() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert benches() == []  # the board's `timeout` ended it; it would skew later measurements otherwise
