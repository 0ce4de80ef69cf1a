"""Importance of every head, MLP neuron and embedding channel, measured with forward hooks.

Measured quantities (timm source is never patched):
  head h of block i      the attention output of that head, i.e. the input of `attn.proj` split into heads
  MLP neuron j of block i the hidden activation after GELU (and mlp.norm), i.e. the input of `mlp.fc2`
  embedding channel c    the residual stream after each block, averaged over blocks

A criterion maps one batch's activation `a` (and gradient `g` of the loss w.r.t. it, if it needs one), both
shaped [batch, tokens, units, dims per unit], to per-unit scores summed over the batch. Scores are averaged
over all samples (and, for embed, over blocks), so they do not depend on the data set size.

  taylor     |sum_{tokens,dims} a*g| per sample (first-order loss change when the unit is zeroed for that
             sample, Molchanov et al. 2019), averaged over samples
  magnitude  mean |a| over tokens and dims, averaged over samples
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import Tensor, nn

from edvit_tool.errors import DataError, RecipeError
from edvit_tool.compile.prune.surgery import check_supported


@dataclass
class Importance:
    heads: list[Tensor]  # per block, one score per current head (empty for a dropped branch)
    mlp: list[Tensor]    # per block, one score per current hidden neuron
    embed: Tensor        # one score per embedding channel


CRITERIA: dict[str, Callable[[Tensor, Tensor | None], Tensor]] = {}


def register_criterion(name: str, *, needs_grad: bool = False):
    """Decorator: fn(act [B,T,U,D], grad [B,T,U,D] | None) -> [U] scores summed over the batch."""
    def deco(fn):
        fn.needs_grad = needs_grad
        CRITERIA[name] = fn
        return fn
    return deco


@register_criterion("taylor", needs_grad=True)
def taylor(act: Tensor, grad: Tensor | None) -> Tensor:
    return (act * grad).sum(dim=(1, 3)).abs().sum(0)


@register_criterion("magnitude")
def magnitude(act: Tensor, grad: Tensor | None) -> Tensor:
    return act.abs().mean(dim=(1, 3)).sum(0)


def compute_importance(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]],
                       loss_fn: Callable[[Tensor, Tensor], Tensor], criterion: str, device) -> Importance:
    """Scores for `model` (moved to `device` in place, run in eval mode, training flag restored)."""
    fn = CRITERIA.get(criterion)
    if fn is None:
        raise RecipeError(f"prune.criterion must be one of {sorted(CRITERIA)}, got {criterion!r}")
    check_supported(model)
    needs_grad = getattr(fn, "needs_grad", False)
    model.to(device)
    blocks = list(model.blocks)
    # site ("heads" | "mlp" | "embed", block) -> this batch's activation / running score / units in it.
    # Keep the very tensor the graph uses (a reshaped view would get no gradient); reshape when scoring.
    acts: dict[tuple[str, int], Tensor] = {}
    totals: dict[tuple[str, int], Tensor] = {}
    units: dict[tuple[str, int], int] = {}
    handles = []

    def pre_hook(key):
        def hook(_mod, args):
            acts[key] = args[0]
        return hook

    def out_hook(key):
        def hook(_mod, _args, out):
            acts[key] = out
        return hook

    for i, blk in enumerate(blocks):
        if blk.attn is not None:
            units[("heads", i)] = blk.attn.num_heads
            handles.append(blk.attn.proj.register_forward_pre_hook(pre_hook(("heads", i))))
        if blk.mlp is not None:
            units[("mlp", i)] = blk.mlp.fc2.in_features
            handles.append(blk.mlp.fc2.register_forward_pre_hook(pre_hook(("mlp", i))))
        units[("embed", i)] = model.patch_embed.proj.out_channels
        handles.append(blk.register_forward_hook(out_hook(("embed", i))))

    was_training, was_ckpt, n = model.training, model.grad_checkpointing, 0
    model.eval()  # no dropout / drop-path noise in the scores
    model.grad_checkpointing = False  # recomputed blocks would detach the hooked activations
    try:
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            acts.clear()
            if needs_grad:
                with torch.enable_grad():
                    # grads w.r.t. activations only: make the input require grad so they exist even if the
                    # weights are frozen; autograd.grad leaves the parameters' .grad untouched
                    logits = model(x.detach().requires_grad_(True))
                    keys = list(acts)
                    grads = torch.autograd.grad(loss_fn(logits, y), [acts[k] for k in keys], allow_unused=True)
                grad_of = dict(zip(keys, grads))
            else:
                with torch.no_grad():
                    model(x)
                grad_of = {}
            for k, a in acts.items():
                g = grad_of.get(k)
                if needs_grad and g is None:
                    g = torch.zeros_like(a)
                shape = (*a.shape[:-1], units[k], -1)  # [B, T, units, dims per unit]
                s = fn(a.detach().reshape(shape), None if g is None else g.detach().reshape(shape))
                s = s.detach().float().cpu()
                totals[k] = totals[k] + s if k in totals else s
            n += x.shape[0]
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
        model.grad_checkpointing = was_ckpt
    if n == 0:
        raise DataError("no images to measure importance on (the group's data loader is empty)")

    def get(kind, i, size):
        return totals[(kind, i)] / n if (kind, i) in totals else torch.zeros(size)

    heads = [get("heads", i, b.attn.num_heads if b.attn is not None else 0) for i, b in enumerate(blocks)]
    mlp = [get("mlp", i, b.mlp.fc2.in_features if b.mlp is not None else 0) for i, b in enumerate(blocks)]
    embed_dim = model.patch_embed.proj.out_channels
    embed = torch.stack([get("embed", i, embed_dim) for i in range(len(blocks))]).mean(0) if blocks \
        else torch.zeros(embed_dim)
    return Importance(heads=heads, mlp=mlp, embed=embed)
