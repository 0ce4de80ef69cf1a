"""Capacity-aware sizing: one sub-model per board, each sized so that its predicted latency on ITS board is the
same for every board, at the same total parameters as the uniform split (K x the recipe's per-group budget).

    s = size_for_boards(recipe, model, n_classes, k, params_target)   # recipe split.boards (+ split.profiles)
    s.groups, s.params_targets, s.boards        # group i is sized for, and paired with, board s.boards[i]

How. Each board gets a latency model (cluster/latency_model.py: fitted on the boards' profiled structures,
else scaled by device-profile `speed`). A sub-model's structure is not known before its class-wise importance
is measured, so sizing predicts with a representative structure per parameter budget: the pruning planner's
own choice (`plan_keep`) under seeded random importance scores. On a grid of budgets that gives each board a
latency curve; a bisection finds the common latency T whose budgets (each board's largest budget predicted to
run within T) sum to the total. Classes are shared in proportion to the budgets (at least one each): a bigger
sub-model takes more classes. `assign` then keeps sub-model i on board i (cli/assign.py, `pairing`).
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from ..cluster import latency_model as lm
from ..config.recipe import Recipe
from ..errors import RecipeError

GRID = 64                 # budgets on the latency curves (geometric)
MIN_RATIO = 0.01          # smallest budget considered, as a fraction of the original's parameters
TOLERANCE = 0.10          # predicted per-board latencies should agree within this


@dataclasses.dataclass
class Sizing:
    boards: list[str]                 # group i -> boards[i]
    groups: list[list[int]]
    params_targets: list[int]
    predicted_ms: list[float]
    uniform_predicted_ms: list[float]  # each board running a sub-model of the uniform budget
    models: dict[str, dict]           # board -> LatencyModel.to_dict()
    variants: dict[str, str]          # board -> profiled variant the model was fitted on
    latency_stat: str
    total_params: int

    @property
    def spread(self) -> float:
        return max(self.predicted_ms) / min(self.predicted_ms) - 1.0

    def summary(self) -> str:
        parts = [f"g{i}→{b}: {len(g)} classes, {t:,} params, {ms:.3g} ms" for i, (b, g, t, ms)
                 in enumerate(zip(self.boards, self.groups, self.params_targets, self.predicted_ms))]
        warn = (f" — more than {TOLERANCE:.0%} apart: a budget hit the smallest structure or the full model"
                if self.spread > TOLERANCE else "")
        return (f"sized for boards (predicted {self.latency_stat}, spread {self.spread:.1%}{warn}; uniform makespan "
                f"{max(self.uniform_predicted_ms):.3g} ms): " + "; ".join(parts))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["pairing"] = {f"g{i}": b for i, b in enumerate(self.boards)}
        d["spread"] = round(self.spread, 4)
        d["predicted_makespan_ms"] = max(self.predicted_ms)
        d["uniform_predicted_makespan_ms"] = max(self.uniform_predicted_ms)
        return d


def representative_arch(model, params_target: int, seed: int = 0, prune_embed: bool = True) -> dict:
    """The structure plan_keep picks for `params_target` under seeded random importance (the real one depends
    on the group's data; the budget, not the exact units kept, is what the latency depends on most)."""
    import torch

    from .prune.importance import Importance
    from .prune.plan import plan_keep
    from .prune import surgery

    arch = surgery.vit_arch(model)
    g = torch.Generator().manual_seed(seed)
    imp = Importance(heads=[torch.rand(h, generator=g) + 0.5 for h in arch["heads"]],
                     mlp=[torch.rand(m, generator=g) + 0.5 for m in arch["mlp_hidden"]],
                     embed=torch.rand(arch["embed_dim"], generator=g) + 0.5)
    plan = plan_keep(model, imp, params_target=params_target, prune_embed=prune_embed)
    return {"embed_dim": len(plan.embed) if plan.embed is not None else arch["embed_dim"],
            "head_dim": arch["head_dim"], "heads": [len(h) for h in plan.heads],
            "mlp_hidden": [len(m) for m in plan.mlp], "num_outputs": arch["num_outputs"]}


def _terms_at(model, budgets, seed: int, prune_embed: bool):
    """(budgets the planner can meet, their representative structures' terms rows)."""
    geo = lm.geometry_of_model(model)
    kept, rows = [], []
    for p in budgets:
        try:
            rows.append(lm.structure_terms(representative_arch(model, int(p), seed, prune_embed), geo))
        except RecipeError:  # below the smallest structure the planner can make
            continue
        kept.append(int(p))
    return np.array(kept, dtype=np.int64), np.stack(rows)


def latency_curves(model, models: dict[str, lm.LatencyModel], seed: int = 0, around: dict | None = None,
                   prune_embed: bool = True):
    """{board: (budgets, predicted ms made non-decreasing)}: a geometric grid from MIN_RATIO to the full model,
    plus, for boards in `around`, a fine grid within -20 %/+25 % of that budget (refinement)."""
    from .prune import surgery

    hi = surgery.count_params(model)
    grid, rows = _terms_at(model, np.unique(np.geomspace(max(100, int(hi * MIN_RATIO)), hi, GRID).astype(np.int64)),
                           seed, prune_embed)
    out = {}
    for b, m in models.items():
        g, r = grid, rows
        if around and b in around:
            fine = np.unique(np.geomspace(around[b] * 0.8, min(hi, around[b] * 1.25), GRID // 2).astype(np.int64))
            g2, r2 = _terms_at(model, fine, seed, prune_embed)
            g, idx = np.unique(np.concatenate([grid, g2]), return_index=True)
            r = np.concatenate([rows, r2])[idx]
        out[b] = (g, np.maximum.accumulate(m.predict(r)))
    return out


def _budget_within(grid, curve, t: float) -> float:
    """Largest budget predicted to run within t ms on a board (interpolated; the grid's ends outside)."""
    if t <= curve[0]:
        return float(grid[0])
    if t >= curve[-1]:
        return float(grid[-1])
    c = curve + np.arange(len(curve)) * 1e-12 * max(1.0, float(curve[-1]))  # strictly increasing for interp
    return float(np.interp(t, c, grid))


def balance(curves: dict[str, tuple], total: int) -> dict[str, int]:
    """Per board, the budget at the common latency T where the budgets sum to `total` (bisection on T)."""
    def budgets(t):
        return {b: _budget_within(g, c, t) for b, (g, c) in curves.items()}

    lo = min(float(c[0]) for _, c in curves.values())
    hi = max(float(c[-1]) for _, c in curves.values())
    if sum(budgets(hi).values()) <= total:  # even the full model everywhere fits
        return {b: int(v) for b, v in budgets(hi).items()}
    for _ in range(100):
        mid = (lo + hi) / 2
        if sum(budgets(mid).values()) > total:
            hi = mid
        else:
            lo = mid
    return {b: int(v) for b, v in budgets(lo).items()}


def share_classes(n_classes: int, weights: list[float]) -> list[int]:
    """Class counts in proportion to weights (largest remainder), each at least 1, summing to n_classes."""
    k = len(weights)
    if not 1 <= k <= n_classes:
        raise RecipeError(f"split.boards: {k} boards for {n_classes} classes; need between 1 and {n_classes}")
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    spare = n_classes - k
    raw = w * spare
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts), kind="stable")[:spare - counts.sum()]:
        counts[i] += 1
    return [int(c) + 1 for c in counts]


def contiguous(counts: list[int]) -> list[list[int]]:
    out, start = [], 0
    for c in counts:
        out.append(list(range(start, start + c)))
        start += c
    return out


def board_models(boards, profiles_path: str | None, stat: str, variant: str | None):
    """(latency models, variants used) for the boards, from profiles.json (and the manifest of the build it
    profiled) and the boards' device-profile speeds."""
    from ..config.device_profile import load_device_profile

    speeds = {b.name: load_device_profile(b.device_profile_path).speed for b in boards}
    samples, used = {}, {}
    if profiles_path:
        from ..artifacts import read_json_object
        from ..runtime import manifest as mf

        doc = read_json_object(profiles_path, "profiles file", "run `edvit-tool profile --build LADDER "
                                                               "--boards boards.yaml` first", RecipeError)
        manifests = []
        build = (doc.get("build") or {}).get("path")
        if isinstance(build, str) and os.path.isfile(os.path.join(build, mf.MANIFEST_NAME)):
            with open(os.path.join(build, mf.MANIFEST_NAME), encoding="utf-8") as f:
                manifests.append(json.load(f))
        if not manifests:
            raise RecipeError(f"{profiles_path}: the build it profiled ({build}) is gone; profile a ladder "
                              "(`compile --ladder DIR`, then `profile --build DIR`) again")
        names = {b.name for b in boards}
        samples, used = lm.samples_from_profiles(doc, manifests, stat, variant)
        samples = {b: s for b, s in samples.items() if b in names}
        used = {b: v for b, v in used.items() if b in names}
    models = lm.fit_boards(samples, speeds)
    return {b.name: models[b.name] for b in boards}, used


def size_for_boards(recipe: Recipe, model, n_classes: int, k: int, params_target: int | None) -> Sizing:
    from ..config.boards import boards_from_yaml
    from .prune import surgery

    sp = recipe.split
    if sp.strategy != "balanced":
        raise RecipeError("split.boards sizes contiguous class groups; use split.strategy: balanced with it")
    if params_target is None:
        raise RecipeError("split.boards needs prune.target.params_ratio (the per-group budget whose K-fold "
                          "total is shared out), not keep ratios")
    boards = boards_from_yaml(sp.boards)
    if len(boards) != k:
        raise RecipeError(f"split.boards: {sp.boards} has {len(boards)} boards but split.groups is {k}; one "
                          f"sub-model per board: pass -k {len(boards)}")
    models, used = board_models(boards, sp.profiles, sp.latency_stat, sp.variant)
    total = min(k * params_target, k * surgery.count_params(model))
    seed, pe = recipe.seed, recipe.prune.prune_embed
    budgets = balance(latency_curves(model, models, seed, prune_embed=pe), total)
    budgets = balance(latency_curves(model, models, seed, around=budgets, prune_embed=pe), total)  # refined
    names = [b.name for b in boards]
    targets = [budgets[n] for n in names]
    geo = lm.geometry_of_model(model)
    pred = [float(models[n].predict(lm.structure_terms(representative_arch(model, t, seed, pe), geo)))
            for n, t in zip(names, targets)]
    uni_row = lm.structure_terms(representative_arch(model, params_target, seed, pe), geo)
    uniform = [float(models[n].predict(uni_row)) for n in names]
    groups = contiguous(share_classes(n_classes, targets))
    return Sizing(names, groups, targets, pred, uniform, {n: models[n].to_dict() for n in names}, used,
                  sp.latency_stat, int(total))


# ---------------------------------------------------------------------------------------------- assign side

def pairing(manifest: dict) -> dict[str, str]:
    """sub-model -> the board it was sized for ({} for a build not sized for boards)."""
    s = manifest.get("sizing")
    p = s.get("pairing") if isinstance(s, dict) else None
    return {str(k): str(v) for k, v in p.items()} if isinstance(p, dict) else {}


def pin_to_pairing(t: dict, pairs: dict[str, str], board_names: list[str], source: str) -> dict:
    """t with every sub-model allowed only on the board it was sized for (a copy). EdvitError when the boards
    file lacks one of those boards."""
    import math

    from ..errors import EdvitError

    missing = sorted({b for b in pairs.values() if b not in board_names})
    if missing:
        raise EdvitError(f"{source}: the build was sized for board(s) {', '.join(missing)} that the boards file "
                         f"does not define (it has: {', '.join(board_names)}); use the boards file the build "
                         "was compiled with, or pass --ignore-sizing")
    return {s: {d: (v if pairs.get(s, d) == d else math.inf) for d, v in row.items()} for s, row in t.items()}
