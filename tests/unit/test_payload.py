"""cluster.payload.prepare: a manifest may only point at the build's own, unchanged files (issue 11, item 1)."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from edvit_tool.cluster.payload import prepare
from edvit_tool.errors import ArtifactError
from edvit_tool.runtime.manifest import sha256_file


@pytest.fixture
def build(tiny_build, tmp_path):
    """A private copy of the tiny build, plus a "secret" file beside it that no manifest may reach."""
    dest = tmp_path / "build"
    shutil.copytree(tiny_build, dest)
    secret = tmp_path / "secret" / "id_ed25519"
    secret.parent.mkdir()
    secret.write_bytes(b"-----BEGIN OPENSSH PRIVATE KEY-----\n")
    return str(dest), str(secret)


def _edit(build_dir, fn):
    path = os.path.join(build_dir, "manifest.json")
    with open(path) as f:
        m = json.load(f)
    fn(m)
    with open(path, "w") as f:
        json.dump(m, f)


def _point_g0_at(m, field, rel, secret):
    """What an attacker writes: the path, and digests that match the file it names."""
    art = next(a for a in m["artifacts"] if a["name"] == "g0")
    art[field] = rel
    sha = sha256_file(secret)
    if field == "file":
        art["sha256"] = sha
    m["files"][rel] = {"bytes": os.path.getsize(secret), "sha256": sha}


def test_an_intact_build_prepares_every_file_with_its_digest(build):
    b, _ = build
    p = prepare(b)
    assert {j.key for j in p.jobs} == {"g0:onnx/fp32", "g1:onnx/fp32", "fusion:onnx/fp32"}
    for j in p.jobs:
        assert j.path.startswith(os.path.realpath(b)) and j.sha256 == sha256_file(j.path)
        assert j.reference_sha256 == sha256_file(j.reference)
    assert "edvit_tool/runtime/agent.py" in p.runtime and "edvit_tool/runtime/agent.py" in p.runtime_table


@pytest.mark.parametrize("field", ["file", "reference"])
@pytest.mark.parametrize("rel", ["../secret/id_ed25519", "submodels/../../secret/id_ed25519", "ABS"])
def test_paths_leaving_the_build_are_refused_before_anything_is_read(build, field, rel):
    b, secret = build
    rel = secret if rel == "ABS" else rel
    _edit(b, lambda m: _point_g0_at(m, field, rel, secret))
    with pytest.raises(ArtifactError) as e:
        prepare(b)
    msg = str(e.value)
    assert "must be a relative path inside the build" in msg and repr(rel) in msg and "manifest.json" in msg


@pytest.mark.parametrize("field", ["file", "reference"])
def test_a_symlink_out_of_the_build_is_refused(build, field):
    b, secret = build
    os.symlink(secret, os.path.join(b, "submodels", "evil.onnx"))
    _edit(b, lambda m: _point_g0_at(m, field, "submodels/evil.onnx", secret))
    with pytest.raises(ArtifactError, match="outside the build"):
        prepare(b)


def test_a_file_not_in_the_files_table_or_changed_since_export_is_refused(build):
    b, _ = build
    _edit(b, lambda m: m["files"].pop("submodels/g0.fp32.onnx"))
    with pytest.raises(ArtifactError, match="not in the manifest's files table"):
        prepare(b)
    _edit(b, lambda m: m["files"].__setitem__("submodels/g0.fp32.onnx", {"bytes": 1, "sha256": "0" * 64}))
    with pytest.raises(ArtifactError, match="differs from manifest.json"):
        prepare(b)


def test_a_reference_whose_bytes_changed_is_refused(build):
    b, _ = build
    with open(os.path.join(b, "reference", "outputs-g1.fp32.onnx.npz"), "ab") as f:
        f.write(b"\0")
    with pytest.raises(ArtifactError, match=r"outputs-g1\.fp32\.onnx\.npz: sha256 .* differs"):
        prepare(b)
