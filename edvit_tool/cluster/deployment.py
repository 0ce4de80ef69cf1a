"""deployment.json: what a deploy left running, where, and how to reach it. This module owns the schema: the one
writer (`document`, used by deploy) and the readers — `read` for managing the boards (status, stop, the loop's
cleanup) and `load` for serving through them (coordinator, evaluate, serve) — so every consumer applies the same
checks.

    {"schema_version": 1, "release": id, "created": time, "transport": "ssh" | "local",
     "build": {"path": abs dir, "manifest_sha256": str}, "plan": abs path, "boards_file": abs path | null,
     "token_file": abs path (mode 0600, beside deployment.json), "deadline_ms": int,
     "wire": "auto" | "fp32" | "uint8" | "encoded"   (the boards' input format; missing = fp32, see
             runtime/wire.py and serve/wire.py),
     "fusion": {"artifact": relpath, "format", "quant", "sha256"},
     "boards": [{"name", "transport", "target", "endpoint": "http://addr:port", "address", "port",
                 "models": [sub-model], "variant", "variants": {model: "fmt/quant"},
                 "artifacts": {model: {"file", "sha256"}}, "release", "previous_release", "pid",
                 "root": release root on the board, "runtime": runtime dir on the board (SSH), "python",
                 "identity", "log", "uploads": {files, bytes, cached, resent}, "seconds"}],
     "replicas": {model: [board names]},
     "ssh": {"known_hosts", "host_key_policy", "connect_timeout"}}
"""

from __future__ import annotations

import os
import posixpath
import time
from urllib.parse import urlsplit

from ..errors import EdvitError
from ..runtime import manifest as mf
from ..runtime.manifest import ordered_submodels  # noqa: F401 (re-exported: plan and deploy read it here)
from ..runtime.wire import WIRE_CHOICES

SCHEMA_VERSION = 1
TRANSPORTS = ("ssh", "local")
MANAGE_KEYS = ("name", "transport", "target", "address", "port", "models", "root", "python")


class DeploymentError(EdvitError):
    """deployment.json is missing, malformed or does not match its build."""


def _read_versioned(path: str) -> dict:
    doc = read_json(path)
    if doc.get("schema_version") != SCHEMA_VERSION:
        raise DeploymentError(f"{path}: schema_version must be {SCHEMA_VERSION}, got {doc.get('schema_version')!r}; "
                              "re-run `edvit-tool deploy` with this version")
    if not isinstance(doc.get("boards"), list) or not doc["boards"]:
        raise DeploymentError(f"{path}: boards must be a non-empty list; re-run `edvit-tool deploy`")
    return doc


def read(path: str) -> dict:
    """deployment.json for managing its boards (status, stop): every board entry has what reaching it takes."""
    doc = _read_versioned(path)
    names = set()
    for i, b in enumerate(doc["boards"]):
        missing = [k for k in MANAGE_KEYS if not isinstance(b, dict) or k not in b]
        if missing or b.get("transport") not in TRANSPORTS:
            raise DeploymentError(f"{path}: boards[{i}] lacks {', '.join(missing) or 'a valid transport'}; "
                                  "run `edvit-tool deploy --plan plan.json` first")
        if b["name"] in names:
            raise DeploymentError(f"{path}: boards[{i}]: board name {b['name']!r} appears twice")
        names.add(b["name"])
    return doc


def read_token_quietly(doc: dict) -> str | None:
    """The deployment's token, or None when its file is missing or unreadable (status reports that)."""
    try:
        with open(doc["token_file"], encoding="utf-8") as f:
            return f.read().strip() or None
    except (OSError, KeyError, TypeError):
        return None


def read_json(path: str, what: str = "deployment file") -> dict:
    from ..artifacts import read_json_object

    return read_json_object(path, what, "run `edvit-tool deploy --plan plan.json` to (re)create it", DeploymentError)


def read_token(path: str, where: str) -> str:
    """The bearer token in `path` (one word); DeploymentError naming `where` otherwise. Never logged."""
    from ..runtime.httpd import read_token_file

    try:
        return read_token_file(path)
    except ValueError as e:
        raise DeploymentError(f"{where}: token file {path}: {e}; re-run `edvit-tool deploy` or fix its "
                              "permissions") from None


