"""Turn importance scores into a KeepPlan under a budget (pure arithmetic; no surgery is run here).

Ranking. Scores are normalised per (block, kind): s / mean(s of that block's heads, or neurons). A unit at its
layer's mean then scores 1, i.e. its importance is taken as proportional to its parameter cost, so the
normalised score is already "importance per parameter" and heads and neurons from all blocks share one global
ranking (ties: heads before neurons, then lower block, then lower index: deterministic). Blocks may end up
with 0 heads or 0 neurons (their branch is dropped by surgery).

Budget `params_target` (total parameters of the pruned model, head included). With r = target / current, the
embedding keeps round(E * r**embed_exponent) channels (default exponent 0.5: weights are ~E x width, so an
equal sqrt(r) shrink of both dimensions), at least 8. Then units are taken greedily in ranking order while the
exact analytic count (`params_of_arch`) stays <= target; units that do not fit are skipped, so cheaper
lower-ranked neurons fill the remainder and the result lands within about one neuron of the target. If even
the forced heads do not fit, the embedding shrinks (x0.9 steps down to 8 channels), else RecipeError.
"""
from __future__ import annotations

import numbers

from torch import Tensor, nn

from edvit_tool.errors import ModelError, RecipeError
from edvit_tool.compile.prune.importance import Importance
from edvit_tool.compile.prune.surgery import KeepPlan, check_supported, vit_arch

_BLOCK_FLAGS = ("norm1", "qkv_bias", "qk_norm", "attn_norm", "proj_bias", "ls1",
                "norm2", "fc1_bias", "mlp_norm", "fc2_bias", "ls2")


def _per_channel(mod: nn.Module | None) -> int:
    """Parameters per channel of a norm (LayerNorm 2, RmsNorm 1, Identity/None 0)."""
    n = sum(p.numel() for p in mod.parameters()) if mod is not None else 0
    return n // mod.normalized_shape[0] if n else 0


def arch_spec(model: nn.Module) -> dict:
    """Size-independent facts (biases, norms, tokens...) that, with `vit_arch`, fix the parameter count."""
    check_supported(model)
    pe = model.patch_embed.proj
    head = model.head
    spec = {
        "in_chans": pe.in_channels, "patch_area": pe.kernel_size[0] * pe.kernel_size[1],
        "patch_bias": int(pe.bias is not None), "patch_norm": _per_channel(model.patch_embed.norm),
        "tokens": sum(t.shape[1] for t in (model.cls_token, model.reg_token) if t is not None),
        "pos_len": model.pos_embed.shape[1] if model.pos_embed is not None else 0,
        "norm_pre": _per_channel(model.norm_pre), "norm": _per_channel(model.norm),
        "fc_norm": _per_channel(model.fc_norm),
        "head_bias": int(head.bias is not None) if isinstance(head, nn.Linear) else 1,  # replace_head adds one
        **{f: 0 for f in _BLOCK_FLAGS},  # a branch no block has left never counts, so 0 is safe
    }
    attn_blk = next((b for b in model.blocks if b.attn is not None), None)
    if attn_blk is not None:
        a = attn_blk.attn
        spec.update(norm1=_per_channel(attn_blk.norm1), qkv_bias=int(a.qkv.bias is not None),
                    qk_norm=_per_channel(a.q_norm) + _per_channel(a.k_norm), attn_norm=_per_channel(a.norm),
                    proj_bias=int(a.proj.bias is not None), ls1=int(hasattr(attn_blk.ls1, "gamma")))
    mlp_blk = next((b for b in model.blocks if b.mlp is not None), None)
    if mlp_blk is not None:
        m = mlp_blk.mlp
        spec.update(norm2=_per_channel(mlp_blk.norm2), fc1_bias=int(m.fc1.bias is not None),
                    mlp_norm=_per_channel(m.norm), fc2_bias=int(m.fc2.bias is not None),
                    ls2=int(hasattr(mlp_blk.ls2, "gamma")))
    return spec


def _block_params(e: int, hd: int, h: int, m: int, s: dict) -> int:
    p = 0
    if h:
        a = h * hd
        p += e * s["norm1"] + 3 * a * (e + s["qkv_bias"]) + hd * s["qk_norm"] + a * s["attn_norm"] \
            + e * (a + s["proj_bias"] + s["ls1"])
    if m:
        p += e * s["norm2"] + m * (2 * e + s["fc1_bias"] + s["mlp_norm"]) + e * (s["fc2_bias"] + s["ls2"])
    return p


def params_of_arch(arch: dict, spec: dict | nn.Module) -> int:
    """Exact parameter count of a model with sizes `arch`; spec = arch_spec(model) (or the model itself)."""
    s = arch_spec(spec) if isinstance(spec, nn.Module) else spec
    e, hd = arch["embed_dim"], arch["head_dim"]
    p = e * (s["in_chans"] * s["patch_area"] + s["patch_bias"] + s["patch_norm"] + s["tokens"] + s["pos_len"]
             + s["norm_pre"] + s["norm"] + s["fc_norm"])
    p += arch["num_outputs"] * (e + s["head_bias"])
    return p + sum(_block_params(e, hd, h, m, s) for h, m in zip(arch["heads"], arch["mlp_hidden"]))


# ---------------------------------------------------------------------------------------------- ranking

def _ranked(scores: list[Tensor], kind: int) -> list[tuple[float, int, int, int]]:
    """(-normalised score, kind, block, index) for every unit; sorting these ascending = best first."""
    out = []
    for b, s in enumerate(scores):
        if len(s) == 0:
            continue
        s = s.double().abs()
        mean = float(s.mean())
        ns = (s / mean).tolist() if mean > 0 else [0.0] * len(s)
        out += [(-v, kind, b, j) for j, v in enumerate(ns)]
    return sorted(out)


