"""Deploy a plan's sub-models to boards as releases; start, check, roll back, report and stop their workers.

    doc = deploy("plan.json", "boards.yaml")                     # SSH boards; writes deployment.json
    doc = deploy("plan.json", transport="local", out="run/deployment.json")   # same workers, local processes
    status("deployment.json")  ->  [{"name", "up", "release", "models", "p50_ms", "pid", ...}]
    stop("deployment.json")    ->  [{"name", "stopped", "signals", "error"}]

Per board (a board's root is ~/.edvit over SSH, <out dir>/.edvit-local/<board> locally):

    <root>/releases/<id>/   runtime/edvit_tool/{__init__.py, runtime/}   manifest.json (only this board's
                            artifacts)   submodels/...  reference/...   token (0600)   release.json   worker.log
    <root>/current -> releases/<id>      switched atomically (symlink to a temp name, then rename(2) over it)
    <root>/worker.pid

Two phases, boards in parallel. 1) stage: upload (SSH: into the sha256 cache, skipping what is there) and
assemble the release dir; a failure here changes nothing that serves. 2) activate: stop the old worker
(SIGTERM, SIGKILL after a grace period), switch `current`, start the new worker detached, wait for
/v2/health/ready and check with the token that it serves the planned artifacts (sha256). If any board fails in
2), EVERY activated board goes back to its previous release (and its previous worker, if one was running), and
an EdvitError names the failing board, why (with the worker log's tail) and how each board was left.

Board-side steps run as one small stdlib-only script (`AGENT`, via `python -c`, request as JSON on stdin, so the
token never appears on a command line); the same script runs locally for `--transport local`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import os
import posixpath
import secrets
import socket
import subprocess
import sys
import time

from ..artifacts import write_json_atomic, write_text_atomic
from ..errors import ArtifactError, EdvitError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
TRANSPORTS = ("ssh", "local")
REMOTE_ROOT = "~/.edvit"
LOCAL_DIR = ".edvit-local"
KEEP_RELEASES = 5          # per board, besides the current and the previous one
STOP_GRACE_S = 10.0        # SIGTERM -> SIGKILL
WORKER_DRAIN_S = 5.0       # the worker's own drain on SIGTERM (below the grace, so SIGKILL is rare)
STEPS = 6                  # progress steps per board

# Board side. Python >= 3.9, stdlib only. One JSON request on stdin, one JSON line out.
AGENT = r'''
import json, os, shutil, signal, subprocess, sys, time

WORKER = b"edvit_tool.runtime.worker"

class Fail(Exception):
    pass

def root_of(req):
    return os.path.abspath(os.path.expanduser(req["root"]))

def rel_dir(root, rel):
    if not rel or "/" in rel or rel.startswith("."):
        raise Fail("bad release id %r" % (rel,))
    return os.path.join(root, "releases", rel)

def current(root):
    try:
        return os.path.basename(os.readlink(os.path.join(root, "current")).rstrip("/"))
    except OSError:
        return None

def alive(pid):
    if not pid:
        return False
    if os.path.isdir("/proc"):
        try:
            with open("/proc/%d/stat" % pid) as f:
                return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")   # a zombie has exited
        except (OSError, IndexError):
            return False
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True

def cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return None

def pidfile(root):
    return os.path.join(root, "worker.pid")

def read_pid(root):
    try:
        with open(pidfile(root)) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None

def workers(root):
    """Live workers of this root: the pidfile's (if it is a worker) and any whose argv names our pidfile."""
    found = set()
    pid = read_pid(root)
    if alive(pid):
        cl = cmdline(pid)
        if cl is None or any(WORKER in a for a in cl):   # no /proc on this board: trust the pidfile
            found.add(pid)
    if os.path.isdir("/proc"):
        me, mine = os.getuid(), pidfile(root).encode()
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                if os.stat("/proc/" + d).st_uid != me:
                    continue
            except OSError:
                continue
            cl = cmdline(int(d))
            if cl and mine in cl and any(WORKER in a for a in cl) and alive(int(d)):
                found.add(int(d))
    return sorted(found)

def release_info(root, rel):
    try:
        with open(os.path.join(rel_dir(root, rel), "release.json")) as f:
            return json.load(f)
    except (OSError, ValueError, Fail):
        return None

def releases(root):
    try:
        return sorted(n for n in os.listdir(os.path.join(root, "releases")) if not n.startswith("."))
    except OSError:
        return []

def state(req):
    root = root_of(req)
    pid = read_pid(root)
    cur = current(root)
    return {"current": cur, "pidfile_pid": pid, "workers": workers(root), "releases": releases(root),
            "pid_alive": alive(req["pid"]) if req.get("pid") else None,
            "current_info": release_info(root, cur) if cur else None}

def safe_join(base, rel):
    parts = rel.split("/")
    if rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise Fail("bad relative path %r" % (rel,))
    return os.path.join(base, *parts)

