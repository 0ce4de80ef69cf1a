"""`edvit-tool assign`: place sub-models on boards from measured profiles; write plan.json."""

from __future__ import annotations

import click


def _read_json(path: str, what: str, fix: str):
    from ..artifacts import read_json_object

    return read_json_object(path, what, fix)


def _table(doc: dict, costs, greedy_error: str | None) -> str:
    lines = []
    rows = [("board", "sub-model", "variant", "predicted", "memory / budget")]
    for d, info in doc["boards"].items():
        first = True
        for p in doc["placements"]:
            if p["board"] != d:
                continue
            est = " (estimated)" if p["estimated"] else ""
            rows.append((d if first else "", p["submodel"], f"{p['format']}/{p['quant']}",
                         f"{p['predicted_ms']:.2f} ms{est}", f"{p['memory_mb']:.0f} MB"))
            first = False
        link = info.get("link") or {}
        via = f" at {link['mbps']:g} Mbit/s {'measured' if link.get('source') == 'measured' else 'assumed'}" \
            if link.get("mbps") else ""
        tr = f" incl. {info['transfer_ms']:.2f} ms input{via}" if info["transfer_ms"] else ""
        rows.append(("", "= board", "", f"{info['predicted_ms']:.2f} ms{tr}",
                     f"{info['memory_mb']:.0f} / {info['memory_budget_mb']:.0f} MB"))
    for d in doc["unused_boards"]:
        rows.append((d, "(unused)", "", "", ""))
    widths = [max(len(r[k]) for r in rows) for k in range(5)]
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    lines.append("")
    exact = doc["makespan_ms"]
    lines.append(f"makespan (exact, {doc['solver']}): {exact:.2f} ms")
    if doc["greedy_makespan_ms"] is None:
        lines.append(f"makespan (greedy baseline): no placement — {greedy_error}")
    else:
        g = doc["greedy_makespan_ms"]
        ratio = f"{g / exact:.3f}" if exact > 0 else "n/a"
        lines.append(f"makespan (greedy baseline): {g:.2f} ms   greedy/exact = {ratio}")
    n_est = sum(p["estimated"] for p in doc["placements"])
    if n_est:
        lines.append(f"{n_est} placement(s) use FLOPs-based estimates (not profiled on that board); "
                     "run `edvit-tool profile` on them for measured numbers")
    lines.extend(f"note: {n}" for n in doc["notes"])
    return "\n".join(lines)


@click.command("assign", epilog="""\b
Example:
  edvit-tool assign --build build/ --profiles profiles.json --boards boards.yaml --replicas 1 --out plan.json
\b
boards.yaml:
  boards:
    - {name: pi-1, host: 10.0.0.21, user: pi, identity: ~/.ssh/id_ed25519, device_profile: rpi4b}
    - {name: pi-2, host: 10.0.0.22, port: 2222, user: pi, device_profile: rpi5, worker_port: 8501}
""")
@click.option("--build", "build_dir", required=True, metavar="DIR", help="Build dir from `edvit-tool compile`.")
@click.option("--profiles", "profiles_path", required=True, metavar="FILE",
              help="profiles.json from `edvit-tool profile`.")
@click.option("--boards", "boards_file", required=True, metavar="FILE", help="The cluster file boards.yaml.")
@click.option("--replicas", default=1, show_default=True, type=click.IntRange(min=1),
              help="Put each sub-model on this many distinct boards.")
@click.option("--objective", default="makespan", show_default=True, type=click.Choice(["makespan"]),
              help="What to minimise: the slowest board's time per image.")
@click.option("--bandwidth-mbps", default=1000.0, show_default=True, type=click.FloatRange(min=0),
              help="Link speed for the input-transfer cost of boards whose link `profile` did not measure "
                   "(0 = ignore their transfer). Measured links are used as measured.")
@click.option("--wire", type=click.Choice(["fp32", "uint8", "encoded"]), default="fp32", show_default=True,
              help="Input format the transfer cost assumes (as `deploy --wire`; encoded is counted as uint8).")
@click.option("--prefer", default=None, metavar="FORMAT[/QUANT]",
              help="Only consider matching variants, e.g. tflite or onnx/int8-static.")
@click.option("--out", "out", default="plan.json", show_default=True, metavar="FILE", help="Where to write the plan.")
@click.option("--ignore-sizing", is_flag=True,
              help="For a build sized for boards (compile --boards): place freely instead of keeping each "
                   "sub-model on the board it was sized for.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON instead of the table.")
def command(build_dir, profiles_path, boards_file, replicas, objective, bandwidth_mbps, wire, prefer, out,
            ignore_sizing, as_json):
    """Place sub-models on boards to minimise the slowest board's latency within memory budgets.

    Uses each board's measured latency and peak memory of the fastest artifact variant that passed parity on
    it; pairs that were not profiled get a FLOPs-based estimate, labelled as such. Solves exactly (MILP, HiGHS)
    and prints the paper's greedy baseline beside it.
    """
    import json

    from ..cluster import assign as A
    from ..artifacts import load_manifest
    from ..config.boards import boards_from_yaml
    from ..errors import EdvitError

    manifest = load_manifest(build_dir)
    boards = boards_from_yaml(boards_file)
    profiles = _read_json(profiles_path, "profiles file",
                          "run `edvit-tool profile --build B --boards boards.yaml` first")
    costs = A.costs_from_profiles(manifest, profiles, boards, prefer=prefer, source=profiles_path)
    transfer = A.transfer_costs(manifest, boards, bandwidth_mbps, profiles, wire)
    basis = A.transfer_basis(boards, bandwidth_mbps, profiles)
    t, m = costs.t, costs.m
    from ..compile.sizing import pairing, pin_to_pairing

    pairs = {} if ignore_sizing else pairing(manifest)
    if pairs and replicas == 1:  # the build sized sub-model i for board i: keep that pairing
        t = pin_to_pairing(t, pairs, costs.boards, boards_file)
    exact = A.solve_exact(costs.submodels, costs.boards, t, m, costs.budgets_mb, transfer, replicas)
    greedy, greedy_error = None, None
    try:
        greedy = A.solve_greedy(costs.submodels, costs.boards, t, m, costs.budgets_mb, transfer, replicas)
    except EdvitError as e:
        greedy_error = str(e)
    from ..artifacts import write_json_atomic
    from ..cluster.plan import build_plan_doc

    doc = build_plan_doc(build_dir, boards_file, boards, costs, exact, greedy, replicas, bandwidth_mbps, transfer,
                         basis, wire)
    if pairs:
        doc["sized_for"] = pairs
        doc["notes"].append("sub-models kept on the boards they were sized for (compile --boards)" if replicas == 1
                            else "replicas > 1: placed freely, not only on the boards the build was sized for")
    write_json_atomic(out, doc)
    if as_json:
        click.echo(json.dumps(doc, indent=2))
    else:
        click.echo(_table(doc, costs, greedy_error))
        click.echo(f"wrote {out}")
    return 0
