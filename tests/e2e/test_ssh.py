"""SshSession against real sshd boards on loopback (tests/boards.py). ~10 s; needs root + openssh-server."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import threading

import pytest

from edvit_tool.errors import SshError
from edvit_tool.cluster.ssh import SshSession, parse_target, quote_argv


# -- pure -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("target, expected", [
    ("pi@host:2222", ("pi", "host", 2222)),
    ("pi@10.0.0.21", ("pi", "10.0.0.21", None)),
    ("host", (None, "host", None)),
    ("me@[::1]:2201", ("me", "::1", 2201)),
    ("[fe80::1]", (None, "fe80::1", None)),
])
def test_parse_target_splits_user_host_port(target, expected):
    assert parse_target(target) == expected


@pytest.mark.parametrize("bad", ["", "pi@", "@host", "pi@host:0", "pi@host:99999", "pi@host:abc", "pi@ho st"])
def test_parse_target_rejects_malformed_targets_naming_them(bad):
    with pytest.raises(SshError) as e:
        parse_target(bad)
    assert repr(bad) in str(e.value) or "empty" in str(e.value)


def test_quote_argv_refuses_a_plain_string():
    with pytest.raises(TypeError):
        quote_argv("rm -rf /")


# -- against real boards -------------------------------------------------------------------------------------------

def _session(b, **kw) -> SshSession:
    kw.setdefault("identity", b.identity)
    kw.setdefault("known_hosts", b.known_hosts)
    return SshSession(b.target, **kw)


def _fingerprint(pub_line: str) -> str:
    """OpenSSH's own SHA256 fingerprint of a public key line (what a user sees with ssh-keygen -lf)."""
    out = subprocess.run(["ssh-keygen", "-lf", "-"], input=pub_line, capture_output=True, text=True, check=True)
    return out.stdout.split()[1]


@pytest.mark.slow
def test_exec_returns_exit_code_stdout_and_stderr(boards):
    b, = boards(1)
    with _session(b) as s:
        rc, out, err = s.exec(["sh", "-c", "echo out; echo err >&2; exit 3"], timeout=10, check=False)
        assert (rc, out, err) == (3, "out\n", "err\n")
        assert s.exec(["id", "-un"], timeout=10)[1].strip() == b.user
        with pytest.raises(SshError) as e:
            s.exec(["sh", "-c", "echo boom >&2; exit 4"], timeout=10)
        assert "exited with 4" in str(e.value) and "boom" in str(e.value) and b.target.split("@")[1] in str(e.value)
        assert s.exec(["cat"], timeout=10, input="from stdin\n")[1] == "from stdin\n"
        sock = s.client.get_transport().sock
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


@pytest.mark.slow
def test_nasty_arguments_arrive_verbatim_and_are_never_run(boards, tmp_path):
    b, = boards(1)
    marker = f"/tmp/edvit-pwned-{os.getpid()}"
    nasty = ["two words", "it's", '"double"', f"$(touch {marker})", f"; touch {marker}", f"`touch {marker}`",
             "*", "~", "a\nb", "tab\there", "ünïcødé", "", "--", "-c", "back\\slash", "&& exit 7 ||", "$HOME"]
    with _session(b) as s:
        rc, out, _ = s.exec([b.python, "-c", "import json, sys; print(json.dumps(sys.argv[1:]))", *nasty], timeout=20)
    import json

    assert json.loads(out) == nasty
    assert not os.path.exists(marker)


@pytest.mark.slow
def test_exec_timeout_raises_and_the_session_stays_usable(boards):
    b, = boards(1)
    with _session(b) as s:
        with pytest.raises(SshError) as e:
            s.exec(["sleep", "30"], timeout=0.5)
        assert "did not finish within 0.5s" in str(e.value)
        assert s.exec(["echo", "still here"], timeout=10)[1] == "still here\n"


