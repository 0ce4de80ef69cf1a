"""The peer: the single class-agnostic pruned ViT a user would deploy instead of the ensemble.

It is pruned to the largest sub-model's parameter count with the same importance machinery (on all classes),
and trained with the same distillation loss, batches and augmentation — given the same total compile compute as
the whole ensemble (`peer.compute: ensemble` = K times one sub-model's recovery and fine-tune steps) plus early
stopping on a validation split, which the sub-models do not get. The ensemble is only worth shipping where it
beats this.
"""

from __future__ import annotations

import time

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
