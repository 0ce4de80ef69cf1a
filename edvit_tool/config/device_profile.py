"""Typed device profiles: what a kind of board is (cores, memory budget, interpreter, threads, python).

    load_device_profile("rpi4b")                      # device_profiles/rpi4b.yaml
    load_device_profile("my-boards/lab-pi.yaml")      # any path
    write_measured_profile(probe, "profiles/lab-pi.yaml", name="lab-pi")   # from `edvit-tool profile`

Validation reports every problem at once, each with the file and key:
`device_profiles/x.yaml: memory_budget_mb must be a positive int, got 'lots'`.
"""

from __future__ import annotations

import os
import re
from dataclasses import MISSING, asdict, dataclass, fields

from ..errors import RecipeError

BACKENDS = ("ai-edge-litert", "tflite-runtime", "onnxruntime")
# probe module name -> backend name, in the runtime's preference order (DESIGN §6)
PROBE_MODULES = {"ai_edge_litert": "ai-edge-litert", "tflite_runtime": "tflite-runtime",
                 "onnxruntime": "onnxruntime"}
PROFILES_DIR_ENV = "EDVIT_DEVICE_PROFILES"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    arch: str                 # `uname -m`: aarch64, armv7l, x86_64
    cores: int
    memory_mb: int            # physical RAM
    memory_budget_mb: int     # what our models + runtime may use (the assigner's M[d])
    preferred_backend: str    # one of BACKENDS
    threads: int              # interpreter threads per model
    python: str = "python3"   # interpreter on the board (name on PATH or absolute path)
    notes: str = ""
    speed: float = 1.0        # relative speed (higher = faster): sizes sub-models for unprofiled boards

    def to_dict(self) -> dict:
        return asdict(self)


_REQUIRED = [f.name for f in fields(DeviceProfile) if f.default is MISSING]
_ALLOWED = [f.name for f in fields(DeviceProfile)]


def profiles_dir() -> str:
    """Where named profiles live: $EDVIT_DEVICE_PROFILES or the package's own device_profiles/ (package data,
    so a name resolves after a plain `pip install`, not only in a source checkout)."""
    env = os.environ.get(PROFILES_DIR_ENV)
    if env:
        return env
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "device_profiles")


def available_profiles() -> list[str]:
    d = profiles_dir()
    if not os.path.isdir(d):
        return []
    return sorted(n[:-5] for n in os.listdir(d) if n.endswith(".yaml"))


def _is_pos_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def validate_profile(data, where: str) -> list[str]:
    """Every problem in a profile mapping, each as '<where>: <key> ...'."""
    if not isinstance(data, dict):
        return [f"{where}: must be a mapping of key: value, got {type(data).__name__}"]
    p = []
    for key in data:
        if key not in _ALLOWED:
            p.append(f"{where}: unknown key {key!r} (allowed: {', '.join(_ALLOWED)})")
    for key in _REQUIRED:
        if key not in data:
            p.append(f"{where}: {key} is missing")
    for key in ("name", "arch", "python"):
        if key in data and not (isinstance(data[key], str) and data[key].strip()):
            p.append(f"{where}: {key} must be a non-empty string, got {data[key]!r}")
    if isinstance(data.get("name"), str) and data["name"].strip() and not _NAME.fullmatch(data["name"]):
        p.append(f"{where}: name must be letters, digits, '.', '_' or '-', got {data['name']!r}")
    if "notes" in data and not isinstance(data["notes"], str):
        p.append(f"{where}: notes must be a string, got {data['notes']!r}")
    for key in ("cores", "memory_mb", "memory_budget_mb", "threads"):
        if key in data and not _is_pos_int(data[key]):
            p.append(f"{where}: {key} must be a positive int, got {data[key]!r}")
    if "speed" in data and (isinstance(data["speed"], bool) or not isinstance(data["speed"], (int, float))
                            or not 0 < data["speed"] < float("inf")):
        p.append(f"{where}: speed must be a positive number (relative speed, higher = faster), got {data['speed']!r}")
    if "preferred_backend" in data and data["preferred_backend"] not in BACKENDS:
        p.append(f"{where}: preferred_backend must be one of {', '.join(BACKENDS)}, "
                 f"got {data['preferred_backend']!r}")
    if _is_pos_int(data.get("memory_budget_mb")) and _is_pos_int(data.get("memory_mb")) \
            and data["memory_budget_mb"] > data["memory_mb"]:
        p.append(f"{where}: memory_budget_mb ({data['memory_budget_mb']}) must not exceed memory_mb "
                 f"({data['memory_mb']})")
    if _is_pos_int(data.get("threads")) and _is_pos_int(data.get("cores")) and data["threads"] > data["cores"]:
        p.append(f"{where}: threads ({data['threads']}) must not exceed cores ({data['cores']}): "
                 f"oversubscribed threads only slow inference down")
    return p