@pytest.mark.slow
def test_put_get_exists_mkdir_round_trip(boards, tmp_path):
    b, = boards(1)
    data = os.urandom(3 << 20) + b"\0end"
    local = tmp_path / "blob.bin"
    local.write_bytes(data)
    with _session(b) as s:
        s.mkdir_p(".edvit/t/a/b")
        assert s.exists(".edvit/t/a/b") and not s.exists(".edvit/t/nope")
        s.put(str(local), ".edvit/t/a/b/blob.bin")
        assert s.get_bytes(".edvit/t/a/b/blob.bin") == data
        s.put_bytes(b"hello", ".edvit/t/new/dir/x.txt")
        assert s.get_bytes(f"{b.home}/.edvit/t/new/dir/x.txt") == b"hello"
        # files land in the board user's home, owned by it, and no temp files are left behind
        out = s.exec(["sh", "-c", "ls -A ~/.edvit/t/a/b; stat -c %U ~/.edvit/t/a/b/blob.bin"], timeout=10)[1]
        assert out.split() == ["blob.bin", b.user]
        with pytest.raises(SshError, match="not found"):
            s.get_bytes(".edvit/t/missing")


@pytest.mark.slow
def test_upload_cached_uploads_once_by_sha256(boards, tmp_path):
    b, = boards(1)
    local = tmp_path / "model.onnx"
    local.write_bytes(os.urandom(100_000))
    sha = hashlib.sha256(local.read_bytes()).hexdigest()
    with _session(b) as s:
        remote, uploaded = s.upload_cached(str(local), sha)
        assert uploaded and remote == f"{b.home}/.edvit/cache/{sha}/model.onnx"
        assert s.exec(["sha256sum", remote], timeout=10)[1].split()[0] == sha
        assert s.upload_cached(str(local), sha) == (remote, False)
        tree = {"pkg/__init__.py": b"x = 1\n", "pkg/sub/mod.py": str(local)}
        rdir, up1 = s.upload_tree(tree)
        assert up1 and s.upload_tree(tree) == (rdir, False)
        assert s.get_bytes(f"{rdir}/pkg/__init__.py") == b"x = 1\n"
        assert s.exec(["sha256sum", f"{rdir}/pkg/sub/mod.py"], timeout=10)[1].split()[0] == sha
        changed, up2 = s.upload_tree({**tree, "pkg/__init__.py": b"x = 2\n"})
        assert up2 and changed != rdir


@pytest.mark.slow
def test_accept_new_adds_the_key_then_strict_accepts_it(boards):
    b, = boards(1, known_hosts="empty")
    assert open(b.known_hosts).read() == ""
    with _session(b, host_key_policy="accept-new") as s:
        s.exec(["true"], timeout=10)
    lines = open(b.known_hosts).read().splitlines()
    assert lines == [b.known_hosts_line()]
    with _session(b, host_key_policy="strict") as s:  # now known: strict connects
        s.exec(["true"], timeout=10)
    assert open(b.known_hosts).read().splitlines() == lines  # not added twice


@pytest.mark.slow
def test_strict_refuses_an_unknown_key_showing_its_fingerprint(boards):
    b, = boards(1, known_hosts="empty")
    with pytest.raises(SshError) as e:
        _session(b, host_key_policy="strict").connect()
    assert _fingerprint(b.host_key_pub) in str(e.value) and "strict" in str(e.value)
    assert open(b.known_hosts).read() == ""


@pytest.mark.slow
def test_changed_host_key_is_refused_with_fingerprint_and_line_to_fix(boards):
    b, = boards(1)
    before = open(b.known_hosts).read()
    old_fp = _fingerprint(b.host_key_pub)
    b.new_host_key()
    b.restart()
    new_fp = _fingerprint(b.host_key_pub)
    assert new_fp != old_fp
    for policy in ("accept-new", "strict"):
        with pytest.raises(SshError) as e:
            _session(b, host_key_policy=policy).connect()
        msg = str(e.value)
        assert "HOST KEY CHANGED" in msg and new_fp in msg and old_fp in msg
        assert f"{b.known_hosts}:1" in msg and f"ssh-keygen -R '[127.0.0.1]:{b.port}'" in msg
    assert open(b.known_hosts).read() == before  # never "fixed" behind the user's back


