"""Fixtures shared by the test suites. Keep this to reusable fixtures; helpers live in tests/boards.py."""

from __future__ import annotations

import os
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # `import boards` from any test directory

import boards as _boards  # noqa: E402

# compile's decoded-image cache: a temp dir of this test session, not the user's ~/.cache
os.environ.setdefault("EDVIT_CACHE_DIR", tempfile.mkdtemp(prefix="edvit-test-cache-"))


@pytest.fixture
def boards():
    """Factory: `boards(n, cpu_quota=[None, 0.25], known_hosts="prefilled"|"empty",
    venv=["default", "tflite-runtime"])` -> list[Board].

    Real sshd processes on 127.0.0.1 (DESIGN §8), one user per board (pi, pi1, ...) so homes and caches are
    separate; all torn down after the test (user processes killed, sshd waited, cgroups removed).
    Each Board has .target ("pi@127.0.0.1:PORT"), .user, .port, .identity, .known_hosts, .python, .home, .name.
    """
    try:
        farm = _boards.BoardFarm()
    except _boards.BoardSetupError as e:
        pytest.fail(str(e), pytrace=False)
    try:
        yield farm.start
    finally:
        farm.close()


@pytest.fixture(scope="session")
def tiny_build(tmp_path_factory):
    """A small real build dir (two conv sub-models + fusion head, ONNX fp32, reference data, manifest).
    Built once per session (~5 s: torch export). Treat it as read-only; copy it to modify it."""
    return _boards.make_tiny_build(str(tmp_path_factory.mktemp("builds") / "tiny"))


@pytest.fixture(scope="session")
def heavy_build(tmp_path_factory):
    """Like tiny_build but with ~7 ms of compute per image (1.8 MB sub-models), so that a CPU quota shows in the
    latency despite the kernel's coarse throttling granularity."""
    return _boards.make_tiny_build(str(tmp_path_factory.mktemp("builds") / "heavy"), width=128, depth=4)


def pytest_configure(config):
    # Tiny models on 2 shared cores: intra-op threads only add contention (measured 25x slower under load).
    import torch

    torch.set_num_threads(1)
