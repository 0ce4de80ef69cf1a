"""`compile --jobs N`: train the groups' sub-models in N processes (this one and N - 1 workers).

Each worker is `python -m edvit_tool.compile.jobs` on the same resolved recipe and --out: it loads the model and
data itself (an image folder's decoded-pixel cache is already there), trains its share of the groups with
`pipeline.train_group` and saves each into the build's partial dir, exactly as the main process would; the main
process then loads them as a resumed compile does. Groups seed themselves by index, so the build equals a
`--jobs 1` one. On CPU the threads are split between the workers; with several GPUs visible, each worker gets one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from ..config.recipe import Recipe
from ..errors import EdvitError

TEACHER = "teacher-finetune"  # partial-dir tensors: the teacher's features + logits on the fine-tune split


def _cpu_threads(recipe: Recipe) -> int:
    import torch

    return recipe.threads or torch.get_num_threads()


def train_groups_in_workers(recipe: Recipe, partial, group_ids: list[int], jobs: int, device, bars=None,
                            teacher=None, train_here=None) -> None:
    """`teacher`: the main process's TeacherOutputs; handed to the workers through the partial dir so that none
    of them repeats the teacher pass over the fine-tune split. `train_here(gi)`: trains and saves group gi in
    this process — the main process then takes the first share itself (with a worker's thread count) instead of
    idling, so only jobs - 1 workers pay a start-up."""
    if not group_ids:
        return
    if teacher is not None and not partial.has_tensors(TEACHER):
        partial.save_tensors(TEACHER, {"features": teacher.features, "logits": teacher.logits})
    import torch

    jobs = min(jobs, len(group_ids))
    shares = [group_ids[i::jobs] for i in range(jobs)]
    per_thread = max(1, _cpu_threads(recipe) // jobs)
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    fd, recipe_path = tempfile.mkstemp(prefix="edvit-jobs-", suffix=".json", dir=partial.dir)
    with os.fdopen(fd, "w") as f:
        json.dump(recipe.to_dict(), f)
    procs = []
    local = shares.pop(0) if train_here is not None else []
    try:
        for w, share in enumerate(shares, start=1 if local else 0):
            env = dict(os.environ)
            if gpus > 1:
                env["CUDA_VISIBLE_DEVICES"] = str(w % gpus)
            cmd = [sys.executable, "-m", "edvit_tool.compile.jobs", recipe_path, partial.dir,
                   ",".join(map(str, share)), str(per_thread), device.type]
            procs.append((share, subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                                  text=True)))
        if local:
            threads = torch.get_num_threads()
            torch.set_num_threads(per_thread)
            try:
                for gi in local:
                    train_here(gi)
            finally:
                torch.set_num_threads(threads)
        advance = bars.task(f"sub-models in {len(procs)} worker process(es)", len(group_ids)) if bars else None
        done = sum(partial.has(f"g{gi}") for gi in group_ids) if bars else 0
        if advance and done:
            advance(done)
        while any(p.poll() is None for _, p in procs):
            now = sum(partial.has(f"g{gi}") for gi in group_ids)
            if advance and now > done:
                advance(now - done)
                done = now
            time.sleep(0.5)
        failed = [(share, p) for share, p in procs if p.returncode != 0]
        if failed:
            share, p = failed[0]
            lines = [ln for ln in (p.stderr.read() or "").strip().splitlines() if ln.strip()]
            raise EdvitError(f"compile --jobs: the worker training groups {share} failed: "
                             f"{lines[-1] if lines else f'exit {p.returncode}'}")
    finally:
        for _, p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        os.remove(recipe_path)


def main(argv: list[str]) -> int:
    recipe_path, partial_dir, groups, threads, device_type = argv
    import torch

    from .checkpoint import resolve_device
    from .pipeline import autocast_for, prepare, train_group
    from .resume import Partial
    from .teacher import TeacherOutputs

    with open(recipe_path, encoding="utf-8") as f:
        recipe = Recipe.from_dict(json.load(f))  # validated by the main process
    recipe.threads = int(threads)
    torch.set_num_threads(int(threads))
    device = resolve_device(device_type)
    out_dir = partial_dir[:-len(".partial")]
    partial = Partial.attach(out_dir, recipe)
    with autocast_for(device):
        teacher = None
        if partial.has_tensors(TEACHER):
            t = partial.load_tensors(TEACHER)
            teacher = TeacherOutputs(t["features"], t["logits"], None, None)
        st = prepare(recipe, device, for_worker=True, teacher=teacher)
        trunk = partial.load("trunk", recipe.model.name, recipe.model.kwargs)  # None: no shared trunk
        for gi in (int(g) for g in groups.split(",")):
            if not partial.has(f"g{gi}"):
                partial.save(f"g{gi}", train_group(st, gi, recipe, device, trunk=trunk))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except EdvitError as e:
        print(f"Error: {e}", file=sys.stderr)
        sys.exit(2)