def assemble(req):
    root = root_of(req)
    final = rel_dir(root, req["release"])
    if os.path.exists(final):
        raise Fail("release %s already exists at %s" % (req["release"], final))
    tmp = os.path.join(root, "releases", ".tmp-%s-%d" % (req["release"], os.getpid()))
    os.makedirs(tmp, mode=0o755)
    linked = copied = 0
    try:
        for src, dst in req.get("links", []):
            path = safe_join(tmp, dst)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if not req.get("copy"):
                try:
                    os.link(src, path)   # the cache is immutable: share its blocks
                    linked += 1
                    continue
                except OSError:
                    pass
            shutil.copyfile(src, path)
            copied += 1
        for dst, text in req.get("files", {}).items():
            path = safe_join(tmp, dst)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(text)
        for dst, text in req.get("secrets", {}).items():
            fd = os.open(safe_join(tmp, dst), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
        os.rename(tmp, final)   # a release dir that exists is complete
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"dir": final, "linked": linked, "copied": copied}

def stop(req):
    root = root_of(req)
    grace = float(req.get("grace", 10))
    pids = workers(root)
    signals = {}
    for p in pids:
        try:
            os.kill(p, signal.SIGTERM)
            signals[str(p)] = "TERM"
        except ProcessLookupError:
            pass
    end = time.time() + grace
    while time.time() < end and any(alive(p) for p in pids):
        time.sleep(0.05)
    for p in pids:
        if alive(p):
            try:
                os.kill(p, signal.SIGKILL)
                signals[str(p)] = "KILL"
            except ProcessLookupError:
                pass
    end = time.time() + 10
    while any(alive(p) for p in pids):
        if time.time() > end:
            raise Fail("worker(s) %s still alive after SIGKILL" % [p for p in pids if alive(p)])
        time.sleep(0.05)
    if read_pid(root) is not None and not alive(read_pid(root)):
        os.remove(pidfile(root))   # a killed worker cannot remove its own
    return {"stopped": pids, "signals": signals}

def switch(req):
    root = root_of(req)
    rel = req.get("release")
    link = os.path.join(root, "current")
    prev = current(root)
    if rel is None:
        if os.path.lexists(link):
            os.remove(link)
        return {"previous": prev, "current": None}
    if not os.path.isfile(os.path.join(rel_dir(root, rel), "release.json")):
        raise Fail("release %s is not on this board (%s/release.json missing)" % (rel, rel_dir(root, rel)))
    tmp = os.path.join(root, ".current.tmp-%d" % os.getpid())
    if os.path.lexists(tmp):
        os.remove(tmp)
    os.symlink(os.path.join("releases", rel), tmp)
    os.replace(tmp, link)   # rename(2) over the old link: atomic, like `ln -sfn` + `mv -T`
    return {"previous": prev, "current": rel}

def start(req):
    root = root_of(req)
    rel = current(root)
    if rel is None:
        raise Fail("no current release under %s" % root)
    info = release_info(root, rel)
    if info is None:
        raise Fail("%s/release.json is missing or unreadable" % rel_dir(root, rel))
    running = workers(root)
    if running:
        raise Fail("a worker is already running (pid %s); stop it first" % running)
    d = rel_dir(root, rel)
    argv = [sys.executable, "-m", "edvit_tool.runtime.worker"] + info["worker_args"] + ["--pidfile", pidfile(root)]
    env = dict(os.environ, PYTHONPATH=os.path.join(d, "runtime"), PYTHONUNBUFFERED="1")
    logf = open(os.path.join(d, "worker.log"), "ab")
    try:
        # detached: own session, stdin from /dev/null, output to the log, no fd of ours (nor of the SSH
        # channel) inherited, so this script and its channel end at once (the `nohup cmd >log 2>&1 </dev/null &`)
        p = subprocess.Popen(argv, cwd=d, env=env, stdin=subprocess.DEVNULL, stdout=logf,
                             stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
    finally:
        logf.close()
    tmp = pidfile(root) + ".tmp-%d" % os.getpid()
    with open(tmp, "w") as f:
        f.write("%d\n" % p.pid)
    os.replace(tmp, pidfile(root))
    return {"pid": p.pid, "release": rel, "log": os.path.join(d, "worker.log")}

def tail(req):
    root = root_of(req)
    path = os.path.join(rel_dir(root, req["release"]), "worker.log")
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - int(req.get("bytes", 4000))))
            return {"log": f.read().decode("utf-8", "replace"), "path": path}
    except OSError as e:
        return {"log": "", "path": path, "missing": str(e)}

def prune(req):
    root = root_of(req)
    keep = set(req.get("protect", [])) | {current(root)}
    old = [r for r in releases(root) if r not in keep]
    removed = old[:max(0, len(old) - int(req.get("keep", 5)))]
    for r in removed:
        shutil.rmtree(rel_dir(root, r), ignore_errors=True)
    return {"removed": removed}

ACTIONS = {"state": state, "assemble": assemble, "stop": stop, "switch": switch, "start": start, "tail": tail,
           "prune": prune}

