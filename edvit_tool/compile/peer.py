"""The peer: the single class-agnostic pruned ViT a user would deploy instead of the ensemble.

It is pruned to the largest sub-model's parameter count with the same importance machinery (on all classes),
and trained with the same distillation loss, batches and augmentation — given the same total compile compute as
the whole ensemble (`peer.compute: ensemble` = K times one sub-model's recovery and fine-tune steps) plus early
stopping on a validation split, which the sub-models do not get. The ensemble is only worth shipping where it
beats this.

Its parameter budget is the per-board size, the largest sub-model budget (known before any sub-model is trained,
so the peer can train beside them: `peer.parallel`, jobs.PeerProcess); with keep-ratio targets, which have no
budget in parameters, it is the largest trained sub-model.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import torch

from ..config.recipe import Recipe
from . import distill
from .prune import surgery


def build_peer(model, train: distill.TrainSet, val_x: torch.Tensor, val_y: torch.Tensor, recipe: Recipe,
               params_budget: int, k: int, device, seed: int, bars=None, val_name: str = "validation"):
    """(peer timm ViT, report entry). `val_x/val_y` pick the early-stopping checkpoint (never the test set)."""
    from .build import state_bytes
    from .pipeline import prune_and_finetune, train_steps

    t0 = time.perf_counter()
    n_cls = train.t_logits.shape[1]
    compute = float(k) if recipe.peer.compute == "ensemble" else 1.0

    validate = distill.val_accuracy(val_x, val_y, device)
    student = prune_and_finetune(model, list(range(n_cls)), train, recipe, params_budget, device, seed, bars,
                                 label="peer", compute=compute, validate=validate)
    peer = student.model.eval()
    steps = train_steps(recipe, compute)
    info = {"params": surgery.count_params(peer), "bytes": state_bytes(peer), "params_budget": params_budget,
            "compute": recipe.peer.compute, "train_steps": steps, "early_stopping": val_name,
            "validation_accuracy": validate(student), "seconds": time.perf_counter() - t0}
    return peer, info


def peer_budget(st: SimpleNamespace, subs: list | None = None) -> int | None:
    """The peer's parameter budget: the largest per-board budget, or (keep-ratio targets) the largest trained
    sub-model in `subs` — None when that is not known yet."""
    if st.params_target is not None:
        return max(st.params_targets)
    return max(surgery.count_params(s) for s in subs) if subs else None


def train_peer(st: SimpleNamespace, recipe: Recipe, device, bars=None, subs: list | None = None):
    """build_peer on what pipeline.prepare loaded, seeded by the recipe's seed alone: the same peer whether it
    trains after the ensemble in this process or beside it in another."""
    from .pipeline import seed_everything

    seed_everything(st.seed + 99)
    return build_peer(st.model, st.train, st.data.val.x, st.data.val.y, recipe, peer_budget(st, subs), st.k,
                      device, st.seed + 99, bars, "validation split")
