"""Deploy a plan's sub-models to boards as releases; start, check, roll back, report and stop their workers.

    doc = deploy("plan.json", "boards.yaml")                     # SSH boards; writes deployment.json
    doc = deploy("plan.json", transport="local", out="run/deployment.json")   # same workers, local processes
    status("deployment.json")  ->  [{"name", "up", "release", "models", "p50_ms", "pid", ...}]
    stop("deployment.json")    ->  [{"name", "stopped", "signals", "error"}]

Per board, under its own root (SSH: ~/.edvit/boards/<board name>, or boards.yaml's `root`, so boards that share
a login never share releases; local: <out dir>/.edvit-local/<board>):

    <root>/releases/<id>/   runtime/edvit_tool/{__init__.py, runtime/}   manifest.json (only this board's
                            artifacts)   submodels/...  reference/...   token (0600)   release.json   worker.log
    <root>/current -> releases/<id>      switched atomically (symlink to a temp name, then rename(2) over it)
    <root>/worker.pid   <root>/deploy.lock

Two phases, boards in parallel. 1) stage: upload (SSH: into the sha256 cache, every copy then hashed on the
board), take the board's deploy lock (a second deploy to the same board waits up to `lock_wait_s`, then fails
naming the holder), read its state and assemble the release dir; a failure here changes nothing that serves.
2) activate: stop the old worker (SIGTERM, SIGKILL after a grace period), switch `current`, start the new worker
detached, wait for /v2/health/ready and check with the token that it serves the planned artifacts (sha256). If
any board fails in 2) — or the deploy is interrupted (Ctrl-C) before deployment.json and its token are
written — EVERY activated board goes back to its previous release (and its previous worker, if one was
running), so no board is left serving a release whose token nobody has.

Board-side steps are edvit_tool.runtime.agent, shipped with the runtime (request as JSON on stdin, so the token
never appears on a command line); the transport (cluster.transport) is the one `profile` uses.
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
import sys
import time

from ..artifacts import write_json_atomic, write_text_atomic
from ..errors import EdvitError
from . import deployment
from . import plan as plan_file
from .deployment import TRANSPORTS, token_path
from .transport import BoardFailed, Held, LocalTransport, NothingDeployed, SshTransport, Transport

log = logging.getLogger(__name__)

LOCAL_DIR = ".edvit-local"
KEEP_RELEASES = 5          # per board, besides the current and the previous one
STOP_GRACE_S = 10.0        # SIGTERM -> SIGKILL
WORKER_DRAIN_S = 5.0       # the worker's own drain on SIGTERM (below the grace, so SIGKILL is rare)
LOCK_WAIT_S = 120.0        # how long a deploy (or stop) waits for another one's lock on a board
STEPS = 6                  # progress steps per board


@dataclasses.dataclass
class _Board:
    name: str
    tr: Transport
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
    lock: Held | None = None         # <root>/deploy.lock on the board, held from before `state` to the end
    seconds: float = 0.0
    pending: tuple | None = None     # (links, texts) staged for the release, assembled once the lock is held




def _holder(what: str) -> str:
    """Who holds a board's lock, as the other deploy's error message shows it."""
    return f"{what} from {socket.gethostname()} pid {os.getpid()}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _release_id(plan_path: str) -> str:
    with open(plan_path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:8]
    t = time.time()
    # the random tail keeps two deploys of one plan started in the same millisecond apart
    return (time.strftime("%Y%m%d-%H%M%S", time.gmtime(t)) + f"-{int(t * 1000) % 1000:03d}-{digest}"
            f"-{secrets.token_hex(2)}")


def _boards_file(plan: dict, boards_yaml: str | None) -> str | None:
    if boards_yaml:
        return boards_yaml
    f = plan.get("boards_file")
    return f if isinstance(f, str) and os.path.isfile(f) else None


def _make_boards(plan: dict, manifest: dict, plan_path: str, boards_yaml: str | None, transport: str,
                 out: str, known_hosts, host_key_policy: str, connect_timeout: float, python: str | None):
    from ..config.boards import boards_from_yaml, validate_plan_boards
    from ..runtime import manifest as mf

    names = plan_file.board_names(plan)
    # local: an explicit --boards gives the ports; the plan's own boards_file describes other machines
    bfile = _boards_file(plan, boards_yaml) if transport == "ssh" else boards_yaml
    cfg = {}
    if bfile:
        cluster = boards_from_yaml(bfile)   # refuses two boards with one login and one root
        validate_plan_boards(plan, cluster, bfile)
        cfg = {b.name: b for b in cluster}
    elif transport == "ssh":
        raise EdvitError(f"{plan_path}: its boards_file {plan.get('boards_file')!r} is not there; pass "
                         "--boards boards.yaml (or --transport local to run the workers on this machine)")
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
            tr = SshTransport(n, b.target, b.python, root=b.root, identity=b.identity, known_hosts=known_hosts,
                              host_key_policy=host_key_policy, connect_timeout=connect_timeout)
            address, port, threads = b.address, b.worker_port, b.threads or 1
        else:
            tr = LocalTransport(n, python or sys.executable, os.path.join(local_root, n))
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


def _read_tls(tls: dict | None) -> dict:
    """{"tls.crt": PEM text, "tls.key": PEM text} for the release's secrets ({} without TLS)."""
    if not tls:
        return {}
    out = {}
    for key, name in (("cert", "tls.crt"), ("key", "tls.key"), ("ca", None)):
        path = tls.get(key)
        if not path or not os.path.isfile(path):
            raise EdvitError(f"--tls-{key}: {path!r} is not a file; give PEM files for --tls-cert, --tls-key and "
                             "--tls-ca (the CA that signed the certificate, or the certificate itself if self-signed)")
        if name:
            with open(path, encoding="utf-8") as f:
                out[name] = f.read()
    return out


