"""The only place that creates timm models and loads weights.

Checkpoints: raw state_dict (.pth/.pt/.bin), dicts wrapping one under `state_dict` / `model` / `model_ema`, and
.safetensors. Always `weights_only=True`: a checkpoint is data, never code.
"""

from __future__ import annotations

import os

import torch

from ..errors import CheckpointError, ModelError

WRAPPER_KEYS = ("state_dict", "model", "model_ema", "state_dict_ema")


def create_model(name: str, kwargs: dict):
    """timm.create_model(name, pretrained=False, **kwargs), checked to be a supported ViT."""
    import timm

    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:5]
        raise ModelError(f"model.name: unknown timm model {name!r}"
                         + (f" (similar: {', '.join(close)})" if close else "") + "; see timm.list_models()")
    try:
        model = timm.create_model(name, pretrained=False, **kwargs)
    except TypeError as e:
        raise ModelError(f"model.kwargs: {name} does not accept these arguments ({e})") from None
    check_vit(model, name)
    return model.eval()


def check_vit(model, name: str = "") -> None:
    from timm.models.vision_transformer import VisionTransformer

    if not isinstance(model, VisionTransformer):
        raise ModelError(f"model.name: {name or type(model).__name__} is a {type(model).__name__}, not a timm "
                         f"VisionTransformer; edvit-tool prunes ViT attention heads/MLPs (use e.g. vit_tiny_patch16_224)")
    pool = model.global_pool
    if pool not in ("token", "avg") or (pool == "token" and model.cls_token is None):
        raise ModelError(f"model: {name} uses global_pool={pool!r}"
                         f"{' without a class token' if pool == 'token' else ''}; edvit-tool needs pooled features "
                         f"(global_pool 'token' with a class token, or 'avg')")


def read_state_dict(path: str) -> dict:
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: checkpoint file not found; check model.checkpoint in the recipe")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            sd = load_file(path)
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any decode failure of a user file is a user error, reported with its cause
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                              f"expected a state_dict saved with torch.save or a .safetensors file") from None
    if isinstance(sd, dict):
        for key in WRAPPER_KEYS:
            if key in sd and isinstance(sd[key], dict):
                sd = sd[key]
                break
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path}: not a state_dict (expected tensors, or a dict with one of "
                              f"{', '.join(WRAPPER_KEYS)})")
    prefix = "module."
    if sd and all(k.startswith(prefix) for k in sd):
        sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def load_weights(model, path: str) -> None:
    sd = read_state_dict(path)
    own = model.state_dict()
    for key, tensor in sd.items():
        if key in own and own[key].shape != tensor.shape:
            hint = ""
            if key.startswith("head."):
                hint = " (set model.kwargs.num_classes to the checkpoint's class count)"
            raise CheckpointError(f"{path}: tensor {key} has shape {tuple(tensor.shape)} but the model expects "
                                  f"{tuple(own[key].shape)}{hint}; check model.name/model.kwargs match the checkpoint")
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensor(s) e.g. {', '.join(missing[:3])}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected e.g. {', '.join(unexpected[:3])}")
        raise CheckpointError(f"{path}: checkpoint does not match {type(model).__name__}: {'; '.join(parts)}; "
                              f"check model.name/model.kwargs")
    model.load_state_dict(sd, strict=True)


def load_model(name: str, kwargs: dict, checkpoint: str | None):
    model = create_model(name, kwargs)
    if checkpoint:
        load_weights(model, checkpoint)
    return model.eval()


def save_state_dict(model, path: str) -> None:
    """Plain tensors only, so the file loads with weights_only=True."""
    torch.save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, path)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ModelError("--device cuda: no CUDA device is available here; use --device cpu or auto")
    return torch.device(name)