@pytest.mark.slow
def test_connection_refused_names_the_target(boards):
    from boards import free_port

    port = free_port()
    with pytest.raises(SshError) as e:
        SshSession(f"pi@127.0.0.1:{port}", connect_timeout=3).connect()
    assert f"pi@127.0.0.1:{port}" in str(e.value) and "connection refused" in str(e.value)


def test_a_silent_server_times_out_instead_of_hanging(tmp_path):
    """A port that accepts TCP but never speaks SSH (a firewall, a wrong service)."""
    key = tmp_path / "id_ed25519"  # a key to offer, so the session gets as far as the handshake
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    held = []
    t = threading.Thread(target=lambda: held.append(srv.accept()), daemon=True)
    t.start()
    try:
        with pytest.raises(SshError) as e:
            SshSession(f"pi@127.0.0.1:{port}", connect_timeout=0.5, known_hosts=os.devnull,
                       identity=str(key)).connect()
        assert f"pi@127.0.0.1:{port}" in str(e.value) and "handshake failed" in str(e.value)
    finally:
        for conn, _ in held:
            conn.close()
        srv.close()


@pytest.mark.slow
def test_auth_failure_names_the_key_tried(boards, tmp_path):
    b, = boards(1)
    other = tmp_path / "not_authorized"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    with pytest.raises(SshError) as e:
        _session(b, identity=str(other)).connect()
    assert "authentication failed" in str(e.value) and str(other) in str(e.value) and b.target.split("@")[1] in str(e.value)
    with pytest.raises(SshError, match="identity file .* not found"):
        _session(b, identity=str(tmp_path / "missing")).connect()


@pytest.mark.slow
def test_ssh_config_alias_supplies_host_port_user_and_key(boards, tmp_path):
    b, = boards(1)
    cfg = tmp_path / "ssh_config"
    cfg.write_text(f"Host myboard\n  HostName 127.0.0.1\n  Port {b.port}\n  User {b.user}\n  IdentityFile {b.identity}\n")
    with SshSession("myboard", ssh_config=str(cfg), known_hosts=b.known_hosts, host_key_policy="strict",
                    allow_agent=False) as s:
        assert s.where == b.target
        assert s.exec(["id", "-un"], timeout=10)[1].strip() == b.user


@pytest.mark.slow
def test_no_key_at_all_says_what_to_do(boards, tmp_path, monkeypatch):
    b, = boards(1)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ssh/config, no ~/.ssh/id_*
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    with pytest.raises(SshError) as e:
        SshSession(b.target, known_hosts=b.known_hosts).connect()
    assert "no SSH key to try" in str(e.value) and "--identity" in str(e.value)


@pytest.mark.slow
def test_ssh_config_strict_host_key_checking_yes_refuses_an_unknown_host(boards, tmp_path):
    """Issue 11, item 12: the user's `StrictHostKeyChecking yes` wins over our accept-new default."""
    b, = boards(1, known_hosts="empty")
    cfg = tmp_path / "ssh_config"
    cfg.write_text(f"Host 127.0.0.1\n  StrictHostKeyChecking yes\n")
    with pytest.raises(SshError) as e:
        SshSession(b.target, identity=b.identity, known_hosts=b.known_hosts, ssh_config=str(cfg),
                   host_key_policy="accept-new").connect()
    assert "StrictHostKeyChecking yes" in str(e.value) and _fingerprint(b.host_key_pub) in str(e.value)
    assert open(b.known_hosts).read() == ""  # nothing learnt behind the user's back
    cfg.write_text("Host 127.0.0.1\n  StrictHostKeyChecking no\n")  # never looser than accept-new
    with SshSession(b.target, identity=b.identity, known_hosts=b.known_hosts, ssh_config=str(cfg)) as s:
        s.exec(["true"], timeout=10)
    assert open(b.known_hosts).read().splitlines() == [b.known_hosts_line()]