def _client_tls(ca: str | None):
    """The TLS context the host verifies HTTPS boards with (None: plain HTTP)."""
    if not ca:
        return None
    import ssl

    return ssl.create_default_context(cafile=ca)


def _unverified_tls():
    """Rollback's readiness probe of a previous HTTPS worker: liveness only, nothing secret is sent."""
    import ssl

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _release_json(release: str, b: _Board, plan_sha: str, tls: bool = False) -> dict:
    variant = ",".join(f"{m}={v}" for m, v in b.variants.items())
    return {"release": release, "board": b.name, "models": b.models, "variants": b.variants,
            "address": b.address, "port": b.port, "plan_sha256": plan_sha,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "worker_args": ["--manifest", "manifest.json", "--models", ",".join(b.models), "--host", b.address,
                            "--port", str(b.port), "--token-file", "token", "--variant", variant,
                            "--threads", str(b.threads), "--drain-s", str(WORKER_DRAIN_S)]
            + (["--tls-cert", "tls.crt", "--tls-key", "tls.key"] if tls else [])}


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
                endpoint: tuple | None = None, ssl_context=None) -> None:
    """Poll /v2/health/ready until it answers 200; fail early if the worker process died. Then, with the token,
    check each model's metadata names the planned artifact (so we talk to OUR new worker, not a stale one)."""
    from ..runtime.protocol import OipClient, ProtocolError

    address, port = endpoint or (b.address, b.port)
    deadline = time.monotonic() + timeout_s
    next_check = time.monotonic() + 0.3
    client = OipClient(address, port, token=token, timeout=1.0, ssl_context=ssl_context)
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
        # readiness only (no token): a previous HTTPS worker is reached without verifying its certificate here
        prev_tls = "--tls-cert" in (info.get("worker_args") or [])
        _wait_ready(b, None, timeout_s, b.prev, verify=False, endpoint=endpoint,
                    ssl_context=_unverified_tls() if prev_tls else None)
        return f"{b.name}: back on release {b.prev}, serving on {endpoint[0]}:{endpoint[1]} (pid {b.pid})"
    except Exception as e:  # report and carry on with the other boards
        return f"{b.name}: ROLLBACK FAILED ({e}); check the board"