def load(path: str) -> tuple:
    """deployment.json for serving (coordinator, evaluate, serve) -> (doc, manifest, build dir, token or None,
    {model: [board names]}); every problem named."""
    doc = _read_versioned(path)
    where = path
    build = doc.get("build")
    if not isinstance(build, dict) or not isinstance(build.get("path"), str):
        raise DeploymentError(f"{where}: build.path is missing; re-run `edvit-tool deploy`")
    build_dir = build["path"]
    if not os.path.isabs(build_dir):
        build_dir = os.path.join(os.path.dirname(os.path.abspath(path)), build_dir)
    try:
        manifest = mf.load(build_dir)
    except mf.ManifestError as e:
        raise DeploymentError(f"{where}: build.path {build_dir}: {e}") from None
    want = build.get("manifest_sha256")
    if want and mf.sha256_file(os.path.join(build_dir, mf.MANIFEST_NAME)) != want:
        raise DeploymentError(f"{where}: the build at {build_dir} changed since it was deployed (manifest sha256 "
                              "differs); redeploy it with `edvit-tool deploy`")
    token = None
    if doc.get("token_file"):
        token = read_token(doc["token_file"], where)
    boards = doc["boards"]
    sub_names = [s["name"] for s in ordered_submodels(manifest)]
    names, hosting = set(), {m: [] for m in sub_names}
    for i, b in enumerate(boards):
        at = f"{where}: boards[{i}]"
        if not isinstance(b, dict) or not isinstance(b.get("name"), str) or not b["name"]:
            raise DeploymentError(f"{at}.name is missing")
        if b["name"] in names:
            raise DeploymentError(f"{at}: board name {b['name']!r} appears twice")
        names.add(b["name"])
        parse_endpoint(b.get("endpoint"), f"{at} ({b['name']}).endpoint")
        models = b.get("models")
        if not isinstance(models, list) or not models or not all(isinstance(m, str) for m in models):
            raise DeploymentError(f"{at} ({b['name']}).models must be a non-empty list of sub-model names")
        for m in models:
            if m not in hosting:
                raise DeploymentError(f"{at} ({b['name']}): model {m!r} is not a sub-model of the build "
                                      f"(it has {', '.join(sub_names)}); redeploy from a plan for this build")
            hosting[m].append(b["name"])
    if doc.get("wire", "fp32") not in WIRE_CHOICES:
        raise DeploymentError(f"{where}: wire must be one of {', '.join(WIRE_CHOICES)}, got {doc.get('wire')!r}; "
                              "redeploy with `edvit-tool deploy --wire ...`")
    replicas = doc.get("replicas")
    if replicas is None:
        replicas = hosting
    if not isinstance(replicas, dict):
        raise DeploymentError(f"{where}: replicas must map sub-model -> [board names]")
    for m in sub_names:
        reps = replicas.get(m) or hosting[m]
        if not isinstance(reps, list) or not all(isinstance(r, str) for r in reps):
            raise DeploymentError(f"{where}: replicas.{m} must be a list of board names, got {reps!r}")
        if not reps:
            raise DeploymentError(f"{where}: sub-model {m} is on no board; re-run `edvit-tool assign` and "
                                  "`edvit-tool deploy`")
        for bn in reps:
            if bn not in hosting[m]:
                raise DeploymentError(f"{where}: replicas.{m} names board {bn!r}, which does not serve {m} "
                                      f"(boards with {m}: {', '.join(hosting[m]) or 'none'})")
        replicas[m] = list(reps)
    return doc, manifest, build_dir, token, {m: replicas[m] for m in sub_names}


def parse_endpoint(endpoint, where: str) -> tuple:
    if not isinstance(endpoint, str):
        raise DeploymentError(f"{where} must be a URL like http://10.0.0.21:8001, got {endpoint!r}")
    u = urlsplit(endpoint)
    try:
        port = u.port
    except ValueError:
        port = None
    if u.scheme not in ("http", "https") or not u.hostname or port is None:
        raise DeploymentError(f"{where} must be a URL like http://10.0.0.21:8001 (or https://), got {endpoint!r}")
    return u.hostname, port


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


def document(plan_path, plan, manifest, bfile, boards, release, deadline_ms, out, transport, known_hosts,
             host_key_policy, connect_timeout, wire: str = "auto", tls_ca: str | None = None) -> dict:
    """deployment.json for a finished deploy (boards: deploy's per-board records)."""
    replicas: dict[str, list[str]] = {}
    for b in boards:
        for m in b.models:
            replicas.setdefault(m, []).append(b.name)
    entries = []
    for b in boards:
        variants = sorted(set(b.variants.values()))
        entries.append({
            "name": b.name, "transport": b.tr.kind, "target": b.tr.target,
            "endpoint": f"{'https' if tls_ca else 'http'}://"
                        f"{'[' + b.address + ']' if ':' in b.address else b.address}:{b.port}",
            "address": b.address, "port": b.port, "models": b.models,
            "variant": variants[0] if len(variants) == 1 else ",".join(f"{m}={v}" for m, v in b.variants.items()),
            "variants": b.variants,
            "artifacts": {m: {"file": a["file"], "sha256": a["sha256"]} for m, a in b.artifacts.items()},
            "release": release, "previous_release": b.prev, "pid": b.pid,
            "root": b.tr.root, "runtime": b.tr.runtime_dir if b.tr.kind == "ssh" else None,
            "python": b.tr.python, "identity": b.identity,
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
        "tls_ca": tls_ca,
        "fusion": _fusion(manifest, {v for b in boards for v in b.variants.values()}),
        "boards": entries, "replicas": replicas, "deadline_ms": deadline_ms, "wire": wire,
        "ssh": {"known_hosts": os.path.abspath(os.path.expanduser(known_hosts)) if known_hosts else None,
                "host_key_policy": host_key_policy, "connect_timeout": connect_timeout},
    }
