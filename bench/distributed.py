"""Distributed inference through the coordinator: latency, coordinator overhead, throughput (issue 5 numbers).

    .venv/bin/python bench/distributed.py [--ks 2,4] [--quota 0.25] [--n 100] [--seconds 6] [--concurrency 4]

Models: ViT-Tiny/16 structure at 224x224x3 with RANDOM weights (latency only, accuracy means nothing here):
the original (embed 192, 3 heads, depth 12) and, per K, K ED-ViT-like sub-models with the embedding pruned so
each is ~1/K of the original's compute (K=2: embed 128 / 2 heads, K=4: embed 96 / 2 heads; depth 12,
patch 16, MLP ratio 4), plus an MLP fusion head; 100 classes in K contiguous groups; exported to ONNX fp32.

Boards: local worker processes (`python -m edvit_tool.runtime.worker`, 1 interpreter thread), each in its own
cgroup-v1 CPU quota (--quota of one core, 1-ms-scale period: see tests/boards.py) so every board is equally
slow and the K workers do not starve the coordinator on this 2-core machine. Without root / cgroup v1 the
workers run unthrottled (said in the output).

Per configuration:
  * sequential latency (one request at a time, batch 1) end to end through `Coordinator.run`: p50 / p99;
  * slowest board's compute: max over boards of the worker's own interpreter-time p50 (`/stats` infer_p50_ms);
  * coordinator overhead = e2e p50 - slowest compute p50 (target <= 2 ms; includes both HTTP hops, the
    224x224x3 fp32 transfer, fusion and gather), and the coordinator-only part = p50 of (e2e - slowest board's
    round trip) per request;
  * throughput with --concurrency callers for --seconds, vs 1 / the slowest board's round-trip p50 (target
    >= 0.9: a board's CPU quota also pays for its HTTP handling, so that is its real service time), and vs
    1 / slowest compute (stricter);
  * the coordinator process's CPU time per request (mostly the kernel copying 588 KiB per board on loopback);
  * the original model on one such board, called directly (no coordinator): p50 / p99, and its ratio to ED-ViT;
  * the makespan `assign` predicts for the same boards from the measured compute (exact MILP and greedy).
Prints a table and writes bench/results/distributed.json. ~1-2 min (+ ~1 min the first time: exports, cached
in bench/results/.cache).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import threading
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
# a bench script named like a stdlib module would shadow it (tests/unit/test_bench_names.py): drop our own dir
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]
sys.path.insert(0, os.path.join(REPO, "tests", "e2e"))
sys.path.insert(0, os.path.join(REPO, "tests"))
sys.path.insert(0, REPO)

from workers import export_onnx, io_spec, start_local_workers  # noqa: E402

from edvit_tool.serve.coordinator import Coordinator  # noqa: E402
from edvit_tool.runtime.protocol import OipClient  # noqa: E402

RESULTS = os.path.join(HERE, "results")
CACHE = os.path.join(RESULTS, ".cache")
N_CLASSES = 100
SHAPE = (3, 224, 224)
SUB_ARCH = {1: (192, 3), 2: (128, 2), 4: (96, 2)}  # K -> (embed_dim, heads); K=1 is the original ViT-Tiny
CGROUP_CPU = "/sys/fs/cgroup/cpu"


# -- builds ----------------------------------------------------------------------------------------------------

def _vit(embed: int, heads: int, n_out: int):
    import timm
    import torch

    class Sub(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, embed_dim=embed, num_heads=heads,
                                         num_classes=n_out)

        def forward(self, pixel_values):
            f = self.vit.forward_head(self.vit.forward_features(pixel_values), pre_logits=True)
            return f, self.vit.head(f)

    return Sub().eval()


def make_build(k: int) -> str:
    """K sub-models (or, K=1, the original as g0) + fusion -> a build dir under the cache (reused when there)."""
    root = os.path.join(CACHE, f"vit-k{k}")
    if os.path.isfile(os.path.join(root, "manifest.json")):
        return root
    import torch

    from edvit_tool.artifacts import staged_dir

    torch.manual_seed(k)
    embed, heads = SUB_ARCH[k]
    per = N_CLASSES // k
    groups = [list(range(i * per, (i + 1) * per if i < k - 1 else N_CLASSES)) for i in range(k)]
    x = torch.randn(1, *SHAPE)

    with staged_dir(root) as d:
        os.makedirs(os.path.join(d, "submodels"))
        os.makedirs(os.path.join(d, "fusion"))
        subs, arts, params = [], [], 0
        for i, g in enumerate(groups):
            m = _vit(embed, heads, len(g) + 1 if k > 1 else N_CLASSES)
            rel = f"submodels/g{i}.fp32.onnx"
            print(f"  exporting {rel} for K={k} (embed {embed}, {heads} heads)", file=sys.stderr)
            export_onnx(m, x, os.path.join(d, rel), "pixel_values", ["features", "logits"])
            n_params = sum(p.numel() for p in m.parameters())
            params += n_params
            subs.append({"name": f"g{i}", "group": i, "classes": g, "arch": {"embed_dim": embed, "num_heads": heads,
                                                                              "depth": 12}, "params": n_params,
                         "bytes": 0, "flops": 0, "feature_dim": embed, "num_outputs": len(g) + 1})
            arts.append((f"g{i}", rel, [io_spec("pixel_values", SHAPE)],
                         [io_spec("features", [embed]), io_spec("logits", [len(g) + 1 if k > 1 else N_CLASSES])]))
        fusion = torch.nn.Sequential(torch.nn.Linear(embed * k, 256), torch.nn.GELU(),
                                     torch.nn.Linear(256, N_CLASSES)).eval()
        export_onnx(fusion, torch.zeros(1, embed * k), os.path.join(d, "fusion/fusion.fp32.onnx"), "features",
                    ["logits"])
        arts.append(("fusion", "fusion/fusion.fp32.onnx", [io_spec("features", [embed * k])],
                     [io_spec("logits", [N_CLASSES])]))
        write_bench_manifest(d, arts, subs, groups, [embed] * k, N_CLASSES, f"vit-tiny-random-k{k}", params)
    return root


def write_bench_manifest(d: str, arts: list, subs: list, groups: list, fusion_dims: list, n_classes: int,
                         model_name: str, params: int = 0) -> None:
    """The manifest of a random-weight bench build staged in `d`: ONNX fp32 `arts` ((name, file, inputs,
    outputs), hashed here), sub-model entries `subs` and an MLP fusion head over their features."""
    from edvit_tool.artifacts import write_manifest
    from edvit_tool.runtime.manifest import sha256_file

    artifacts = []
    for name, rel, ins, outs in arts:
        p = os.path.join(d, rel)
        artifacts.append({"name": name, "file": rel, "format": "onnx", "quant": "fp32", "status": "ok",
                          "bytes": os.path.getsize(p), "sha256": sha256_file(p), "inputs": ins, "outputs": outs})
    write_manifest(d, {
        "schema_version": 1, "tool_version": "0.1.0", "created": "bench",
        "model": {"name": model_name, "kwargs": {}, "params": params, "bytes": 0, "flops": 0},
        "input": {"name": "pixel_values", "shape": list(SHAPE), "layout": "NCHW", "dtype": "float32",
                  "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bilinear"},
        "classes": [f"c{i}" for i in range(n_classes)], "groups": groups, "submodels": subs,
        "fusion": {"kind": "mlp", "source": "features", "input_dims": fusion_dims, "num_classes": n_classes},
        "accuracy": {}, "artifacts": artifacts})


# -- CPU quotas ----------------------------------------------------------------------------------------------

class Quotas:
    """One cgroup-v1 CPU quota per board; workers join theirs before exec (a wrapper `sh -c`)."""

    def __init__(self, ratio: float | None):
        self.ratio = ratio
        self.paths: list = []
        self.enabled = bool(ratio) and os.access(os.path.join(CGROUP_CPU, "cpu.cfs_quota_us"), os.W_OK)

    def prefix(self, name: str) -> list:
        if not self.enabled:
            return []
        from boards import quota_settings

        path = os.path.join(CGROUP_CPU, f"edvit-bench-{os.getpid()}-{name}")
        os.makedirs(path, exist_ok=True)
        period, quota = quota_settings(self.ratio)
        for f, v in (("cpu.cfs_quota_us", "-1"), ("cpu.cfs_period_us", str(period)), ("cpu.cfs_quota_us", str(quota))):
            with open(os.path.join(path, f), "w") as fh:
                fh.write(v)
        self.paths.append(path)
        procs = shlex.quote(os.path.join(path, "cgroup.procs"))
        return ["sh", "-c", f'echo $$ > {procs} && exec "$@"', "sh"]

    def close(self) -> None:
        for path in self.paths:
            for _ in range(50):  # the killed workers leave the cgroup asynchronously
                try:
                    os.rmdir(path)
                    break
                except OSError:
                    time.sleep(0.05)
        self.paths = []


# -- measurements --------------------------------------------------------------------------------------------

def _pct(values, q):
    return float(np.percentile(np.asarray(values), q))


def _worker_compute(workers, assignment, token) -> dict:
    """board -> the worker's own interpreter-time p50 (ms), from /v2/models/<m>/stats."""
    out = {}
    for b, models in assignment.items():
        with OipClient("127.0.0.1", workers.ports[b], token=token) as c:
            out[b] = sum(c.stats(m)["infer_p50_ms"] for m in models)
    return out


