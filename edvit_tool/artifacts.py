"""Write and read build directories atomically.

A build is assembled in a hidden temp dir beside its destination and renamed into place only when complete,
so a crash or a user error never leaves a directory that looks like a finished build.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile

from .errors import ArtifactError
from .runtime import manifest as mf


def read_json_object(path: str, what: str, fix: str, error=ArtifactError) -> dict:
    """A JSON object from `path`, or one `error` line naming the file, what it should be and `fix`."""
    if not os.path.isfile(path):
        raise error(f"{path}: {what} not found; {fix}")
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        raise error(f"{path}: {what} is not valid JSON ({' '.join(str(e).split())}); {fix}") from None
    if not isinstance(doc, dict):
        raise error(f"{path}: {what} must be a JSON object; {fix}")
    return doc


def file_table(root: str) -> dict:
    """{relpath: {bytes, sha256}} for every file under root except the manifest itself."""
    table = {}
    for dirpath, _, names in os.walk(root):
        for n in sorted(names):
            full = os.path.join(dirpath, n)
            rel = os.path.relpath(full, root).replace(os.sep, "/")
            if rel == mf.MANIFEST_NAME:
                continue
            table[rel] = {"bytes": os.path.getsize(full), "sha256": mf.sha256_file(full)}
    return dict(sorted(table.items()))


def write_manifest(root: str, manifest: dict) -> dict:
    """Refresh the file table and write manifest.json (sorted keys, stable across runs)."""
    manifest["files"] = file_table(root)
    problems = mf.validate(manifest)
    if problems:  # we wrote it: a schema problem here is our bug, not the user's
        raise AssertionError("manifest we built is invalid: " + "; ".join(problems))
    with open(os.path.join(root, mf.MANIFEST_NAME), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.write("\n")
    return manifest


def _swap_into_place(tmp: str, dest: str) -> None:
    old = None
    if os.path.exists(dest):
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(dest)}.old-", dir=os.path.dirname(dest))
        os.rmdir(old)
        os.rename(dest, old)
    os.rename(tmp, dest)
    if old:
        shutil.rmtree(old)


@contextlib.contextmanager
def staged_dir(dest: str, copy_from: str | None = None):
    """Yield a temp dir beside `dest`; on success it replaces `dest`, on any error it is deleted.

    copy_from: start from a copy of an existing build (used by `export` on an existing build).
    """
    dest = os.path.abspath(dest)
    parent = os.path.dirname(dest)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(dest)}.tmp-", dir=parent)
    try:
        if copy_from:
            shutil.copytree(copy_from, tmp, dirs_exist_ok=True)
        yield tmp
        _swap_into_place(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text_atomic(path: str, text: str, mode: int = 0o644) -> None:
    """Write a small file via a temp file + rename: readers see the old or the new file, never half of one.
    The temp file is created 0600 (mkstemp), so a secret is never readable while it is being written."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json_atomic(path: str, doc: dict, mode: int = 0o644) -> None:
    write_text_atomic(path, json.dumps(doc, indent=2) + "\n", mode)


def load_manifest(build_dir: str) -> dict:
    """manifest.json of a build, as host code wants it (ArtifactError on any problem)."""
    try:
        return mf.load(build_dir)
    except mf.ManifestError as e:
        raise ArtifactError(str(e)) from None
