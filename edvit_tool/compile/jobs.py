"""`compile --jobs N`: train the groups' sub-models in N processes (this one and N - 1 workers); and the peer
beside the ensemble in a process of its own (`peer.parallel`, PeerProcess).

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
PEER_PROGRESS = "peer-progress.json"  # partial-dir file: the peer process's progress (_ProgressFile)


def _cpu_threads(recipe: Recipe) -> int:
    import torch

    return recipe.threads or torch.get_num_threads()


def _write_recipe(recipe: Recipe) -> str:
    fd, path = tempfile.mkstemp(prefix="edvit-jobs-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(recipe.to_dict(), f)
    return path


def _spawn(args: list[str], env: dict | None = None):
    """(process, its stderr file): `python -m edvit_tool.compile.jobs ARGS`. stderr goes to a file, not a pipe:
    a worker that writes more than a pipe holds would block on it."""
    err = tempfile.TemporaryFile(mode="w+", prefix="edvit-jobs-err-")
    proc = subprocess.Popen([sys.executable, "-m", "edvit_tool.compile.jobs", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=err, text=True)
    return proc, err


def _last_error(proc, err, what: str) -> EdvitError:
    err.seek(0)
    lines = [ln for ln in err.read().strip().splitlines() if ln.strip()]
    return EdvitError(f"{what} failed: {lines[-1] if lines else f'exit {proc.returncode}'}")


def _stop(proc, finished: bool) -> None:
    """Let a worker whose work is saved exit on its own (a torch teardown takes ~1 s); kill one still running."""
    if finished:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def hand_teacher(partial, teacher) -> None:
    """The main process's teacher outputs on the fine-tune split, for the worker processes (none repeats the
    pass)."""
    if not partial.has_tensors(TEACHER):
        partial.save_tensors(TEACHER, {"features": teacher.features, "logits": teacher.logits})


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
        self.recipe_path = _write_recipe(recipe)
        for w, share in enumerate(shares, start=1):
            env = dict(os.environ)
            if gpus > 1:
                env["CUDA_VISIBLE_DEVICES"] = str(w % gpus)
            proc, err = _spawn([self.recipe_path, partial.dir, ",".join(map(str, share)), str(self.per_thread),
                                device.type, str(os.getpid())], env)
            self.procs.append((share, proc))
            self.errs[proc.pid] = err

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def hand_teacher(self, teacher) -> None:
        if self.procs:
            hand_teacher(self.partial, teacher)

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
            raise _last_error(p, self.errs[p.pid], f"compile --jobs: the worker training groups {share}")

    def close(self) -> None:
        for _, p in self.procs:
            _stop(p, self.finished)
        for err in self.errs.values():
            err.close()
        if self.recipe_path and os.path.exists(self.recipe_path):
            os.remove(self.recipe_path)


def peer_in_process(recipe: Recipe, device, jobs: int) -> bool:
    """`peer.parallel`: does the peer train in a process of its own, beside the ensemble? auto: on a CPU with
    cores for both (at least twice `threads`) and --jobs 1 (the workers have the cores then). Never with
    keep-ratio targets: the peer's budget is then the largest sub-model, known only once they are trained."""
    mode = recipe.peer.parallel
    if mode == "never" or recipe.prune.target.params_ratio is None:
        return False
    if mode == "always":
        return True
    if jobs > 1 or device.type != "cpu":
        return False
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return cores >= 2 * _cpu_threads(recipe)