def _throughput(call, concurrency: int, seconds: float) -> float:
    count = [0] * concurrency
    stop = time.perf_counter() + seconds
    errors = []

    def loop(i):
        try:
            while time.perf_counter() < stop:
                call()
                count[i] += 1
        except Exception as e:  # reported after the run
            errors.append(e)

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return sum(count) / (time.perf_counter() - t0)


def bench_ensemble(k: int, quotas: Quotas, args, workdir: str) -> dict:
    build = make_build(k)
    assignment = {f"board{i}": [f"g{i}"] for i in range(k)}
    prefix = {b: quotas.prefix(f"k{k}-{b}") for b in assignment}
    dep, workers = start_local_workers(build, assignment, "onnx/fp32", os.path.join(workdir, f"k{k}"),
                                       deadline_ms=10000, extra_args=["--threads", "1"], prefix=prefix)
    token = open(workers.token_file).read().strip()
    x = np.random.default_rng(0).standard_normal((1, *SHAPE)).astype(np.float32)
    try:
        with Coordinator(dep) as coord:
            for _ in range(10):
                coord.run(x)
            e2e, coord_only, board_rt = [], [], {b: [] for b in assignment}
            cpu0 = time.process_time()
            for _ in range(args.n):
                t0 = time.perf_counter()
                res = coord.run(x)
                ms = (time.perf_counter() - t0) * 1000
                assert not res.degraded, res.missing
                e2e.append(ms)
                coord_only.append(ms - max(res.board_ms.values()))
                for b, v in res.board_ms.items():
                    board_rt[b].append(v)
            cpu_ms = (time.process_time() - cpu0) * 1000 / args.n  # this process = the coordinator (+ bench loop)
            compute = _worker_compute(workers, assignment, token)
            tput = _throughput(lambda: coord.run(x), args.concurrency, args.seconds)
            stats = coord.stats()
    finally:
        workers.close()
    slowest = max(compute.values())
    slowest_rt = max(_pct(v, 50) for v in board_rt.values())
    exact_ms, greedy_ms = _predicted_makespans(assignment, compute)
    return {"config": f"ED-ViT K={k}", "k": k, "boards": k, "arch": dict(zip(("embed_dim", "heads"), SUB_ARCH[k])),
            "compute_p50_ms": compute, "slowest_compute_p50_ms": slowest,
            "board_roundtrip_p50_ms": {b: _pct(v, 50) for b, v in board_rt.items()},
            "e2e_p50_ms": _pct(e2e, 50), "e2e_p99_ms": _pct(e2e, 99),
            "overhead_p50_ms": _pct(e2e, 50) - slowest, "coordinator_only_p50_ms": _pct(coord_only, 50),
            "slowest_roundtrip_p50_ms": slowest_rt, "coordinator_cpu_ms_per_request": cpu_ms,
            "throughput_rps": tput, "throughput_bound_rps": 1000 / slowest_rt,
            "throughput_ratio": tput * slowest_rt / 1000, "throughput_ratio_vs_compute": tput * slowest / 1000,
            "degraded": stats["degraded"], "n": args.n, "concurrency": args.concurrency,
            "exact_makespan_ms": exact_ms, "greedy_makespan_ms": greedy_ms}


