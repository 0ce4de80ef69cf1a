"""The whole ED-ViT loop on a compiled build: profile → assign → deploy → the held-out set through the
deployment → compare with what it must reproduce → stop (always).

    res = run_loop("runs/digits-build", "runs/digits-run")                   # K local boards (this machine)
    res = run_loop(build, run_dir, boards_file="boards.yaml")                # real boards over SSH

Every stage writes its usual file into `run_dir` (profiles.json, plan.json, deployment.json; for local boards
also boards.yaml and device_profiles/local.yaml), so each can be inspected or rerun with the single verbs; a
summary goes to run_dir/loop.json. Profiles already in run_dir/profiles.json for every (board, artifact) of the
build are reused (DESIGN §7: cached by sha256) unless `reprofile`. The workers are stopped in a `finally`, also
on Ctrl-C and when deploy itself was interrupted (then from the plan: every board it may have started).
"""

from __future__ import annotations

import getpass
import json
import os
import re
import sys
import time

from .errors import EdvitError

LOCAL_BANDWIDTH_MBPS = 0.0      # loopback: the input transfer is negligible next to a model
SSH_BANDWIDTH_MBPS = 1000.0     # `edvit-tool assign`'s default


def run_dir_for(build_dir: str) -> str:
    """runs/digits-build -> runs/digits-run (a sibling of the build; `<name>-run` when there is no -build)."""
    base = os.path.basename(os.path.normpath(os.path.abspath(build_dir)))
    stem = base[:-len("-build")] if base.endswith("-build") and len(base) > len("-build") else base
    return os.path.join(os.path.dirname(os.path.abspath(build_dir)), f"{stem}-run")


def _write_json(path: str, doc) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def write_local_boards(run_dir: str, n: int, probe: dict) -> str:
    """boards.yaml for local-1..n (this machine; a measured device profile beside it) -> its path."""
    import yaml

    from .config.device_profile import write_measured_profile
    from .cluster.profile import local_names

    prof = write_measured_profile(probe, os.path.join(run_dir, "device_profiles"), name="local")
    try:
        user = getpass.getuser()  # only keeps the file valid: nobody logs in to a local board
    except (KeyError, OSError):   # no passwd entry (some containers)
        user = "local"
    if not re.match(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}$", user):
        user = "local"
    # worker_port only keeps the file valid: `deploy --transport local` without --boards picks free ports
    doc = {"boards": [{"name": name, "host": "127.0.0.1", "user": user, "device_profile": prof,
                       "python": sys.executable, "worker_port": 8500 + i} for i, name in enumerate(local_names(n))]}
    path = os.path.join(run_dir, "boards.yaml")
    with open(path, "w", encoding="utf-8") as f:
        f.write("# local-1..N are all this machine (edvit-tool demo); deploy runs them with --transport local\n")
        yaml.safe_dump(doc, f, sort_keys=False)
    return path


def _profiles_complete(path: str, names: list, shas: set) -> bool:
    from .cluster.profile import load_profiles

    try:
        doc = load_profiles(path)
    except EdvitError:
        return False
    if doc is None:
        return False
    have = {(r.get("board"), r.get("sha256")) for r in doc["results"]}
    return all((n, s) in have for n in names for s in shas)


def assign_plan(build_dir: str, profiles_path: str, boards_file: str, plan_path: str, bandwidth_mbps: float,
                replicas: int = 1) -> dict:
    """`edvit-tool assign` as a function: the exact placement (plan.json written) + the greedy baseline's
    makespan beside it (None when greedy gets stuck)."""
    from .cluster import assign as A
    from .artifacts import load_manifest
    from .cluster.plan import build_plan_doc
    from .config.boards import boards_from_yaml

    manifest = load_manifest(build_dir)
    boards = boards_from_yaml(boards_file)
    with open(profiles_path, encoding="utf-8") as f:
        profiles = json.load(f)
    costs = A.costs_from_profiles(manifest, profiles, boards, source=profiles_path)
    transfer = A.transfer_costs(manifest, boards, bandwidth_mbps, profiles)  # measured links where profiled
    exact = A.solve_exact(costs.submodels, costs.boards, costs.t, costs.m, costs.budgets_mb, transfer, replicas)
    try:
        greedy = A.solve_greedy(costs.submodels, costs.boards, costs.t, costs.m, costs.budgets_mb, transfer, replicas)
    except EdvitError:
        greedy = None
    doc = build_plan_doc(build_dir, boards_file, boards, costs, exact, greedy, replicas, bandwidth_mbps, transfer,
                         A.transfer_basis(boards, bandwidth_mbps, profiles))
    _write_json(plan_path, doc)
    return doc


