"""Compile at scale on CPU (issue 9): peak RSS vs dataset size, and fine-tune throughput vs a plain timm loop.

    .venv/bin/python bench/scale.py [--sizes 2000,20000] [--depth 2] [--steps 4]

Generates ImageFolders of photo-like 224-px JPEG/PNG files (scripts/synth_photos.py; 10 classes; cached under
runs/scale/) and a ViT-S/16-structured checkpoint (random weights, `--depth` blocks; trained for a few steps so the
label check passes), then for each size runs a real `edvit-tool compile` (K = 4, few steps, no export) in its own
process and reads its peak RSS (VmHWM). Then, in one process with 1 thread, times fine-tune steps of our KD loop
against a plain timm training loop (AdamW, CE) on the same model, batch size and batches.
Prints a table and writes bench/results/scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
# a bench script named like a stdlib module would shadow it (tests/unit/test_bench_names.py): drop bench/.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "scripts"))

WORK = os.path.join(REPO, "runs", "scale")


def _dataset(n: int) -> str:
    from synth_photos import write_folder

    per = n // 10
    root = os.path.join(WORK, f"photos-{n}")
    if not os.path.isfile(os.path.join(root, ".complete")):
        write_folder(root, 10, int(per * 0.8), per - int(per * 0.8), 224, seed=1)
        open(os.path.join(root, ".complete"), "w").close()
    return root


def _recipe(root: str, ckpt: str, depth: int, steps: int, name: str) -> str:
    import yaml

    rec = {"name": name, "threads": 2,
           "model": {"name": "vit_small_patch16_224", "kwargs": {"num_classes": 10, "depth": depth},
                     "checkpoint": ckpt},
           "data": {"kind": "imagefolder", "root": root, "cache_dir": os.path.join(WORK, "cache"), "workers": 2,
                    "check_labels": False},
           "split": {"groups": 4}, "prune": {"steps": 1, "recovery_steps": 0, "importance_batches": 1},
           "finetune": {"steps": steps, "batch_size": 32}, "fusion": {"kind": "logits"}}
    path = os.path.join(WORK, f"{name}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(rec, f)
    return path


def _checkpoint(depth: int) -> str:
    import timm
    import torch
    from safetensors.torch import save_file

    path = os.path.join(WORK, f"vit_s_depth{depth}.safetensors")
    if not os.path.isfile(path):
        torch.manual_seed(0)
        m = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=10, depth=depth)
        save_file({k: v.contiguous() for k, v in m.state_dict().items()}, path)
    return path


def _compile_rss(recipe: str, out: str) -> dict:
    """Run compile in a child; peak RSS of that child from /proc (VmHWM) polled until it exits."""
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "edvit_tool.cli.main", "compile", "--recipe", recipe, "--out", out,
                          "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    while p.poll() is None:
        try:
            with open(f"/proc/{p.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]) * 1024)
        except OSError:
            pass
        time.sleep(0.2)
    out_s, err_s = p.communicate()
    if p.returncode != 0:
        raise SystemExit(f"compile failed ({p.returncode}): {err_s[-2000:]}")
    return {"peak_rss_bytes": peak, "seconds": round(time.perf_counter() - t0, 1)}


def _throughput(root: str, depth: int, steps: int, batch: int = 32) -> dict:
    """steps/s of our KD fine-tune loop vs a plain timm loop: same model, batch size, batches (1 thread)."""
    import timm
    import torch
    import torch.nn.functional as F

    from edvit_tool import finetune
    from edvit_tool.compile.data import load_data
    from edvit_tool.compile.transforms import resolve_input_spec
    from edvit_tool.config import recipe as R

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=10, depth=depth)
    rec = R.validate({"data": {"kind": "imagefolder", "root": root, "cache_dir": os.path.join(WORK, "cache"),
                               "workers": 1}})
    data = load_data(rec, resolve_input_spec(model, {}), 10)
    x, y = data.finetune.x, data.finetune.y
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(len(y), (batch,), generator=gen) for _ in range(steps + 2)]

    def plain():
        m = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=10, depth=depth).train()
        opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
        t0 = None
        for i, idx in enumerate(batches):
            if i == 2:
                t0 = time.perf_counter()
            loss = F.cross_entropy(m(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        return steps / (time.perf_counter() - t0)

    def ours():
        m = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=10, depth=depth)
        teacher = torch.randn(len(y), 10)
        cfg = {**rec["finetune"], "batch_size": batch}
        times = []
        finetune.kd_finetune(m, x, y, teacher, 10, steps + 2, cfg, torch.device("cpu"), 0,
                             progress=lambda n, **kw: times.append(time.perf_counter()))
        return steps / (times[-1] - times[1])

    p, o = plain(), ours()
    return {"plain_steps_per_s": p, "ours_steps_per_s": o, "ratio": o / p, "batch": batch, "threads": 1}


def _jobs(recipe_path: str, name: str) -> dict:
    """Compile wall time for (--jobs 1, 1 thread), (--jobs 2, 2 threads split 1+1), (--jobs 1, 2 threads)."""
    import yaml

    with open(recipe_path) as f:
        rec = yaml.safe_load(f)
    rec["export"] = {"formats": []}
    out = {}
    for label, jobs, threads in (("jobs1_threads1", 1, 1), ("jobs2_threads2", 2, 2), ("jobs1_threads2", 1, 2)):
        rec["threads"] = threads
        path = os.path.join(WORK, f"{name}-{label}.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(rec, f)
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "edvit_tool.cli.main", "compile", "--recipe", path, "--out",
                            os.path.join(WORK, f"build-{name}-{label}"), "--jobs", str(jobs), "-q"],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"compile failed: {r.stderr[-2000:]}")
        out[label] = round(time.perf_counter() - t0, 1)
    out["ratio_jobs2_vs_jobs1_1thread"] = out["jobs2_threads2"] / out["jobs1_threads1"]
    out["ratio_jobs2_vs_jobs1_2threads"] = out["jobs2_threads2"] / out["jobs1_threads2"]
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="2000,20000")
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--no-jobs", action="store_true", help="skip the --jobs timings")
    a = ap.parse_args()
    os.makedirs(WORK, exist_ok=True)
    sizes = [int(s) for s in a.sizes.split(",")]
    ckpt = _checkpoint(a.depth)
    rows = []
    for n in sizes:
        t = time.perf_counter()
        root = _dataset(n)
        gen_s = time.perf_counter() - t
        r = _compile_rss(_recipe(root, ckpt, a.depth, a.steps, f"scale-{n}"), os.path.join(WORK, f"build-{n}"))
        rows.append({"images": n, "generate_seconds": round(gen_s, 1), **r})
        print(f"N={n:>6}: peak RSS {r['peak_rss_bytes'] / 2**30:.2f} GiB, compile {r['seconds']:.0f} s", flush=True)
    tp = _throughput(_dataset(sizes[0]), a.depth, 6)
    jobs = {}
    if not a.no_jobs:
        digits = os.path.join(REPO, "recipes", "digits.yaml")
        if os.path.isfile(os.path.join(REPO, "runs", "digits-vit", "model.safetensors")):
            import yaml

            with open(digits) as f:
                d = yaml.safe_load(f)
            d["model"]["checkpoint"] = os.path.join(REPO, "runs", "digits-vit", "model.safetensors")
            path = os.path.join(WORK, "digits.yaml")
            with open(path, "w") as f:
                yaml.safe_dump(d, f)
            jobs["digits"] = _jobs(path, "digits")
        else:
            print("jobs timing on digits skipped: run `make demo` first (it trains runs/digits-vit)")
        jobs["vit_s"] = _jobs(_recipe(_dataset(sizes[0]), ckpt, a.depth, max(8, a.steps), "jobs-vit-s"), "vit-s")
    res = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.processor() or platform.machine()}, "
           f"{os.cpu_count()} cores", "model": f"vit_small_patch16_224 structure, depth {a.depth}, random weights",
           "compile": rows, "throughput": tp, "jobs_seconds": jobs}
    if len(rows) >= 2:
        res["rss_ratio_largest_vs_smallest"] = rows[-1]["peak_rss_bytes"] / rows[0]["peak_rss_bytes"]
    print("\n| images | peak RSS | compile s |\n|---:|---:|---:|")
    for r in rows:
        print(f"| {r['images']} | {r['peak_rss_bytes'] / 2**30:.2f} GiB | {r['seconds']} |")
    if "rss_ratio_largest_vs_smallest" in res:
        print(f"peak RSS ratio N={rows[-1]['images']} / N={rows[0]['images']}: "
              f"{res['rss_ratio_largest_vs_smallest']:.3f} (target ≤ 1.15)")
    print(f"fine-tune throughput, ours ÷ plain timm loop: {tp['ratio']:.3f} "
          f"({tp['ours_steps_per_s']:.2f} vs {tp['plain_steps_per_s']:.2f} steps/s, batch {tp['batch']}, 1 thread)")
    for name, j in jobs.items():
        print(f"{name}: --jobs 2 (1 thread each) ÷ --jobs 1 (1 thread) = {j['ratio_jobs2_vs_jobs1_1thread']:.2f} "
              f"(target ≤ 0.6); ÷ --jobs 1 (2 threads) = {j['ratio_jobs2_vs_jobs1_2threads']:.2f} (target ≤ 1)")
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", "scale.json"), "w") as f:
        json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