def _predicted_makespans(assignment: dict, compute: dict) -> tuple:
    """What `edvit-tool assign` predicts for these boards: each sub-model costs its measured compute p50 on any
    of them (the boards are identical: same quota), memory is not binding. -> (exact, greedy) makespan ms."""
    from edvit_tool.cluster.assign import solve_exact, solve_greedy

    cost = {m: compute[b] / len(ms) for b, ms in assignment.items() for m in ms}
    boards = list(assignment)
    t = {m: {b: c for b in boards} for m, c in cost.items()}
    mem = {m: {b: 1.0 for b in boards} for m in cost}
    budget = {b: float(len(cost)) for b in boards}
    exact = solve_exact(list(cost), boards, t, mem, budget)
    greedy = solve_greedy(list(cost), boards, t, mem, budget)
    return exact.makespan_ms, greedy.makespan_ms


def bench_original(quotas: Quotas, args, workdir: str) -> dict:
    build = make_build(1)
    assignment = {"board0": ["g0"]}
    dep, workers = start_local_workers(build, assignment, "onnx/fp32", os.path.join(workdir, "orig"),
                                       extra_args=["--threads", "1"], prefix={"board0": quotas.prefix("orig")})
    token = open(workers.token_file).read().strip()
    x = np.random.default_rng(0).standard_normal((1, *SHAPE)).astype(np.float32)
    try:
        with OipClient("127.0.0.1", workers.ports["board0"], token=token, timeout=30) as c:
            for _ in range(10):
                c.infer("g0", {"pixel_values": x}, ["logits"])
            lat = []
            for _ in range(args.n):
                t0 = time.perf_counter()
                c.infer("g0", {"pixel_values": x}, ["logits"])
                lat.append((time.perf_counter() - t0) * 1000)
        compute = _worker_compute(workers, assignment, token)["board0"]
        local = threading.local()

        def call():
            if not hasattr(local, "c"):
                local.c = OipClient("127.0.0.1", workers.ports["board0"], token=token, timeout=30)
            local.c.infer("g0", {"pixel_values": x}, ["logits"])

        tput = _throughput(call, args.concurrency, args.seconds)
    finally:
        workers.close()
    return {"config": "original ViT-Tiny", "k": 1, "boards": 1, "arch": {"embed_dim": 192, "heads": 3},
            "compute_p50_ms": {"board0": compute}, "slowest_compute_p50_ms": compute,
            "e2e_p50_ms": _pct(lat, 50), "e2e_p99_ms": _pct(lat, 99), "overhead_p50_ms": _pct(lat, 50) - compute,
            "coordinator_only_p50_ms": None, "slowest_roundtrip_p50_ms": _pct(lat, 50),
            "coordinator_cpu_ms_per_request": None, "throughput_rps": tput, "throughput_bound_rps": 1000 / _pct(lat, 50),
            "throughput_ratio": tput * _pct(lat, 50) / 1000, "throughput_ratio_vs_compute": tput * compute / 1000,
            "n": args.n, "concurrency": args.concurrency}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ks", default="2,4", help="comma-separated K values (2 and/or 4)")
    ap.add_argument("--quota", type=float, default=0.25, help="CPU quota per board, fraction of one core (0 = none)")
    ap.add_argument("--n", type=int, default=100, help="sequential requests per configuration")
    ap.add_argument("--seconds", type=float, default=6.0, help="throughput run length")
    ap.add_argument("--concurrency", type=int, default=4, help="concurrent callers in the throughput run")
    args = ap.parse_args()
    ks = [int(k) for k in args.ks.split(",") if k.strip()]
    if any(k not in SUB_ARCH or k == 1 for k in ks):
        ap.error(f"--ks takes values from {sorted(k for k in SUB_ARCH if k > 1)}")
    os.makedirs(CACHE, exist_ok=True)
    quotas = Quotas(args.quota or None)
    load_before = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory(prefix="edvit-bench-dist-") as workdir:
        try:
            rows.append(bench_original(quotas, args, workdir))
            for k in ks:
                rows.append(bench_ensemble(k, quotas, args, workdir))
        finally:
            quotas.close()
    orig = rows[0]
    for r in rows[1:]:
        r["speedup_vs_original_p50"] = orig["e2e_p50_ms"] / r["e2e_p50_ms"]
    note = ("RANDOM-weight ViT-Tiny/16-structured models at 224x224x3 (latency only); "
            + (f"each board = one local worker process in a cgroup-v1 CPU quota of {args.quota:g} core"
               if quotas.enabled else "workers NOT throttled (no writable cgroup v1 cpu controller)"))
    load = (load_before, os.getloadavg()[0])
    note += f"; 1-min load average {load[0]:.1f} before, {load[1]:.1f} after on {os.cpu_count()} CPUs"
    print(note)
    head = (f"{'config':<18} {'compute':>7} {'board':>6} {'e2e p50':>7} {'e2e p99':>7} {'overhd':>6} {'coord':>5} "
            f"{'cpu':>5} {'rps':>5} {'ratio':>5} {'r/cmp':>5} {'speedup':>7}")
    print(head)
    print("-" * len(head))

    def opt(v):
        return "-" if v is None else f"{v:.2f}"

    for r in rows:
        sp = f"{r['speedup_vs_original_p50']:.2f}x" if "speedup_vs_original_p50" in r else "1.00x"
        print(f"{r['config']:<18} {r['slowest_compute_p50_ms']:>7.2f} {r['slowest_roundtrip_p50_ms']:>6.2f} "
              f"{r['e2e_p50_ms']:>7.2f} {r['e2e_p99_ms']:>7.2f} {r['overhead_p50_ms']:>6.2f} "
              f"{opt(r['coordinator_only_p50_ms']):>5} {opt(r['coordinator_cpu_ms_per_request']):>5} "
              f"{r['throughput_rps']:>5.1f} {r['throughput_ratio']:>5.2f} {r['throughput_ratio_vs_compute']:>5.2f} {sp:>7}")
    print("ms. compute: slowest board's interpreter p50 (worker /stats). board: slowest board's round-trip p50 seen "
          "by the coordinator. overhd: e2e p50 - compute (target <= 2). coord: p50 of (e2e - slowest round trip "
          "of that request). cpu: coordinator CPU ms per request. ratio: rps x board / 1000 (target >= 0.9); "
          "r/cmp: rps x compute / 1000. speedup: original e2e p50 / ED-ViT e2e p50. "
          f"Throughput with {args.concurrency} concurrent callers for {args.seconds:g} s.")
    for r in rows[1:]:
        print(f"{r['config']}: predicted makespan (assign on the measured compute) exact {r['exact_makespan_ms']:.2f} "
              f"ms, greedy {r['greedy_makespan_ms']:.2f} ms (greedy/exact {r['greedy_makespan_ms'] / r['exact_makespan_ms']:.3f})"
              f"; measured slowest compute {r['slowest_compute_p50_ms']:.2f} ms")
    doc = {"host": platform.node(), "machine": platform.machine(), "cpus": os.cpu_count(),
           "python": platform.python_version(), "note": note, "quota": args.quota if quotas.enabled else None,
           "loadavg_before_after": load,
           "rows": rows}
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "distributed.json"), "w") as f:
        json.dump(doc, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
