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


class WorkerPool:
    """The N - 1 worker processes of `compile --jobs N`, started before the teacher pass so that their start-up
    (torch import, model, data) overlaps the main process's work instead of the prune+fine-tune stage. A worker
    waits for the teacher's outputs (`hand_teacher`) and, when the recipe has one, the shared trunk in the
    partial dir, then trains its share. `finish(train_here)` trains the first share in this process and waits
    for the rest. Use as a context manager: leaving it (an error, Ctrl-C) kills what still runs."""

    def __init__(self, recipe: Recipe, partial, jobs: int, device):
        import torch

        self.partial = partial
        self.group_ids = [gi for gi in range(recipe.split.groups) if not partial.has(f"g{gi}")]
        jobs = max(1, min(jobs, len(self.group_ids)))
        shares = [self.group_ids[i::jobs] for i in range(jobs)]
        self.local = shares.pop(0) if shares else []
        self.per_thread = max(1, _cpu_threads(recipe) // jobs)
        gpus = torch.cuda.device_count() if device.type == "cuda" else 0
        self.procs = []
        self.recipe_path = None
        self.finished = False  # every group saved (finish() returned normally)
        self.errs = {}  # worker pid -> its stderr file
        if not shares:
            return
        fd, self.recipe_path = tempfile.mkstemp(prefix="edvit-jobs-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(recipe.to_dict(), f)
        for w, share in enumerate(shares, start=1):
            env = dict(os.environ)
            if gpus > 1:
                env["CUDA_VISIBLE_DEVICES"] = str(w % gpus)
            cmd = [sys.executable, "-m", "edvit_tool.compile.jobs", self.recipe_path, partial.dir,
                   ",".join(map(str, share)), str(self.per_thread), device.type, str(os.getpid())]
            # stderr to a file, not a pipe: a worker that writes more than a pipe holds would block on it
            err = tempfile.TemporaryFile(mode="w+", prefix="edvit-jobs-err-")
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err, text=True)
            self.procs.append((share, proc))
            self.errs[proc.pid] = err

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def hand_teacher(self, teacher) -> None:
        """The main process's teacher outputs on the fine-tune split, for the workers (none repeats the pass)."""
        if self.procs and not self.partial.has_tensors(TEACHER):
            self.partial.save_tensors(TEACHER, {"features": teacher.features, "logits": teacher.logits})

    def finish(self, train_here, bars=None) -> None:
        """Train the first share here (with a worker's thread count), then wait for the workers."""
        import torch

        if self.local:
            threads = torch.get_num_threads()
            torch.set_num_threads(self.per_thread)
            try:
                for gi in self.local:
                    train_here(gi)
            finally:
                torch.set_num_threads(threads)
        if not self.procs:
            return
        partial, ids = self.partial, self.group_ids
        advance = bars.task(f"sub-models in {len(self.procs)} worker process(es)", len(ids)) if bars else None
        done = sum(partial.has(f"g{gi}") for gi in ids)
        if advance and done:
            advance(done)
        # until every group is saved (not until the workers exit: a torch process's teardown takes ~1 s)
        while done < len(ids) and any(p.poll() is None for _, p in self.procs):
            time.sleep(0.1)
            now = sum(partial.has(f"g{gi}") for gi in ids)
            if advance and now > done:
                advance(now - done)
            done = now
        if done == len(ids):
            self.finished = True
            return
        failed = [(share, p) for share, p in self.procs if p.poll() is not None and p.returncode != 0]
        if failed:
            share, p = failed[0]
            err = self.errs[p.pid]
            err.seek(0)
            lines = [ln for ln in err.read().strip().splitlines() if ln.strip()]
            raise EdvitError(f"compile --jobs: the worker training groups {share} failed: "
                             f"{lines[-1] if lines else f'exit {p.returncode}'}")

    def close(self) -> None:
        for _, p in self.procs:
            if self.finished:  # its groups are saved: let it exit on its own
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    pass
            if p.poll() is None:
                p.kill()
                p.wait()
        for err in self.errs.values():
            err.close()
        if self.recipe_path and os.path.exists(self.recipe_path):
            os.remove(self.recipe_path)


def _wait_for(ready, parent: int, what: str) -> None:
    """Poll until ready(); a worker whose compile died (its parent is gone) stops instead of waiting forever."""
    while not ready():
        if os.getppid() != parent:
            raise EdvitError(f"compile --jobs: the main process stopped before handing over {what}")
        time.sleep(0.05)


def main(argv: list[str]) -> int:
    recipe_path, partial_dir, groups, threads, device_type, parent = argv
    import torch

    from .checkpoint import resolve_device
    from .pipeline import autocast_for, prepare, shared_trunk_plan, train_group
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
        def teacher() -> TeacherOutputs:  # called by prepare once the model and data are loaded
            _wait_for(lambda: partial.has_tensors(TEACHER), int(parent), "the teacher's outputs")
            t = partial.load_tensors(TEACHER)
            return TeacherOutputs(t["features"], t["logits"], None, None)

        st = prepare(recipe, device, for_worker=True, teacher=teacher)
        trunk = None
        if shared_trunk_plan(recipe, st.k, st.params_target) is not None:
            _wait_for(lambda: partial.has("trunk"), int(parent), "the shared trunk")
            trunk = partial.load("trunk", recipe.model.name, recipe.model.kwargs)
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
