"""boards.yaml loading and validation (fast: < 1 s)."""

from __future__ import annotations

import os
import textwrap

import pytest

from edvit_tool.cluster.assign import Plan
from edvit_tool.config.boards import boards_from_yaml, validate_plan_boards
from edvit_tool.errors import EdvitError, RecipeError


@pytest.fixture
def cluster(tmp_path):
    """A directory with a device profile YAML and a key file, as a boards.yaml would reference them."""
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "tiny.yaml").write_text(
        "name: tiny\narch: aarch64\ncores: 4\nmemory_mb: 512\nmemory_budget_mb: 256\n"
        "preferred_backend: onnxruntime\nthreads: 2\npython: /usr/bin/python3.11\n")
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "id_ed25519").write_text("not a real key; only its path is checked here\n")
    return tmp_path


def _write(tmp_path, body: str) -> str:
    path = tmp_path / "boards.yaml"
    path.write_text(textwrap.dedent(body))
    return str(path)


def test_valid_file_resolves_defaults_paths_and_profile(cluster):
    path = _write(cluster, """
        boards:
          - name: pi-1
            host: 127.0.0.1
            port: 2201
            user: pi
            identity: keys/id_ed25519
            device_profile: profiles/tiny.yaml
          - name: pi-2
            host: 127.0.0.1
            user: pi
            device_profile: profiles/tiny.yaml
            python: /opt/venv/bin/python
            address: 127.0.0.2
            worker_port: 8601
    """)
    b1, b2 = boards_from_yaml(path)
    assert b1.target == "pi@127.0.0.1:2201"
    assert b1.identity == str(cluster / "keys" / "id_ed25519")
    # python comes from the device profile unless the board names one
    assert (b1.python, b1.address, b1.worker_port) == ("/usr/bin/python3.11", "127.0.0.1", 8500)
    assert b1.memory_budget_mb == 256.0 and b1.cores == 4
    assert b1.device_profile_path == str(cluster / "profiles" / "tiny.yaml")
    assert b2.target == "pi@127.0.0.1:22"
    assert b2.identity is None
    assert (b2.python, b2.address, b2.worker_port) == ("/opt/venv/bin/python", "127.0.0.2", 8601)
    assert b2.endpoint == "127.0.0.2:8601"
    d = b1.to_dict()
    assert d["target"] == "pi@127.0.0.1:2201" and d["memory_budget_mb"] == 256.0


def test_identity_tilde_is_expanded(cluster, monkeypatch):
    monkeypatch.setenv("HOME", str(cluster / "keys"))
    path = _write(cluster, """
        boards:
          - {name: a, host: h1, user: pi, identity: ~/id_ed25519, device_profile: profiles/tiny.yaml}
    """)
    (board,) = boards_from_yaml(path)
    assert board.identity == str(cluster / "keys" / "id_ed25519")