# ---------------------------------------------------------------------------------------------------------
# public API


def deploy(plan_path: str, boards_yaml: str | None = None, transport: str = "ssh", out: str = "deployment.json",
           deadline_ms: int = 2000, timeout_s: float = 60.0, known_hosts: str | None = None,
           host_key_policy: str = "accept-new", connect_timeout: float = 10.0, python: str | None = None,
           progress=None, lock_wait_s: float = LOCK_WAIT_S, wire: str = "auto", tls: dict | None = None) -> dict:
    """Deploy plan.json's placements; write `out` (deployment.json) and return it.

    transport "ssh": boards from boards_yaml (default: the plan's boards_file). "local": workers are processes on
    this machine under <out dir>/.edvit-local/<board>/ on 127.0.0.1 (ports: boards_yaml's worker_port, else free
    ones); `python` is their interpreter (default: this one). timeout_s: per board, for the worker to be ready.
    lock_wait_s: how long to wait for another deploy's lock on a board. wire: the input format the coordinator
    sends the boards (auto|fp32|uint8|encoded, recorded in deployment.json). tls: {"cert", "key", "ca"} PEM paths:
    every worker serves HTTPS with that certificate (it must name each board's address), and the coordinator
    verifies the boards against "ca" (recorded as deployment.json's tls_ca). progress(board, message, done, total)
    follows each board. Raises EdvitError (boards rolled back) on failure; on an interrupt (Ctrl-C) during
    activation the boards are rolled back and the interrupt re-raised.
    """
    from ..runtime import manifest as mf
    from .payload import prepare

    if transport not in TRANSPORTS:
        raise EdvitError(f"--transport must be one of {', '.join(TRANSPORTS)}, got {transport!r}")
    if wire not in deployment.WIRE_CHOICES:
        raise EdvitError(f"--wire must be one of {', '.join(deployment.WIRE_CHOICES)}, got {wire!r}")
    if isinstance(deadline_ms, bool) or not isinstance(deadline_ms, int) or deadline_ms <= 0:
        raise EdvitError(f"--deadline-ms must be a positive integer, got {deadline_ms!r}")
    step = progress or (lambda *a: None)
    t_start = time.monotonic()
    tls_files = _read_tls(tls)
    plan, manifest = plan_file.load(plan_path)
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
        step(b.name, "uploading", 1, STEPS)
        files = []                         # (local path, sha256, path in the release)
        for a in b.artifacts.values():
            job = jobs[(a["name"], a["format"], a["quant"])]
            files.append((job.path, job.sha256, a["file"]))
            if job.reference:
                files.append((job.reference, job.reference_sha256, a["reference"]))
        if inputs_rel:
            files.append((payload.inputs, payload.inputs_sha256, inputs_rel))
        staged = b.tr.stage([(p, sha) for p, sha, _ in files], payload.runtime, payload.runtime_digest,
                            payload.runtime_table)
        b.uploads = staged.counts()
        links = [[staged.paths[p], rel] for p, _, rel in files]
        texts = {}
        if b.tr.kind == "ssh":
            links += [[posixpath.join(staged.runtime, rel), f"runtime/{rel}"] for rel in sorted(payload.runtime)]
        else:  # local: own copies, so editing the build or the package later cannot change a release
            texts.update({f"runtime/{rel}": (src.decode() if isinstance(src, bytes) else _read_text(src))
                          for rel, src in payload.runtime.items()})
        b.pending = (links, texts)
        b.seconds = time.monotonic() - t0

    def lock_all() -> dict:
        """The boards' deploy locks, one at a time in a fixed order (by address, port and name): two deploys over
        the same boards then never hold one lock each while waiting for the other's."""
        for b in sorted(boards, key=lambda b: (b.address, b.port, b.name)):
            step(b.name, "waiting for the board's deploy lock", 2, STEPS)
            try:
                b.lock = b.tr.lock(lock_wait_s, by=_holder(f"deploy of release {release}"))
            except EdvitError as e:  # reported per board, like the other stages
                return {b.name: e}
        return {}

    def assemble(b: _Board) -> None:
        t0 = time.monotonic()
        links, texts = b.pending
        st = b.tr.agent("state", timeout=30)
        b.prev, b.prev_running, b.prev_info = st["current"], bool(st["workers"]), st.get("current_info")
        if b.prev == release:
            raise BoardFailed(f"{b.name}: release {release} is already current; deploy again")
        step(b.name, "assembling release", 2, STEPS)
        texts.update({"manifest.json": json.dumps(_board_manifest(manifest, b, inputs_rel), indent=1),
                      "release.json": json.dumps(_release_json(release, b, plan_sha, bool(tls_files)), indent=1)})
        b.tr.agent("assemble", release=release, links=links, files=texts, secrets={"token": token, **tls_files},
                   copy=b.tr.kind == "local", timeout=120)
        b.seconds += time.monotonic() - t0

    def activate(b: _Board) -> None:
        t0 = time.monotonic()
        b.activated = True
        step(b.name, "stopping old worker", 3, STEPS)
        b.tr.agent("stop", grace=STOP_GRACE_S, timeout=STOP_GRACE_S + 30)
        b.tr.agent("switch", release=release, timeout=30)
        step(b.name, "starting worker", 4, STEPS)
        b.pid = b.tr.agent("start", timeout=60)["pid"]
        step(b.name, "waiting for ready", 5, STEPS)
        _wait_ready(b, token, timeout_s, release, ssl_context=_client_tls(tls and tls.get("ca")))
        step(b.name, "ready", STEPS, STEPS)
        b.seconds += time.monotonic() - t0

    try:
        failed = _each(boards, stage)
        bad = {n: e for n, e in failed.items() if e is not None}
        if not bad:
            bad = lock_all()
        if not bad:
            failed = _each(boards, assemble)
            bad = {n: e for n, e in failed.items() if e is not None}
        if bad:
            for n in bad:
                step(n, "failed", STEPS, STEPS)
            _raise_or_bug(bad, release, "nothing was changed on any board; each keeps serving what it served", [])
        try:
            failed = _each(boards, activate)
            bad = {n: e for n, e in failed.items() if e is not None}
            if not bad:
                chosen, choice = wire, None
                if wire == "auto":
                    chosen, choice = _choose_wire(plan, manifest, boards, token, tls)
                doc = deployment.document(plan_path, plan, manifest, bfile, boards, release, deadline_ms, out,
                                          transport, known_hosts, host_key_policy, connect_timeout, chosen,
                                          tls_ca=os.path.abspath(tls["ca"]) if tls else None)
                if choice is not None:
                    doc["wire_choice"] = choice
                _write_secret(doc["token_file"], token)
                write_json_atomic(out, doc)
        except BaseException as e:  # Ctrl-C (or a failed write) before the token is saved: nobody could call it
            lines = _rollback_all([b for b in boards if b.activated], release, timeout_s, step)
            log.error("deploy of release %s interrupted (%s) during activation; rolled back:\n  %s", release,
                      type(e).__name__, "\n  ".join(lines))
            raise
        if bad:
            for n in bad:
                step(n, "failed", STEPS, STEPS)
            lines = _rollback_all([b for b in boards if b.activated], release, timeout_s, step)
            _raise_or_bug(bad, release, "", lines)
        for b in boards:  # best effort: old releases only cost disk
            try:
                b.tr.agent("prune", keep=KEEP_RELEASES, protect=[release] + ([b.prev] if b.prev else []),
                           timeout=60)
            except EdvitError as e:
                log.warning("%s: could not prune old releases: %s", b.name, e)
    finally:
        for b in boards:
            if b.lock is not None:
                b.lock.release()
            b.tr.close()
    doc["seconds"] = round(time.monotonic() - t_start, 3)
    return doc


