"""One way to reach a board, shared by `profile`, `deploy`, `status` and `stop`: over SSH, or "local" (the
board is this machine, its files the build's own, its processes local ones).

    tr = SshTransport("pi-1", "pi@10.0.0.21", python="python3", root="~/.edvit/boards/pi-1", identity=...)
    tr.connect()
    rc, out, err = tr.exec(["python3", "-c", "print(1)"], timeout=10)   # before the runtime is there (probe)
    staged = tr.stage(payload_files, payload.runtime, payload.runtime_digest, payload.runtime_table)
    rc, out, err = tr.run_module("edvit_tool.runtime.bench", [...], timeout=60)   # the shipped runtime
    tr.agent("state")                        # edvit_tool.runtime.agent: one JSON request, one JSON answer
    with tr.lock(wait_s=120, by="deploy"):   # <root>/deploy.lock held on the board
        ...
    tr.close()

SSH files go into the board's sha256 cache (~/.edvit/cache/<sha256>/<name>) and are checked ON the board
after every stage — cache hits and fresh uploads alike; a copy whose bytes do not match is removed and sent
again, so one corrupted cache entry cannot break every later deploy.
"""

from __future__ import annotations

import json
import logging
import os
import select
import shlex
import signal
import subprocess

from ..errors import EdvitError, SshError
from .payload import PACKAGE_PARENT
from .ssh import quote_argv

log = logging.getLogger(__name__)

AGENT = "edvit_tool.runtime.agent"
REMOTE_HOME = "~/.edvit"
LOCAL_TARGET = "local"


class BoardFailed(EdvitError):
    """One board failed a step (the message starts with its name)."""


def board_root(name: str) -> str:
    """A board's release root over SSH: its own directory under ~/.edvit, so several boards that share one login
    (two workers on one bigger machine) never share releases, `current`, pidfile or lock."""
    return f"{REMOTE_HOME}/boards/{name}"


def local_env() -> dict:
    # PYTHONPATH = this package's parent: another interpreter (a board-like venv) runs the very same runtime
    env = dict(os.environ, PYTHONPATH=PACKAGE_PARENT, PYTHONNOUSERSITE="1", PYTHONUNBUFFERED="1")
    env.pop("PYTHONSTARTUP", None)
    return env


def agent_result(name: str, action: str, rc: int, out: str, err: str, python: str) -> dict:
    if rc == 127 or (rc != 0 and "not found" in err and not out.strip()):
        raise BoardFailed(f"{name}: {python!r} not found on the board; set `python:` for it in boards.yaml")
    try:
        res = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        tail = " | ".join(err.strip().splitlines()[-3:]) or "no output"
        raise BoardFailed(f"{name}: board step `{action}` failed (exit {rc}): {tail}") from None
    if not isinstance(res, dict) or not res.get("ok"):
        raise BoardFailed(f"{name}: board step `{action}` failed: {res.get('error') if isinstance(res, dict) else res}")
    return res


class NothingDeployed(BoardFailed):
    """The board has no release under this root (so no runtime to run the agent from, and nothing to stop)."""


class Held:
    """A board-side lock held by a live agent process; `release()` (or leaving the `with`) ends it."""

    def __init__(self, release):
        self._release = release

    def release(self) -> None:
        if self._release is not None:
            rel, self._release = self._release, None
            rel()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


