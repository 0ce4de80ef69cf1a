"""The demo's "user checkpoint": a small timm ViT trained on digits (cached under runs/)."""

from __future__ import annotations

import os

import torch

from .compile import checkpoint, distill
from .compile.data import load_data, input_spec
from .config.recipe import Recipe


def train_demo_model(recipe: Recipe, out_path: str, steps: int = 1500, bars=None) -> float:
    """Train the recipe's model on the recipe's data (train split only) and save it as safetensors.

    Returns its test accuracy. The test split is the same one compile later holds out (same seed)."""
    from safetensors.torch import save_file

    from .compile.pipeline import set_threads

    torch.manual_seed(recipe.seed)
    set_threads(recipe.threads)
    m = recipe.model
    model = checkpoint.create_model(m.name, m.kwargs)
    spec = input_spec(model, recipe.data)
    data = load_data(recipe, spec, model.num_classes)
    train = data.train
    device = checkpoint.resolve_device(recipe.device)
    advance = bars.task("train original ViT", steps) if bars else None
    distill.train_classifier(model, train.x, train.y, steps, 64, 2e-3, device, recipe.seed, advance)
    acc = distill.accuracy(distill.predict(model, data.test.x, device), data.test.y)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    tmp = out_path + ".tmp"
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, tmp)
    os.replace(tmp, out_path)
    return acc
