"""End to end through a deployed cluster for bench/paper.py's rows (issue 13): the original on one emulated board
vs K sub-models on K such boards behind the coordinator, for the K whose boards fit this machine's cores.

    .venv/bin/python bench/paper.py                     # first: builds and caches the pruned sub-models
    .venv/bin/python bench/paper_e2e.py [--model vit_small_patch16_224] [--ks 2,3,5,10] [--n 20]

Per K every board (the original's and each sub-model's) gets the same cgroup-v1 CPU quota, 1/K of one core, so
the K boards together hold one core and the coordinator and this loop the other (2-core machine). Sub-models:
paper.py's largest sub-model at that K (RANDOM weights, structure only; a balanced split gives every group the
same structure up to one class) served K times, plus a random MLP fusion head over their features; ONNX fp32,
one interpreter thread per worker. Measured: sequential single-image p50 through `Coordinator.run` (K boards,
HTTP, fusion) and the original's p50 called directly on its board (one HTTP hop). Ratio = original ÷ ED-ViT.
ViT-B/L are left out: at 1/K core one original inference takes seconds to tens of seconds.
Merges `end_to_end` into bench/results/paper.json (paper.py keeps it when it rewrites the file) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]
sys.path.insert(0, HERE)
import distributed as D  # noqa: E402  (its quotas, workers and coordinator helpers)

RESULTS = os.path.join(HERE, "results")
N_CLASSES = 10


def _stage(build_root: str, onnx_files: list[str], feature_dims: list[int], groups: list[list[int]]) -> str:
    """A build dir serving these ONNX files as g0..g{K-1} with a random MLP fusion head (one file: the original,
    whose fusion head the bench never calls)."""
    import torch

    from edvit_tool.artifacts import staged_dir

    with staged_dir(build_root) as d:
        os.makedirs(os.path.join(d, "submodels"))
        arts, subs = [], []
        for i, (src, dim, g) in enumerate(zip(onnx_files, feature_dims, groups)):
            rel = f"submodels/g{i}.fp32.onnx"
            shutil.copyfile(src, os.path.join(d, rel))
            n_out = len(g) + 1 if len(groups) > 1 else N_CLASSES
            subs.append({"name": f"g{i}", "group": i, "classes": g, "arch": {}, "params": 0, "bytes": 0, "flops": 0,
                         "feature_dim": dim, "num_outputs": n_out})
            arts.append((f"g{i}", rel, [D.io_spec("pixel_values", list(D.SHAPE))],
                         [D.io_spec("features", [dim]), D.io_spec("logits", [n_out])]))
        os.makedirs(os.path.join(d, "fusion"))
        torch.manual_seed(0)
        total = sum(feature_dims)
        head = torch.nn.Sequential(torch.nn.Linear(total, 128), torch.nn.GELU(),
                                   torch.nn.Linear(128, N_CLASSES)).eval()
        D.export_onnx(head, torch.zeros(1, total), os.path.join(d, "fusion/fusion.fp32.onnx"), "features",
                      ["logits"])
        arts.append(("fusion", "fusion/fusion.fp32.onnx", [D.io_spec("features", [total])],
                     [D.io_spec("logits", [N_CLASSES])]))
        D.write_bench_manifest(d, arts, subs, groups, feature_dims, N_CLASSES, "paper-e2e")
    return build_root


def _original_p50(build: str, quotas, n: int, workdir: str) -> tuple[float, float]:
    """(p50 ms of a direct call, the worker's own compute p50) for g0 on one board."""
    assignment = {"board0": ["g0"]}
    dep, workers = D.start_local_workers(build, assignment, "onnx/fp32", workdir, deadline_ms=120000,
                                         extra_args=["--threads", "1"], prefix={"board0": quotas.prefix("orig")})
    token = open(workers.token_file).read().strip()
    x = np.random.default_rng(0).standard_normal((1, *D.SHAPE)).astype(np.float32)
    try:
        with D.OipClient("127.0.0.1", workers.ports["board0"], token=token, timeout=300) as c:
            for _ in range(2):
                c.infer("g0", {"pixel_values": x}, ["logits"])
            lat = []
            for _ in range(n):
                t0 = time.perf_counter()
                c.infer("g0", {"pixel_values": x}, ["logits"])
                lat.append((time.perf_counter() - t0) * 1000)
        compute = D._worker_compute(workers, assignment, token)["board0"]
    finally:
        workers.close()
    return D._pct(lat, 50), compute


def _ensemble_p50(build: str, k: int, quotas, n: int, workdir: str) -> tuple[float, float]:
    """(e2e p50 ms through the coordinator, slowest board's compute p50) for K boards, one sub-model each."""
    assignment = {f"board{i}": [f"g{i}"] for i in range(k)}
    prefix = {b: quotas.prefix(f"k{k}-{b}") for b in assignment}
    dep, workers = D.start_local_workers(build, assignment, "onnx/fp32", workdir, deadline_ms=120000,
                                         extra_args=["--threads", "1"], prefix=prefix)
    token = open(workers.token_file).read().strip()
    x = np.random.default_rng(0).standard_normal((1, *D.SHAPE)).astype(np.float32)
    try:
        with D.Coordinator(dep) as coord:
            for _ in range(3):
                coord.run(x)
            e2e = []
            for _ in range(n):
                t0 = time.perf_counter()
                res = coord.run(x)
                e2e.append((time.perf_counter() - t0) * 1000)
                if res.degraded:
                    raise SystemExit(f"K={k}: a board did not answer ({res.missing})")
        compute = D._worker_compute(workers, assignment, token)
    finally:
        workers.close()
    return D._pct(e2e, 50), max(compute.values())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="vit_small_patch16_224")
    ap.add_argument("--ks", default="2,3,5,10")
    ap.add_argument("--n", type=int, default=20, help="timed requests per configuration")
    ap.add_argument("--cache", default=os.path.join(REPO, "runs", "paper"), help="bench/paper.py's --cache")
    ap.add_argument("--out", default=os.path.join(RESULTS, "paper.json"))
    a = ap.parse_args()
    t_start = time.perf_counter()
    base = os.path.join(a.cache, a.model)
    orig = os.path.join(base, "k1", "model.fp32.onnx")
    if not os.path.isfile(orig):
        raise SystemExit(f"{orig} is missing: run bench/paper.py --cache {a.cache} first")
    load = [round(os.getloadavg()[0], 2)]
    rows = []
    work = tempfile.mkdtemp(prefix="edvit-paper-e2e-")
    try:
        for k in (int(s) for s in a.ks.split(",")):
            meta_path = os.path.join(base, f"k{k}", "meta.json")
            if not os.path.isfile(meta_path):
                raise SystemExit(f"{meta_path} is missing: run bench/paper.py --cache {a.cache} --ks {k} first")
            with open(meta_path) as f:
                meta = json.load(f)
            quota = 1.0 / k
            quotas = D.Quotas(quota)
            if not quotas.enabled:
                raise SystemExit("needs a writable cgroup-v1 cpu controller (run as root): without quotas the "
                                 "K boards would share this machine's cores and the figures would mean nothing")
            try:
                ens_build = _stage(os.path.join(work, f"k{k}"),
                                   [os.path.join(base, f"k{k}", "model.fp32.onnx")] * k,
                                   [meta["arch"]["embed_dim"]] * k, meta["groups"])
                orig_build = _stage(os.path.join(work, f"orig-k{k}"), [orig], [384], [list(range(N_CLASSES))])
                n_orig = max(5, a.n // 2) if k >= 5 else a.n  # one original inference takes ~1.5 s at 1/10 core
                o_p50, o_compute = _original_p50(orig_build, quotas, n_orig, os.path.join(work, f"w-orig-{k}"))
                e_p50, e_compute = _ensemble_p50(ens_build, k, quotas, a.n, os.path.join(work, f"w-k{k}"))
            finally:
                quotas.close()
            rows.append({"k": k, "quota_per_board": round(quota, 4), "boards": k,
                         "original_p50_ms": round(o_p50, 2), "original_compute_p50_ms": round(o_compute, 2),
                         "edvit_e2e_p50_ms": round(e_p50, 2), "slowest_board_compute_p50_ms": round(e_compute, 2),
                         "e2e_ratio": round(o_p50 / e_p50, 2), "n_original": n_orig, "n_edvit": a.n})
            print(f"  K={k}: original {o_p50:.1f} ms, ED-ViT {e_p50:.1f} ms on {k} boards at {quota:.2f} core "
                  f"-> {o_p50 / e_p50:.2f}x", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load.append(round(os.getloadavg()[0], 2))
    e2e = {"model": a.model, "variant": "onnx/fp32", "rows": rows, "load_avg_1min": load,
           "seconds": round(time.perf_counter() - t_start, 1),
           "note": ("every board (the original's and each of the K sub-models') in a cgroup-v1 quota of 1/K core, "
                    "1 interpreter thread; random weights; the largest sub-model at K served on each of the K boards "
                    "with a random MLP fusion head; sequential single images through the coordinator vs the "
                    "original called directly on its board; ViT-B/L not run (one original inference takes seconds "
                    "at 1/K core)"),
           "command": "python bench/paper_e2e.py " + " ".join(sys.argv[1:])}
    doc = {}
    if os.path.isfile(a.out):
        with open(a.out) as f:
            doc = json.load(f)
    doc["end_to_end"] = e2e
    with open(a.out + ".tmp", "w") as f:
        json.dump(doc, f, indent=1)
    os.replace(a.out + ".tmp", a.out)
    print(f"\n| K | quota per board | original p50 ms | ED-ViT e2e p50 ms | slowest board compute ms | original ÷ ED-ViT |"
          "\n|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['k']} | {r['quota_per_board']:.2f} core | {r['original_p50_ms']:.1f} | {r['edvit_e2e_p50_ms']:.1f} | "
              f"{r['slowest_board_compute_p50_ms']:.1f} | {r['e2e_ratio']:.2f}× |")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