class Transport:
    kind = "?"
    name: str
    target: str
    python: str
    root: str                   # release root on the board (deploy)
    runtime_dir: str | None     # where the runtime package is on the board (PYTHONPATH for run_module)

    def connect(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def exec(self, argv: list, timeout: float, input: str | None = None) -> tuple[int, str, str]:
        raise NotImplementedError

    def run_module(self, module: str, args: list, timeout: float, input: str | None = None) -> tuple[int, str, str]:
        raise NotImplementedError

    def stage(self, files: list, runtime: dict | None = None, runtime_digest: str | None = None,
              runtime_table: dict | None = None) -> "Staged":
        raise NotImplementedError

    def lock(self, wait_s: float, by: str) -> Held:
        raise NotImplementedError

    def open_module(self, module: str, args: list):
        """`python -m module args` with stdin open: an object with send(bytes), readline(timeout), close()."""
        raise NotImplementedError

    def agent(self, action: str, timeout: float = 60.0, **req) -> dict:
        body = json.dumps({"action": action, "root": self.root, **req}) + "\n"
        rc, out, err = self.run_module(AGENT, [], timeout, input=body)
        if rc == 124:
            raise BoardFailed(f"{self.name}: board step `{action}` did not finish within {timeout:g}s")
        return agent_result(self.name, action, rc, out, err, self.python)

    def _lock_request(self, wait_s: float, by: str) -> str:
        return json.dumps({"action": "lock", "root": self.root, "wait": wait_s, "by": by}) + "\n"


class Staged:
    """Where each staged local file is on the board, and what it cost to put it there."""

    def __init__(self):
        self.paths: dict[str, str] = {}    # local path -> board path
        self.runtime: str | None = None
        self.files = 0
        self.bytes = 0
        self.cached = 0
        self.resent = 0                     # copies the board found corrupt and that were sent again

    def counts(self) -> dict:
        return {"files": self.files, "bytes": self.bytes, "cached": self.cached, "resent": self.resent}


# ---------------------------------------------------------------------------------------------------------------


class LocalTransport(Transport):
    """A "board" that is this machine: files stay where they are, processes are local ones."""

    kind = "local"

    def __init__(self, name: str, python: str, root: str | None = None):
        self.name, self.python, self.root = name, python, root or ""
        self.target = LOCAL_TARGET
        self.runtime_dir = PACKAGE_PARENT

    def connect(self) -> None:
        pass  # nothing to open; `assemble` creates the directories

    def close(self) -> None:
        pass

    def exec(self, argv, timeout, input=None):
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=local_env(),
                               cwd=PACKAGE_PARENT, input=input)
        except FileNotFoundError:
            return 127, "", f"{argv[0]}: not found"
        except subprocess.TimeoutExpired:
            return 124, "", ""
        return r.returncode, r.stdout, r.stderr

    def open_module(self, module, args):
        return _LocalProcess([self.python, "-m", module, *map(str, args)])

    def run_module(self, module, args, timeout, input=None):
        argv = [self.python, "-m", module, *map(str, args)]
        # Through `sh` (which forks the command instead of exec'ing it): Linux carries a process's peak RSS across
        # execve, so a bench forked straight from a big host process (the demo holds torch, >1 GB) would report
        # that as its own ru_maxrss. cwd = the package's parent: `python -m` puts cwd first on sys.path.
        try:
            p = subprocess.Popen(["sh", "-c", '"$@"; exit $?', "sh", *argv], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=local_env(),
                                 cwd=PACKAGE_PARENT, start_new_session=True)
        except FileNotFoundError:
            return 127, "", "sh: not found"
        try:
            out, err = p.communicate(input=input, timeout=timeout)
            rc = p.returncode
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)  # the whole group: sh and the command under it
            p.communicate()
            return 124, "", ""
        except BaseException:  # Ctrl-C: its own session does not get the SIGINT, so end it here
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            raise
        if rc == 127 and "not found" in err:
            err = f"{self.python}: interpreter not found (pass --python)"
        return rc, out, err

    def stage(self, files, runtime=None, runtime_digest=None, runtime_table=None) -> Staged:
        """Nothing travels: the board's paths are the local ones."""
        st = Staged()
        for path in dict.fromkeys(p for p, _ in files):
            st.paths[path] = os.path.abspath(path)
            st.files += 1
            st.bytes += os.path.getsize(path)
        st.runtime = PACKAGE_PARENT
        return st

    def lock(self, wait_s: float, by: str) -> Held:
        p = subprocess.Popen([self.python, "-m", AGENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=local_env(), cwd=PACKAGE_PARENT)

        def release():
            p.stdin.close()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

        try:
            p.stdin.write(self._lock_request(wait_s, by))
            p.stdin.flush()
            ready, _, _ = select.select([p.stdout], [], [], wait_s + 30)
            line = p.stdout.readline() if ready else ""
        except BaseException:
            release()
            raise
        try:
            agent_result(self.name, "lock", 0 if line else 1, line, "" if line else p.stderr.read() if
                         p.poll() is not None else "no answer", self.python)
        except BaseException:
            release()
            raise
        return Held(release)


class _LocalProcess:
    """The local twin of ssh.RemoteProcess: a child with open stdin, read line by line."""

    def __init__(self, argv: list):
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     env=local_env(), cwd=PACKAGE_PARENT)

    def send(self, data: bytes) -> None:
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def readline(self, timeout: float) -> str:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else b""
        if not line:
            raise BoardFailed(f"local process `{' '.join(self.proc.args[1:3])}` printed nothing within {timeout:g}s")
        return line.decode("utf-8", "replace")

    def close(self, timeout: float = 10.0) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()