def main():
    req = json.loads(sys.stdin.read())
    try:
        res = ACTIONS[req["action"]](req)
        res["ok"] = True
    except Fail as e:
        res = {"ok": False, "error": str(e)}
    except (OSError, ValueError, KeyError, subprocess.SubprocessError) as e:
        res = {"ok": False, "error": "%s: %s" % (type(e).__name__, e)}
    sys.stdout.write(json.dumps(res) + "\n")

main()
'''


class BoardFailed(EdvitError):
    """One board failed a deploy step (the message starts with its name)."""


# ---------------------------------------------------------------------------------------------------------
# transports: run the agent and stage files on one board


class _Local:
    """A "board" that is a directory on this machine; workers are local processes."""

    kind = "local"

    def __init__(self, name: str, root: str, python: str):
        self.name, self.root, self.python = name, root, python
        self.target = "local"

    def connect(self) -> None:
        pass  # nothing to open; `assemble` creates the directories

    def agent(self, action: str, timeout: float = 60.0, **req) -> dict:
        body = json.dumps({"action": action, "root": self.root, **req})
        try:
            r = subprocess.run([self.python, "-c", AGENT], input=body, capture_output=True, text=True,
                               timeout=timeout)
        except subprocess.TimeoutExpired:
            raise BoardFailed(f"{self.name}: local step `{action}` did not finish within {timeout:g}s") from None
        except OSError as e:
            raise BoardFailed(f"{self.name}: cannot run {self.python} ({e.strerror or e}); pass an existing "
                              "Python interpreter") from None
        return _agent_result(self.name, action, r.returncode, r.stdout, r.stderr, self.python)

    def stage(self, files: list[tuple[str, str, str | None]]) -> tuple[list, dict]:
        """files: (local path, relpath in the release, sha256 or None) -> links for `assemble` (copied)."""
        size = sum(os.path.getsize(p) for p, _, _ in files)
        return [[os.path.abspath(p), rel] for p, rel, _ in files], {"files": len(files), "bytes": size, "cached": 0}

    def close(self) -> None:
        pass


class _Ssh:
    """A board over SSH (edvit_tool.cluster.ssh); files go through the board's sha256 cache."""

    kind = "ssh"

    def __init__(self, name: str, target: str, identity, python: str, known_hosts, host_key_policy: str,
                 connect_timeout: float):
        from .ssh import SshSession

        self.name, self.target, self.python, self.root = name, target, python, REMOTE_ROOT
        self.session = SshSession(target, identity=identity, known_hosts=known_hosts,
                                  host_key_policy=host_key_policy, connect_timeout=connect_timeout)

    def connect(self) -> None:
        self.session.connect()

    def agent(self, action: str, timeout: float = 60.0, **req) -> dict:
        body = json.dumps({"action": action, "root": self.root, **req})
        rc, out, err = self.session.exec([self.python, "-c", AGENT], timeout=timeout, check=False, input=body)
        return _agent_result(self.name, action, rc, out, err, self.python)

    def stage(self, files: list[tuple[str, str, str | None]], runtime: dict | None = None,
              runtime_digest: str | None = None) -> tuple[list, dict]:
        from .profile import Uploads

        up = Uploads(self.session)
        links = []
        if runtime is not None:
            remote = up.tree(runtime, runtime_digest)
            links += [[posixpath.join(remote, rel), f"runtime/{rel}"] for rel in sorted(runtime)]
        for path, rel, sha in files:
            links.append([up.file(path, sha), rel])
        return links, {"files": up.files, "bytes": up.bytes, "cached": up.cached}

    def close(self) -> None:
        self.session.close()


def _agent_result(name: str, action: str, rc: int, out: str, err: str, python: str) -> dict:
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


# ---------------------------------------------------------------------------------------------------------
# the plan -> what goes where


@dataclasses.dataclass
class _Board:
    name: str
    tr: object                       # _Ssh | _Local
    address: str
    port: int
    threads: int
    models: list[str]
    variants: dict                   # model -> "fmt/quant"
    artifacts: dict                  # model -> manifest artifact entry
    identity: str | None = None
    prev: str | None = None          # release `current` pointed at before this deploy
    prev_running: bool = False
    prev_info: dict | None = None    # the previous release's release.json (its port, models)
    pid: int | None = None
    uploads: dict | None = None
    activated: bool = False
    seconds: float = 0.0


def _read_json(path: str, what: str, fix: str) -> dict:
    if not os.path.isfile(path):
        raise EdvitError(f"{path}: {what} not found; {fix}")
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        raise EdvitError(f"{path}: {what} is not valid JSON ({e}); {fix}") from None
    if not isinstance(doc, dict):
        raise EdvitError(f"{path}: {what} must be a JSON object; {fix}")
    return doc


def load_plan(plan_path: str) -> tuple[dict, dict]:
    """(plan, manifest) after checking that the plan matches its build as it is on disk now."""
    from ..runtime import manifest as mf

    fix = "re-run `edvit-tool assign`"
    plan = _read_json(plan_path, "plan", "make one with `edvit-tool assign`")
    if plan.get("schema_version") != 1:
        raise EdvitError(f"{plan_path}: schema_version must be 1, got {plan.get('schema_version')!r}; {fix}")
    build = plan.get("build") or {}
    places = plan.get("placements")
    if not isinstance(build, dict) or not isinstance(build.get("path"), str) or not isinstance(places, list) \
            or not places:
        raise EdvitError(f"{plan_path}: needs build.path and a non-empty placements list; {fix}")
    for i, p in enumerate(places):
        missing = [k for k in ("submodel", "board", "format", "quant", "sha256") if not isinstance(p, dict)
                   or not isinstance(p.get(k), str)]
        if missing:
            raise EdvitError(f"{plan_path}: placements[{i}] lacks {', '.join(missing)}; {fix}")
    try:
        manifest = mf.load(build["path"])
    except mf.ManifestError as e:
        raise ArtifactError(f"{plan_path}: its build: {e}") from None
    sha = mf.sha256_file(os.path.join(build["path"], mf.MANIFEST_NAME))
    if build.get("manifest_sha256") not in (None, sha):
        raise EdvitError(f"{plan_path}: made for another version of {build['path']} (manifest sha256 "
                         f"{str(build['manifest_sha256'])[:12]}…, now {sha[:12]}…); {fix}")
    for i, p in enumerate(places):
        art = mf.artifact(manifest, p["submodel"], p["format"], p["quant"])
        if art is None or art["sha256"] != p["sha256"]:
            raise EdvitError(f"{plan_path}: placements[{i}] ({p['submodel']} {p['format']}/{p['quant']} on "
                             f"{p['board']}) is not in {build['path']}/manifest.json with that sha256; {fix}")
    return plan, manifest


def _board_names(plan: dict) -> list[str]:
    names = []
    for p in plan["placements"]:
        if p["board"] not in names:
            names.append(p["board"])
    order = list(plan.get("boards") or {})
    return sorted(names, key=lambda n: (order.index(n) if n in order else len(order), n))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _release_id(plan_path: str) -> str:
    with open(plan_path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:8]
    t = time.time()
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime(t)) + f"-{int(t * 1000) % 1000:03d}-{digest}"


def _boards_file(plan: dict, boards_yaml: str | None, plan_path: str) -> str | None:
    if boards_yaml:
        return boards_yaml
    f = plan.get("boards_file")
    return f if isinstance(f, str) and os.path.isfile(f) else None


def _make_boards(plan: dict, manifest: dict, plan_path: str, boards_yaml: str | None, transport: str,
                 out: str, known_hosts, host_key_policy: str, connect_timeout: float, python: str | None):
    from ..config.boards import boards_from_yaml, validate_plan_boards
    from ..runtime import manifest as mf

    names = _board_names(plan)
    # local: an explicit --boards gives the ports; the plan's own boards_file describes other machines
    bfile = _boards_file(plan, boards_yaml, plan_path) if transport == "ssh" else boards_yaml
    cfg = {}
    if bfile:
        cluster = boards_from_yaml(bfile)
        validate_plan_boards(plan, cluster, bfile)
        cfg = {b.name: b for b in cluster}
    elif transport == "ssh":
        raise EdvitError(f"{plan_path}: its boards_file {plan.get('boards_file')!r} is not there; pass "
                         "--boards boards.yaml (or --transport local to run the workers on this machine)")
    if transport == "ssh":
        logins = {}
        for n in names:
            b = cfg[n]
            key = (b.user, b.host, b.port)
            if key in logins:
                raise EdvitError(f"{bfile}: boards {logins[key]} and {n} are the same login ({b.target}); they "
                                 "would share ~/.edvit — give each board its own user or host")
            logins[key] = n
    boards = []
    local_root = os.path.join(os.path.dirname(os.path.abspath(out)), LOCAL_DIR)
    ports = set()
    for n in names:
        places = [p for p in plan["placements"] if p["board"] == n]
        arts = {p["submodel"]: mf.artifact(manifest, p["submodel"], p["format"], p["quant"]) for p in places}
        if len(arts) != len(places):
            raise EdvitError(f"{plan_path}: board {n} gets the same sub-model twice; re-run `edvit-tool assign`")
        variants = {p["submodel"]: f"{p['format']}/{p['quant']}" for p in places}
        b = cfg.get(n)
        if transport == "ssh":
            tr = _Ssh(n, b.target, b.identity, b.python, known_hosts, host_key_policy, connect_timeout)
            address, port, threads = b.address, b.worker_port, b.threads or 1
        else:
            tr = _Local(n, os.path.join(local_root, n), python or sys.executable)
            address, threads = "127.0.0.1", 1
            port = b.worker_port if b else _free_port()
            if port in ports:
                raise EdvitError(f"{bfile}: two boards use worker_port {port}; on one machine (--transport local) "
                                 "each board needs its own worker_port")
            ports.add(port)
        boards.append(_Board(n, tr, address, port, threads, list(arts), variants, arts,
                             identity=b.identity if b else None))
    return boards, bfile


def _board_manifest(manifest: dict, b: _Board, inputs_rel: str | None) -> dict:
    """The manifest restricted to this board's artifacts and the files shipped with them (schema-valid)."""
    arts = list(b.artifacts.values())
    keep = {a["file"] for a in arts} | {a["reference"] for a in arts if a.get("reference")}
    if inputs_rel:
        keep.add(inputs_rel)
    files = manifest.get("files") or {}
    return {**manifest, "artifacts": arts, "files": {k: v for k, v in files.items() if k in keep}}


def _release_json(release: str, b: _Board, plan_sha: str) -> dict:
    variant = ",".join(f"{m}={v}" for m, v in b.variants.items())
    return {"release": release, "board": b.name, "models": b.models, "variants": b.variants,
            "address": b.address, "port": b.port, "plan_sha256": plan_sha,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "worker_args": ["--manifest", "manifest.json", "--models", ",".join(b.models), "--host", b.address,
                            "--port", str(b.port), "--token-file", "token", "--variant", variant,
                            "--threads", str(b.threads), "--drain-s", str(WORKER_DRAIN_S)]}


# ---------------------------------------------------------------------------------------------------------
# steps


def _tail(b: _Board, release: str | None) -> str:
    if not release:
        return ""
    try:
        res = b.tr.agent("tail", release=release, bytes=3000, timeout=20)
    except EdvitError as e:
        return f" (worker log unavailable: {e})"
    lines = [ln for ln in res.get("log", "").splitlines() if ln.strip()][-8:]
    if not lines:
        return f" (worker log {res.get('path')} is empty)"
    return f"; worker log {res.get('path')} ends:\n    " + "\n    ".join(lines)


def _wait_ready(b: _Board, token: str | None, timeout_s: float, release: str, verify: bool = True,
                endpoint: tuple | None = None) -> None:
    """Poll /v2/health/ready until it answers 200; fail early if the worker process died. Then, with the token,
    check each model's metadata names the planned artifact (so we talk to OUR new worker, not a stale one)."""
    from ..runtime.protocol import OipClient, ProtocolError

    address, port = endpoint or (b.address, b.port)
    deadline = time.monotonic() + timeout_s
    next_check = time.monotonic() + 0.3
    client = OipClient(address, port, token=token, timeout=1.0)
    try:
        while True:
            try:
                if client.ready():
                    break
            except ProtocolError:
                pass  # not listening yet (or something else holds the port: the pid check below decides)
            now = time.monotonic()
            if now >= deadline:
                raise BoardFailed(f"{b.name}: worker on {address}:{port} not ready within {timeout_s:g}s"
                                  + _tail(b, release))
            if now >= next_check:
                st = b.tr.agent("state", pid=b.pid, timeout=20)
                if not st["pid_alive"]:
                    raise BoardFailed(f"{b.name}: worker (pid {b.pid}) exited before it was ready on "
                                      f"{address}:{port}" + _tail(b, release))
                next_check = time.monotonic() + 0.5
            time.sleep(0.05)
        if not verify:
            return
        for m in b.models:
            try:
                meta = client.metadata(m)
            except ProtocolError as e:
                raise BoardFailed(f"{b.name}: {b.address}:{b.port} is ready but model {m} answers "
                                  f"{e.status or 'nothing'} ({e.message}); another server may hold this port — "
                                  "stop it or change worker_port") from None
            sha = (meta.get("parameters") or {}).get("sha256")
            if sha != b.artifacts[m]["sha256"]:
                raise BoardFailed(f"{b.name}: {b.address}:{b.port} serves {m} with sha256 {str(sha)[:12]}…, "
                                  f"expected {b.artifacts[m]['sha256'][:12]}… — a stale worker holds the port?")
    finally:
        client.close()


def _each(boards: list[_Board], fn) -> dict:
    """fn(board) on every board in parallel -> {name: exception or None}."""
    if not boards:
        return {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(boards)) as pool:
        futs = {b.name: pool.submit(fn, b) for b in boards}
        out = {}
        for name, f in futs.items():
            try:
                f.result()
                out[name] = None
            except Exception as e:  # collected per board: one board's failure must not skip the others' rollback
                out[name] = e
    return out


def _rollback(b: _Board, release: str, timeout_s: float, progress) -> str:
    """Put one board back as it was before this deploy; a line saying how it was left."""
    progress(b.name, "rolling back", STEPS - 1, STEPS)
    try:
        b.tr.agent("stop", grace=STOP_GRACE_S, timeout=STOP_GRACE_S + 30)
        b.tr.agent("switch", release=b.prev, timeout=30)
        if not b.prev:
            return f"{b.name}: stopped (it had no previous release)"
        if not b.prev_running:
            return f"{b.name}: back on release {b.prev} (its worker was not running before; left stopped)"
        b.pid = b.tr.agent("start", timeout=60)["pid"]
        info = b.prev_info or {}
        endpoint = (info.get("address", b.address), int(info.get("port", b.port)))
        _wait_ready(b, None, timeout_s, b.prev, verify=False, endpoint=endpoint)
        return f"{b.name}: back on release {b.prev}, serving on {endpoint[0]}:{endpoint[1]} (pid {b.pid})"
    except Exception as e:  # report and carry on with the other boards
        return f"{b.name}: ROLLBACK FAILED ({e}); check the board"


# ---------------------------------------------------------------------------------------------------------
# public API


def deploy(plan_path: str, boards_yaml: str | None = None, transport: str = "ssh", out: str = "deployment.json",
           deadline_ms: int = 2000, timeout_s: float = 60.0, known_hosts: str | None = None,
           host_key_policy: str = "accept-new", connect_timeout: float = 10.0, python: str | None = None,
           progress=None) -> dict:
    """Deploy plan.json's placements; write `out` (deployment.json) and return it.

    transport "ssh": boards from boards_yaml (default: the plan's boards_file). "local": workers are processes on
    this machine under <out dir>/.edvit-local/<board>/ on 127.0.0.1 (ports: boards_yaml's worker_port, else free
    ones); `python` is their interpreter (default: this one). timeout_s: per board, for the worker to be ready.
    progress(board, message, done, total) follows each board. Raises EdvitError (boards rolled back) on failure.
    """
    from .profile import prepare
    from ..runtime import manifest as mf

    if transport not in TRANSPORTS:
        raise EdvitError(f"--transport must be one of {', '.join(TRANSPORTS)}, got {transport!r}")
    if isinstance(deadline_ms, bool) or not isinstance(deadline_ms, int) or deadline_ms <= 0:
        raise EdvitError(f"--deadline-ms must be a positive integer, got {deadline_ms!r}")
    step = progress or (lambda *a: None)
    t_start = time.monotonic()
    plan, manifest = load_plan(plan_path)
    build_dir = plan["build"]["path"]
    boards, bfile = _make_boards(plan, manifest, plan_path, boards_yaml, transport, out, known_hosts,
                                 host_key_policy, connect_timeout, python)
    keys = sorted({mf.artifact_key(a) for b in boards for a in b.artifacts.values()})
    payload = prepare(build_dir, keys)  # checks every file against the manifest, hashes once for all boards
    jobs = {(j.entry["name"], j.entry["format"], j.entry["quant"]): j for j in payload.jobs}
    release = _release_id(plan_path)
    with open(plan_path, "rb") as f:
        plan_sha = hashlib.sha256(f.read()).hexdigest()
    token = secrets.token_urlsafe(32)
    inputs_rel = mf.REFERENCE_INPUTS if payload.inputs else None

    def stage(b: _Board) -> None:
        t0 = time.monotonic()
        step(b.name, "connecting", 0, STEPS)
        b.tr.connect()
        st = b.tr.agent("state", timeout=30)
        b.prev, b.prev_running, b.prev_info = st["current"], bool(st["workers"]), st.get("current_info")
        if b.prev == release:
            raise BoardFailed(f"{b.name}: release {release} is already current; deploy again")
        step(b.name, "uploading", 1, STEPS)
        files = []
        for a in b.artifacts.values():
            job = jobs[(a["name"], a["format"], a["quant"])]
            files.append((job.path, a["file"], job.sha256))
            if job.reference:
                files.append((job.reference, a["reference"], job.reference_sha256))
        if inputs_rel:
            files.append((payload.inputs, inputs_rel, payload.inputs_sha256))
        if isinstance(b.tr, _Ssh):
            links, b.uploads = b.tr.stage(files, payload.runtime, payload.runtime_digest)
            copy = False
        else:
            links, b.uploads = b.tr.stage(files)
            copy = True  # local: own copies, so editing the build or the package later cannot change a release
        step(b.name, "assembling release", 2, STEPS)
        texts = {"manifest.json": json.dumps(_board_manifest(manifest, b, inputs_rel), indent=1),
                 "release.json": json.dumps(_release_json(release, b, plan_sha), indent=1)}
        if not isinstance(b.tr, _Ssh):
            texts.update({f"runtime/{rel}": (src.decode() if isinstance(src, bytes) else _read_text(src))
                          for rel, src in payload.runtime.items()})
        b.tr.agent("assemble", release=release, links=links, files=texts, secrets={"token": token},
                   copy=copy, timeout=120)
        b.seconds = time.monotonic() - t0

    def activate(b: _Board) -> None:
        t0 = time.monotonic()
        b.activated = True
        step(b.name, "stopping old worker", 3, STEPS)
        b.tr.agent("stop", grace=STOP_GRACE_S, timeout=STOP_GRACE_S + 30)
        b.tr.agent("switch", release=release, timeout=30)
        step(b.name, "starting worker", 4, STEPS)
        b.pid = b.tr.agent("start", timeout=60)["pid"]
        step(b.name, "waiting for ready", 5, STEPS)
        _wait_ready(b, token, timeout_s, release)
        step(b.name, "ready", STEPS, STEPS)
        b.seconds += time.monotonic() - t0

    try:
        failed = _each(boards, stage)
        bad = {n: e for n, e in failed.items() if e is not None}
        if bad:
            for n in bad:
                step(n, "failed", STEPS, STEPS)
            _raise_or_bug(bad, release, "nothing was changed on any board; each keeps serving what it served", [])
        failed = _each(boards, activate)
        bad = {n: e for n, e in failed.items() if e is not None}
        if bad:
            for n in bad:
                step(n, "failed", STEPS, STEPS)
            touched = [b for b in boards if b.activated]
            lines = _rollback_all(touched, release, timeout_s, step)
            _raise_or_bug(bad, release, "", lines)
        doc = _deployment_doc(plan_path, plan, manifest, bfile, boards, release, deadline_ms, out, transport,
                              known_hosts, host_key_policy, connect_timeout)
        token_file = doc["token_file"]
        _write_secret(token_file, token)
        write_json_atomic(out, doc)
        for b in boards:  # best effort: old releases only cost disk
            try:
                b.tr.agent("prune", keep=KEEP_RELEASES, protect=[release] + ([b.prev] if b.prev else []),
                           timeout=60)
            except EdvitError as e:
                log.warning("%s: could not prune old releases: %s", b.name, e)
    finally:
        for b in boards:
            b.tr.close()
    doc["seconds"] = round(time.monotonic() - t_start, 3)
    return doc


def _rollback_all(boards: list[_Board], release: str, timeout_s: float, step) -> list[str]:
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(boards))) as pool:
        return list(pool.map(lambda b: _rollback(b, release, timeout_s, step), boards))


def _raise_or_bug(bad: dict, release: str, outcome: str, rollback: list[str]) -> None:
    """One EdvitError for all failed boards: first line = what failed and how the boards were left, then each
    board's reason, then each board's rollback. A non-EdvitError (our bug) is re-raised with its traceback after
    that text was logged: the boards' state matters more than the message."""
    if rollback:
        broken = [ln.split(":", 1)[0] for ln in rollback if "ROLLBACK FAILED" in ln]
        outcome = (f"rollback FAILED on {', '.join(broken)} (see below); the other boards are back on their "
                   "previous release" if broken else "every board was rolled back to its previous release")
    reasons = "\n".join(str(e) if str(e).startswith(f"{n}:") else f"{n}: {type(e).__name__}: {e}"
                        for n, e in bad.items())
    text = f"deploy of release {release} failed on {', '.join(bad)}; {outcome}\n{reasons}"
    if rollback:
        text += "\nrollback:\n  " + "\n  ".join(rollback)
    text += "\nFix the cause and run `edvit-tool deploy` again."
    bugs = [e for e in bad.values() if not isinstance(e, EdvitError)]
    if bugs:
        log.error("%s", text)
        raise bugs[0]
    raise EdvitError(text)


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _write_secret(path: str, text: str) -> None:
    write_text_atomic(path, text + "\n", mode=0o600)


def token_path(out: str) -> str:
    """deployment.json -> deployment.token beside it."""
    base = os.path.abspath(out)
    stem = base[:-5] if base.endswith(".json") else base
    return stem + ".token"


def _fusion(manifest: dict, variants: set[str] = frozenset()) -> dict | None:
    """The fusion head the coordinator runs: the boards' own variant when they all run one (that is the
    combination export measured), else onnx/fp32."""
    usable = [a for a in manifest.get("artifacts", []) if a.get("name") == "fusion" and a.get("status", "ok") == "ok"]
    same = next(iter(variants)) if len(variants) == 1 else None
    usable.sort(key=lambda a: (f"{a['format']}/{a['quant']}" != same, a["format"] != "onnx", a["quant"] != "fp32"))
    if not usable:
        return None
    a = usable[0]
    return {"artifact": a["file"], "format": a["format"], "quant": a["quant"], "sha256": a["sha256"]}


def _deployment_doc(plan_path, plan, manifest, bfile, boards, release, deadline_ms, out, transport, known_hosts,
                    host_key_policy, connect_timeout) -> dict:
    replicas: dict[str, list[str]] = {}
    for b in boards:
        for m in b.models:
            replicas.setdefault(m, []).append(b.name)
    entries = []
    for b in boards:
        variants = sorted(set(b.variants.values()))
        entries.append({
            "name": b.name, "transport": b.tr.kind, "target": b.tr.target,
            "endpoint": f"http://{'[' + b.address + ']' if ':' in b.address else b.address}:{b.port}",
            "address": b.address, "port": b.port, "models": b.models,
            "variant": variants[0] if len(variants) == 1 else ",".join(f"{m}={v}" for m, v in b.variants.items()),
            "variants": b.variants,
            "artifacts": {m: {"file": a["file"], "sha256": a["sha256"]} for m, a in b.artifacts.items()},
            "release": release, "previous_release": b.prev, "pid": b.pid,
            "root": b.tr.root, "python": b.tr.python, "identity": b.identity,
            "log": posixpath.join(b.tr.root, "releases", release, "worker.log"),
            "uploads": b.uploads, "seconds": round(b.seconds, 3)})
    return {
        "schema_version": SCHEMA_VERSION, "release": release, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "transport": transport,
        "build": {"path": os.path.abspath(plan["build"]["path"]),
                  "manifest_sha256": plan["build"].get("manifest_sha256")},
        "plan": os.path.abspath(plan_path),
        "boards_file": os.path.abspath(bfile) if bfile else None,
        "token_file": token_path(out),
        "fusion": _fusion(manifest, {v for b in boards for v in b.variants.values()}),
        "boards": entries, "replicas": replicas, "deadline_ms": deadline_ms,
        "ssh": {"known_hosts": os.path.abspath(os.path.expanduser(known_hosts)) if known_hosts else None,
                "host_key_policy": host_key_policy, "connect_timeout": connect_timeout},
    }


def load_deployment(path: str) -> dict:
    fix = "run `edvit-tool deploy --plan plan.json` first"
    doc = _read_json(path, "deployment file", fix)
    if doc.get("schema_version") != SCHEMA_VERSION or not isinstance(doc.get("boards"), list) or not doc["boards"]:
        raise EdvitError(f"{path}: not a schema_version {SCHEMA_VERSION} deployment file with boards; {fix}")
    for i, b in enumerate(doc["boards"]):
        missing = [k for k in ("name", "transport", "target", "address", "port", "models", "root", "python")
                   if not isinstance(b, dict) or k not in b]
        if missing or b.get("transport") not in TRANSPORTS:
            raise EdvitError(f"{path}: boards[{i}] lacks {', '.join(missing) or 'a valid transport'}; {fix}")
    return doc


def _transport_for(entry: dict, doc: dict):
    if entry["transport"] == "local":
        return _Local(entry["name"], entry["root"], entry["python"])
    ssh = doc.get("ssh") or {}
    return _Ssh(entry["name"], entry["target"], entry.get("identity"), entry["python"], ssh.get("known_hosts"),
                ssh.get("host_key_policy", "accept-new"), float(ssh.get("connect_timeout", 10.0)))


def _read_token(doc: dict) -> str | None:
    try:
        with open(doc["token_file"], encoding="utf-8") as f:
            return f.read().strip() or None
    except (OSError, KeyError, TypeError):
        return None


def _board_status(entry: dict, doc: dict, token: str | None, http_timeout: float) -> dict:
    from ..runtime.protocol import OipClient, ProtocolError

    res = {"name": entry["name"], "transport": entry["transport"], "endpoint": entry.get("endpoint"),
           "up": False, "release": None, "deployed_release": entry.get("release"), "models": entry["models"],
           "p50_ms": {}, "requests": {}, "pid": None, "error": None}
    client = OipClient(entry["address"], entry["port"], token=token, timeout=http_timeout)
    problems = []
    try:
        res["up"] = client.ready()
        if not res["up"]:
            problems.append("the worker answers but is not ready")
        elif token is None:
            problems.append(f"token file {doc.get('token_file')} unreadable: no request stats")
        else:
            for m in entry["models"]:
                s = client.stats(m)
                res["p50_ms"][m], res["requests"][m] = s.get("p50_ms"), s.get("count")
    except ProtocolError as e:
        problems.append(f"stats: {e.message}" if res["up"] else f"no answer on {entry['address']}:{entry['port']}")
    finally:
        client.close()
    tr = _transport_for(entry, doc)
    try:
        tr.connect()
        st = tr.agent("state", timeout=30)
        res["release"], res["pid"] = st["current"], (st["workers"] or [None])[0]
        if not st["workers"]:
            problems.append("no worker process on the board")
    except EdvitError as e:
        problems.append(f"board state unknown: {e}")
    finally:
        tr.close()
    res["error"] = "; ".join(problems) or None
    return res


def status(deployment_path: str, http_timeout: float = 2.0) -> list[dict]:
    """Per board: up (ready over HTTP), the release `current` points at on the board, models, p50 of the worker's
    last requests per model, request counts, worker pid; `error` says what could not be checked."""
    doc = load_deployment(deployment_path)
    token = _read_token(doc)
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(doc["boards"])) as pool:
        return list(pool.map(lambda e: _board_status(e, doc, token, http_timeout), doc["boards"]))


def _board_stop(entry: dict, doc: dict) -> dict:
    res = {"name": entry["name"], "transport": entry["transport"], "stopped": [], "signals": {}, "error": None}
    tr = _transport_for(entry, doc)
    try:
        tr.connect()
        r = tr.agent("stop", grace=STOP_GRACE_S, timeout=STOP_GRACE_S + 30)
        res["stopped"], res["signals"] = r["stopped"], r["signals"]
    except EdvitError as e:
        res["error"] = str(e)
    finally:
        tr.close()
    return res


def stop(deployment_path: str) -> list[dict]:
    """Stop every board's worker (pidfile -> SIGTERM, SIGKILL after a grace period). Per board: pids stopped
    (empty when none was running), signals sent, error if the board could not be reached."""
    doc = load_deployment(deployment_path)
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(doc["boards"])) as pool:
        return list(pool.map(lambda e: _board_stop(e, doc), doc["boards"]))


__all__ = ["deploy", "status", "stop", "load_plan", "load_deployment", "token_path", "AGENT", "BoardFailed"]
