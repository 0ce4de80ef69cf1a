"""SSH to boards over paramiko: exec with timeouts, SFTP uploads cached by sha256, strict host keys.

    with SshSession("pi@10.0.0.21:2222", identity="~/.ssh/edvit") as s:
        rc, out, err = s.exec(["python3", "-c", "print(1)"], timeout=10)
        remote, uploaded = s.upload_cached("build/submodels/g0.fp32.onnx", sha)

- Every remote argument is `shlex.quote`d (exec takes an argv list, never a string).
- Host keys: known_hosts (default ~/.ssh/known_hosts or the config's UserKnownHostsFile) with policy
  `accept-new` (an unknown key is added and saved) or `strict` (unknown = error). ~/.ssh/config's
  `StrictHostKeyChecking yes` makes it strict whatever the caller asked; `no`/`off` never loosens it beyond
  accept-new. A CHANGED key is always refused, with the offered key's SHA256 fingerprint and the known_hosts
  line to fix. No AutoAdd/Warning policy.
- TCP_NODELAY on our socket: without it every small request/response waits for Nagle + delayed ACK (~40 ms).
- Remote files live under ~/.edvit/; the cache is ~/.edvit/cache/<sha256>/<basename>. Uploads go to a temp name
  and are renamed into place, so a file present in the cache is always complete.
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import re
import select
import shlex
import socket
import stat
import time
import uuid

from ..errors import SshError

log = logging.getLogger(__name__)

CACHE_DIR = ".edvit/cache"  # relative to the remote home (SFTP and exec both start there)
POLICIES = ("accept-new", "strict")
_DEFAULT_KEYS = ("id_ed25519", "id_ecdsa", "id_rsa")


def parse_target(target: str) -> tuple[str | None, str, int | None]:
    """'pi@host:2222' -> ('pi', 'host', 2222); user and port are None when absent. '[::1]:22' for IPv6."""
    if not isinstance(target, str) or not target.strip():
        raise SshError(f"board target {target!r} is empty; expected user@host[:port], e.g. pi@10.0.0.21")
    t = target.strip()
    user = None
    if "@" in t:
        user, t = t.rsplit("@", 1)
        if not user:
            raise SshError(f"board target {target!r}: empty user before '@'; expected user@host[:port]")
    port = None
    m = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?", t)
    if m:
        host, port_s = m.group(1), m.group(2)
    elif t.count(":") == 1:
        host, port_s = t.split(":")
    else:
        host, port_s = t, None
    if port_s is not None:
        if not port_s.isdigit() or not 0 < int(port_s) < 65536:
            raise SshError(f"board target {target!r}: port must be 1-65535, got {port_s!r}")
        port = int(port_s)
    if not host or any(c.isspace() for c in host):
        raise SshError(f"board target {target!r}: bad host {host!r}; expected user@host[:port]")
    return user, host, port


def quote_argv(argv) -> str:
    """The remote command line for argv, every argument shell-quoted."""
    if isinstance(argv, (str, bytes)):
        raise TypeError("exec takes an argument list; use exec_shell for a shell script")
    return " ".join(shlex.quote(str(a)) for a in argv)


def tree_digest(files: dict) -> str:
    """Content hash of a file tree {relpath: bytes | local path}: changes iff a path or a byte changes."""
    h = hashlib.sha256()
    for rel in sorted(files):
        src = files[rel]
        data = src if isinstance(src, bytes) else _read(src)
        h.update(rel.encode() + b"\0" + hashlib.sha256(data).hexdigest().encode() + b"\n")
    return h.hexdigest()


def dir_files(local_dir: str, prefix: str = "") -> dict:
    """{prefix/relpath: local path} for a source tree, skipping caches and compiled files."""
    out = {}
    for dirpath, dirnames, names in os.walk(local_dir):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and not d.startswith("."))
        for n in sorted(names):
            if n.endswith((".pyc", ".pyo")) or n.startswith("."):
                continue
            full = os.path.join(dirpath, n)
            rel = os.path.relpath(full, local_dir).replace(os.sep, "/")
            out[posixpath.join(prefix, rel) if prefix else rel] = full
    return out


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _known_hosts_name(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


def _find_known_line(path: str, name: str) -> tuple[int, str] | None:
    """(line number, key fingerprint) of the known_hosts entry for `name` (plain or hashed), if any."""
    import paramiko

    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except OSError:
        return None
    for lineno, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            entry = paramiko.hostkeys.HostKeyEntry.from_line(line, lineno)
        except (paramiko.hostkeys.InvalidHostKey, paramiko.SSHException, ValueError):
            continue
        if entry is None:
            continue
        for h in entry.hostnames:
            hit = (paramiko.HostKeys.hash_host(name, h) == h) if h.startswith("|1|") else h == name
            if hit:
                return lineno, entry.key.fingerprint
    return None


def _host_key_policy(mode: str, known_hosts: str, where: str, source: str = "policy"):
    import paramiko

    class Policy(paramiko.MissingHostKeyPolicy):
        """Unknown key: `accept-new` appends it to known_hosts (as OpenSSH does); `strict` refuses."""

        def missing_host_key(self, client, hostname, key):
            if mode == "strict":
                raise SshError(
                    f"{where}: host key not in {known_hosts} ({source} strict); offered {key.get_name()} "
                    f"{key.fingerprint}. Verify it on the board (ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub), "
                    f"then add it: ssh-keyscan -p PORT HOST >> {known_hosts}")
            client.get_host_keys().add(hostname, key.get_name(), key)
            os.makedirs(os.path.dirname(os.path.abspath(known_hosts)), mode=0o700, exist_ok=True)
            with open(known_hosts, "a", encoding="utf-8") as f:
                f.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
            log.info("%s: added %s host key %s to %s", where, key.get_name(), key.fingerprint, known_hosts)

    return Policy()


class SshSession:
    """One SSH connection (+ one lazily opened SFTP channel) to a board. Use as a context manager."""

    def __init__(self, target: str, *, identity: str | None = None, known_hosts: str | None = None,
                 host_key_policy: str = "accept-new", connect_timeout: float = 10.0,
                 ssh_config: str | None = None, allow_agent: bool = True):
        if host_key_policy not in POLICIES:
            raise SshError(f"host key policy must be one of {', '.join(POLICIES)}, got {host_key_policy!r}")
        self.target = target
        user, host, port = parse_target(target)
        cfg = self._ssh_config(ssh_config, host)
        self.host = cfg.get("hostname", host)
        self.port = port or int(cfg.get("port", 22))
        self.user = user or cfg.get("user") or _local_user()
        self.where = f"{self.user}@{self.host}:{self.port}"
        self.identity = os.path.expanduser(identity) if identity else None
        self._config_identities = [os.path.expanduser(p) for p in cfg.get("identityfile", [])]
        kh = known_hosts or (cfg.get("userknownhostsfile", "").split() or [None])[0] or "~/.ssh/known_hosts"
        self.known_hosts = os.path.expanduser(kh)
        # OpenSSH's `StrictHostKeyChecking yes` in the user's config is a promise we must keep too
        strict_cfg = str(cfg.get("stricthostkeychecking", "")).strip().lower() in ("yes", "true")
        self.host_key_policy = "strict" if strict_cfg else host_key_policy
        self.host_key_policy_source = "~/.ssh/config StrictHostKeyChecking yes" if strict_cfg else "policy"
        self.connect_timeout = connect_timeout
        self.allow_agent = allow_agent
        self._client = None
        self._sftp = None
        self._home = None
        self._dirs: set[str] = set()  # remote dirs known to exist (saves a stat round trip per upload)

    # -- connection -----------------------------------------------------------------------------------------

    @staticmethod
    def _ssh_config(path: str | None, host: str) -> dict:
        import paramiko

        path = os.path.expanduser(path or "~/.ssh/config")
        if not os.path.isfile(path):
            return {}
        try:
            return dict(paramiko.SSHConfig.from_path(path).lookup(host))
        except (OSError, paramiko.SSHException, ValueError) as e:
            raise SshError(f"{path}: cannot parse ({e}); fix the file or pass an explicit user@host:port") from None

    def _key_candidates(self) -> list[str]:
        if self.identity:
            return [self.identity]
        keys = [p for p in self._config_identities if os.path.isfile(p)]
        keys += [p for p in (os.path.expanduser(f"~/.ssh/{n}") for n in _DEFAULT_KEYS)
                 if os.path.isfile(p) and p not in keys]
        return keys

    def connect(self) -> "SshSession":
        import paramiko

        if self.identity and not os.path.isfile(self.identity):
            raise SshError(f"{self.where}: identity file {self.identity} not found; pass --identity PATH to a "
                           f"private key whose .pub is in the board's ~/.ssh/authorized_keys")
        keys = self._key_candidates()
        agent = self.allow_agent and not self.identity and bool(os.environ.get("SSH_AUTH_SOCK"))
        sock = self._open_socket()  # reachability first: "unreachable" is what a user needs to hear first
        if not keys and not agent:
            sock.close()
            raise SshError(f"{self.where}: no SSH key to try (no --identity, no IdentityFile in ~/.ssh/config, "
                           f"no ~/.ssh/id_ed25519 / id_ecdsa / id_rsa, no ssh-agent); pass --identity KEY or "
                           f"create one with ssh-keygen -t ed25519")
        client = paramiko.SSHClient()
        if os.path.isfile(self.known_hosts):
            try:
                client.load_host_keys(self.known_hosts)
            except (OSError, paramiko.SSHException) as e:
                sock.close()
                raise SshError(f"{self.known_hosts}: cannot read known_hosts ({e}); fix or move the file") from None
        client.set_missing_host_key_policy(_host_key_policy(self.host_key_policy, self.known_hosts, self.where,
                                                             self.host_key_policy_source))
        try:
            client.connect(self.host, port=self.port, username=self.user, key_filename=keys or None,
                           sock=sock, timeout=self.connect_timeout, banner_timeout=self.connect_timeout,
                           auth_timeout=self.connect_timeout, channel_timeout=self.connect_timeout,
                           allow_agent=agent, look_for_keys=False)
        except SshError:
            client.close()
            raise
        except paramiko.BadHostKeyException as e:
            client.close()
            raise SshError(self._changed_key_message(e.key, e.expected_key)) from None
        except paramiko.AuthenticationException as e:
            client.close()
            tried = ", ".join(keys) or "no key files"
            if agent:
                tried += " + ssh-agent"
            raise SshError(f"{self.where}: authentication failed (tried {tried}: {e}); put the public key in the "
                           f"board's ~/.ssh/authorized_keys (ssh-copy-id -p {self.port} {self.user}@{self.host}) "
                           f"or pass --identity KEY") from None
        except (paramiko.SSHException, OSError, EOFError) as e:
            client.close()
            raise SshError(f"{self.where}: SSH handshake failed ({type(e).__name__}: {e}); is this port an SSH "
                           f"server? check with: ssh -p {self.port} {self.user}@{self.host}") from None
        transport = client.get_transport()
        transport.set_keepalive(30)
        self._client = client
        return self

    def _open_socket(self) -> socket.socket:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        except socket.gaierror as e:
            raise SshError(f"{self.where}: cannot resolve host {self.host!r} ({e.strerror}); check the name or "
                           f"use an IP address") from None
        except ConnectionRefusedError:
            raise SshError(f"{self.where}: connection refused; is sshd running on the board and listening on "
                           f"port {self.port}?") from None
        except (socket.timeout, TimeoutError):
            raise SshError(f"{self.where}: connection timed out after {self.connect_timeout:g}s; is the board on "
                           f"and reachable (ping {self.host})?") from None
        except OSError as e:
            raise SshError(f"{self.where}: cannot connect ({e.strerror or e}); check the network path to "
                           f"the board") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _changed_key_message(self, offered, expected) -> str:
        name = _known_hosts_name(self.host, self.port)
        found = _find_known_line(self.known_hosts, name)
        line = f"{self.known_hosts}:{found[0]}" if found else self.known_hosts
        return (f"{self.where}: HOST KEY CHANGED — offered {offered.get_name()} {offered.fingerprint}, "
                f"known_hosts ({line}) has {expected.get_name()} {expected.fingerprint}. Refusing to connect: "
                f"someone may be intercepting the connection. If the board was reinstalled, remove the old key "
                f"(ssh-keygen -R '{name}' -f {self.known_hosts}) and connect again.")

    def close(self) -> None:
        if self._sftp is not None:
            self._sftp.close()
            self._sftp = None
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> "SshSession":
        if self._client is None:
            self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def client(self):
        if self._client is None:
            raise SshError(f"{self.where}: not connected; use `with SshSession(...) as s:` or call connect()")
        return self._client

    # -- commands -------------------------------------------------------------------------------------------

    def exec(self, cmd_argv, timeout: float = 60.0, check: bool = True,
             input: str | bytes | None = None) -> tuple[int, str, str]:
        """Run argv on the board (each argument shell-quoted); (exit code, stdout, stderr) as text.

        timeout bounds the whole command; on expiry the channel is closed and SshError raised. check=True
        raises SshError on a non-zero exit, naming the command and the end of its stderr.
        """
        return self._run(quote_argv(cmd_argv), timeout, check, input)

    def exec_shell(self, script: str, timeout: float = 60.0, check: bool = True,
                   input: str | bytes | None = None) -> tuple[int, str, str]:
        """Run a POSIX sh script (for redirections, `&`, pipes). The caller quotes what goes into it."""
        return self._run(quote_argv(["sh", "-c", script]), timeout, check, input)

    def _run(self, command: str, timeout: float, check: bool, input) -> tuple[int, str, str]:
        import paramiko

        short = command if len(command) <= 120 else command[:117] + "..."
        deadline = time.monotonic() + timeout
        try:
            chan = self.client.get_transport().open_session(timeout=min(timeout, self.connect_timeout))
        except (paramiko.SSHException, OSError, EOFError) as e:
            raise SshError(f"{self.where}: cannot open a channel for `{short}` ({e}); the connection dropped — "
                           f"retry") from None
        out, err = bytearray(), bytearray()
        try:
            chan.exec_command(command)
            if input is not None:
                chan.sendall(input.encode() if isinstance(input, str) else input)
            chan.shutdown_write()  # the command sees EOF on stdin rather than waiting for more
            fd = chan.fileno()
            while True:
                while chan.recv_ready():
                    out += chan.recv(1 << 16)
                while chan.recv_stderr_ready():
                    err += chan.recv_stderr(1 << 16)
                if chan.eof_received and not chan.recv_ready() and not chan.recv_stderr_ready():
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                select.select([fd], [], [], remaining)
            if not chan.status_event.wait(max(0.0, deadline - time.monotonic())):
                raise TimeoutError
            rc = chan.exit_status
        except TimeoutError:
            raise SshError(f"{self.where}: `{short}` did not finish within {timeout:g}s; the board may be "
                           f"overloaded — raise the timeout or check the board") from None
        except (paramiko.SSHException, OSError, EOFError) as e:
            raise SshError(f"{self.where}: `{short}` failed in transit ({e}); the connection dropped — "
                           f"retry") from None
        finally:
            chan.close()
        stdout, stderr = out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
        if check and rc != 0:
            tail = " | ".join(stderr.strip().splitlines()[-3:]) or "no stderr"
            raise SshError(f"{self.where}: `{short}` exited with {rc}: {tail}")
        return rc, stdout, stderr

    def open_process(self, script: str):
        """Start a long-running POSIX sh script whose stdin stays open: a `RemoteProcess` the caller writes to,
        reads lines from and closes (closing stdin is how the board side learns we are done — or gone)."""
        import paramiko

        try:
            chan = self.client.get_transport().open_session(timeout=self.connect_timeout)
            chan.exec_command(quote_argv(["sh", "-c", script]))
        except (paramiko.SSHException, OSError, EOFError) as e:
            raise SshError(f"{self.where}: cannot start a remote process ({e}); the connection dropped — "
                           f"retry") from None
        return RemoteProcess(chan, self.where)

    # -- files ----------------------------------------------------------------------------------------------

    @property
    def sftp(self):
        if self._sftp is None:
            import paramiko

            try:
                self._sftp = self.client.open_sftp()
            except (paramiko.SSHException, OSError, EOFError) as e:
                raise SshError(f"{self.where}: cannot open SFTP ({type(e).__name__}: {e}); the board's sshd needs "
                               f"'Subsystem sftp internal-sftp' (or sftp-server)") from None
            self._sftp.get_channel().settimeout(max(self.connect_timeout, 30.0))
        return self._sftp

    @property
    def home(self) -> str:
        """The remote home directory (absolute)."""
        if self._home is None:
            self._home = self._sftp_call("resolve ~", self.sftp.normalize, ".")
        return self._home

    def _sftp_call(self, what: str, fn, *args):
        import paramiko

        try:
            return fn(*args)
        except FileNotFoundError:
            raise
        except (OSError, EOFError, paramiko.SSHException) as e:
            raise SshError(f"{self.where}: SFTP {what} failed ({e}); check free space and permissions under "
                           f"~/.edvit on the board") from None

    def abspath(self, remote: str) -> str:
        return remote if remote.startswith("/") else posixpath.join(self.home, remote)

    def exists(self, remote: str) -> bool:
        try:
            self._sftp_call(f"stat {remote}", self.sftp.stat, remote)
            return True
        except FileNotFoundError:
            return False

    def mkdir_p(self, remote: str) -> None:
        path = "/" if remote.startswith("/") else ""
        for part in (p for p in remote.split("/") if p and p != "."):
            path = posixpath.join(path, part) if path else part
            if path in self._dirs:
                continue
            try:
                st = self.sftp.stat(path)
            except FileNotFoundError:
                try:
                    self.sftp.mkdir(path)
                except OSError:  # made meanwhile by a concurrent upload? then it exists now
                    if not self.exists(path):
                        raise SshError(f"{self.where}: cannot create {path}; check permissions on the "
                                       f"board") from None
            except (OSError, EOFError) as e:
                raise SshError(f"{self.where}: SFTP stat {path} failed ({e})") from None
            else:
                if not stat.S_ISDIR(st.st_mode):
                    raise SshError(f"{self.where}: {path} exists and is not a directory; remove it on the board")
            self._dirs.add(path)

    def _tmp_name(self, remote: str) -> str:
        d, b = posixpath.split(remote)
        return posixpath.join(d, f".{b}.tmp-{uuid.uuid4().hex[:8]}")

    def put(self, local: str, remote: str) -> None:
        """Copy a local file to `remote` (relative = under home) atomically: temp name, then rename."""
        self.mkdir_p(posixpath.dirname(remote) or ".")
        tmp = self._tmp_name(remote)
        self._sftp_call(f"upload {remote}", self.sftp.put, local, tmp)
        self._rename(tmp, remote)

    def put_bytes(self, data: bytes, remote: str) -> None:
        self.mkdir_p(posixpath.dirname(remote) or ".")
        tmp = self._tmp_name(remote)

        def write():
            with self.sftp.open(tmp, "wb") as f:
                f.set_pipelined(True)
                f.write(data)

        self._sftp_call(f"write {remote}", write)
        self._rename(tmp, remote)

    def get_bytes(self, remote: str) -> bytes:
        def read():
            with self.sftp.open(remote, "rb") as f:
                f.prefetch()
                return f.read()

        try:
            return self._sftp_call(f"read {remote}", read)
        except FileNotFoundError:
            raise SshError(f"{self.where}: {remote} not found on the board") from None

    def _rename(self, tmp: str, remote: str) -> None:
        try:
            self.sftp.posix_rename(tmp, remote)  # replaces an existing file, like rename(2)
        except (OSError, EOFError) as e:
            self._remove_quietly(tmp)
            raise SshError(f"{self.where}: cannot move upload into place at {remote} ({e})") from None

    def _remove_quietly(self, remote: str) -> None:
        try:
            self.sftp.remove(remote)
        except OSError as e:  # best effort: a leftover temp file is harmless, but say so
            log.debug("%s: could not remove %s: %s", self.where, remote, e)

    # -- content-addressed cache ---------------------------------------------------------------------------

    def upload_cached(self, local_path: str, sha256: str, force: bool = False) -> tuple[str, bool]:
        """Upload into ~/.edvit/cache/<sha256>/<basename> unless a copy of that size is there (force: always).

        Returns (absolute remote path, uploaded?). The caller vouches that sha256 is the file's digest; a size
        match is only a hint — cluster.transport has the board hash every copy it is about to use.
        """
        rel = posixpath.join(CACHE_DIR, sha256, os.path.basename(local_path))
        size = os.path.getsize(local_path)
        try:
            if not force and self._sftp_call(f"stat {rel}", self.sftp.stat, rel).st_size == size:
                return self.abspath(rel), False
        except FileNotFoundError:
            pass  # not cached yet: upload below
        self.put(local_path, rel)
        return self.abspath(rel), True

    def upload_tree(self, files: dict, digest: str | None = None) -> tuple[str, bool]:
        """Upload a tree {relpath: bytes | local path} into ~/.edvit/cache/<tree sha256>/ unless there.

        The tree is written to a temp dir and renamed into place, so a present tree is complete.
        Returns (absolute remote dir, uploaded?).
        """
        digest = digest or tree_digest(files)
        final = posixpath.join(CACHE_DIR, digest)
        if self.exists(posixpath.join(final, ".complete")):
            return self.abspath(final), False
        tmp = posixpath.join(CACHE_DIR, f".tmp-{digest[:16]}-{uuid.uuid4().hex[:8]}")
        for rel in sorted(files):
            src = files[rel]
            dest = posixpath.join(tmp, rel)
            self.mkdir_p(posixpath.dirname(dest))
            if isinstance(src, bytes):
                self._sftp_call(f"write {dest}", self._write_plain, dest, src)
            else:
                self._sftp_call(f"upload {dest}", self.sftp.put, src, dest)
        self._sftp_call(f"write {tmp}/.complete", self._write_plain, posixpath.join(tmp, ".complete"), b"")
        try:
            self.sftp.posix_rename(tmp, final)
        except OSError:
            # a concurrent upload won the race (rename onto a non-empty dir fails): theirs is complete
            self.exec(["rm", "-rf", "--", self.abspath(tmp)], timeout=30, check=False)
            if not self.exists(posixpath.join(final, ".complete")):
                raise SshError(f"{self.where}: cannot move {tmp} to {final}; remove ~/{final} on the board "
                               f"and retry") from None
        return self.abspath(final), True

    def _write_plain(self, remote: str, data: bytes) -> None:
        with self.sftp.open(remote, "wb") as f:
            f.write(data)


class RemoteProcess:
    """A command on the board with an open stdin (see SshSession.open_process)."""

    def __init__(self, chan, where: str):
        self.chan, self.where, self._buf = chan, where, bytearray()

    def send(self, data: bytes) -> None:
        try:
            self.chan.sendall(data)
        except (OSError, EOFError) as e:
            raise SshError(f"{self.where}: cannot write to the remote process ({e})") from None

    def readline(self, timeout: float) -> str:
        """The next stdout line; SshError when none came within `timeout` or the command ended first."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            if self.chan.recv_ready():
                self._buf += self.chan.recv(1 << 16)
                continue
            if self.chan.eof_received:
                err = self.chan.recv_stderr(1 << 16).decode("utf-8", "replace").strip() \
                    if self.chan.recv_stderr_ready() else ""
                raise SshError(f"{self.where}: remote process ended without answering"
                               + (f": {err.splitlines()[-1]}" if err else ""))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SshError(f"{self.where}: no answer from the remote process within {timeout:g}s")
            select.select([self.chan.fileno()], [], [], remaining)
        line, _, rest = bytes(self._buf).partition(b"\n")
        self._buf = bytearray(rest)
        return line.decode("utf-8", "replace")

    def close(self, timeout: float = 10.0) -> None:
        """Close its stdin (it sees EOF and exits), wait a little for that, then drop the channel."""
        try:
            self.chan.shutdown_write()
            self.chan.status_event.wait(timeout)
        except (OSError, EOFError) as e:  # the connection is gone: the board side saw EOF anyway
            log.debug("%s: closing a remote process: %s", self.where, e)
        finally:
            self.chan.close()


def _local_user() -> str:
    import getpass

    return getpass.getuser()