def _choose_wire(plan: dict, manifest: dict, boards: list, token: str, tls: dict | None) -> tuple:
    """deploy --wire auto: (format, wire_choice record) from a short probe of the started workers (see
    wire_choice.py); a probe that fails keeps `auto` (the smallest format per batch) and says why."""
    from ..runtime import preprocess as pp
    from ..runtime import protocol as oip
    from . import wire_choice

    info = [{"name": b.name, "address": b.address, "port": b.port, "models": b.models} for b in boards]
    try:
        return wire_choice.decide(plan, manifest, info, token, ssl_context=_client_tls(tls and tls.get("ca")))
    except (oip.ProtocolError, EdvitError, pp.ImageError) as e:
        log.warning("wire auto: the probe failed (%s); keeping auto (the smallest format per batch)", e)
        return "auto", {"chosen": "auto", "why": f"the probe failed: {e}"}


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


def _transport_for(entry: dict, doc: dict) -> Transport:
    if entry["transport"] == "local":
        return LocalTransport(entry["name"], entry["python"], entry["root"])
    ssh = doc.get("ssh") or {}
    return SshTransport(entry["name"], entry["target"], entry["python"], root=entry["root"],
                        identity=entry.get("identity"), known_hosts=ssh.get("known_hosts"),
                        host_key_policy=ssh.get("host_key_policy", "accept-new"),
                        connect_timeout=float(ssh.get("connect_timeout", 10.0)), runtime_dir=entry.get("runtime"))


