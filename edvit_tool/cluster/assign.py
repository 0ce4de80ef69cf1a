"""Place sub-models on boards (DESIGN §7): an exact MILP and the paper's greedy baseline. Pure: numbers in, Plan out.

Model. x[s,d] ∈ {0,1} puts sub-model s on board d; each s goes on exactly R distinct boards (replicas);
Σ_s m[s,d]·x[s,d] ≤ M[d] (memory, MB); a board runs its sub-models one after another, so its time per image is
Σ_s t[s,d]·x[s,d] + c[d]·y[d] (c = input transfer, paid once if the board is used, y[d] ≥ x[s,d]); minimise the
makespan T = the slowest board's time. t[s][d] = inf (or a missing entry) means s cannot run on d.

Also here: `costs_from_profiles`, which turns a build manifest + profiles.json into t and m (measured where
profiled, FLOPs-based and labelled `estimated` elsewhere).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from typing import Mapping, Sequence

from ..errors import ArtifactError, EdvitError

INF = math.inf
MB = float(1 << 20)
_EPS = 1e-6
# Used only when no board has a single measurement: a rough effective rate for a small ViT on one Cortex-A72
# class core (a few GFLOP/s sustained). Anything derived from it is labelled `estimated`.
DEFAULT_FLOPS_PER_MS_PER_CORE = 2e6
# Interpreter + numpy + runtime resident memory beside the model, when nothing was measured (labelled estimated).
DEFAULT_RSS_OVERHEAD_MB = 80.0


@dataclasses.dataclass
class Plan:
    assignment: dict[str, list[str]]          # sub-model -> boards (R of them)
    makespan_ms: float
    per_board_ms: dict[str, float]            # every board, 0.0 when unused
    solver: str
    memory_mb: dict[str, float] = dataclasses.field(default_factory=dict)
    optimal: bool = True


# ---------------------------------------------------------------------------------------------------------
# inputs and checks

def _fmt(x: float) -> str:
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.1f}".rstrip("0").rstrip(".")


def _normalise(submodels, boards, t, m, M, c, replicas):
    subs = list(submodels)
    names = list(boards)
    if not subs or not names:
        raise EdvitError("nothing to assign: need at least one sub-model and one board")
    if len(set(subs)) != len(subs) or len(set(names)) != len(names):
        raise EdvitError("sub-model and board names must be unique")
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
        raise EdvitError(f"replicas must be an int ≥ 1, got {replicas!r}")

    def get(table, s, d):
        v = (table.get(s) or {}).get(d)
        return INF if v is None else float(v)

    T = [[get(t, s, d) for d in names] for s in subs]
    Mem = [[get(m, s, d) for d in names] for s in subs]
    for i, s in enumerate(subs):
        for j, d in enumerate(names):
            if T[i][j] < 0 or math.isnan(T[i][j]) or math.isnan(Mem[i][j]) or Mem[i][j] < 0:
                raise EdvitError(f"t/m for {s} on {names[j]} must be ≥ 0, got {T[i][j]}, {Mem[i][j]}")
            if math.isinf(Mem[i][j]):
                T[i][j] = INF
    budget = []
    for d in names:
        if d not in M or M[d] is None or not M[d] >= 0:
            raise EdvitError(f"memory budget for board {d} must be ≥ 0 MB, got {M.get(d)!r}")
        budget.append(float(M[d]))
    cost = [float((c or {}).get(d, 0.0) or 0.0) for d in names]
    if any(x < 0 or math.isnan(x) for x in cost):
        raise EdvitError(f"transfer costs must be ≥ 0 ms, got {c}")
    return subs, names, T, Mem, budget, cost


def _fits(mem: float, left: float) -> bool:
    return mem <= left + _EPS * max(1.0, left)


def _check_each_fits(subs, names, T, Mem, budget, R) -> None:
    """Constraints one sub-model at a time: can it run anywhere, fit anywhere, on R distinct boards?"""
    if R > len(names):
        raise EdvitError(f"replicas={R} but there are only {len(names)} board(s) ({', '.join(names)}); "
                         "lower --replicas or add boards")
    for i, s in enumerate(subs):
        runnable = [j for j in range(len(names)) if math.isfinite(T[i][j])]
        if not runnable:
            raise EdvitError(f"{s} cannot run on any board (no usable artifact variant on "
                             f"{', '.join(names)}); check its parity on the boards or re-export it")
        hold = [j for j in runnable if _fits(Mem[i][j], budget[j])]
        if len(hold) >= R:
            continue
        if not hold:
            j = min(runnable, key=lambda k: (Mem[i][k] - budget[k], -budget[k]))
            need, have = Mem[i][j], budget[j]
            uniform = len({round(Mem[i][k], 6) for k in runnable}) == 1
            where = (f"but the largest budget is {_fmt(have)} MB on {names[j]}" if uniform
                     else f"on {names[j]} (its best fit) but the budget there is {_fmt(have)} MB")
            raise EdvitError(f"{s} needs {_fmt(need)} MB {where} (short by {_fmt(need - have)} MB); raise "
                             "memory_budget_mb in the board's device profile, pick a smaller variant "
                             "(int8) or prune harder")
        others = [f"{names[k]} short by {_fmt(Mem[i][k] - budget[k])} MB" if math.isfinite(T[i][k])
                  else f"{names[k]} cannot run it" for k in range(len(names)) if k not in hold]
        raise EdvitError(f"replicas={R} but only {len(hold)} board(s) can hold {s} "
                         f"({', '.join(names[k] for k in hold)}; {', '.join(others)}); lower --replicas, add "
                         "boards or raise their memory budgets")


def evaluate(assignment: Mapping[str, Sequence[str]], boards: Sequence[str], t, m=None, c=None):
    """(per_board_ms, makespan_ms, memory_mb) of an assignment under the model above."""
    per = {d: 0.0 for d in boards}
    mem = {d: 0.0 for d in boards}
    used = set()
    for s, ds in assignment.items():
        for d in ds:
            per[d] += float(t[s][d])
            if m is not None:
                mem[d] += float(m[s][d])
            used.add(d)
    for d in used:
        per[d] += float((c or {}).get(d, 0.0) or 0.0)
    return per, max(per.values()), mem


def _plan(subs, names, x, t, m, c, solver, optimal=True) -> Plan:
    assignment = {s: [names[j] for j in range(len(names)) if x[i][j]] for i, s in enumerate(subs)}
    per, makespan, mem = evaluate(assignment, names, t, m, c)
    return Plan(assignment, makespan, per, solver, mem, optimal)


def _as_tables(subs, names, T, Mem):
    return ({s: {d: T[i][j] for j, d in enumerate(names)} for i, s in enumerate(subs)},
            {s: {d: Mem[i][j] for j, d in enumerate(names)} for i, s in enumerate(subs)})


# ---------------------------------------------------------------------------------------------------------
# greedy baseline

class _Stuck(Exception):
    def __init__(self, submodel, need, left, board, placed):
        super().__init__(submodel)
        self.submodel, self.need, self.left, self.board, self.placed = submodel, need, left, board, placed


def _greedy(subs, names, T, Mem, budget, cost, R):
    # ED-ViT's assignment heuristic as the issue states it (we could not read the paper's own pseudo-code
    # through our search tool): heaviest sub-model first, each onto the board that would finish soonest
    # among those with memory left; replicas go to distinct boards.
    K, D = len(subs), len(names)

    def weight(i):
        finite = [v for v in T[i] if math.isfinite(v)]
        return statistics.fmean(finite) if finite else 0.0

    order = sorted(range(K), key=lambda i: -weight(i))
    load, left = [0.0] * D, list(budget)
    used = [False] * D
    x = [[False] * D for _ in range(K)]
    placed: list[str] = []
    for i in order:
        for _ in range(R):
            cands = [j for j in range(D) if not x[i][j] and math.isfinite(T[i][j]) and _fits(Mem[i][j], left[j])]
            if not cands:
                runnable = [j for j in range(D) if not x[i][j] and math.isfinite(T[i][j])]
                j = max(runnable, key=lambda k: left[k] - Mem[i][k]) if runnable else 0
                raise _Stuck(subs[i], Mem[i][j], left[j], names[j], list(placed))
            j = min(cands, key=lambda k: (load[k] + T[i][k] + (0.0 if used[k] else cost[k]), T[i][k], k))
            load[j] += T[i][j] + (0.0 if used[j] else cost[j])
            used[j] = True
            left[j] -= Mem[i][j]
            x[i][j] = True
        placed.append(subs[i])
    return x


def _stuck_message(e: _Stuck, subs, Mem, budget, R) -> str:
    # lower bound: each sub-model's R smallest footprints
    need_all = sum(sum(sorted(Mem[i])[:R]) for i in range(len(subs)))
    total = sum(budget)
    placed = ", ".join(e.placed) if len(e.placed) <= 4 else f"{len(e.placed)} other sub-models"
    after = f" once {placed} are placed" if e.placed else ""
    msg = (f"the sub-models do not all fit together: {e.submodel} needs {_fmt(e.need)} MB but the largest budget "
           f"left is {_fmt(e.left)} MB on {e.board} (short by {_fmt(e.need - e.left)} MB){after}")
    if need_all > total:
        msg += f"; in all they need at least {_fmt(need_all)} MB but the boards have {_fmt(total)} MB " \
               f"(short by {_fmt(need_all - total)} MB)"
    return msg + "; add boards, raise memory budgets, use smaller (int8) variants or fewer replicas"


def solve_greedy(submodels, boards, t, m, M, c=None, replicas: int = 1) -> Plan:
    """The paper's greedy baseline; EdvitError naming the sub-model, board and shortfall if it gets stuck
    (which does not prove that no placement exists — `solve_exact` decides that)."""
    subs, names, T, Mem, budget, cost = _normalise(submodels, boards, t, m, M, c, replicas)
    _check_each_fits(subs, names, T, Mem, budget, replicas)
    try:
        x = _greedy(subs, names, T, Mem, budget, cost, replicas)
    except _Stuck as e:
        raise EdvitError(f"greedy: {_stuck_message(e, subs, Mem, budget, replicas)}") from None
    tt, mm = _as_tables(subs, names, T, Mem)
    return _plan(subs, names, x, tt, mm, dict(zip(names, cost)), "greedy", optimal=False)


# ---------------------------------------------------------------------------------------------------------
# exact

def solve_exact(submodels, boards, t, m, M, c=None, replicas: int = 1, time_limit_s: float = 20.0,
                mip_rel_gap: float = 0.0) -> Plan:
    """Minimum-makespan placement, proven optimal by HiGHS.

    Why a MILP on scipy's HiGHS: scipy is already a dependency (no OR-Tools wheel to ship), HiGHS proves
    optimality, and K×D is small (K sub-models × D boards, a few hundred binaries at most): milliseconds for a
    handful of boards, about a second at K=D=10. Two passes: the least makespan T*, then among placements
    with T ≤ T* the least total work (Σ t·x + Σ c·y), which keeps non-critical boards lightly loaded and
    makes the answer deterministic.
    Measured here (2 busy cores): K=D=10 ~1 s; K=D=10 with R=2 ~1000 nodes, ~5 s. Past `time_limit_s` the
    better of HiGHS's best placement and the greedy one is returned with optimal=False, and the label says so.
    """
    import numpy as np
    from scipy.optimize import Bounds, LinearConstraint, milp

    subs, names, T, Mem, budget, cost = _normalise(submodels, boards, t, m, M, c, replicas)
    _check_each_fits(subs, names, T, Mem, budget, replicas)
    K, D = len(subs), len(names)
    nx = K * D
    n = nx + D + 1                                   # x[s,d] (row-major), y[d], T

    def xi(i, j):
        return i * D + j

    rows, lo, hi = [], [], []
    for i in range(K):                               # Σ_d x[s,d] = R
        r = np.zeros(n)
        r[[xi(i, j) for j in range(D)]] = 1
        rows.append(r), lo.append(replicas), hi.append(replicas)
    for j in range(D):                               # memory
        r = np.zeros(n)
        for i in range(K):
            if math.isfinite(T[i][j]):
                r[xi(i, j)] = Mem[i][j]
        rows.append(r), lo.append(-np.inf), hi.append(budget[j])
    for j in range(D):                               # Σ_s t x + c y - T ≤ 0
        r = np.zeros(n)
        for i in range(K):
            if math.isfinite(T[i][j]):
                r[xi(i, j)] = T[i][j]
        r[nx + j] = cost[j]
        r[n - 1] = -1
        rows.append(r), lo.append(-np.inf), hi.append(0.0)
    for i in range(K):                               # x ≤ y (board used; only matters where c > 0)
        for j in range(D):
            if cost[j] == 0:
                continue
            r = np.zeros(n)
            r[xi(i, j)], r[nx + j] = 1, -1
            rows.append(r), lo.append(-np.inf), hi.append(0.0)
    constraints = LinearConstraint(np.array(rows), np.array(lo, float), np.array(hi, float))
    ub = np.ones(n)
    for i in range(K):
        for j in range(D):
            if not (math.isfinite(T[i][j]) and _fits(Mem[i][j], budget[j])):
                ub[xi(i, j)] = 0                     # cannot run / cannot fit there at all
    ub[n - 1] = np.inf
    integrality = np.ones(n)
    integrality[n - 1] = 0
    options = {"mip_rel_gap": mip_rel_gap, "time_limit": time_limit_s, "presolve": True}

    obj = np.zeros(n)
    obj[n - 1] = 1
    res = milp(obj, constraints=constraints, integrality=integrality, bounds=Bounds(np.zeros(n), ub),
               options=options)
    if res.status == 2:
        try:
            _greedy(subs, names, T, Mem, budget, cost, replicas)
        except _Stuck as e:
            raise EdvitError(_stuck_message(e, subs, Mem, budget, replicas)) from None
        raise AssertionError("HiGHS says infeasible but greedy found a placement")
    optimal = res.status == 0
    best = res.x
    if best is None:  # stopped before any incumbent: the greedy placement (if any) is all we have
        try:
            x = _greedy(subs, names, T, Mem, budget, cost, replicas)
        except _Stuck:
            raise EdvitError(f"the MILP solver found no placement within {time_limit_s:g} s ({res.message}) "
                             "and the greedy one got stuck; allow more time") from None
        tt, mm = _as_tables(subs, names, T, Mem)
        return _plan(subs, names, x, tt, mm, dict(zip(names, cost)),
                     f"greedy (HiGHS found nothing within the {time_limit_s:g} s limit)", optimal=False)
    if optimal:
        t_star = float(res.x[n - 1])
        obj2 = np.zeros(n)
        for i in range(K):
            for j in range(D):
                if math.isfinite(T[i][j]):
                    obj2[xi(i, j)] = T[i][j]
        obj2[nx:nx + D] = cost
        ub2 = ub.copy()
        ub2[n - 1] = t_star * (1 + 1e-9) + 1e-9
        res2 = milp(obj2, constraints=constraints, integrality=integrality, bounds=Bounds(np.zeros(n), ub2),
                    options=options)
        if res2.x is not None:
            best = res2.x
    x = [[best[xi(i, j)] > 0.5 for j in range(D)] for i in range(K)]
    tt, mm = _as_tables(subs, names, T, Mem)
    plan = _plan(subs, names, x, tt, mm, dict(zip(names, cost)), "milp-highs", optimal)
    if not optimal:
        plan.solver = f"milp-highs (stopped at the {time_limit_s:g} s limit: best found, not proven optimal)"
        try:
            greedy = _plan(subs, names, _greedy(subs, names, T, Mem, budget, cost, replicas), tt, mm,
                           dict(zip(names, cost)), "greedy", optimal=False)
        except _Stuck:
            greedy = None
        if greedy is not None and greedy.makespan_ms < plan.makespan_ms:
            greedy.solver = f"greedy (better than HiGHS's best within the {time_limit_s:g} s limit)"
            return greedy
    return plan


# ---------------------------------------------------------------------------------------------------------
# cost matrix from a build + profiles.json

@dataclasses.dataclass(frozen=True)
class Choice:
    """The artifact variant chosen for one (sub-model, board) pair and what it costs there."""
    submodel: str
    board: str
    artifact: dict                    # the manifest's artifact entry
    latency_ms: float                 # p50 (measured) or FLOPs-based estimate
    memory_mb: float                  # peak RSS (measured) or artifact size + overhead (estimate)
    estimated: bool
    note: str = ""

    @property
    def variant(self) -> str:
        return f"{self.artifact['format']}/{self.artifact['quant']}"


@dataclasses.dataclass
class Costs:
    submodels: list[str]
    boards: list[str]
    budgets_mb: dict[str, float]
    choices: dict[tuple[str, str], Choice]
    excluded: dict[tuple[str, str], str]      # pairs that cannot run, with why
    notes: list[str]

    @property
    def t(self) -> dict[str, dict[str, float]]:
        return {s: {d: self.choices[(s, d)].latency_ms if (s, d) in self.choices else INF for d in self.boards}
                for s in self.submodels}

    @property
    def m(self) -> dict[str, dict[str, float]]:
        return {s: {d: self.choices[(s, d)].memory_mb if (s, d) in self.choices else INF for d in self.boards}
                for s in self.submodels}


def validate_profiles(profiles) -> list[str]:
    """Schema problems of a profiles.json document (empty = fine)."""
    p: list[str] = []
    if not isinstance(profiles, dict):
        return ["must be a JSON object"]
    if profiles.get("schema_version") != 1:
        p.append(f"schema_version must be 1, got {profiles.get('schema_version')!r}")
    if not isinstance(profiles.get("boards", {}), dict):
        p.append("boards must be an object keyed by board name")
    results = profiles.get("results")
    if not isinstance(results, list):
        return p + ["results must be a list"]
    for k, r in enumerate(results):
        where = f"results[{k}]"
        if not isinstance(r, dict):
            p.append(f"{where} must be an object")
            continue
        for key in ("board", "sha256"):
            if not isinstance(r.get(key), str):
                p.append(f"{where}.{key} must be a string")
        if not isinstance(r.get("usable"), bool):
            p.append(f"{where}.usable must be true/false")
        if r.get("usable"):
            lat = r.get("latency_ms")
            p50 = lat.get("p50") if isinstance(lat, dict) else None
            if isinstance(p50, bool) or not isinstance(p50, (int, float)) or not p50 >= 0:
                p.append(f"{where}.latency_ms.p50 must be a number ≥ 0 for a usable result")
            rss = r.get("peak_rss_mb")
            if isinstance(rss, bool) or not isinstance(rss, (int, float)) or not rss >= 0:
                p.append(f"{where}.peak_rss_mb must be a number ≥ 0 for a usable result")
    return p


def _matches(art: dict, prefer) -> bool:
    if not prefer:
        return True
    for want in ([prefer] if isinstance(prefer, str) else prefer):
        fmt, _, quant = want.partition("/")
        if art["format"] == fmt and (not quant or art["quant"] == quant):
            return True
    return False


def _work(sm: dict, arts: list[dict]) -> float | None:
    for key in ("flops", "params"):
        v = sm.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0:
            return float(v)
    sizes = [a["bytes"] for a in arts if a.get("quant") == "fp32"] or [a["bytes"] for a in arts]
    return float(min(sizes)) if sizes else None


_BACKEND_FORMAT = {"litert": "tflite", "tflite": "tflite", "tflite-runtime": "tflite", "ai-edge-litert": "tflite",
                   "onnxruntime": "onnx", "onnx": "onnx"}
_QUANT_ORDER = ("fp32", "fp16", "int8-dynamic", "int8-static")


def costs_from_profiles(manifest: dict, profiles: dict, boards, prefer=None, source: str = "profiles") -> Costs:
    """t and m for every (sub-model, board) pair, with the variant chosen for each.

    Measured pairs: the fastest (p50) artifact variant that is `usable` on that board (passed parity there),
    whose sha256 is the manifest's, and whose manifest status is not failed; memory = its peak RSS.
    Pairs with no measurement of any such variant: a FLOPs-based estimate (`estimated=True`) for the variant
    that ran fastest (FLOPs per ms) on that board for other sub-models (else the board's preferred format,
    fp32): latency = FLOPs ÷ that rate (else the board's median rate, else the measured boards' per-core rate
    — or a default — × its cores); memory = artifact size + the board's measured RSS overhead (or a default).
    Pairs where every variant failed parity on the board are excluded. `prefer`: 'onnx', 'tflite/int8-static'
    or a list of such; only matching variants are considered. `source` names the profiles file in error messages.
    """
    problems = validate_profiles(profiles)
    if problems:
        raise ArtifactError(f"{source}: " + "; ".join(problems) + "; re-run `edvit-tool profile`")
    subs = [sm["name"] for sm in manifest["submodels"]]
    board_names = [b.name for b in boards]
    by_board = {b.name: b for b in boards}
    arts_of: dict[str, list[dict]] = {s: [] for s in subs}
    failed_of: dict[str, list[str]] = {s: [] for s in subs}
    for art in manifest.get("artifacts", []):
        if art["name"] not in arts_of:
            continue
        if art.get("status", "ok") == "failed":
            failed_of[art["name"]].append(f"{art['format']}/{art['quant']}")
        elif _matches(art, prefer):
            arts_of[art["name"]].append(art)
    notes: list[str] = []
    for s in subs:
        if not arts_of[s]:
            why = f" (failed in the build: {', '.join(failed_of[s])})" if failed_of[s] else ""
            pref = f" matching --prefer {prefer}" if prefer else ""
            raise ArtifactError(f"sub-model {s} has no usable artifact{pref} in the build{why}; re-run "
                                "`edvit-tool export` or change --prefer")

    # results[(board, sha)] = last result for it (a later profile run supersedes an earlier one)
    results: dict[tuple[str, str], dict] = {}
    for r in profiles["results"]:
        results[(r["board"], r["sha256"])] = r
    known_shas = {a["sha256"] for arts in arts_of.values() for a in arts}
    stale = sorted({r["board"] for (b, sha), r in results.items() if sha not in known_shas and b in by_board})
    if stale:
        notes.append(f"profiles for {', '.join(stale)} include artifacts not in this build (sha256 differs); "
                     "they were ignored — re-run `edvit-tool profile` after re-exporting")
    for name, info in (profiles.get("boards") or {}).items():
        if name in by_board and isinstance(info, dict) and info.get("reachable") is False:
            notes.append(f"{name} was unreachable when profiled ({info.get('error') or 'no error given'}); "
                         "its costs are estimates")

    sm_by_name = {sm["name"]: sm for sm in manifest["submodels"]}
    choices: dict[tuple[str, str], Choice] = {}
    excluded: dict[tuple[str, str], str] = {}
    pending: list[tuple[str, str, list[dict]]] = []
    measured: list[tuple[str, str, dict, float, float]] = []    # every usable (s, d, art, p50, rss)
    for s in subs:
        for d in board_names:
            usable, unprofiled, failed = [], [], []
            for art in arts_of[s]:
                r = results.get((d, art["sha256"]))
                if r is None:
                    unprofiled.append(art)
                elif r["usable"]:
                    usable.append((float(r["latency_ms"]["p50"]), art, r))
                else:
                    failed.append(f"{art['format']}/{art['quant']}")
            measured.extend((s, d, art, p50, float(r["peak_rss_mb"])) for p50, art, r in usable)
            if usable:
                p50, art, r = min(usable, key=lambda u: (u[0], u[1]["bytes"]))
                choices[(s, d)] = Choice(s, d, art, p50, float(r["peak_rss_mb"]), False)
            elif unprofiled:
                pending.append((s, d, unprofiled))
            else:
                excluded[(s, d)] = f"every variant failed parity on {d} ({', '.join(failed)})"

    # effective rates (work units per ms) from every usable measurement; RSS overhead beside the model
    rate_key: dict[tuple[str, str], list[float]] = {}
    rate_board: dict[str, list[float]] = {}
    overhead: dict[str, list[float]] = {}
    for s, d, art, p50, rss in measured:
        w = _work(sm_by_name[s], arts_of[s])
        if w and p50 > 0:
            rate_key.setdefault((d, f"{art['format']}/{art['quant']}"), []).append(w / p50)
        overhead.setdefault(d, []).append(max(0.0, rss - art["bytes"] / MB))
    for (s, d), ch in choices.items():  # what the board achieves with its best variants
        w = _work(sm_by_name[s], arts_of[s])
        if w and ch.latency_ms > 0:
            rate_board.setdefault(d, []).append(w / ch.latency_ms)
    per_core = []
    for d, rates in rate_board.items():
        cores = _cores(by_board[d], profiles)
        if cores:
            per_core.append(statistics.median(rates) / cores)
    all_over = [v for vs in overhead.values() for v in vs]

    for s, d, cands in pending:
        w = _work(sm_by_name[s], arts_of[s]) or 1.0
        board = by_board[d]
        fmt_first = _BACKEND_FORMAT.get(str(board.preferred_backend or "").lower())

        def rate_of(art):
            key = (d, f"{art['format']}/{art['quant']}")
            if key in rate_key:
                return statistics.median(rate_key[key]), f"{key[1]} measured on {d} for other sub-models"
            if d in rate_board:
                return statistics.median(rate_board[d]), f"{d}'s measured rate"
            cores = _cores(board, profiles) or 1
            if per_core:
                return statistics.median(per_core) * cores, f"other boards' rate per core × {cores} cores"
            return DEFAULT_FLOPS_PER_MS_PER_CORE * cores, f"default rate × {cores} cores"

        def rank(art):
            # a variant measured on this board first (fastest rate), then the board's preferred format,
            # then the safest quantisation (fp32 always passes parity)
            key = (d, f"{art['format']}/{art['quant']}")
            rate = statistics.median(rate_key[key]) if key in rate_key else 0.0
            return (key not in rate_key, -rate, art["format"] != fmt_first, _QUANT_ORDER.index(art["quant"]),
                    art["bytes"])

        art = min(cands, key=rank)
        rate, basis = rate_of(art)
        over = (statistics.median(overhead[d]) if d in overhead else
                statistics.median(all_over) if all_over else DEFAULT_RSS_OVERHEAD_MB)
        choices[(s, d)] = Choice(s, d, art, w / rate, art["bytes"] / MB + over, True,
                                 f"not profiled on {d}; estimated from FLOPs ({basis})")
    flagged = {n for n, info in (profiles.get("boards") or {}).items()
               if isinstance(info, dict) and info.get("reachable") is False}
    for d in board_names:
        if d not in rate_board and d not in flagged and not any(k[1] == d for k in excluded):
            notes.append(f"{d} has no measurements in the profiles; its costs are FLOPs-based estimates — run "
                         f"`edvit-tool profile` on it")
    for (s, d), why in excluded.items():
        notes.append(f"{s} will not be placed on {d}: {why}")
    budgets = {b.name: float(b.memory_budget_mb) for b in boards}
    return Costs(subs, board_names, budgets, choices, excluded, notes)


def _cores(board, profiles) -> int | None:
    if getattr(board, "cores", None):
        return int(board.cores)
    probe = ((profiles.get("boards") or {}).get(board.name) or {}).get("probe") or {}
    cores = probe.get("cores_usable") or probe.get("cores")   # affinity/cgroup-limited count first
    return int(cores) if isinstance(cores, int) and not isinstance(cores, bool) and cores > 0 else None


WIRE_BYTES_PER_VALUE = {"fp32": 4, "uint8": 1, "encoded": 1}  # encoded: counted as its uint8 pixels (an upper
                                                                # bound for photos; the files are not known yet)


def input_bytes(manifest: dict, wire: str = "fp32") -> int:
    """Bytes of one input image on the wire in format `wire` (fp32 | uint8 | encoded)."""
    if wire not in WIRE_BYTES_PER_VALUE:
        raise EdvitError(f"wire must be one of {', '.join(WIRE_BYTES_PER_VALUE)}, got {wire!r}")
    return math.prod(manifest["input"]["shape"]) * WIRE_BYTES_PER_VALUE[wire]


def measured_link(profiles: dict | None, board: str) -> dict | None:
    """A board's link as `profile` measured it ({"mbps", "rtt_ms", ...}), or None when it has none."""
    info = ((profiles or {}).get("boards") or {}).get(board)
    link = info.get("link") if isinstance(info, dict) else None
    if not isinstance(link, dict):
        return None
    mbps, rtt = link.get("mbps"), link.get("rtt_ms", 0.0)
    ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in (mbps, rtt))
    return link if ok and mbps > 0 else None


