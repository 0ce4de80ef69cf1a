"""The paper-scale table (ED-ViT, arXiv 2410.11650: "up to 28.9x smaller and 34.1x faster"): timm ViT-S/B/L
structures, N = 10 classes, K in {1, 2, 3, 5, 10} sub-models, pruned by OUR pruning code to the budget each K
implies, exported by OUR exporters to ONNX and TFLite (fp32, int8), sizes and single-image latency measured.

    .venv/bin/python bench/paper.py [--models s,b,l] [--ks 1,2,3,5,10] [--rounds 3] [--cache runs/paper]

WEIGHTS ARE RANDOM (timm structures, pretrained=False): sizes, FLOPs and latency depend only on the structure,
accuracy would not, so no accuracy is reported here (the digits demo / bench/distributed.py report accuracy).

Budget per sub-model: 1/K of the original's parameters (the paper splits the model's capacity over K boards);
K = 10 uses 3.5 % instead (the paper's 28.9x size reduction is 1/28.9 = 3.46 %). Each K's sub-models share the
budget and differ only in head rows (|group| + 1 outputs), so only the LARGEST one (the first, biggest group) is
built, exported and timed; the others' parameter counts are computed exactly from the same structure.
Pruning: balanced class groups, head initialised from the group's rows, importance by the `magnitude` criterion
on synthetic images (random weights make data-driven scores meaningless anyway), one-shot `plan_keep` to the
parameter target, `apply_keep` surgery. K = 1 is the original itself (one group of all classes, no pruning).

int8 = int8-dynamic (int8 weights, float activations; no calibration set needed). Latency: the TFLite and ONNX
fp32 artifacts, each in its own fresh process of `python -m edvit_tool.runtime.bench` in the board venv
($EDVIT_BOARD_VENV, default .venv-board), 1 thread, the same CPU limit for every process (a cgroup-v1 CPU quota
of one core when /sys/fs/cgroup/cpu is writable, else taskset to core 0), original and sub-models interleaved per
round; the figure is the median over rounds of each process's p50. Timings on a shared machine are noisy.
The end-to-end ratio through a deployed cluster is measured by bench/paper_e2e.py (ViT-S only: K emulated boards
at 1/K core each, from this script's cached sub-models), which merges its figures into paper.json.

Exports are cached under --cache (runs/paper/<model>/k<K>/, keyed by a meta.json of what made them): a second
run only re-times. Uncached rows are built first, by --build-jobs worker processes (default 2; the exporters'
tracing is mostly single-threaded, so two at once roughly halve the build time; each ViT-L export peaks at several
GB). A time plan from the previous result file is printed first (budget: 30 min); paper.json records each row's
build seconds and each model's timing seconds. ViT-L is timed in 2 rounds, the others in --rounds.
Prints the table and writes bench/results/paper.json.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]  # bench/*.py must not shadow stdlib
sys.path.insert(0, REPO)

RESULTS = os.path.join(HERE, "results")
MODELS = {"s": "vit_small_patch16_224", "b": "vit_base_patch16_224", "l": "vit_large_patch16_224"}
N_CLASSES = 10
PAPER = {"size_ratio": 28.9, "latency_ratio": 34.1}
K10_RATIO = 0.035
VARIANTS = [("onnx", "fp32"), ("onnx", "int8-dynamic"), ("tflite", "fp32"), ("tflite", "int8-dynamic")]
TIMED = [("tflite", "fp32"), ("onnx", "fp32")]
RUNS = {"s": (20, 3), "b": (10, 2), "l": (4, 1)}   # (timed runs, warmup) per process: fewer for the big models
ROUNDS_LARGE = 2     # ViT-L: each round is ten processes loading up to 1.2 GB files (--rounds caps it too)
BUDGET_S = 30 * 60   # the whole run should fit in 30 min on this machine (issue 13)
META_VERSION = 1
CGROUP_CPU = "/sys/fs/cgroup/cpu"


def budget_ratio(k: int) -> float:
    return K10_RATIO if k == 10 else 1.0 / k


def _ext(fmt: str) -> str:
    return "onnx" if fmt == "onnx" else "tflite"


def _file(d: str, fmt: str, quant: str) -> str:
    return os.path.join(d, f"model.{quant}.{_ext(fmt)}")


# -- build: prune + export ---------------------------------------------------------------------------------
def _flops(model) -> int:
    from edvit_tool.compile.prune import surgery

    pe = model.patch_embed
    return surgery.estimate_flops(surgery.vit_arch(model), pe.img_size, pe.patch_size, pe.proj.in_channels,
                                  model.num_prefix_tokens)


def _synthetic_batches(n_batches: int, batch: int, n_out: int, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    for _ in range(n_batches):
        yield torch.randn(batch, 3, 224, 224, generator=g), torch.randint(0, n_out, (batch,), generator=g)


def prune_largest(model, k: int, seed: int, images: int):
    """The largest of K sub-models: group head + magnitude importance + one-shot plan to 1/K (K=10: 3.5 %)."""
    import torch.nn.functional as F

    from edvit_tool.compile import partition
    from edvit_tool.compile.prune import surgery
    from edvit_tool.compile.prune.importance import compute_importance
    from edvit_tool.compile.prune.plan import params_of_arch, plan_keep

    groups = partition.balanced(N_CLASSES, k)
    p_orig = surgery.count_params(model)
    target = int(p_orig * budget_ratio(k))
    sub = copy.deepcopy(model)
    group = groups[0]  # balanced: the first groups get the extra classes, so this one is the largest
    if k > 1:
        surgery.replace_head(sub, len(group) + 1, init_from=surgery.group_head_init(sub, group))
        n_out = len(group) + 1
        imp = compute_importance(sub, _synthetic_batches(1, images, n_out, seed),
                                 lambda out, t: F.cross_entropy(out, t), "magnitude", "cpu")
        sub = surgery.apply_keep(sub, plan_keep(sub, imp, params_target=target)).eval()
    arch = surgery.vit_arch(sub)
    all_params = [params_of_arch({**arch, "num_outputs": len(g) + 1 if k > 1 else N_CLASSES}, sub) for g in groups]
    return sub, {"groups": groups, "params_target": target, "arch": arch, "params_all": all_params}


def export_variants(sub, d: str, log) -> dict:
    """ONNX + TFLite, fp32 + int8-dynamic, as the build exporter does (names compacted) -> {variant: bytes}."""
    from edvit_tool.export.onnx import compact_names, export_onnx, random_example
    from edvit_tool.export.quantize import onnx_preprocess, quantize_onnx, quantize_tflite
    from edvit_tool.export.tflite import compact_tensor_names, convert_tflite
    from edvit_tool.compile.prune.surgery import SubModelWrapper

    wrapped = SubModelWrapper(sub).eval()
    example = random_example([3, 224, 224], batch=2)
    t0 = time.perf_counter()
    export_onnx(wrapped, "submodel", example, _file(d, "onnx", "fp32"), 17, "onnxslim")
    pre = os.path.join(d, "scratch.pre.onnx")
    onnx_preprocess(_file(d, "onnx", "fp32"), pre)
    compact_names(_file(d, "onnx", "fp32"), node_names=False)
    quantize_onnx(_file(d, "onnx", "fp32"), pre, _file(d, "onnx", "int8-dynamic"), "int8-dynamic", "pixel_values")
    compact_names(_file(d, "onnx", "int8-dynamic"), node_names=True)
    os.remove(pre)
    log(f"    onnx fp32 + int8 in {time.perf_counter() - t0:.0f} s")
    t0 = time.perf_counter()
    convert_tflite(wrapped, "submodel", example, _file(d, "tflite", "fp32"))
    quantize_tflite(_file(d, "tflite", "fp32"), _file(d, "tflite", "int8-dynamic"), "int8-dynamic", "pixel_values")
    for q in ("fp32", "int8-dynamic"):
        compact_tensor_names(_file(d, "tflite", q))
    log(f"    tflite fp32 + int8 in {time.perf_counter() - t0:.0f} s")
    return {f"{f}/{q}": os.path.getsize(_file(d, f, q)) for f, q in VARIANTS}


def build_row(get_model, key: str, k: int, cache: str, seed: int, log, cached_only: bool = False) -> dict | None:
    """meta.json of model `key` at K (cached: rebuilt only when missing or made differently; cached_only: None
    instead of building)."""
    import torch

    from edvit_tool.compile.prune import surgery

    d = os.path.join(cache, MODELS[key], f"k{k}")
    meta_path = os.path.join(d, "meta.json")
    want = {"version": META_VERSION, "model": MODELS[key], "k": k, "ratio": budget_ratio(k), "seed": seed,
            "torch": torch.__version__}
    if os.path.isfile(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
        if {x: meta.get(x) for x in want} == want and all(os.path.isfile(_file(d, f_, q)) for f_, q in VARIANTS):
            log(f"  {MODELS[key]} K={k}: cached exports in {d}")
            return {**meta, "cached": True}
    if cached_only:
        return None
    os.makedirs(d, exist_ok=True)
    t0 = time.perf_counter()
    images = 2 if key == "l" else 4
    sub, info = prune_largest(get_model(), k, seed, images)
    log(f"  K={k}: largest sub-model {surgery.count_params(sub):,} params (target {info['params_target']:,}), "
        f"pruned in {time.perf_counter() - t0:.0f} s; exporting")
    t_prune = time.perf_counter() - t0
    sizes = export_variants(sub, d, log)
    meta = {**want, "params": surgery.count_params(sub), "flops": _flops(sub),
            "fp32_weight_bytes": sum(t.numel() * t.element_size() for t in sub.state_dict().values()),
            "bytes": sizes, "prune_seconds": round(t_prune, 1),
            "build_seconds": round(time.perf_counter() - t0, 1), **info}
    with open(meta_path, "w") as f:
        json.dump(meta, f, indent=2)
    return meta


# -- latency: separate processes under one CPU limit ---------------------------------------------------------
def board_python() -> str:
    venv = os.environ.get("EDVIT_BOARD_VENV", os.path.join(REPO, ".venv-board"))
    py = os.path.join(venv, "bin", "python")
    return py if os.path.isfile(py) else sys.executable


@contextlib.contextmanager
def cpu_limit():
    """(how, argv prefix): a cgroup-v1 quota of one CPU, else taskset to core 0. The prefix moves the shell into
    the cgroup and then execs the bench, so it starts inside the quota (no preexec_fn: forking a process that
    holds JAX / torch threads and running Python in the child can deadlock)."""
    writable = os.path.isfile(os.path.join(CGROUP_CPU, "cpu.cfs_quota_us")) and os.access(CGROUP_CPU, os.W_OK)
    if not writable:
        yield "taskset -c 0 (no writable cgroup-v1 cpu controller)", ["taskset", "-c", "0"]
        return
    cg = os.path.join(CGROUP_CPU, f"edvit-paper-{os.getpid()}")
    os.makedirs(cg, exist_ok=True)
    for name, value in (("cpu.cfs_period_us", "10000"), ("cpu.cfs_quota_us", "10000")):
        with open(os.path.join(cg, name), "w") as f:
            f.write(value)
    try:
        yield ("cgroup-v1 cpu quota 1.0 CPU (period 10 ms)",
               ["sh", "-c", 'echo $$ > "$0" && exec "$@"', os.path.join(cg, "cgroup.procs")])
    finally:
        os.rmdir(cg)


def time_artifact(path: str, runs: int, warmup: int, limit) -> dict:
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    argv = limit[1] + [board_python(), "-m", "edvit_tool.runtime.bench", path, "--runs", str(runs),
                       "--warmup", str(warmup), "--threads", "1"]
    p = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO, check=False)
    if p.returncode != 0:
        raise SystemExit(f"bench of {path} failed (exit {p.returncode}): {p.stderr.strip()[-800:]}")
    r = json.loads(p.stdout.strip().splitlines()[-1])
    return {"p50_ms": r["latency_ms"]["p50"], "load_ms": r["load_ms"], "peak_rss_mb": r["peak_rss_mb"]}


def measure_latency(key: str, metas: dict, cache: str, rounds: int, limit, log) -> dict:
    """{K: {variant: {"p50_ms": median over rounds, "rounds": [...]}}}; K=1 is the original."""
    runs, warmup = RUNS[key]
    out = {k: {f"{f}/{q}": [] for f, q in TIMED} for k in metas}
    for r in range(rounds):
        for k in metas:  # interleaved: a burst of load from other processes hits every K alike
            for f, q in TIMED:
                res = time_artifact(_file(os.path.join(cache, MODELS[key], f"k{k}"), f, q), runs, warmup, limit)
                out[k][f"{f}/{q}"].append(res["p50_ms"])
        log(f"  round {r + 1}/{rounds}: " + ", ".join(f"K={k} {out[k]['tflite/fp32'][-1]:.1f} ms" for k in metas))
    return {k: {v: {"p50_ms": round(statistics.median(xs), 3), "rounds": xs} for v, xs in d.items()}
            for k, d in out.items()}


# -- table ---------------------------------------------------------------------------------------------------
def rows_for(key: str, metas: dict, lat: dict) -> list[dict]:
    orig = metas[1]
    rows = []
    for k, m in metas.items():
        row = {"model": MODELS[key], "k": k, "budget_ratio": round(budget_ratio(k), 4),
               "params": m["params"], "params_all_submodels": m["params_all"], "flops": m["flops"],
               "bytes": m["bytes"], "arch": {"embed_dim": m["arch"]["embed_dim"], "heads": sum(m["arch"]["heads"]),
                                            "mlp_hidden": sum(m["arch"]["mlp_hidden"])},
               "params_ratio": round(orig["params"] / m["params"], 3),
               "size_ratio": {v: round(orig["bytes"][v] / m["bytes"][v], 3) for v in m["bytes"]},
               "flops_ratio": round(orig["flops"] / m["flops"], 3),
               "latency_ms": {v: lat[k][v]["p50_ms"] for v in lat[k]},
               "latency_rounds_ms": {v: lat[k][v]["rounds"] for v in lat[k]},
               "latency_ratio": {v: round(lat[1][v]["p50_ms"] / lat[k][v]["p50_ms"], 3) for v in lat[k]},
               "end_to_end_ratio": None,
               "build_seconds": m.get("build_seconds"), "cached": m.get("cached", False)}
        rows.append(row)
    return rows


def print_table(rows: list[dict]) -> None:
    hdr = (f"{'model':<22} {'K':>2} {'budget':>7} {'params':>12} {'GFLOPs':>7} {'tfl fp32 MB':>11} "
           f"{'tfl int8 MB':>11} {'onnx fp32 MB':>12} {'onnx int8 MB':>12} {'size x':>7} {'tfl ms':>9} "
           f"{'lat x tfl':>9} {'onnx ms':>9} {'lat x onnx':>10}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        b = r["bytes"]
        print(f"{r['model']:<22} {r['k']:>2} {100 * r['budget_ratio']:>6.1f}% {r['params']:>12,} "
              f"{r['flops'] / 1e9:>7.2f} {b['tflite/fp32'] / 1e6:>11.1f} {b['tflite/int8-dynamic'] / 1e6:>11.1f} "
              f"{b['onnx/fp32'] / 1e6:>12.1f} {b['onnx/int8-dynamic'] / 1e6:>12.1f} "
              f"{r['size_ratio']['tflite/fp32']:>6.1f}x {r['latency_ms']['tflite/fp32']:>9.1f} "
              f"{r['latency_ratio']['tflite/fp32']:>8.1f}x {r['latency_ms']['onnx/fp32']:>9.1f} "
              f"{r['latency_ratio']['onnx/fp32']:>9.1f}x")
    best_size = max(rows, key=lambda r: r["size_ratio"]["tflite/fp32"])
    best_lat = max(rows, key=lambda r: r["latency_ratio"]["tflite/fp32"])
    print(f"\npaper (ED-ViT, up to):   {PAPER['size_ratio']}x smaller, {PAPER['latency_ratio']}x faster")
    print(f"ours  (best row, tflite): {best_size['size_ratio']['tflite/fp32']:.1f}x smaller "
          f"({best_size['model']}, K={best_size['k']}), {best_lat['latency_ratio']['tflite/fp32']:.1f}x faster "
          f"({best_lat['model']}, K={best_lat['k']})")
    print("size x = original / largest sub-model (tflite fp32 bytes); lat x = original / largest sub-model, "
          "single image, median of per-process p50s. Random weights; end-to-end cluster ratio not measured.")


def _fresh_model(key: str, seed: int):
    import timm
    import torch

    torch.manual_seed(seed)
    return timm.create_model(MODELS[key], pretrained=False, num_classes=N_CLASSES).eval()


def _build_in_worker(key: str, k: int, cache: str, seed: int) -> dict:
    """One (model, K) build in a worker process: 1 torch thread (the workers share the cores); the exporters'
    tracing is mostly single-threaded Python anyway, so two builds at once take ~half the wall time of two in turn."""
    import torch

    torch.set_num_threads(1)
    return build_row(lambda: _fresh_model(key, seed), key, k, cache, seed,
                     lambda msg: print(f"    [{MODELS[key]} K={k}] {msg.strip()}", flush=True))


def build_all(keys, ks, cache: str, seed: int, jobs: int, log) -> dict:
    """{(key, K): meta}: cached rows read here, the others built by `jobs` worker processes, biggest first
    (ViT-L K=1 is the longest; starting it first keeps the other worker busy with the rest)."""
    import concurrent.futures
    import multiprocessing

    metas, todo = {}, []
    for key in keys:
        for k in ks:
            meta = build_row(None, key, k, cache, seed, log, cached_only=True)
            if meta is not None:
                metas[(key, k)] = meta
            else:
                todo.append((key, k))
    if not todo:
        return metas
    todo.sort(key=lambda t: ("lbs".index(t[0]), t[1]))
    log(f"building {len(todo)} row(s) in {min(jobs, len(todo))} process(es): "
        + ", ".join(f"{MODELS[key]} K={k}" for key, k in todo))
    if jobs <= 1:
        for key, k in todo:
            metas[(key, k)] = build_row(lambda key=key: _fresh_model(key, seed), key, k, cache, seed, log)
        return metas
    ctx = multiprocessing.get_context("spawn")  # never fork a process holding torch threads
    with concurrent.futures.ProcessPoolExecutor(max_workers=min(jobs, len(todo)), mp_context=ctx) as pool:
        futs = {pool.submit(_build_in_worker, key, k, cache, seed): (key, k) for key, k in todo}
        for fut in concurrent.futures.as_completed(futs):
            key, k = futs[fut]
            metas[(key, k)] = fut.result()
            log(f"  built {MODELS[key]} K={k} in {metas[(key, k)]['build_seconds']:.0f} s")
    return metas


def time_plan(keys, ks, cache: str, rounds: int, previous: str, jobs: int = 1) -> tuple[float, list[str]]:
    """(estimated seconds, lines) from the previous result file: a build not in the cache costs its previous
    build_seconds; timing costs, per process, its runs x the previous p50 plus start-up and a load time
    proportional to the file size. Parts with no previous figure are named, not guessed."""
    prev = {}
    if os.path.isfile(previous):
        with open(previous) as f:
            prev = {(r["model"], r["k"]): r for r in json.load(f).get("rows", [])}
    total, lines, builds = 0.0, [], []
    for key in keys:
        build = timing = 0.0
        unknown = []
        for k in ks:
            d = os.path.join(cache, MODELS[key], f"k{k}")
            meta_path = os.path.join(d, "meta.json")
            cached = os.path.isfile(meta_path) and all(os.path.isfile(_file(d, f_, q)) for f_, q in VARIANTS)
            row = prev.get((MODELS[key], k))
            if not cached:
                if row and row.get("build_seconds"):
                    build += row["build_seconds"]
                    builds.append(row["build_seconds"])
                else:
                    unknown.append(k)  # not cached and no previous build_seconds
            n, w = RUNS[key]
            r = min(rounds, ROUNDS_LARGE) if key == "l" else rounds
            if row:
                for v in TIMED:
                    mb = row["bytes"][f"{v[0]}/{v[1]}"] / 1e6
                    timing += r * ((n + w) * row["latency_ms"][f"{v[0]}/{v[1]}"] / 1e3 + 1.5 + mb / 200)
            else:
                unknown.append(k)
        total += timing
        lines.append(f"  {MODELS[key]}: builds ~{build:.0f} s, timing ~{timing:.0f} s"
                     + (f" + builds of K={sorted(set(unknown))} (not cached, no build time in {previous})"
                        if unknown else ""))
    if builds:  # `jobs` workers, longest first: about the total over the workers, at least the longest one
        wall = max(sum(builds) / max(1, jobs), max(builds))
        total += wall
        lines.append(f"  builds: ~{wall:.0f} s of wall time in {jobs} process(es)")
    return total, lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="s,b,l", help="comma list of s, b, l")
    ap.add_argument("--ks", default="1,2,3,5,10", help="comma list of K (1 is always included: the original)")
    ap.add_argument("--rounds", type=int, default=3, help="timing rounds (processes per artifact)")
    ap.add_argument("--cache", default=os.path.join(REPO, "runs", "paper"))
    ap.add_argument("--out", default=os.path.join(RESULTS, "paper.json"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--build-jobs", type=int, default=min(2, os.cpu_count() or 1),
                    help="worker processes for the (uncached) builds; each ViT-L export peaks at several GB")
    args = ap.parse_args()
    keys = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in keys if m not in MODELS]
    ks = sorted({1, *(int(k) for k in args.ks.split(","))})
    if bad or any(not 1 <= k <= N_CLASSES for k in ks):
        ap.error(f"--models takes s, b, l; --ks takes 1..{N_CLASSES}")

    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    t_start = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t_start:6.0f} s] {msg}", flush=True)

    log("RANDOM WEIGHTS (timm structures, pretrained=False): sizes and latency only, no accuracy")
    est, lines = time_plan(keys, ks, args.cache, args.rounds, args.out, args.build_jobs)
    log(f"plan: ~{est / 60:.0f} min estimated (budget {BUDGET_S // 60} min; known parts only)")
    for line in lines:
        log(line)
    rows = []
    timing_seconds: dict[str, float] = {}
    t_build = time.perf_counter()
    built = build_all(keys, ks, args.cache, args.seed, args.build_jobs, log)
    build_wall = round(time.perf_counter() - t_build, 1)
    with cpu_limit() as limit:
        log(f"latency: {limit[0]}, 1 thread, board python {board_python()}")
        for key in keys:
            log(f"{MODELS[key]}")
            metas = {k: built[(key, k)] for k in ks}
            t_lat = time.perf_counter()
            lat = measure_latency(key, metas, args.cache, min(args.rounds, ROUNDS_LARGE) if key == "l"
                                  else args.rounds, limit, log)
            timing_seconds[MODELS[key]] = round(time.perf_counter() - t_lat, 1)
            rows += rows_for(key, metas, lat)
    print()
    print_table(rows)
    doc = {"benchmark": "paper", "random_weights": True, "classes": N_CLASSES, "ks": ks,
           "budget": "1/K of the original's parameters per sub-model; K=10: 3.5 %", "int8": "int8-dynamic",
           "largest_submodel_only": True, "paper": PAPER, "cpu_limit": limit[0], "threads": 1,
           "rounds": {MODELS[k]: min(args.rounds, ROUNDS_LARGE) if k == "l" else args.rounds for k in keys},
           "runs_per_process": {MODELS[k]: RUNS[k][0] for k in keys}, "timing_seconds": timing_seconds,
           "build_seconds_this_run": round(sum(r["build_seconds"] or 0 for r in rows if not r["cached"]), 1),
           "build_wall_seconds": build_wall, "build_jobs": args.build_jobs,
           "end_to_end": _previous_end_to_end(args.out),
           "machine": {"nproc": os.cpu_count(), "cpu": _cpu_model(), "python": platform.python_version(),
                       "torch": torch.__version__},
           "date": time.strftime("%Y-%m-%d"), "seconds": round(time.perf_counter() - t_start, 1),
           "command": "python bench/paper.py " + " ".join(sys.argv[1:]), "rows": rows}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=2)
    print(f"\nwrote {args.out} in {doc['seconds']:.0f} s")
    return 0


def _previous_end_to_end(path: str):
    """bench/paper_e2e.py's figures from an earlier run (it merges them into paper.json), else why there are none."""
    if os.path.isfile(path):
        with open(path) as f:
            prev = json.load(f).get("end_to_end")
        if isinstance(prev, dict):
            return prev
    return "not measured in this run: see bench/paper_e2e.py (ViT-S, K boards at 1/K core each)"


def _cpu_model() -> str:
    sys.path.insert(0, os.path.join(REPO, "scripts"))
    from results_section import cpu_model

    return cpu_model()


if __name__ == "__main__":
    sys.exit(main())