class SshTransport(Transport):
    """A board over SSH (edvit_tool.cluster.ssh)."""

    kind = "ssh"

    def __init__(self, name: str, target: str, python: str, root: str | None = None, identity=None,
                 known_hosts=None, host_key_policy: str = "accept-new", connect_timeout: float = 10.0,
                 runtime_dir: str | None = None):
        from .ssh import SshSession

        self.name, self.target, self.python = name, target, python
        self.root = root or board_root(name)
        self.runtime_dir = runtime_dir
        self.session = SshSession(target, identity=identity, known_hosts=known_hosts,
                                  host_key_policy=host_key_policy, connect_timeout=connect_timeout)

    @property
    def where(self) -> str:
        return self.session.where

    def connect(self) -> None:
        self.session.connect()

    def close(self) -> None:
        self.session.close()

    def exec(self, argv, timeout, input=None):
        return self.session.exec(argv, timeout=timeout, check=False, input=input)

    def _runtime(self) -> str:
        if self.runtime_dir is None:  # status/stop without a recorded runtime: the current release's own copy
            path = self.session.abspath(f"{self.root.removeprefix('~/')}/current/runtime")
            if not self.session.exists(path):
                raise NothingDeployed(f"{self.name}: nothing deployed under {self.root} on the board (no current "
                                      "release)")
            self.runtime_dir = path
        return self.runtime_dir

    def _module_cmd(self, module: str, args: list) -> tuple[str, str]:
        rt = self._runtime()
        return rt, quote_argv(["env", f"PYTHONPATH={rt}", self.python, "-m", module, *map(str, args)])

    def run_module(self, module, args, timeout, input=None):
        rt, cmd = self._module_cmd(module, args)
        # cwd = the runtime dir: `python -m` puts cwd first on sys.path, so nothing in $HOME can shadow the runtime.
        # The board's own `timeout` ends a hung command; closing our channel alone would leave it running there
        # (and a stray bench skews every later measurement on that board).
        limit = f"{max(1, int(timeout))}"
        script = (f"cd {shlex.quote(rt)} && if command -v timeout >/dev/null 2>&1; "
                  f"then exec timeout -k 5 {limit} {cmd}; else exec {cmd}; fi")
        log.debug("%s: %s", self.where, script)
        return self.session.exec_shell(script, timeout=timeout + 15, check=False, input=input)

    def open_module(self, module: str, args: list):
        """Start `python -m module args` on the board with stdin open: a RemoteProcess (send, readline,
        close) for exchanges that outlive one command (the link probe)."""
        rt, cmd = self._module_cmd(module, args)
        return self.session.open_process(f"cd {shlex.quote(rt)} && exec {cmd}")

    def lock(self, wait_s: float, by: str) -> Held:
        rt, cmd = self._module_cmd(AGENT, [])
        proc = self.session.open_process(f"cd {shlex.quote(rt)} && exec {cmd}")
        try:
            proc.send(self._lock_request(wait_s, by).encode())
            line = proc.readline(timeout=wait_s + 30)
            agent_result(self.name, "lock", 0, line, "", self.python)
        except SshError as e:
            proc.close()
            raise BoardFailed(f"{self.name}: cannot take the deploy lock: {e}") from None
        except BaseException:
            proc.close()
            raise
        return Held(proc.close)

    # -- files ------------------------------------------------------------------------------------------------

    def stage(self, files, runtime=None, runtime_digest=None, runtime_table=None) -> Staged:
        """Upload into the board's sha256 cache what is not there, then have the board hash every staged copy
        (and the runtime tree); what it finds corrupt it removes and we send again, once."""
        st = Staged()
        wanted = dict(files)              # local path -> sha256 (one entry per path)
        if runtime is not None:
            st.runtime, up = self.session.upload_tree(runtime, runtime_digest)
            self._count(st, up, sum(len(v) if isinstance(v, bytes) else os.path.getsize(v)
                                    for v in runtime.values()), len(runtime))
            self.runtime_dir = st.runtime
        for path, sha in wanted.items():
            st.paths[path], up = self.session.upload_cached(path, sha)
            self._count(st, up, os.path.getsize(path), 1)
        for attempt in (1, 2, 3):   # a broken runtime tree, then corrupt files, can each take one resend
            bad = self._verify(st, wanted, runtime_table if runtime is not None else None, last=attempt == 3)
            if not bad:
                return st
            if attempt == 3:
                raise BoardFailed(f"{self.name}: {', '.join(sorted(bad))} arrived corrupt on the board again "
                                  "(sha256 differs after upload); check the board's storage and free space")
            log.warning("%s: %d cached file(s) failed their sha256 check on the board; sending them again",
                        self.name, len(bad))
            for path in bad:
                if path == "<runtime>":
                    st.runtime, _ = self.session.upload_tree(runtime, runtime_digest)
                    self.runtime_dir = st.runtime
                    st.resent += len(runtime)
                else:
                    st.paths[path], _ = self.session.upload_cached(path, wanted[path], force=True)
                    st.resent += 1
        return st  # not reached

    @staticmethod
    def _count(st: Staged, uploaded: bool, nbytes: int, n: int) -> None:
        if uploaded:
            st.files += n
            st.bytes += nbytes
        else:
            st.cached += n

    def _verify(self, st: Staged, wanted: dict, runtime_table: dict | None, last: bool) -> set:
        """Local paths (and "<runtime>") whose copy on the board is missing or corrupt (those were removed)."""
        req = {"files": {st.paths[p]: sha for p, sha in wanted.items()}}
        if runtime_table is not None:
            req["trees"] = {st.runtime: runtime_table}
        try:
            res = self.agent("verify", timeout=120, **req)
        except BoardFailed as e:
            if runtime_table is None or last:
                raise
            # the agent itself could not run: its (cached) runtime tree may be broken — drop it, send it again
            log.warning("%s: the board agent did not run from the cached runtime (%s); sending the runtime again",
                        self.name, e)
            self.session.exec(["rm", "-rf", "--", st.runtime], timeout=30, check=False)
            return {"<runtime>"}
        by_remote = {st.paths[p]: p for p in wanted}
        bad = {by_remote[r] for r in res["bad"] + res["missing"] if r in by_remote}
        if res["dropped_trees"]:
            bad.add("<runtime>")
        return bad
