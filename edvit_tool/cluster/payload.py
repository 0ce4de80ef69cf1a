"""What travels to a board, by sha256: the runtime tree, the build's manifest and reference inputs, and the
selected artifacts with their reference outputs — each checked against the manifest before it is hashed.

    payload = prepare("build/", ["g0:onnx/fp32", "fusion"])     # ArtifactError on any bad path or digest
    payload.jobs[0].path, payload.jobs[0].sha256

A manifest is data from disk, not code we wrote: every path it names (`artifacts[].file`, `reference`) must be
relative, free of `..`, resolve (symlinks followed) to a file inside the build, and hash to the digest its
`files` table records. So a tampered manifest cannot make `profile` or `deploy` read and upload a file from
elsewhere (`../../.ssh/id_ed25519`).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

from .. import __version__
from ..errors import ArtifactError
from ..runtime import manifest as mf
from .ssh import dir_files, tree_digest

RUNTIME_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "runtime")
PACKAGE_PARENT = os.path.dirname(os.path.dirname(RUNTIME_DIR))   # the dir that holds edvit_tool/

RUNTIME_SHIM = (f'"""edvit-tool board runtime, shipped by edvit-tool (the host package is not installed here)."""\n'
                f'__version__ = "{__version__}"\n').encode()


def runtime_tree() -> dict:
    """{relpath: local path | bytes} of what a board needs to `python -m edvit_tool.runtime.*` with
    PYTHONPATH=<that dir>: the runtime package and an edvit_tool/__init__.py that states only the version."""
    files = dir_files(RUNTIME_DIR, prefix="edvit_tool/runtime")
    for needed in ("bench.py", "worker.py", "agent.py"):
        if f"edvit_tool/runtime/{needed}" not in files:
            raise ArtifactError(f"{RUNTIME_DIR}/{needed} is missing; reinstall edvit-tool")
    files["edvit_tool/__init__.py"] = RUNTIME_SHIM
    return files


def tree_table(files: dict) -> dict:
    """{relpath: sha256} of a runtime tree (what the board checks its cached copy against)."""
    out = {}
    for rel, src in files.items():
        if isinstance(src, bytes):
            out[rel] = hashlib.sha256(src).hexdigest()
        else:
            out[rel] = mf.sha256_file(src)
    return out


@dataclass
class ArtifactJob:
    key: str                  # 'g0:onnx/fp32'
    entry: dict               # the manifest's artifact entry
    path: str                 # local file (inside the build)
    sha256: str
    reference: str | None     # local reference outputs npz
    reference_sha256: str | None


@dataclass
class Payload:
    """Everything uploaded to every board, hashed once."""
    build_dir: str
    manifest_sha256: str
    manifest_path: str
    inputs: str | None
    inputs_sha256: str | None
    runtime: dict
    runtime_digest: str
    jobs: list[ArtifactJob] = field(default_factory=list)
    runtime_table: dict = field(default_factory=dict)


def build_file(build_dir: str, manifest: dict, rel, what: str) -> tuple[str, str]:
    """(real path, sha256) of a file the manifest names, after checking that it is one of the build's own files
    (relative, no `..`, inside the build once symlinks are resolved) and unchanged since export."""
    where = f"{build_dir}/manifest.json"
    fix = "re-run `edvit-tool export` (or restore the build)"
    if not isinstance(rel, str) or not rel or rel.startswith(("/", "~")) or "\\" in rel or "\0" in rel \
            or any(part in ("", ".", "..") for part in rel.split("/")):
        raise ArtifactError(f"{where}: {what} {rel!r} must be a relative path inside the build, without '..'; "
                            f"{fix}")
    root = os.path.realpath(build_dir)
    real = os.path.realpath(os.path.join(root, *rel.split("/")))
    if os.path.commonpath([real, root]) != root:
        raise ArtifactError(f"{where}: {what} {rel!r} resolves to {real}, outside the build {root} (a symlink?); "
                            f"{fix}")
    if not os.path.isfile(real):
        raise ArtifactError(f"{os.path.join(build_dir, rel)}: missing ({what} in manifest.json); {fix}")
    listed = (manifest.get("files") or {}).get(rel)
    if not isinstance(listed, dict) or not isinstance(listed.get("sha256"), str):
        raise ArtifactError(f"{where}: {what} {rel!r} is not in the manifest's files table; {fix}")
    sha = mf.sha256_file(real)
    if sha != listed["sha256"]:
        raise ArtifactError(f"{os.path.join(build_dir, rel)}: sha256 {sha[:12]}… differs from manifest.json "
                            f"({listed['sha256'][:12]}…); the build was modified after export — {fix}")
    return real, sha


def _matches(selector: str, art: dict) -> bool:
    """'g0:onnx/fp32' | 'onnx/fp32' | 'onnx' | 'g0' | 'fusion' selects artifacts."""
    if ":" in selector:
        return mf.artifact_key(art) == selector
    if "/" in selector:
        return f"{art['format']}/{art['quant']}" == selector
    return selector in (art["format"], art["name"])


def select(manifest: dict, build_dir: str, artifacts=None) -> list[dict]:
    """The manifest's artifact entries chosen by `artifacts` selectors (default: every one that did not fail)."""
    arts = manifest.get("artifacts") or []
    if not arts:
        raise ArtifactError(f"{build_dir}/manifest.json lists no artifacts; run `edvit-tool export` first")
    selectors = [s.strip() for s in (artifacts or []) if s.strip()]
    if not selectors:
        chosen = [a for a in arts if a.get("status", "ok") != "failed"]
        if not chosen:
            raise ArtifactError(f"every artifact in {build_dir}/manifest.json failed its checks; re-run export")
        return chosen
    chosen = [a for a in arts if any(_matches(s, a) for s in selectors)]
    unmatched = [s for s in selectors if not any(_matches(s, a) for a in arts)]
    if unmatched:
        raise ArtifactError(f"--artifacts {', '.join(unmatched)}: no such artifact in {build_dir}/manifest.json; "
                            f"available: {', '.join(mf.artifact_key(a) for a in arts)}")
    failed = [mf.artifact_key(a) for a in chosen if a.get("status", "ok") == "failed"]
    if failed:
        raise ArtifactError(f"{', '.join(failed)} failed in the build (status failed); drop them from "
                            f"--artifacts or re-run `edvit-tool export`")
    return chosen