def _stop_doc(plan: dict, out: str, transport: str, boards_file: str | None, known_hosts) -> dict:
    """A deployment-shaped doc naming every board of the plan, for `deploy.stop` when deploy was interrupted
    before it wrote deployment.json (its workers may be running all the same)."""
    from .cluster import deploy as dp
    from .cluster.deployment import SCHEMA_VERSION
    from .config.boards import boards_from_yaml

    cluster = {b.name: b for b in boards_from_yaml(boards_file)} if transport == "ssh" else {}
    entries = []
    for name in sorted({p["board"] for p in plan["placements"]}):
        models = [p["submodel"] for p in plan["placements"] if p["board"] == name]
        if transport == "local":
            entries.append({"name": name, "transport": "local", "target": "local", "address": "127.0.0.1",
                            "port": 0, "models": models, "python": sys.executable,
                            "root": os.path.join(os.path.dirname(os.path.abspath(out)), dp.LOCAL_DIR, name)})
        else:
            b = cluster[name]
            entries.append({"name": name, "transport": "ssh", "target": b.target, "identity": b.identity,
                            "address": b.address, "port": b.worker_port, "models": models, "python": b.python,
                            "root": b.root})
    return {"schema_version": SCHEMA_VERSION, "boards": entries,
            "ssh": {"known_hosts": known_hosts, "host_key_policy": "accept-new", "connect_timeout": 10.0}}


def _stop(deployment_path: str, deployed: bool, plan: dict, transport: str, boards_file, known_hosts,
          log) -> list:
    from .cluster import deploy as dp

    path = deployment_path
    if not deployed:  # interrupted or failed deploy: stop whatever it may have started, from the plan
        path = os.path.join(os.path.dirname(os.path.abspath(deployment_path)), f".stop-{os.getpid()}.json")
        _write_json(path, _stop_doc(plan, deployment_path, transport, boards_file, known_hosts))
    try:
        rows = dp.stop(path)
    finally:
        if not deployed:
            os.remove(path)
    for r in rows:
        if r["error"]:
            log(f"{r['name']}: worker NOT stopped: {r['error']}")
        elif r["stopped"]:
            log(f"{r['name']}: worker stopped (pid {', '.join(map(str, r['stopped']))})")
    return rows