def _check_importance(imp: Importance, arch: dict) -> None:
    ok = len(imp.heads) == len(arch["heads"]) and len(imp.mlp) == len(arch["mlp_hidden"]) \
        and all(len(s) == h for s, h in zip(imp.heads, arch["heads"])) \
        and all(len(s) == m for s, m in zip(imp.mlp, arch["mlp_hidden"])) and len(imp.embed) == arch["embed_dim"]
    if not ok:
        raise ModelError("importance scores do not match the model's sizes (computed on another model?)")


def _plan_from(units, depth: int, embed: list[int] | None) -> KeepPlan:
    heads, mlp = [[] for _ in range(depth)], [[] for _ in range(depth)]
    for _, kind, b, j in units:
        (heads if kind == 0 else mlp)[b].append(j)
    return KeepPlan(heads=[sorted(h) for h in heads], mlp=[sorted(m) for m in mlp], embed=embed)


def plan_keep(model: nn.Module, importance: Importance, *, params_target: int | None = None,
              keep_ratios: dict | None = None, prune_embed: bool = True, min_heads_total: int = 1,
              embed_exponent: float = 0.5) -> KeepPlan:
    """A KeepPlan for `model` from `importance`: give exactly one of params_target / keep_ratios.

    keep_ratios: {"heads": r, "mlp": r, "embed": r} (missing = 1.0) fractions kept; heads and neurons are
    ranked globally across blocks. prune_embed=False keeps every embedding channel whatever is asked.
    """
    arch = vit_arch(model)
    _check_importance(importance, arch)
    if (params_target is None) == (keep_ratios is None):
        raise RecipeError("prune: give exactly one of a parameter target or keep ratios")
    depth, e_full, hd = len(arch["heads"]), arch["embed_dim"], arch["head_dim"]
    heads_rank, mlp_rank = _ranked(importance.heads, 0), _ranked(importance.mlp, 1)
    embed_rank = [c for _, c in sorted((-float(v), c) for c, v in enumerate(importance.embed.double().abs()))]
    min_e = min(8, e_full)
    min_h = min(max(1, int(min_heads_total)), len(heads_rank))

    def embed_keep(n: int) -> list[int] | None:
        return None if n >= e_full else sorted(embed_rank[:n])

    if keep_ratios is not None:
        r = {"heads": 1.0, "mlp": 1.0, "embed": 1.0}
        for k, v in keep_ratios.items():
            if k not in r:
                raise RecipeError(f"prune.keep_ratios: unknown key {k!r}; valid keys are heads, mlp, embed")
            if not isinstance(v, (int, float)) or not 0 <= v <= 1:
                raise RecipeError(f"prune.keep_ratios.{k} must be in [0, 1], got {v!r}")
            r[k] = float(v)
        n_h = max(min_h, round(r["heads"] * len(heads_rank)))
        n_m = round(r["mlp"] * len(mlp_rank))
        n_e = max(min_e, round(r["embed"] * e_full)) if prune_embed else e_full
        return _plan_from(heads_rank[:n_h] + mlp_rank[:n_m], depth, embed_keep(n_e))

    spec = arch_spec(model)
    total = params_of_arch(arch, spec)
    if isinstance(params_target, bool) or not isinstance(params_target, numbers.Real) or params_target < 1:
        raise RecipeError(f"prune target must be a positive parameter count, got {params_target!r}")
    params_target = int(params_target)  # a float (ratio x count) is floored
    if params_target >= total:
        return _plan_from(heads_rank + mlp_rank, depth, None)
    joint = sorted(heads_rank + mlp_rank)

    forced = heads_rank[:min_h]  # never drop every head: the best min_h heads are taken first, budget or not
    forced_set = set(forced)
    order = forced + [u for u in joint if u not in forced_set]

    def greedy(e: int) -> tuple[list, int]:
        h, m = [0] * depth, [0] * depth
        p = params_of_arch({**arch, "embed_dim": e, "heads": h, "mlp_hidden": m}, spec)
        chosen = []
        for i, (_, kind, b, _) in enumerate(order):
            nh, nm = h[b] + (kind == 0), m[b] + (kind == 1)
            delta = _block_params(e, hd, nh, nm, spec) - _block_params(e, hd, h[b], m[b], spec)
            if i >= min_h and p + delta > params_target:
                continue  # does not fit: cheaper lower-ranked units may still fill the budget
            h[b], m[b], p = nh, nm, p + delta
            chosen.append(order[i])
        return chosen, p

    ratio = params_target / total
    e = max(min_e, min(e_full, round(e_full * ratio ** embed_exponent))) if prune_embed else e_full
    chosen, p = greedy(e)
    while p > params_target:  # even the forced heads do not fit: narrow the embedding
        if not prune_embed or e == min_e:
            raise RecipeError(f"prune target of {params_target} parameters is below the smallest model this can "
                              f"make ({p} with {e} embedding channels and {min_h} head(s)); raise the target")
        e = max(min_e, int(e * 0.9))
        chosen, p = greedy(e)
    if prune_embed and e < e_full and len(chosen) == len(order):
        # everything fit: the embedding was too narrow for this budget, widen it to the largest that fits
        lo, hi = e, e_full
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if params_of_arch({**arch, "embed_dim": mid}, spec) <= params_target else (lo, mid - 1)
        e = lo
        chosen, p = greedy(e)
    return _plan_from(chosen, depth, embed_keep(e))