class _ProgressFile:
    """A worker's progress bar: its one task's {"description", "total", "done"} in a small json, rewritten at
    most twice a second, for the main process to show."""

    def __init__(self, path: str):
        self.path = path

    def _write(self, state: dict) -> None:
        with open(self.path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(state, f)
        os.replace(self.path + ".tmp", self.path)

    def task(self, description: str, total: int):
        state, last = {"description": description, "total": total, "done": 0}, [time.monotonic()]
        self._write(state)

        def advance(n: int = 1, **metrics):
            state["done"] += n
            if time.monotonic() - last[0] >= 0.5 or state["done"] >= total:
                last[0] = time.monotonic()
                self._write(state)
        return advance

    def log(self, message: str) -> None:
        """Nothing: the main process logs the peer's summary once it has it."""


class PeerProcess:
    """The peer (peer.py) trained in a process of its own while this one trains the ensemble (`peer.parallel`):
    where the ensemble's `threads` leave cores idle, the peer leaves the compile's critical path (the demo:
    ~100 of ~300 s). The process loads the model and data itself, waits for the teacher's outputs
    (hand_teacher), trains the peer as the main process would after the ensemble (peer.train_peer: same seed,
    budget and threads, so the same peer) and saves it with its report entry into the partial dir; `result()`
    shows its progress and loads it. A context manager: leaving it early kills the process."""

    def __init__(self, recipe: Recipe, partial, device):
        self.partial, self.proc, self.err, self.recipe_path = partial, None, None, None
        if partial.has_peer():  # a resumed compile: trained already
            return
        self.recipe_path = _write_recipe(recipe)
        self.proc, self.err = _spawn(["--peer", self.recipe_path, partial.dir, str(_cpu_threads(recipe)),
                                      device.type, str(os.getpid())])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def hand_teacher(self, teacher) -> None:
        if self.proc is not None:
            hand_teacher(self.partial, teacher)

    def check(self) -> None:
        """Raise now (not after the whole ensemble) if the process died without saving the peer."""
        if not self.partial.has_peer() and (self.proc is None or self.proc.poll() is not None):
            raise _last_error(self.proc, self.err, "compile --peer: the process training the peer")

    def result(self, model_name: str, kwargs: dict, bars=None):
        """(peer timm ViT, report entry), once the process has saved them; its progress bar meanwhile."""
        progress = os.path.join(self.partial.dir, PEER_PROGRESS)
        advance, shown = None, 0
        while not self.partial.has_peer():
            self.check()
            if bars is not None and os.path.isfile(progress):
                with open(progress, encoding="utf-8") as f:
                    state = json.load(f)
                if advance is None:
                    advance = bars.task(f"{state['description'].split()[0]} (second process)", state["total"])
                if advance is not None and state["done"] > shown:
                    advance(state["done"] - shown)
                    shown = state["done"]
            time.sleep(0.1)
        return self.partial.load_peer(model_name, kwargs, resumed=False)

    def close(self) -> None:
        if self.proc is not None:
            _stop(self.proc, self.partial.has_peer())
            self.err.close()
        if self.recipe_path and os.path.exists(self.recipe_path):
            os.remove(self.recipe_path)


def _wait_for(ready, parent: int, what: str) -> None:
    """Poll until ready(); a worker whose compile died (its parent is gone) stops instead of waiting forever."""
    while not ready():
        if os.getppid() != parent:
            raise EdvitError(f"compile --jobs: the main process stopped before handing over {what}")
        time.sleep(0.05)


def _attach(argv: list[str]):
    """(recipe, device, partial, teacher callable) of a worker: RECIPE_JSON PARTIAL_DIR THREADS DEVICE PARENT."""
    recipe_path, partial_dir, threads, device_type, parent = argv
    import torch

    from .checkpoint import resolve_device
    from .resume import Partial
    from .teacher import TeacherOutputs

    with open(recipe_path, encoding="utf-8") as f:
        recipe = Recipe.from_dict(json.load(f))  # validated by the main process
    recipe.threads = int(threads)
    torch.set_num_threads(int(threads))
    device = resolve_device(device_type)
    partial = Partial.attach(partial_dir[:-len(".partial")], recipe)

    def teacher() -> TeacherOutputs:  # called by prepare once the model and data are loaded
        _wait_for(lambda: partial.has_tensors(TEACHER), int(parent), "the teacher's outputs")
        t = partial.load_tensors(TEACHER)
        return TeacherOutputs(t["features"], t["logits"], None, None)
    return recipe, device, partial, teacher


def main(argv: list[str]) -> int:
    """A --jobs worker: RECIPE_JSON PARTIAL_DIR GROUPS THREADS DEVICE PARENT; or the peer's process:
    --peer RECIPE_JSON PARTIAL_DIR THREADS DEVICE PARENT."""
    from .pipeline import autocast_for, prepare, shared_trunk_plan, train_group

    if argv[0] == "--peer":
        from .peer import train_peer

        recipe, device, partial, teacher = _attach(argv[1:])
        with autocast_for(device):
            st = prepare(recipe, device, for_worker=True, teacher=teacher)
            model, info = train_peer(st, recipe, device, _ProgressFile(os.path.join(partial.dir, PEER_PROGRESS)))
        partial.save_peer(model, info)
        return 0
    groups = argv[2]
    recipe, device, partial, teacher = _attach(argv[:2] + argv[3:])
    with autocast_for(device):
        st = prepare(recipe, device, for_worker=True, teacher=teacher)
        trunk = None
        if shared_trunk_plan(recipe, st.k, st.params_target) is not None:
            _wait_for(lambda: partial.has("trunk"), int(argv[-1]), "the shared trunk")
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