def run_loop(build_dir: str, run_dir: str, boards_file: str | None = None, local_boards: int | None = None,
             runs: int = 30, warmup: int = 5, known_hosts: str | None = None, reprofile: bool = False,
             throughput_seconds: float = 3.0, log=print) -> dict:
    """Profile, assign, deploy, evaluate, stop. boards_file: real boards over SSH; else `local_boards` (default
    K) local boards, all this machine. Returns the summary also written to run_dir/loop.json; its "ok" is
    False when the accuracy through the deployment differs from the one it must reproduce."""
    from .cluster import deploy as dp
    from .cluster import profile as prof
    from .serve import evaluate as ev
    from .artifacts import load_manifest
    from .config.boards import boards_from_yaml
    from .serve.coordinator import Coordinator
    from .reference import load as load_reference
    from .runtime import manifest as mf

    t_start = time.monotonic()
    build_dir = os.path.abspath(build_dir)
    manifest = load_manifest(build_dir)
    eval_path = os.path.join(build_dir, "reference", "eval.npz")
    x, y = load_reference(eval_path, manifest["input"])
    if y is None:
        raise EdvitError(f"{eval_path}: has no labels y; recompile the build")
    os.makedirs(run_dir, exist_ok=True)
    transport = "ssh" if boards_file else "local"
    k = len(manifest["submodels"])
    profiles_path = os.path.join(run_dir, "profiles.json")
    plan_path = os.path.join(run_dir, "plan.json")
    deployment_path = os.path.join(run_dir, "deployment.json")
    result = {"build": build_dir, "run_dir": os.path.abspath(run_dir), "transport": transport,
              "eval": {"path": eval_path, "images": int(len(x))}, "stopped": []}

    # -- profile ---------------------------------------------------------------------------------------------
    t0 = time.monotonic()
    payload = prof.prepare(build_dir)
    shas = {j.sha256 for j in payload.jobs}
    if transport == "local":
        n = local_boards or k
        names = prof.local_names(n)
        boards_file = write_local_boards(run_dir, n, prof.probe_local())
    else:
        names = [b.name for b in boards_from_yaml(boards_file)]
    reused = not reprofile and _profiles_complete(profiles_path, names, shas)
    if reused:
        log(f"profile: reusing {profiles_path} (every board × artifact of this build is in it)")
    elif transport == "local":
        log(f"profile: {len(payload.jobs)} artifacts on {names[0]}..{names[-1]} — all THIS machine, measured one "
            "after another")
        doc = prof.profile_local_many(len(names), build_dir, runs=runs, warmup=warmup, names=names)
        prof.write_profiles(doc, profiles_path)
    else:
        log(f"profile: {len(payload.jobs)} artifacts on {', '.join(names)} over SSH")
        targets = [{"name": b.name, "target": b.target, "identity": b.identity, "python": b.python,
                    "threads": b.threads or 1} for b in boards_from_yaml(boards_file)]
        doc = prof.profile_many(targets, build_dir, runs=runs, warmup=warmup, known_hosts=known_hosts)
        prof.write_profiles(doc, profiles_path)
    with open(profiles_path, encoding="utf-8") as f:
        bad = prof.failures(json.load(f), set(names))
    for line in bad:
        log(f"profile: {line}")
    result["profile"] = {"path": profiles_path, "boards": names, "reused": reused, "problems": bad,
                         "seconds": round(time.monotonic() - t0, 2)}

    # -- assign ----------------------------------------------------------------------------------------------
    bw = LOCAL_BANDWIDTH_MBPS if transport == "local" else SSH_BANDWIDTH_MBPS
    plan = assign_plan(build_dir, profiles_path, boards_file, plan_path, bw)
    result["plan"] = {"path": plan_path, "solver": plan["solver"], "makespan_ms": plan["makespan_ms"],
                      "greedy_makespan_ms": plan["greedy_makespan_ms"],
                      "placements": [{k2: p[k2] for k2 in ("submodel", "board", "format", "quant", "predicted_ms",
                                                            "estimated")} for p in plan["placements"]]}
    log(f"assign: exact makespan {plan['makespan_ms']:.3f} ms, greedy {plan['greedy_makespan_ms'] or float('nan'):.3f}"
        f" ms → {plan_path}")

    # -- deploy, evaluate, stop ------------------------------------------------------------------------------
    deployed = False
    try:
        def progress(board, message, done, total):
            if message in ("ready", "failed"):
                log(f"deploy: {board}: {message}")

        doc = dp.deploy(plan_path, boards_file if transport == "ssh" else None, transport=transport,
                        out=deployment_path, known_hosts=known_hosts, progress=progress)
        deployed = True
        result["deployment"] = {"path": deployment_path, "release": doc["release"], "seconds": doc["seconds"],
                                "boards": {b["name"]: {"models": b["models"], "endpoint": b["endpoint"],
                                                       "variant": b["variant"]} for b in doc["boards"]}}
        dep = ev.deployed_artifacts(deployment_path)
        log(f"infer: {len(x)} held-out images through {len(doc['boards'])} board(s), one at a time, then batched")
        with Coordinator(deployment_path) as coord:
            got = ev.measure(coord, x, y, seconds=throughput_seconds)
        exp = ev.expected_accuracy(dep, x, y, batch=1)
        seq = ev.sequential_latency(dep, x)
    finally:
        try:
            result["stopped"] = _stop(deployment_path, deployed, plan, transport, boards_file, known_hosts, log)
        except Exception as e:  # never hide why we got here; say what may still run
            log(f"stop FAILED ({type(e).__name__}: {e}); run `edvit-tool stop --deployment {deployment_path}`")
            result["stopped"] = [{"name": "*", "stopped": [], "signals": {}, "error": str(e)}]

    mismatched = int((got.pop("predictions") != exp.pop("predictions")).sum())
    result["measured"] = got
    result["expected"] = exp
    result["mismatched_predictions"] = mismatched
    result["sequential"] = seq
    sizes = {a["name"]: a["bytes"] for a in dep["submodels"].values()}
    per_board: dict = {}
    for m, board in dep["boards"].items():
        per_board[board] = per_board.get(board, 0) + sizes[m]
    subs = manifest["submodels"]
    result["original"] = {"accuracy": manifest["accuracy"]["original"], "params": manifest["model"]["params"],
                          "bytes": manifest["model"]["bytes"]}
    result["fused"] = {"accuracy_torch": manifest["accuracy"]["fused"],
                       "params_total": sum(s["params"] for s in subs), "params_largest": max(s["params"] for s in subs),
                       "artifact_bytes_total": sum(sizes.values()) + dep["fusion"]["bytes"],
                       "artifact_bytes_largest_board": max(per_board.values()),
                       "fusion": mf.artifact_key(dep["fusion"])}
    target = exp["manifest_accuracy"] if exp["manifest_strict"] else exp["accuracy"]
    result["accuracy_ok"] = got["accuracy"] == exp["accuracy"] == target
    result["ok"] = result["accuracy_ok"] and not got["degraded"] and not any(r["error"] for r in result["stopped"])
    result["seconds"] = round(time.monotonic() - t_start, 2)
    _write_json(os.path.join(run_dir, "loop.json"), result)
    return result
