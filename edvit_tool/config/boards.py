"""The cluster file `boards.yaml`, shared by `profile --boards`, `assign` and `deploy`.

    boards:
      - name: pi-1                 # unique; used in profiles.json, plan.json, deployment.json
        host: 10.0.0.21            # SSH host
        port: 22                   # SSH port (default 22)
        user: pi
        identity: ~/.ssh/id_ed25519   # optional key file; ~ expanded, relative paths from this file's dir
        device_profile: rpi4b       # a device_profiles/ name or a YAML path (memory budget, cores, ...)
        python: python3            # interpreter on the board (default: the device profile's, else python3)
        address: 10.0.0.21         # optional: address the worker binds to / is reached at (default = host)
        worker_port: 8500          # optional (default 8500)
        root: ~/.edvit/boards/pi-1   # optional: where deploy keeps this board's releases (default: derived from
                                     # the name, so boards sharing one login never share releases)

Every problem in the file is collected and raised as one RecipeError, each with its path
(`boards.yaml: boards[1].port must be an int in 1..65535, got 'x'`).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re

from .yamlfile import read_yaml

from ..errors import EdvitError, RecipeError
from .device_profile import DeviceProfile, load_device_profile, resolve_path

KEYS = ("name", "host", "port", "user", "identity", "device_profile", "python", "address", "worker_port", "root")
REQUIRED = ("name", "host", "user", "device_profile")
# Names end up in remote paths and file names: keep them to a safe alphabet.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_HOST_RE = re.compile(r"^[A-Za-z0-9_.:\-\[\]%]+$")
_USER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}$")
_ROOT_RE = re.compile(r"^(~|/)[A-Za-z0-9_./-]*$")


def default_root(name: str) -> str:
    """A board's release root on its machine when boards.yaml gives none: one directory per board name."""
    return f"~/.edvit/boards/{name}"


@dataclasses.dataclass(frozen=True)
class Board:
    name: str
    host: str
    port: int
    user: str
    identity: str | None          # absolute path, or None (agent / ~/.ssh/config decide)
    device_profile: str           # as written in boards.yaml
    device_profile_path: str      # the YAML file it resolved to
    memory_budget_mb: float
    cores: int | None
    threads: int | None
    preferred_backend: str | None
    python: str
    address: str
    worker_port: int
    root: str = ""                # release root on the board (`deploy`); default_root(name) when not given

    @property
    def target(self) -> str:
        """'user@host:port' — the form `edvit_tool.cluster.ssh` and `profile --host` take."""
        host = f"[{self.host}]" if ":" in self.host else self.host  # IPv6 literal
        return f"{self.user}@{host}:{self.port}"

    @property
    def endpoint(self) -> str:
        """'address:worker_port' where the worker listens."""
        return f"{self.address}:{self.worker_port}"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"target": self.target}


def _looks_like_path(ref: str) -> bool:
    return ref.endswith((".yaml", ".yml")) or "/" in ref or os.sep in ref or ref.startswith("~")


def _resolve_profile(ref: str, base_dir: str) -> tuple[str, DeviceProfile]:
    """(path, DeviceProfile) for a device_profiles/ name or a YAML path (relative to boards.yaml's dir)."""
    if _looks_like_path(ref):
        path = os.path.expanduser(ref)
        if not os.path.isabs(path):
            path = os.path.join(base_dir, path)
        path = os.path.normpath(path)
    else:
        path = resolve_path(ref)[0]
    return path, load_device_profile(path if _looks_like_path(ref) else ref)


def _bad_int(value, lo: int, hi: int) -> bool:
    return isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi


def _unknown_key(key, where: str) -> str:
    close = difflib.get_close_matches(str(key), KEYS, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{where}: unknown key {key!r}{hint}; valid keys: {', '.join(KEYS)}"


def parse_boards(data, source: str, base_dir: str) -> list[Board]:
    """Validate already-parsed YAML; every problem goes into one RecipeError prefixed by `source`."""
    problems: list[str] = []
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: must be a mapping with a `boards:` list, got {type(data).__name__}")
    for key in data:
        if key != "boards":
            problems.append(f"unknown top-level key {key!r}; valid keys: boards")
    entries = data.get("boards")
    if not isinstance(entries, list) or not entries:
        problems.append(f"boards must be a non-empty list of boards, got {entries!r}")
        entries = []

    boards: list[Board] = []
    first_name: dict[str, int] = {}
    endpoints: dict[tuple[str, int], int] = {}
    roots: dict[tuple, int] = {}
    for i, entry in enumerate(entries):
        where = f"boards[{i}]"
        if not isinstance(entry, dict):
            problems.append(f"{where} must be a mapping with keys {', '.join(KEYS)}, got {entry!r}")
            continue
        n_before = len(problems)
        for key in entry:
            if key not in KEYS:
                problems.append(_unknown_key(key, where))
        for key in REQUIRED:
            if key not in entry or entry[key] is None:
                problems.append(f"{where}.{key} is missing")
        for key in ("name", "host", "user", "identity", "device_profile", "python", "address", "root"):
            v = entry.get(key)
            if v is not None and (not isinstance(v, str) or not v.strip()):
                problems.append(f"{where}.{key} must be a non-empty string, got {v!r}")
        name = entry.get("name")
        if isinstance(name, str) and name:
            if not _NAME_RE.match(name):
                problems.append(f"{where}.name must be letters, digits, '.', '_' or '-' (at most 64), "
                                f"got {name!r}")
            elif name in first_name:
                problems.append(f"{where}.name {name!r} is a duplicate of boards[{first_name[name]}].name; "
                                "board names must be unique")
            else:
                first_name[name] = i
        for key in ("host", "address"):
            v = entry.get(key)
            if isinstance(v, str) and v and not _HOST_RE.match(v):
                problems.append(f"{where}.{key} must be a host name or IP address, got {v!r}")
        user = entry.get("user")
        if isinstance(user, str) and user and not _USER_RE.match(user):
            problems.append(f"{where}.user must be a login name (letters, digits, '_', '.', '-'), got {user!r}")
        root = entry.get("root")
        if isinstance(root, str) and root and (not _ROOT_RE.match(root) or ".." in root.split("/")
                                               or root.rstrip("/") in ("~", "") or root.startswith("~") and
                                               not root.startswith("~/")):
            problems.append(f"{where}.root must be a directory path under ~/ or absolute (letters, digits, "
                            f"'_', '.', '-', '/'; no '..'), got {root!r}")
        port = entry.get("port", 22)
        if _bad_int(port, 1, 65535):
            problems.append(f"{where}.port must be an int in 1..65535, got {port!r}")
        worker_port = entry.get("worker_port", 8500)
        if _bad_int(worker_port, 1, 65535):
            problems.append(f"{where}.worker_port must be an int in 1..65535, got {worker_port!r}")
        identity = entry.get("identity")
        if isinstance(identity, str) and identity.strip():
            identity = os.path.expanduser(identity)
            if not os.path.isabs(identity):
                identity = os.path.join(base_dir, identity)
            identity = os.path.normpath(identity)
            if not os.path.isfile(identity):
                problems.append(f"{where}.identity: key file {identity} not found; fix the path or drop "
                                "`identity` to use ssh-agent / ~/.ssh/config")
        else:
            identity = None
        prof_ref = entry.get("device_profile")
        prof_path, prof = None, None
        if isinstance(prof_ref, str) and prof_ref.strip():
            try:
                prof_path, prof = _resolve_profile(prof_ref, base_dir)
            except RecipeError as e:
                problems.append(f"{where}.device_profile: {e}")
        if len(problems) > n_before:
            continue
        address = entry.get("address") or entry["host"]
        ep = (address, worker_port)
        if ep in endpoints:
            j = endpoints[ep]
            problems.append(f"{where}: worker endpoint {address}:{worker_port} is also used by boards[{j}]; "
                            "give each board on one machine its own worker_port")
            continue
        endpoints[ep] = i
        root = (entry.get("root") or default_root(name)).rstrip("/")
        login = (user, entry["host"], port, root)
        if login in roots:
            problems.append(f"{where}: same login {user}@{entry['host']}:{port} and root {root} as "
                            f"boards[{roots[login]}]; their releases would collide — give each board its own "
                            "`root` (or drop `root` to use one per board name)")
            continue
        roots[login] = i
        boards.append(Board(name=name, host=entry["host"], port=port, user=user, identity=identity,
                            device_profile=prof_ref, device_profile_path=prof_path,
                            memory_budget_mb=float(prof.memory_budget_mb), cores=prof.cores,
                            threads=prof.threads, preferred_backend=prof.preferred_backend,
                            python=entry.get("python") or prof.python or "python3", address=address,
                            worker_port=worker_port, root=root))
    if problems:
        raise RecipeError(f"{source}: " + "; ".join(problems))
    return boards


def boards_from_yaml(path: str) -> list[Board]:
    """Read and validate a boards.yaml; RecipeError naming every bad key at once."""
    if not os.path.isfile(path):
        raise RecipeError(f"{path}: not found; write a boards file (see `edvit-tool assign --help`)")
    data = read_yaml(path)
    return parse_boards(data, path, os.path.dirname(os.path.abspath(path)))


def validate_plan_boards(plan, boards: list[Board], boards_file: str = "boards.yaml") -> None:
    """Refuse a plan (plan.json dict or assign.Plan) that places anything on a board boards.yaml lacks."""
    names = {b.name for b in boards}
    if isinstance(plan, dict):
        used = [p.get("board") for p in plan.get("placements", [])] + list(plan.get("boards", {}))
    else:
        used = [d for ds in plan.assignment.values() for d in ds]
    missing = sorted({str(d) for d in used if d not in names})
    if missing:
        raise EdvitError(f"the plan uses board(s) {', '.join(missing)} that {boards_file} does not define "
                         f"(it has: {', '.join(sorted(names))}); re-run `edvit-tool assign` with this boards "
                         "file or add the board(s) to it")