def transfer_costs(manifest: dict, boards, bandwidth_mbps: float, profiles: dict | None = None,
                   wire: str = "fp32") -> dict[str, float]:
    """c[d] ms: one input image in format `wire` over board d's link — the link `profile` measured for it (its
    throughput, plus one round trip), else `bandwidth_mbps` Mbit/s for all (0 = ignore transfer)."""
    n = input_bytes(manifest, wire)
    out = {}
    for b in boards:
        link = measured_link(profiles, b.name)
        if link is not None:
            out[b.name] = n * 8 / (link["mbps"] * 1e6) * 1e3 + float(link.get("rtt_ms") or 0.0)
        else:
            out[b.name] = n * 8 / (bandwidth_mbps * 1e6) * 1e3 if bandwidth_mbps else 0.0
    return out


def transfer_basis(boards, bandwidth_mbps: float, profiles: dict | None = None) -> dict[str, dict]:
    """Per board, what its transfer cost rests on: {"source": "measured"|"--bandwidth-mbps"|"ignored", "mbps",
    "rtt_ms"}."""
    out = {}
    for b in boards:
        link = measured_link(profiles, b.name)
        if link is not None:
            out[b.name] = {"source": "measured", "mbps": link["mbps"], "rtt_ms": link.get("rtt_ms")}
        else:
            out[b.name] = {"source": "--bandwidth-mbps" if bandwidth_mbps else "ignored",
                           "mbps": bandwidth_mbps or None, "rtt_ms": None}
    return out