def prepare(build_dir: str, artifacts=None) -> Payload:
    """Check the build, select artifacts and hash every file that will travel (once for all boards)."""
    from ..artifacts import load_manifest

    manifest = load_manifest(build_dir)
    chosen = select(manifest, build_dir, artifacts)
    has_inputs = os.path.isfile(os.path.join(build_dir, mf.REFERENCE_INPUTS))
    inputs = inputs_sha = None
    if has_inputs:
        inputs, inputs_sha = build_file(build_dir, manifest, mf.REFERENCE_INPUTS, "reference inputs")
    jobs = []
    for a in chosen:
        key = mf.artifact_key(a)
        path, sha = build_file(build_dir, manifest, a["file"], f"artifacts[{key}].file")
        if sha != a["sha256"]:
            raise ArtifactError(f"{path}: sha256 {sha[:12]}… differs from manifest.json's entry for {key} "
                                f"({a['sha256'][:12]}…); re-run `edvit-tool export`")
        ref = ref_sha = None
        if a.get("reference") is not None:
            ref, ref_sha = build_file(build_dir, manifest, a["reference"], f"artifacts[{key}].reference")
            if not has_inputs:
                raise ArtifactError(f"{build_dir}/{mf.REFERENCE_INPUTS}: missing, but {key} has reference outputs; "
                                    "re-run export")
        jobs.append(ArtifactJob(key, a, path, sha, ref, ref_sha))
    manifest_path = os.path.join(build_dir, mf.MANIFEST_NAME)
    runtime = runtime_tree()
    return Payload(os.path.abspath(build_dir), mf.sha256_file(manifest_path), manifest_path, inputs, inputs_sha,
                   runtime, tree_digest(runtime), jobs, tree_table(runtime))
