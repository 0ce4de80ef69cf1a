"""A non-editable install (the README's CI recipe: `pip install --no-deps .`, then `check --device-profile
rpi4b`) finds the device profiles it ships as package data (issue 11, item 6).

The wheel is built from a copy of the sources and installed with --no-deps into a fresh venv; that venv sees
this test's own site-packages for the dependencies (numpy, onnxruntime, click, ...) through a path entry, but
not the editable checkout, so `edvit_tool` there is the wheel's. ~30 s (wheel build)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(argv, **kw):
    r = subprocess.run(argv, capture_output=True, text=True, timeout=600, **kw)
    assert r.returncode == 0, f"{argv}: {r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    return r


@pytest.mark.slow
def test_the_installed_wheel_resolves_device_profiles_by_name(tiny_build, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(REPO, name), src / name)
    shutil.copytree(os.path.join(REPO, "edvit_tool"), src / "edvit_tool",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
          str(src)])
    wheel, = [str(dist / n) for n in os.listdir(dist) if n.endswith(".whl")]

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    py = str(venv / "bin" / "python")
    _run([sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "--no-index", "-q", wheel])
    purelib = _run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    with open(os.path.join(purelib, "host-deps.pth"), "w") as f:  # dependencies only: a path, not its .pth files
        f.write(sysconfig.get_paths()["purelib"] + "\n")

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "EDVIT_DEVICE_PROFILES")}
    where = _run([py, "-c", "import edvit_tool, os; print(os.path.dirname(edvit_tool.__file__))"], env=env,
                 cwd=tmp_path).stdout.strip()
    assert where == os.path.join(purelib, "edvit_tool")  # the wheel's copy, not the source tree
    profiles = os.listdir(os.path.join(where, "device_profiles"))
    assert {"rpi4b.yaml", "rpi5.yaml", "jetson-orin-nano.yaml", "x86_64-generic.yaml"} <= set(profiles)

    r = subprocess.run([str(venv / "bin" / "edvit-tool"), "check", tiny_build, "--device-profile", "rpi4b",
                        "--json"], capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert "known profiles" not in r.stderr and r.returncode in (0, 1), r.stderr
    names = [c["name"] for c in json.loads(r.stdout)["checks"]]
    assert any("rpi4b" in n for n in names), names
    r = _run([py, "-c", "from edvit_tool.config.device_profile import load_device_profile as l; "
                        "print(l('rpi4b').memory_budget_mb)"], env=env, cwd=tmp_path)
    assert int(r.stdout) > 0
