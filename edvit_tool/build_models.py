"""Rebuild a build's torch modules (sub-models + fusion head) from its checkpoints and manifest."""

from __future__ import annotations

import os

import torch

from .errors import ArtifactError
from .fuse import build_fusion_head
from .prune import surgery


def _load(root: str, rel: str) -> dict:
    path = os.path.join(root, rel)
    if not os.path.isfile(path):
        raise ArtifactError(f"{path}: missing; the build is incomplete — rerun `edvit-tool compile`")
    return torch.load(path, map_location="cpu", weights_only=True)


def load_build_models(build_dir: str, manifest: dict) -> dict:
    """{"g0": SubModelWrapper, ..., "fusion": FusionMLP | EnsembleFusion | LogitFusion}, all in eval mode on CPU."""
    m = manifest["model"]
    models = {}
    for sm in manifest["submodels"]:
        net = surgery.build_pruned(m["name"], m["kwargs"], sm["arch"])
        try:
            net.load_state_dict(_load(build_dir, sm["checkpoint"]), strict=True)
        except RuntimeError as e:
            raise ArtifactError(f"{os.path.join(build_dir, sm['checkpoint'])}: does not match the manifest's "
                                f"architecture ({str(e).splitlines()[0]}); rerun `edvit-tool compile`") from None
        models[sm["name"]] = surgery.SubModelWrapper(net.eval()).eval()
    fu = manifest["fusion"]
    head = build_fusion_head(fu, manifest["groups"])
    if fu["kind"] != "logits":
        head.load_state_dict(_load(build_dir, fu["checkpoint"]), strict=True)
    models["fusion"] = head.eval()
    return models
