"""Compile at scale on CPU (issue 9): peak RSS vs dataset size, fine-tune throughput vs a plain timm loop, and
prune+fine-tune wall time with --jobs.

    nice -n 10 .venv/bin/python bench/scale.py [--sizes 2000,20000] [--depth 2] [--steps 4] [--parts rss,throughput,jobs]

Generates ImageFolders of photo-like 224-px JPEG/PNG files (scripts/synth_photos.py; 10 classes; cached under
runs/scale/) and a ViT-S/16-structured checkpoint (random weights, `--depth` blocks), then:
- rss: for each size a real `edvit-tool compile` (K = 4, few steps, no export) in its own process; its peak RSS
  (VmHWM), and the peak of the summed RSS of it and its children (DataLoader decode workers) polled every 0.2 s.
- throughput: in one process with 1 thread, fine-tune steps of our KD loop against a plain timm training loop
  (AdamW, CE) on the same model, batch size and split (the same lazy uint8 -> float32 batches).
- jobs: compile wall time and the prune+fine-tune stage (from the `groups:` log line to the last sub-model's
  line: with --jobs this includes the workers' start and their own data/teacher pass) for --jobs 1 (1 thread),
  --jobs 2 (2 threads: 1 each) and --jobs 1 (2 threads), on the digits recipe (fewer steps) and on ViT-S.
The 1-minute load average is recorded around every measurement: on a shared machine, timings are only as good
as that. Parts run alone merge into an existing bench/results/scale.json. Prints a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import shutil
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


def _recipe(root: str, ckpt: str, depth: int, steps: int, name: str, per_class: int | None = None) -> str:
    import yaml

    rec = {"name": name, "threads": 2,
           "model": {"name": "vit_small_patch16_224", "kwargs": {"num_classes": 10, "depth": depth},
                     "checkpoint": ckpt},
           "data": {"kind": "imagefolder", "root": root, "cache_dir": os.path.join(WORK, "cache"), "workers": 2,
                    "check_labels": False, "max_images_per_class": per_class},
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


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _children(pid: int) -> list[int]:
    out = []
    try:
        for t in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{t}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


def _rss(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _compile_rss(recipe: str, out: str) -> dict:
    """Run compile in a child; its peak RSS (VmHWM) and the peak summed RSS of it + its children, polled."""
    shutil.rmtree(out, ignore_errors=True)
    load0, t0 = _load(), time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "edvit_tool.cli.main", "compile", "--recipe", recipe, "--out", out,
                          "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = tree = 0
    loads = []
    while p.poll() is None:
        peak = max(peak, _rss(p.pid, "VmHWM:"))
        pids, todo = [], [p.pid]
        while todo:
            pid = todo.pop()
            pids.append(pid)
            todo += _children(pid)
        tree = max(tree, sum(_rss(q, "VmRSS:") for q in pids))
        if not loads or time.perf_counter() - loads[-1][0] > 10:
            loads.append((time.perf_counter(), _load()))
        time.sleep(0.2)
    out_s, err_s = p.communicate()
    if p.returncode != 0:
        raise SystemExit(f"compile failed ({p.returncode}): {err_s[-2000:]}")
    return {"peak_rss_bytes": peak, "peak_rss_tree_bytes": tree, "seconds": round(time.perf_counter() - t0, 1),
            "load_avg_1min": {"start": load0, "mean": round(sum(v for _, v in loads) / len(loads), 2),
                              "max": max(v for _, v in loads)}}


def _throughput(root: str, depth: int, steps: int, batch: int = 32) -> dict:
    """steps/s of our distillation fine-tune loop vs a plain timm loop (AdamW, CE): same model structure, batch
    size and split, 1 thread."""
    import timm
    import torch
    import torch.nn.functional as F

    from edvit_tool.compile import distill
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
        """distill_finetune as compile runs it: group head + aux head + feature projection, KD losses, shifts,
        clipping, schedule (teacher outputs random: their values do not change the cost)."""
        m = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=4, depth=depth)
        aux = torch.nn.Linear(m.embed_dim, 10)
        student = distill.Student.from_teacher(m, aux, feature_distill=True)
        train = distill.TrainSet(x, y, torch.randn(len(y), 10), torch.randn(len(y), m.embed_dim))
        cfg = dataclasses.replace(rec.finetune, batch_size=batch)
        times = []
        distill.distill_finetune(student, train, [0, 1, 2], steps + 2, cfg, torch.device("cpu"), 0,
                                  progress=lambda n, **kw: times.append(time.perf_counter()))
        return steps / (times[-1] - times[1])

    load0 = _load()
    # alternate, best of two each: a busy machine slows whichever runs during a burst
    p1, o1, p2, o2 = plain(), ours(), plain(), ours()
    p, o = max(p1, p2), max(o1, o2)
    return {"plain_steps_per_s": round(p, 3), "ours_steps_per_s": round(o, 3), "ratio": round(o / p, 3),
            "plain_images_per_s": round(p * batch, 2), "ours_images_per_s": round(o * batch, 2),
            "runs_steps_per_s": {"plain": [round(p1, 3), round(p2, 3)], "ours": [round(o1, 3), round(o2, 3)]},
            "batch": batch, "steps_timed": steps, "threads": 1,
            "load_avg_1min": {"start": load0, "end": _load()}}


def _timed_compile(path: str, out: str, jobs: int, groups: int) -> dict:
    """Wall time of one compile and of its prune+fine-tune stage, from the log lines' arrival times."""
    shutil.rmtree(out, ignore_errors=True)
    load0, t0 = _load(), time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "edvit_tool.cli.main", "compile", "--recipe", path, "--out", out,
                          "--jobs", str(jobs)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t_groups = t_last = None
    tail = []
    for line in p.stderr:
        now = time.perf_counter()
        line = line.strip()
        tail = (tail + [line])[-20:]
        if line.startswith("groups:"):
            t_groups = now
        elif re.match(rf"g{groups - 1}: [\d,]+ params", line):
            t_last = now
    if p.wait() != 0 or t_groups is None or t_last is None:
        raise SystemExit(f"compile failed or logged no stage lines: {' | '.join(tail)}")
    return {"seconds": round(time.perf_counter() - t0, 1), "prune_finetune_seconds": round(t_last - t_groups, 1),
            "load_avg_1min": [load0, _load()]}


