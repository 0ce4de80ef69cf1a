"""edvit_tool.runtime.agent, the release steps a board runs for deploy/status/stop, driven as the host drives it:
`python -m edvit_tool.runtime.agent` with one JSON request on stdin, in a scratch root."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _agent(req: dict, stdin_extra: str = "", timeout: float = 30) -> dict:
    env = dict(os.environ, PYTHONPATH=REPO)
    r = subprocess.run([sys.executable, "-m", "edvit_tool.runtime.agent"], input=json.dumps(req) + "\n" + stdin_extra,
                       capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_assemble_switch_state_and_prune_keep_the_current_release(tmp_path):
    root = str(tmp_path / "root")
    src = tmp_path / "model.onnx"
    src.write_bytes(b"weights")
    for rel in ("r1", "r2", "r3"):
        res = _agent({"action": "assemble", "root": root, "release": rel, "links": [[str(src), "submodels/g0.onnx"]],
                      "files": {"release.json": json.dumps({"release": rel})}, "secrets": {"token": "t-" + rel}})
        assert res["ok"] and res["linked"] == 1
        token = os.path.join(res["dir"], "token")
        assert open(token).read() == "t-" + rel and oct(os.stat(token).st_mode & 0o777) == "0o600"
    again = _agent({"action": "assemble", "root": root, "release": "r1"})
    assert not again["ok"] and "already exists" in again["error"]
    assert _agent({"action": "switch", "root": root, "release": "r2"}) == {"previous": None, "current": "r2",
                                                                             "ok": True}
    st = _agent({"action": "state", "root": root})
    assert st["current"] == "r2" and st["releases"] == ["r1", "r2", "r3"] and st["workers"] == []
    assert st["current_info"] == {"release": "r2"}
    pruned = _agent({"action": "prune", "root": root, "keep": 0, "protect": ["r3"]})
    assert pruned["removed"] == ["r1"]
    assert _agent({"action": "state", "root": root})["releases"] == ["r2", "r3"]


@pytest.mark.parametrize("rel", ["../x", ".hidden", "a/b", ""])
def test_release_ids_that_would_escape_the_root_are_refused(tmp_path, rel):
    res = _agent({"action": "assemble", "root": str(tmp_path), "release": rel})
    assert not res["ok"] and "bad release id" in res["error"]


def test_a_link_target_outside_the_release_is_refused(tmp_path):
    src = tmp_path / "f"
    src.write_bytes(b"x")
    res = _agent({"action": "assemble", "root": str(tmp_path / "root"), "release": "r1",
                  "links": [[str(src), "../../escape"]]})
    assert not res["ok"] and "bad relative path" in res["error"]
    assert not os.path.exists(tmp_path / "escape") and not os.listdir(tmp_path / "root" / "releases")


def test_verify_removes_corrupt_copies_and_trees_and_reports_missing_ones(tmp_path):
    good, bad = tmp_path / "good.bin", tmp_path / "bad.bin"
    good.write_bytes(b"good")
    bad.write_bytes(b"flipped")
    tree = tmp_path / "tree"
    (tree / "pkg").mkdir(parents=True)
    (tree / "pkg" / "a.py").write_bytes(b"a = 1\n")
    res = _agent({"action": "verify", "root": str(tmp_path),
                  "files": {str(good): _sha(b"good"), str(bad): _sha(b"original"), str(tmp_path / "gone"): _sha(b"")},
                  "trees": {str(tree): {"pkg/a.py": _sha(b"a = 2\n")}}})
    assert res["ok"] and res["bad"] == [str(bad)] and res["missing"] == [str(tmp_path / "gone")]
    assert res["dropped_trees"] == [str(tree)]
    assert good.exists() and not bad.exists() and not tree.exists()


def test_lock_is_exclusive_until_the_holder_closes_stdin_and_names_the_holder(tmp_path):
    root = str(tmp_path / "root")
    env = dict(os.environ, PYTHONPATH=REPO)
    holder = subprocess.Popen([sys.executable, "-m", "edvit_tool.runtime.agent"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)
    try:
        holder.stdin.write(json.dumps({"action": "lock", "root": root, "wait": 0, "by": "deploy A"}) + "\n")
        holder.stdin.flush()
        assert json.loads(holder.stdout.readline()) == {"lock": os.path.join(root, "deploy.lock"), "ok": True}
        # a second taker (lock answers at once, then the request's stdin ends: it would release right away)
        res = _agent({"action": "lock", "root": root, "wait": 0.3, "by": "deploy B"})
        assert not res["ok"] and "another deploy holds" in res["error"] and "deploy A" in res["error"]
    finally:
        holder.stdin.close()
        holder.wait(10)
    assert _agent({"action": "lock", "root": root, "wait": 0, "by": "deploy B"})["ok"]


def test_bad_requests_answer_one_json_line():
    for req, needle in ((["not", "an", "object"], "JSON object"), ({"action": "nope", "root": "/tmp"}, "KeyError")):
        res = _agent(req)
        assert res["ok"] is False and needle in res["error"]
