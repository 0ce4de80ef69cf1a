"""Exported artifacts of a build, per format x quant: size, size vs the original fp32 model, parity, fused
accuracy through the artifacts, and single-image latency in the real interpreter (1 thread, one fresh process
per runtime so neither runtime's thread pools or caches disturb the other, median of >= 50 runs).

    .venv/bin/python bench/export.py [BUILD_DIR] [--runs 100] [--out bench/results/export.json]

BUILD_DIR defaults to runs/digits-build. Torch is not needed (the numbers come from the artifacts).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from edvit_tool.export import validate as V  # noqa: E402
from edvit_tool.runtime import manifest as mf  # noqa: E402


def _latency_worker(build: str, fmt: str, runs: int, warmup: int) -> dict:
    """In a child process: per artifact of `fmt`, load time and single-image latencies (ms)."""
    m = mf.load(build)
    refs = V.load_npz(os.path.join(build, mf.REFERENCE_INPUTS))
    out = {}
    for art in m["artifacts"]:
        if art["format"] != fmt:
            continue
        t0 = time.perf_counter()
        runner = V.Runner(os.path.join(build, art["file"]), fmt, threads=1)
        load_ms = (time.perf_counter() - t0) * 1e3
        name = runner.inputs[0]["name"]
        x = {name: refs[name][:1]}
        for _ in range(warmup):
            runner.run(x)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            runner.run(x)
            times.append((time.perf_counter() - t0) * 1e3)
        times.sort()
        out[art["file"]] = {"median_ms": statistics.median(times), "p90_ms": times[int(0.9 * (len(times) - 1))],
                            "load_ms": load_ms, "runs": runs}
    return out


def measure_latency(build: str, fmt: str, runs: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, os.path.abspath(__file__), build, "--_latency", fmt, "--runs", str(runs)],
                       capture_output=True, text=True, env=env, check=False)
    if p.returncode != 0:
        raise SystemExit(f"latency worker for {fmt} failed:\n{p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def summarise(build: str, runs: int) -> dict:
    m = mf.load(build)
    subs = [s["name"] for s in m["submodels"]]
    lat = {}
    for fmt in sorted({a["format"] for a in m["artifacts"]}):
        lat.update(measure_latency(build, fmt, runs))
    original = m["model"].get("bytes") or 0
    rows = []
    variants = sorted({(a["format"], a["quant"]) for a in m["artifacts"]},
                      key=lambda v: (v[0], mf.QUANT_MODES.index(v[1])))
    for fmt, quant in variants:
        sub_arts, fusion = V.variant_artifacts(m, fmt, quant)
        sub_arts = [a for a in sub_arts if a]
        arts = sub_arts + ([fusion] if fusion else [])
        fp32 = [a for a in V.variant_artifacts(m, fmt, "fp32")[0] if a]
        sub_bytes = sum(a["bytes"] for a in sub_arts)
        sub_lat = [lat[a["file"]]["median_ms"] for a in sub_arts]
        rows.append({
            "variant": f"{fmt}/{quant}",
            "submodel_bytes": sub_bytes,
            "largest_submodel_bytes": max(a["bytes"] for a in sub_arts),
            "fusion_bytes": fusion["bytes"] if fusion else None,
            "ratio_vs_original": sub_bytes / original if original else None,
            "largest_ratio_vs_original": max(a["bytes"] for a in sub_arts) / original if original else None,
            "ratio_vs_fp32": sub_bytes / sum(a["bytes"] for a in fp32) if fp32 else None,
            "max_abs_diff": max(a["max_abs_diff"] for a in arts),
            "min_top1_agreement": min(a["top1_agreement"] for a in arts),
            "fused_accuracy": m.get("accuracy", {}).get("exported", {}).get(f"{fmt}/{quant}"),
            "latency_ms_submodel_median": statistics.median(sub_lat),
            "latency_ms_submodels_sequential": sum(sub_lat),
            "latency_ms_fusion": lat[fusion["file"]]["median_ms"] if fusion else None,
            "float_layers": {a["name"]: a["float_layers"] for a in arts if a["float_layers"]},
            "status": "ok" if all(a["status"] == "ok" for a in arts) else "failed",
        })
    return {"build": os.path.abspath(build), "subs": subs, "original_bytes": original,
            "fused_torch_accuracy": m.get("accuracy", {}).get("fused"), "runs": runs, "threads": 1,
            "variants": rows, "artifacts": lat}


def print_table(res: dict) -> None:
    print(f"build {res['build']}: {len(res['subs'])} sub-models, original fp32 model {res['original_bytes']:,} B, "
          f"PyTorch fused accuracy {res['fused_torch_accuracy']:.4f}; latency: 1 thread, median of {res['runs']}")
    head = (f"{'variant':20s} {'sub bytes':>10s} {'÷orig':>6s} {'÷fp32':>6s} {'max|Δ|':>8s} {'top-1':>6s} "
            f"{'fused acc':>9s} {'sub ms':>7s} {'Σsub ms':>8s} {'fus ms':>7s}  status")
    print(head)
    print("-" * len(head))
    for r in res["variants"]:
        ratio = f"{r['ratio_vs_original']:.3f}" if r["ratio_vs_original"] else "  -  "
        print(f"{r['variant']:20s} {r['submodel_bytes']:>10,d} {ratio:>6s} {r['ratio_vs_fp32']:>6.3f} "
              f"{r['max_abs_diff']:>8.2e} {r['min_top1_agreement']:>6.3f} {r['fused_accuracy']:>9.4f} "
              f"{r['latency_ms_submodel_median']:>7.3f} {r['latency_ms_submodels_sequential']:>8.3f} "
              f"{r['latency_ms_fusion']:>7.3f}  {r['status']}"
              + (f" float: {r['float_layers']}" if r["float_layers"] else ""))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("build", nargs="?", default="runs/digits-build")
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "export.json"))
    ap.add_argument("--_latency", dest="latency", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.runs < 50:
        ap.error("--runs must be >= 50 (medians of fewer runs are noise)")
    if not os.path.isfile(os.path.join(args.build, "manifest.json")):
        ap.error(f"{args.build}: no manifest.json; build one first (edvit-tool demo --out runs/digits-build)")
    if args.latency:
        print(json.dumps(_latency_worker(args.build, args.latency, args.runs, warmup=10)))
        return 0
    res = summarise(args.build, args.runs)
    print_table(res)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