# Independent groups: every sub-model pruned from the original and fine-tuned alone (no shared trunk, no joint
# phase), so the whole prune+fine-tune stage is per-group work that --jobs can spread. With the defaults the
# shared trunk (before the groups) and the joint phase (after them) are one model each and stay serial.
INDEPENDENT = {"prune": {"shared_fraction": 0.0}, "finetune": {"joint_fraction": 0.0}}


def _jobs(recipe_path: str, name: str, overrides: dict | None = None) -> dict:
    """(--jobs 1, 1 thread), (--jobs 2, 2 threads split 1+1), (--jobs 1, 2 threads): whole compile and the
    prune+fine-tune stage (from the `groups:` log line to the last sub-model's: the shared trunk, when there is
    one, is inside it; the joint phase comes after it)."""
    import yaml

    with open(recipe_path) as f:
        rec = yaml.safe_load(f)
    for section, values in (overrides or {}).items():
        rec.setdefault(section, {}).update(values)
    rec["export"] = {"formats": []}
    groups = rec.get("split", {}).get("groups", 4)
    out = {}
    for label, jobs, threads in (("jobs1_threads1", 1, 1), ("jobs2_threads2", 2, 2), ("jobs1_threads2", 1, 2)):
        rec["threads"] = threads
        path = os.path.join(WORK, f"{name}-{label}.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(rec, f)
        out[label] = _timed_compile(path, os.path.join(WORK, f"build-{name}-{label}"), jobs, groups)
        print(f"  {name} {label}: {out[label]}", flush=True)
    for key in ("prune_finetune_seconds", "seconds"):
        j1, j2, j1t2 = (out[k][key] for k in ("jobs1_threads1", "jobs2_threads2", "jobs1_threads2"))
        tag = "stage" if key == "prune_finetune_seconds" else "compile"
        out[f"{tag}_ratio_jobs2_vs_jobs1_1thread"] = round(j2 / j1, 3)
        out[f"{tag}_ratio_jobs2_vs_jobs1_2threads"] = round(j2 / j1t2, 3)
    return out


def _digits_recipe(steps: int) -> str | None:
    ckpt = os.path.join(REPO, "runs", "digits-vit", "model.safetensors")
    if not os.path.isfile(ckpt):
        print("jobs timing on digits skipped: run `make demo` first (it trains runs/digits-vit)")
        return None
    import yaml

    with open(os.path.join(REPO, "recipes", "digits.yaml")) as f:
        d = yaml.safe_load(f)
    d["model"]["checkpoint"] = ckpt
    d["finetune"]["steps"] = steps
    path = os.path.join(WORK, "digits.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(d, f)
    return path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="2000,20000")
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--jobs-steps", type=int, default=8, help="fine-tune steps per group for the ViT-S --jobs timing")
    ap.add_argument("--digits-steps", type=int, default=100, help="fine-tune steps per group, digits --jobs timing")
    ap.add_argument("--jobs-per-class", type=int, default=None,
                    help="cap the ViT-S --jobs timing's training images per class (data.max_images_per_class)")
    ap.add_argument("--parts", default="rss,throughput,jobs")
    a = ap.parse_args()
    parts = set(a.parts.split(","))
    os.makedirs(WORK, exist_ok=True)
    sizes = [int(s) for s in a.sizes.split(",")]
    ckpt = _checkpoint(a.depth)
    path = os.path.join(HERE, "results", "scale.json")
    res = {}
    res.update({"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.processor() or platform.machine()}, "
                f"{os.cpu_count()} cores", "model": f"vit_small_patch16_224 structure, depth {a.depth}, random "
                "weights", "nice": os.nice(0),
                "note": "see load_avg_1min per measurement: on a shared machine timings are only as good as that"})
    if "rss" in parts:
        rows = []
        for n in sizes:
            t = time.perf_counter()
            root = _dataset(n)
            gen_s = time.perf_counter() - t
            r = _compile_rss(_recipe(root, ckpt, a.depth, a.steps, f"scale-{n}"), os.path.join(WORK, f"build-{n}"))
            rows.append({"images": n, "generate_seconds": round(gen_s, 1), **r})
            print(f"N={n:>6}: peak RSS {r['peak_rss_bytes'] / 2**30:.2f} GiB (with decode workers "
                  f"{r['peak_rss_tree_bytes'] / 2**30:.2f} GiB), compile {r['seconds']:.0f} s, load "
                  f"{r['load_avg_1min']}", flush=True)
        res["compile"] = rows
        if len(rows) >= 2:
            res["rss_ratio_largest_vs_smallest"] = round(rows[-1]["peak_rss_bytes"] / rows[0]["peak_rss_bytes"], 3)
            res["rss_tree_ratio_largest_vs_smallest"] = round(rows[-1]["peak_rss_tree_bytes"]
                                                              / rows[0]["peak_rss_tree_bytes"], 3)
    if "throughput" in parts:
        res["throughput"] = _throughput(_dataset(sizes[0]), a.depth, 6)
        print(f"throughput: {res['throughput']}", flush=True)
    if "jobs" in parts:
        jobs = {}
        digits = _digits_recipe(a.digits_steps)
        if digits:
            jobs["digits"] = _jobs(digits, "digits")
            jobs["digits"].update(finetune_steps=a.digits_steps, method="defaults: shared trunk + joint phase")
            jobs["digits_independent"] = _jobs(digits, "digits-indep", INDEPENDENT)
            jobs["digits_independent"].update(finetune_steps=a.digits_steps, method=f"independent groups {INDEPENDENT}")
        vit = _recipe(_dataset(sizes[0]), ckpt, a.depth, a.jobs_steps, "jobs-vit-s", a.jobs_per_class)
        jobs["vit_s_independent"] = _jobs(vit, "vit-s-indep", {**INDEPENDENT, "prune": {
            **INDEPENDENT["prune"], "steps": 2, "recovery_steps": a.jobs_steps // 2}})
        jobs["vit_s_independent"].update(finetune_steps=a.jobs_steps, images=sizes[0],
                                         max_images_per_class=a.jobs_per_class,
                                         method=f"independent groups {INDEPENDENT}, 2 pruning rounds")
        res["jobs_seconds"] = jobs
    if os.path.isfile(path):  # parts run alone (or at once, in two processes) merge: read it again now
        with open(path) as f:
            res = {**json.load(f), **res}
        res.pop("note_timing", None)  # an older run's hand-written caveat

    print("\n| images | peak RSS | with decode workers | compile s | load avg (mean) |\n|---:|---:|---:|---:|---:|")
    for r in res.get("compile", []):
        print(f"| {r['images']} | {r['peak_rss_bytes'] / 2**30:.2f} GiB | "
              f"{r.get('peak_rss_tree_bytes', 0) / 2**30:.2f} GiB | {r['seconds']} | "
              f"{r.get('load_avg_1min', {}).get('mean', '?')} |")
    if "rss_ratio_largest_vs_smallest" in res:
        rows = res["compile"]
        print(f"peak RSS ratio N={rows[-1]['images']} / N={rows[0]['images']}: "
              f"{res['rss_ratio_largest_vs_smallest']:.3f} (target ≤ 1.15; largest ≤ 4 GB)")
    tp = res.get("throughput")
    if tp:
        print(f"fine-tune throughput, ours ÷ plain timm loop: {tp['ratio']:.3f} (target ≥ 0.9; "
              f"{tp['ours_images_per_s']:.1f} vs {tp['plain_images_per_s']:.1f} images/s, batch {tp['batch']}, "
              "1 thread)")
    for name, j in res.get("jobs_seconds", {}).items():
        if not isinstance(j, dict):  # a part recorded as not measured
            print(f"{name}: {j}")
            continue
        print(f"{name}: prune+fine-tune --jobs 2 (1 thread each) ÷ --jobs 1 (1 thread) = "
              f"{j['stage_ratio_jobs2_vs_jobs1_1thread']:.2f} (target ≤ 0.6); ÷ --jobs 1 (2 threads) = "
              f"{j['stage_ratio_jobs2_vs_jobs1_2threads']:.2f} (target ≤ 1); whole compile "
              f"{j['compile_ratio_jobs2_vs_jobs1_1thread']:.2f} / {j['compile_ratio_jobs2_vs_jobs1_2threads']:.2f}")
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(path, "w") as f:
        json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