def test_every_bad_key_is_reported_in_one_error(cluster):
    path = _write(cluster, """
        boards:
          - name: pi-1
            host: h1
            port: x
            user: pi
            device_profile: profiles/tiny.yaml
          - name: pi-2
            hots: h2
            user: pi
            device_profile: profiles/tiny.yaml
            worker_port: 70000
          - name: pi-1
            host: h3
            user: pi
            device_profile: no-such-profile
            identity: keys/missing
        extra: 1
    """)
    with pytest.raises(RecipeError) as err:
        boards_from_yaml(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: ")
    for part in [
        "boards[0].port must be an int in 1..65535, got 'x'",
        "boards[1]: unknown key 'hots' (did you mean 'host'?); valid keys: name, host, port, user, identity, "
        "device_profile, python, address, worker_port",
        "boards[1].host is missing",
        "boards[1].worker_port must be an int in 1..65535, got 70000",
        "boards[2].name 'pi-1' is a duplicate of boards[0].name",
        "boards[2].device_profile: device_profiles/no-such-profile.yaml: device profile not found",
        "boards[2].identity: key file",
        "unknown top-level key 'extra'",
    ]:
        assert part in msg, f"missing {part!r} in {msg}"
    assert "\n" not in msg


@pytest.mark.parametrize("body, expect", [
    ("boards: []\n", "boards must be a non-empty list"),
    ("- name: a\n", "must be a mapping with a `boards:` list"),
    ("boards:\n  - just-a-string\n", "boards[0] must be a mapping"),
    ("boards: [\n", "not valid YAML"),
    ("boards:\n  - {name: 'a b', host: h, user: pi, device_profile: profiles/tiny.yaml}\n",
     "boards[0].name must be letters"),
])
def test_malformed_files_name_the_problem(cluster, body, expect):
    path = _write(cluster, body)
    with pytest.raises(RecipeError) as err:
        boards_from_yaml(path)
    assert expect in str(err.value)


def test_unsafe_host_user_and_bool_port_are_all_rejected(cluster):
    path = _write(cluster, "boards:\n  - {name: a, host: 'h;rm', user: 'p i', device_profile: profiles/tiny.yaml, "
                           "port: true}\n")
    msg = str(pytest.raises(RecipeError, boards_from_yaml, path).value)
    assert "boards[0].host must be a host name or IP address, got 'h;rm'" in msg
    assert "boards[0].user must be a login name" in msg
    assert "boards[0].port must be an int in 1..65535, got True" in msg


def test_two_workers_on_one_endpoint_are_rejected(cluster):
    path = _write(cluster, """
        boards:
          - {name: a, host: 127.0.0.1, port: 2201, user: pi, device_profile: profiles/tiny.yaml}
          - {name: b, host: 127.0.0.1, port: 2202, user: pi, device_profile: profiles/tiny.yaml}
    """)
    msg = str(pytest.raises(RecipeError, boards_from_yaml, path).value)
    assert "boards[1]: worker endpoint 127.0.0.1:8500 is also used by boards[0]" in msg


def test_device_profile_by_name_comes_from_device_profiles_dir(cluster):
    path = _write(cluster, "boards:\n  - {name: a, host: h, user: pi, device_profile: rpi4b}\n")
    (board,) = boards_from_yaml(path)
    assert board.device_profile == "rpi4b" and board.device_profile_path.endswith("device_profiles/rpi4b.yaml")
    assert board.memory_budget_mb > 0 and board.cores >= 1


def test_missing_file_is_a_recipe_error(tmp_path):
    with pytest.raises(RecipeError, match="not found"):
        boards_from_yaml(str(tmp_path / "nope.yaml"))


def test_bad_device_profile_file_is_named(cluster):
    (cluster / "profiles" / "bad.yaml").write_text("name: bad\narch: x86_64\ncores: 2\nmemory_mb: 512\n"
                                                   "memory_budget_mb: -1\npreferred_backend: onnxruntime\n"
                                                   "threads: 2\n")
    path = _write(cluster, "boards:\n  - {name: a, host: h, user: pi, device_profile: profiles/bad.yaml}\n")
    msg = str(pytest.raises(RecipeError, boards_from_yaml, path).value)
    assert "boards[0].device_profile:" in msg and "memory_budget_mb" in msg


def test_plan_for_a_board_not_in_boards_yaml_is_rejected(cluster):
    path = _write(cluster, "boards:\n  - {name: pi-1, host: h, user: pi, device_profile: profiles/tiny.yaml}\n")
    boards = boards_from_yaml(path)
    good = {"placements": [{"submodel": "g0", "board": "pi-1"}], "boards": {"pi-1": {}}}
    validate_plan_boards(good, boards)
    bad = {"placements": [{"submodel": "g0", "board": "pi-1"}, {"submodel": "g1", "board": "pi-9"}],
           "boards": {"pi-1": {}, "pi-9": {}}}
    with pytest.raises(EdvitError, match=r"board\(s\) pi-9 that boards.yaml does not define \(it has: pi-1\)"):
        validate_plan_boards(bad, boards)
    plan = Plan({"g0": ["pi-1", "pi-7"]}, 1.0, {"pi-1": 1.0, "pi-7": 1.0}, "milp-highs")
    with pytest.raises(EdvitError, match="pi-7"):
        validate_plan_boards(plan, boards, boards_file=os.path.basename(path))


def test_two_boards_on_one_login_get_a_root_each_and_an_explicit_shared_root_is_refused(cluster):
    """Two workers on one bigger machine (issue 11, item 5): by default each board's releases live under its own
    ~/.edvit/boards/<name>, so they never collide; the same `root` given twice is refused, naming both."""
    path = _write(cluster, """
        boards:
          - {name: big-a, host: 10.0.0.9, user: pi, device_profile: profiles/tiny.yaml, worker_port: 8500}
          - {name: big-b, host: 10.0.0.9, user: pi, device_profile: profiles/tiny.yaml, worker_port: 8501}
          - {name: big-c, host: 10.0.0.9, user: pi, device_profile: profiles/tiny.yaml, worker_port: 8502,
             root: /srv/edvit/c}
    """)
    roots = [b.root for b in boards_from_yaml(path)]
    assert roots == ["~/.edvit/boards/big-a", "~/.edvit/boards/big-b", "/srv/edvit/c"]
    path = _write(cluster, """
        boards:
          - {name: big-a, host: 10.0.0.9, user: pi, device_profile: profiles/tiny.yaml, worker_port: 8500,
             root: ~/edvit}
          - {name: big-b, host: 10.0.0.9, user: pi, device_profile: profiles/tiny.yaml, worker_port: 8501,
             root: ~/edvit/}
    """)
    with pytest.raises(RecipeError) as e:
        boards_from_yaml(path)
    assert "boards[1]: same login pi@10.0.0.9:22 and root ~/edvit as boards[0]" in str(e.value)


@pytest.mark.parametrize("root", ["../x", "~/a/../../b", "relative/dir", "~other/x", "~", "/tmp/$(id)"])
def test_a_root_outside_the_allowed_shape_is_refused(cluster, root):
    path = _write(cluster, f"""
        boards:
          - {{name: pi-1, host: 10.0.0.9, user: pi, device_profile: profiles/tiny.yaml, root: '{root}'}}
    """)
    with pytest.raises(RecipeError, match=r"boards\[0\]\.root must be a directory path"):
        boards_from_yaml(path)
