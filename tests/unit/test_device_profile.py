"""Device profiles: shipped YAMLs load, every problem is reported with its file and key (< 1 s)."""

from __future__ import annotations

import pytest
import yaml

from edvit_tool.config.device_profile import (BACKENDS, available_profiles, load_device_profile,
                                              measured_profile, write_measured_profile)
from edvit_tool.errors import RecipeError

GOOD = {"name": "lab", "arch": "aarch64", "cores": 4, "memory_mb": 4096, "memory_budget_mb": 2048,
        "preferred_backend": "ai-edge-litert", "threads": 4, "python": "python3", "notes": ""}


def _write(tmp_path, data, name="x.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return str(p)


def test_every_shipped_profile_loads_and_is_consistent():
    names = available_profiles()
    assert {"rpi4b", "rpi5", "jetson-orin-nano", "x86_64-generic"} <= set(names)
    for n in names:
        p = load_device_profile(n)
        assert p.name == n and p.preferred_backend in BACKENDS
        assert p.threads <= p.cores and p.memory_budget_mb <= p.memory_mb


def test_all_problems_are_listed_with_file_and_key(tmp_path):
    path = _write(tmp_path, {**GOOD, "memory_budget_mb": "lots", "cores": 0, "colour": "red",
                             "preferred_backend": "tvm", "threads": None})
    with pytest.raises(RecipeError) as e:
        load_device_profile(path)
    msg = str(e.value)
    for part in (f"{path}: memory_budget_mb must be a positive int, got 'lots'", "cores must be a positive int, got 0",
                 "unknown key 'colour'", "preferred_backend must be one of", "threads must be a positive int"):
        assert part in msg


def test_missing_keys_and_impossible_budgets_are_errors(tmp_path):
    data = {k: v for k, v in GOOD.items() if k != "arch"} | {"memory_budget_mb": 8192, "threads": 8}
    with pytest.raises(RecipeError) as e:
        load_device_profile(_write(tmp_path, data))
    msg = str(e.value)
    assert "arch is missing" in msg and "must not exceed memory_mb" in msg and "must not exceed cores" in msg


def test_unknown_name_lists_the_known_ones_and_bad_yaml_is_named(tmp_path):
    with pytest.raises(RecipeError, match=r"device_profiles/nope.yaml: device profile not found; use one of .*rpi4b"):
        load_device_profile("nope")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_device_profile(_write(tmp_path, "name: [unclosed\n"))
    with pytest.raises(RecipeError, match="must be a mapping"):
        load_device_profile(_write(tmp_path, "- a\n- b\n"))


PROBE = {"arch": "aarch64", "cores": 4, "cores_usable": 4, "memory_total_mb": 3792, "memory_available_mb": 3000,
         "python_executable": "/usr/bin/python3", "cpu_quota": None, "time": "2026-01-01T00:00:00",
         "target": "pi@10.0.0.21",
         "interpreters": {"ai_edge_litert": {"ok": False}, "tflite_runtime": {"ok": True},
                          "onnxruntime": {"ok": True}}}


def test_measured_profile_from_a_probe_round_trips(tmp_path):
    path = write_measured_profile(PROBE, str(tmp_path / "out"), name="pi@10.0.0.21")
    p = load_device_profile(path)
    assert path.endswith("pi-10.0.0.21.yaml") and p.name == "pi-10.0.0.21"
    assert (p.arch, p.cores, p.memory_mb, p.threads) == ("aarch64", 4, 3792, 4)
    assert p.memory_budget_mb == 2250  # 75 % of what is available now
    assert p.preferred_backend == "tflite-runtime"  # litert absent: next in the runtime's order
    assert p.python == "/usr/bin/python3" and "pi@10.0.0.21" in p.notes


def test_measured_profile_needs_an_interpreter():
    probe = {**PROBE, "interpreters": {m: {"ok": False} for m in PROBE["interpreters"]}}
    with pytest.raises(RecipeError, match="no interpreter imports"):
        measured_profile(probe, "pi-1")
