"""Accuracy suite (issue 10): does the ensemble beat the one pruned ViT a user would otherwise deploy?

For each generated task (bench/tasks.py, each with its own trained original) × K × params budget per sub-model,
compile with the task's default recipe and `--peer` (one class-agnostic pruned ViT at the largest sub-model's
size, given K sub-models' training steps and early stopping), then report original, fused (PyTorch, and through
the exported ONNX fp32 / int8-static artifacts when --export), the peer, in-group accuracies of the sub-models,
and the compile seconds of the ensemble vs the peer. Seeds are the recipe's (fixed).

Results accumulate in bench/results/accuracy.json under a label (one label per recipe variant = one ablation
row); the table printed is the label's.

    python bench/accuracy.py --label default [--tasks digits-colour,shapes-20] [--ks 4] [--ratios 0.25]
                             [--set finetune.steps=800 ...] [--export] [--jobs 2]

Targets (issue 10): K=4 @25 %: fused ≥ peer on every task, mean margin ≥ +1 pp, fused ≥ original − 0.5 pp;
K=10 @3.5 %: fused ≥ peer, fused ≥ original − 2 pp; int8 ≥ fp32 − 0.5 pp.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing as mp
import os
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
ROOT = os.path.dirname(_HERE)
sys.path.insert(0, ROOT)
sys.path.insert(1, _HERE)

import tasks as task_mod  # noqa: E402

RESULTS = os.path.join(ROOT, "bench", "results", "accuracy.json")
BUILDS = os.environ.get("EDVIT_ACC_BUILDS") or os.path.join(ROOT, "runs", "acc-builds")


def _parse_value(v: str):
    import yaml

    return yaml.safe_load(v)


# recipe keys the peer does not read (it is one class-agnostic model pruned from the original): a label that
# differs from another only in these can take that label's peers (--peer-from) instead of training them again
# (finetune.early_stopping: the peer always stops early; split.view_shift: the peer has no view; peer.parallel:
# where it trains, not how)
ENSEMBLE_ONLY = ("prune.shared_", "prune.importance_other", "finetune.branch_lr", "finetune.joint_", "fusion.",
                 "finetune.other_", "finetune.aux_weight", "finetune.early_stopping", "split.view_shift",
                 "peer.parallel")


def run_one(task: str, k: int, ratio: float, overrides: dict, export: bool, label: str, device: str = "cpu",
            peer: bool = True) -> dict:
    """Compile one (task, K, budget) with the peer (`peer`); one torch thread (the recipe's)."""
    import torch

    torch.set_num_threads(1)
    from edvit_tool.config import recipe as recipe_mod
    from edvit_tool.compile.pipeline import compile_build

    recipe_path = task_mod.ensure_task(task)
    ov = {"split.groups": k, "prune.target.params_ratio": ratio, "threads": 1, "device": device,
          "export.formats": ["onnx"] if export else [], "export.quant": ["fp32", "int8-static"],
          "export.simplify": "none",
          # the peer after the ensemble, not beside it: their seconds are then each measured alone (same peer)
          "peer.parallel": "never", **overrides}
    recipe = recipe_mod.load(recipe_path, ov)
    out = os.path.join(BUILDS, label, f"{task}-k{k}-r{ratio}")
    t0 = time.perf_counter()
    res = compile_build(recipe, out, bars=None, peer=peer)
    wall = time.perf_counter() - t0
    r, acc = res.report, res.manifest["accuracy"]
    exported = acc.get("exported", {})
    return {
        "task": task, "k": k, "params_ratio": ratio, "classes": len(res.manifest["classes"]),
        "original": r["original"]["accuracy"], "fused": r["fused"]["accuracy"], "fusion_kind": r["fusion_kind"],
        "fusion_candidates_test": acc.get("fusion_candidates_test"), "fusion_cv": acc.get("fusion_cv"),
        "fused_eval": acc.get("fused_eval"), "eval_samples": acc.get("eval_samples"),
        "fused_val": acc.get("fused_val"),  # what a recipe choice may be judged on (validation split)
        "fused_onnx_fp32": exported.get("onnx/fp32"), "fused_onnx_int8": exported.get("onnx/int8-static"),
        **({"peer": r["peer"]["accuracy"], "peer_params": r["peer"]["params"],
            "peer_train_steps": r["peer"]["train_steps"], "peer_seconds": r["peer"]["seconds"],
            "peer_views": r["peer"].get("views_accuracy"),
            "ensemble_seconds": r["peer"]["ensemble_seconds"]} if peer else
           # no peer in this build: the whole compile's seconds (teacher pass and fusion included: an overcount)
           {"ensemble_seconds": r["compile_seconds"]}),
        "compile_seconds": r["compile_seconds"],
        "wall_seconds": wall,
        "max_params_ratio": max(s["params_ratio"] for s in r["submodels"]),
        "in_group": [s["accuracy_in_group"] for s in r["submodels"]],
        "gate_failures": r.get("gate_failures", []),
    }


def _pp(a, b):
    return None if a is None or b is None else 100 * (a - b)


def table(rows: list[dict]) -> str:
    hdr = (f"{'task':<14} {'K':>2} {'budget':>6} {'orig':>6} {'fused':>6} {'kind':>8} {'onnx32':>6} {'int8':>6} "
           f"{'peer':>6} {'f-peer':>6} {'f-orig':>6} {'in-group (min/mean)':>19} {'ens s':>6} {'peer s':>6}")
    lines = [hdr]
    f = lambda v: "  —   " if v is None else f"{100 * v:6.2f}"  # noqa: E731
    for r in sorted(rows, key=lambda r: (r["k"], r["params_ratio"], r["task"])):
        ig = r["in_group"]
        lines.append(f"{r['task']:<14} {r['k']:>2} {100 * r['params_ratio']:5.1f}% {f(r['original'])} "
                     f"{f(r['fused'])} {r['fusion_kind']:>8} {f(r['fused_onnx_fp32'])} {f(r['fused_onnx_int8'])} "
                     f"{f(r['peer'])} {_pp(r['fused'], r['peer']):+6.2f} {_pp(r['fused'], r['original']):+6.2f} "
                     f"{100 * min(ig):8.1f}/{100 * sum(ig) / len(ig):5.1f}    "
                     f"{r['ensemble_seconds']:6.0f} {r['peer_seconds']:6.0f}")
    for key in sorted({(r["k"], r["params_ratio"]) for r in rows}):
        sel = [r for r in rows if (r["k"], r["params_ratio"]) == key]
        m_peer = sum(_pp(r["fused"], r["peer"]) for r in sel) / len(sel)
        m_orig = sum(_pp(r["fused"], r["original"]) for r in sel) / len(sel)
        worst_peer = min(_pp(r["fused"], r["peer"]) for r in sel)
        worst_orig = min(_pp(r["fused"], r["original"]) for r in sel)
        lines.append(f"K={key[0]} @{100 * key[1]:.1f}%: mean fused-peer {m_peer:+.2f} pp (worst {worst_peer:+.2f}), "
                     f"mean fused-orig {m_orig:+.2f} pp (worst {worst_orig:+.2f}) over {len(sel)} task(s)")
    q = [(r["task"], _pp(r["fused_onnx_int8"], r["fused_onnx_fp32"])) for r in rows
         if r["fused_onnx_int8"] is not None and r["fused_onnx_fp32"] is not None]
    if q:
        lines.append("int8 − fp32 (artifacts): " + ", ".join(f"{t} {d:+.2f} pp" for t, d in q))
    return "\n".join(lines)


def save(args, overrides: dict, rows: list, t0: float) -> dict:
    """Merge this run's rows into the label's entry (replacing rows of the same task/K/budget) and write it."""
    import torch

    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    doc = {}
    if os.path.isfile(args.out):
        with open(args.out) as f:
            doc = json.load(f)
    entry = doc.setdefault("runs", {}).setdefault(args.label, {"overrides": overrides, "rows": []})
    entry["overrides"] = overrides
    keep = {(r["task"], r["k"], r["params_ratio"]) for r in rows}
    entry["rows"] = [r for r in entry["rows"] if (r["task"], r["k"], r["params_ratio"]) not in keep] + rows
    entry["torch"], entry["threads"], entry["suite_seconds"] = torch.__version__, 1, time.perf_counter() - t0
    entry["table"] = table(entry["rows"]).splitlines()
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1)
    os.replace(tmp, args.out)
    return entry


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--label", default="default", help="name of this recipe variant in accuracy.json")
    ap.add_argument("--tasks", default=",".join(task_mod.TUNING),
                    help=f"comma list (tuning: {','.join(task_mod.TUNING)}; held out: {','.join(task_mod.HOLDOUT)})")
    ap.add_argument("--ks", default="4")
    ap.add_argument("--ratios", default="0.25")
    ap.add_argument("--grid", default=None, help="explicit K@ratio list, e.g. 4@0.25,10@0.035 (overrides ks/ratios)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override (dotted)")
    ap.add_argument("--export", action="store_true", help="export ONNX fp32 + int8-static and gate/measure them")
    ap.add_argument("--jobs", type=int, default=1, help="parallel compiles (one torch thread each)")
    ap.add_argument("--device", default="cpu", help="compile device (cpu | cuda); the recipe's thread count is 1")
    ap.add_argument("--out", default=RESULTS)
    ap.add_argument("--peer-from", default=None, metavar="LABEL",
                    help="take each row's peer from this label's run (same tasks/K/budgets, recipes differing only "
                         "in keys the peer does not read) instead of training it again")
    args = ap.parse_args()
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = _parse_value(value)
    peers = {}
    if args.peer_from:
        with open(args.out) as f:
            src = json.load(f).get("runs", {}).get(args.peer_from)
        if src is None:
            sys.exit(f"Error: --peer-from {args.peer_from!r}: no such run label in {args.out}")
        differ = {k for k in set(overrides) | set(src["overrides"])
                  if overrides.get(k) != src["overrides"].get(k)}
        bad = [k for k in differ if not k.startswith(ENSEMBLE_ONLY)]
        if bad:
            sys.exit(f"--peer-from {args.peer_from}: its recipe differs in {bad}, which the peer reads")
        peers = {(r["task"], r["k"], r["params_ratio"]): r for r in src["rows"]}
    if args.grid:
        grid = [(int(a), float(b)) for a, b in (g.split("@") for g in args.grid.split(","))]
    else:
        grid = [(int(k), float(r)) for k in args.ks.split(",") for r in args.ratios.split(",")]
    task_list = args.tasks.split(",")
    for t in task_list:  # originals first (serially: they are shared by all runs)
        task_mod.ensure_task(t)
    jobs = [(t, k, r) for (k, r) in grid for t in task_list]
    rows = []
    t0 = time.perf_counter()
    ctx = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=args.jobs, mp_context=ctx) as pool:
        futs = {pool.submit(run_one, t, k, r, overrides, args.export, args.label, args.device,
                            not args.peer_from): (t, k, r) for t, k, r in jobs}
        for fut in cf.as_completed(futs):
            row = fut.result()
            if args.peer_from:
                src = peers[(row["task"], row["k"], row["params_ratio"])]
                row.update({k: src[k] for k in ("peer", "peer_params", "peer_train_steps", "peer_seconds")},
                           peer_from=args.peer_from)
            rows.append(row)
            print(json.dumps({k: row[k] for k in ("task", "k", "params_ratio", "original", "fused", "fusion_kind",
                                                  "peer", "in_group", "ensemble_seconds", "peer_seconds")}),
                  flush=True)
            save(args, overrides, rows, t0)  # after every row: a long suite that dies keeps what it finished
    entry = save(args, overrides, rows, t0)
    print(f"\n[{args.label}] {json.dumps(overrides)}")
    print(table(entry["rows"]))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