def _board_status(entry: dict, doc: dict, token: str | None, http_timeout: float) -> dict:
    from ..runtime.protocol import OipClient, ProtocolError

    res = {"name": entry["name"], "transport": entry["transport"], "endpoint": entry.get("endpoint"),
           "up": False, "release": None, "deployed_release": entry.get("release"), "models": entry["models"],
           "p50_ms": {}, "requests": {}, "pid": None, "error": None}
    https = str(entry.get("endpoint", "")).startswith("https://")
    client = OipClient(entry["address"], entry["port"], token=token, timeout=http_timeout,
                       ssl_context=_client_tls(doc.get("tls_ca")) if https else None)
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
    except NothingDeployed as e:
        problems.append(str(e))
    except EdvitError as e:
        problems.append(f"board state unknown: {e}")
    finally:
        tr.close()
    res["error"] = "; ".join(problems) or None
    return res


def status(deployment_path: str, http_timeout: float = 2.0) -> list[dict]:
    """Per board: up (ready over HTTP), the release `current` points at on the board, models, p50 of the worker's
    last requests per model, request counts, worker pid; `error` says what could not be checked."""
    doc = deployment.read(deployment_path)
    token = deployment.read_token_quietly(doc)
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(doc["boards"])) as pool:
        return list(pool.map(lambda e: _board_status(e, doc, token, http_timeout), doc["boards"]))


def _board_stop(entry: dict, doc: dict) -> dict:
    res = {"name": entry["name"], "transport": entry["transport"], "stopped": [], "signals": {}, "error": None}
    tr = _transport_for(entry, doc)
    try:
        tr.connect()
        with tr.lock(LOCK_WAIT_S, by=_holder("stop")):  # not in the middle of someone's deploy
            r = tr.agent("stop", grace=STOP_GRACE_S, timeout=STOP_GRACE_S + 30)
        res["stopped"], res["signals"] = r["stopped"], r["signals"]
    except NothingDeployed:
        log.debug("%s: nothing deployed under %s; nothing to stop", entry["name"], entry["root"])
    except EdvitError as e:
        res["error"] = str(e)
    finally:
        tr.close()
    return res


def stop(deployment_path: str) -> list[dict]:
    """Stop every board's worker (pidfile -> SIGTERM, SIGKILL after a grace period). Per board: pids stopped
    (empty when none was running), signals sent, error if the board could not be reached."""
    doc = deployment.read(deployment_path)
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(doc["boards"])) as pool:
        return list(pool.map(lambda e: _board_stop(e, doc), doc["boards"]))


__all__ = ["deploy", "status", "stop", "token_path", "BoardFailed"]