def profile_from_dict(data, where: str) -> DeviceProfile:
    problems = validate_profile(data, where)
    if problems:
        raise RecipeError("; ".join(problems) if len(problems) > 1 else problems[0])
    return DeviceProfile(**data)


def resolve_path(name_or_path: str) -> tuple[str, str]:
    """(path to open, path as shown in messages) for a profile name or a YAML path."""
    if name_or_path.endswith((".yaml", ".yml")) or os.sep in name_or_path or "/" in name_or_path:
        return name_or_path, name_or_path
    path = os.path.join(profiles_dir(), f"{name_or_path}.yaml")
    return path, f"device_profiles/{name_or_path}.yaml"


def load_device_profile(name_or_path: str) -> DeviceProfile:
    """A profile by name (device_profiles/<name>.yaml) or by path; RecipeError listing every problem."""
    from .yamlfile import read_yaml

    path, shown = resolve_path(name_or_path)
    if not os.path.isfile(path):
        names = ", ".join(available_profiles()) or "none found"
        raise RecipeError(f"{shown}: device profile not found; use one of {names} or a path to a YAML file")
    return profile_from_dict(read_yaml(path, shown), shown)


def measured_profile(probe: dict, name: str, budget_fraction: float = 0.75) -> DeviceProfile:
    """A DeviceProfile from `profile.probe_board` output. Budget = a fraction of the memory available now
    (what the OS and other services leave), so the assigner does not plan on memory the board lacks."""
    cores = int(probe.get("cores_usable") or probe.get("cores") or 1)
    mem = int(probe.get("memory_total_mb") or 0)
    avail = int(probe.get("memory_available_mb") or mem)
    backends = [PROBE_MODULES[m] for m in PROBE_MODULES if (probe.get("interpreters", {}).get(m) or {}).get("ok")]
    if not backends:
        raise RecipeError(f"board {name}: no interpreter imports (ai_edge_litert, tflite_runtime, onnxruntime); "
                          f"install one, e.g. pip install ai-edge-litert, then profile again")
    quota = probe.get("cpu_quota")
    notes = f"measured by edvit-tool profile at {probe.get('time', '?')}"
    if probe.get("target"):
        notes += f" from {probe['target']}"
    if quota:
        notes += f"; CPU quota {quota:g} of one core"
    data = {"name": _safe_name(name), "arch": probe.get("arch") or "unknown", "cores": cores,
            "memory_mb": max(mem, 1), "memory_budget_mb": max(1, min(mem, int(avail * budget_fraction))),
            "preferred_backend": backends[0], "threads": cores,
            "python": probe.get("python_executable") or "python3", "notes": notes}
    return profile_from_dict(data, f"measured profile for {name}")


def _safe_name(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.") or "board"
    return s if s[0].isalnum() else "b" + s


def write_measured_profile(probe: dict, path: str, name: str | None = None) -> str:
    """Write a measured profile YAML to `path` (a directory → <dir>/<name>.yaml). Returns the file written."""
    import yaml

    name = name or probe.get("board") or probe.get("hostname") or "board"
    prof = measured_profile(probe, name)
    if os.path.isdir(path) or not path.endswith((".yaml", ".yml")):  # a directory, existing or to be made
        path = os.path.join(path, f"{prof.name}.yaml")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(f"# Device profile for {name}, measured by `edvit-tool profile`.\n")
        yaml.safe_dump(prof.to_dict(), f, sort_keys=False)
    os.replace(tmp, path)
    load_device_profile(path)  # what we wrote must load back
    return path
