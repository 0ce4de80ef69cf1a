"""plan.json: which artifact of which sub-model runs on which board. Its one writer (`build_plan_doc`, used by
`assign` and the demo loop) and its one reader (`load`, used by `deploy`), so the schema lives in one place.

    {"schema_version": 1,
     "build": {"path": abs build dir, "manifest_sha256": str},
     "boards_file": abs path to boards.yaml,
     "objective": "makespan", "replicas": int, "bandwidth_mbps": float (fallback for unmeasured links),
     "wire": "fp32"|"uint8"|"encoded" (what the transfer costs assume), "solver": str, "optimal": bool,
     "makespan_ms": float, "greedy_makespan_ms": float | null,
     "placements": [{"submodel": "g0", "board": "pi-1", "artifact": relpath, "format": "onnx", "quant": "fp32",
                     "sha256": str, "bytes": int, "predicted_ms": float, "memory_mb": float, "estimated": bool}],
     "boards": {"pi-1": {boards.yaml entry + predicted_ms, transfer_ms, memory_mb,
                         link: {"source": "measured"|"--bandwidth-mbps"|"ignored", "mbps", "rtt_ms"}}},
     "unused_boards": [str], "notes": [str]}
"""

from __future__ import annotations

import os

from ..errors import ArtifactError, EdvitError
from ..runtime import manifest as mf

SCHEMA_VERSION = 1


def build_plan_doc(build_dir, boards_file, boards, costs, exact, greedy, replicas, bandwidth_mbps, transfer,
                   basis: dict | None = None, wire: str = "fp32") -> dict:
    """plan.json content for the exact solution (greedy's makespan beside it); used by `assign` and the demo."""
    import os

    from ..runtime import manifest as mf

    by_name = {b.name: b for b in boards}
    placements = []
    for s in costs.submodels:
        for d in exact.assignment[s]:
            ch = costs.choices[(s, d)]
            art = ch.artifact
            placements.append({"submodel": s, "board": d, "artifact": art["file"], "format": art["format"],
                               "quant": art["quant"], "sha256": art["sha256"], "bytes": art["bytes"],
                               "predicted_ms": round(ch.latency_ms, 4), "memory_mb": round(ch.memory_mb, 2),
                               "estimated": ch.estimated, **({"note": ch.note} if ch.note else {})})
    used = [d for d in costs.boards if any(p["board"] == d for p in placements)]
    return {
        "schema_version": SCHEMA_VERSION,
        "build": {"path": os.path.abspath(build_dir),
                  "manifest_sha256": mf.sha256_file(os.path.join(build_dir, mf.MANIFEST_NAME))},
        "boards_file": os.path.abspath(boards_file),
        "objective": "makespan",
        "replicas": replicas,
        "bandwidth_mbps": bandwidth_mbps,
        "wire": wire,
        "solver": exact.solver,
        "optimal": exact.optimal,
        "makespan_ms": round(exact.makespan_ms, 4),
        "greedy_makespan_ms": None if greedy is None else round(greedy.makespan_ms, 4),
        "placements": placements,
        "boards": {d: by_name[d].to_dict() | {"predicted_ms": round(exact.per_board_ms[d], 4),
                                              "transfer_ms": round(transfer[d], 4),
                                              "memory_mb": round(exact.memory_mb[d], 2),
                                              **({"link": basis[d]} if basis and d in basis else {})}
                  for d in used},
        "unused_boards": [d for d in costs.boards if d not in used],
        "notes": list(costs.notes),
    }


def read_json(path: str, what: str, fix: str) -> dict:
    from ..artifacts import read_json_object

    return read_json_object(path, what, fix, EdvitError)


def load(plan_path: str) -> tuple[dict, dict]:
    """(plan, manifest) after checking that the plan matches its build as it is on disk now."""
    fix = "re-run `edvit-tool assign`"
    plan = read_json(plan_path, "plan", "make one with `edvit-tool assign`")
    if plan.get("schema_version") != SCHEMA_VERSION:
        raise EdvitError(f"{plan_path}: schema_version must be {SCHEMA_VERSION}, got {plan.get('schema_version')!r}; {fix}")
    build = plan.get("build") or {}
    places = plan.get("placements")
    if not isinstance(build, dict) or not isinstance(build.get("path"), str) or not isinstance(places, list) \
            or not places:
        raise EdvitError(f"{plan_path}: needs build.path and a non-empty placements list; {fix}")
    for i, p in enumerate(places):
        missing = [k for k in ("submodel", "board", "format", "quant", "sha256") if not isinstance(p, dict)
                   or not isinstance(p.get(k), str)]
        if missing:
            raise EdvitError(f"{plan_path}: placements[{i}] lacks {', '.join(missing)}; {fix}")
    try:
        manifest = mf.load(build["path"])
    except mf.ManifestError as e:
        raise ArtifactError(f"{plan_path}: its build: {e}") from None
    sha = mf.sha256_file(os.path.join(build["path"], mf.MANIFEST_NAME))
    if build.get("manifest_sha256") not in (None, sha):
        raise EdvitError(f"{plan_path}: made for another version of {build['path']} (manifest sha256 "
                         f"{str(build['manifest_sha256'])[:12]}…, now {sha[:12]}…); {fix}")
    for i, p in enumerate(places):
        art = mf.artifact(manifest, p["submodel"], p["format"], p["quant"])
        if art is None or art["sha256"] != p["sha256"]:
            raise EdvitError(f"{plan_path}: placements[{i}] ({p['submodel']} {p['format']}/{p['quant']} on "
                             f"{p['board']}) is not in {build['path']}/manifest.json with that sha256; {fix}")
    return plan, manifest


def board_names(plan: dict) -> list[str]:
    """The boards the placements use, in the plan's board order."""
    names = []
    for p in plan["placements"]:
        if p["board"] not in names:
            names.append(p["board"])
    order = list(plan.get("boards") or {})
    return sorted(names, key=lambda n: (order.index(n) if n in order else len(order), n))
