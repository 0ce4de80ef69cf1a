"""The build dir: written once every stage has run (staged, renamed into place when complete), and its torch
modules (sub-models + fusion head) rebuilt from its checkpoints and manifest (`export` on an existing build)."""

from __future__ import annotations

import datetime
import io
import os
import time
from types import SimpleNamespace

import numpy as np
import torch

from .. import __version__
from ..artifacts import staged_dir, write_manifest
from ..config import recipe as recipe_mod
from ..config.recipe import Recipe
from ..errors import ArtifactError
from ..report import write_reports
from . import checkpoint, distill
from .data import stratified_sample
from .fuse import build_fusion_head
from .prune import surgery


def state_bytes(model) -> int:
    """Size of the model's fp32 state dict as saved (what a board would have to hold)."""
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buf)
    return buf.tell()


def flops(model) -> int:
    pe = model.patch_embed
    return surgery.estimate_flops(surgery.vit_arch(model), pe.img_size, pe.patch_size,
                                  pe.proj.in_channels, model.num_prefix_tokens)


def group_accuracy(logits: torch.Tensor, y: torch.Tensor, group: list[int], n_cls: int) -> float:
    """Top-1 over the sub-model's |g|+1 outputs on test images of its own classes ("other" counts wrong)."""
    y_rel = distill.relabel(y, group, n_cls)
    mask = y_rel < len(group)
    return float((logits[mask].argmax(1) == y_rel[mask]).float().mean())


def _save_npz(path: str, **arrays) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.savez(path, **{k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in arrays.items()})


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


def write_build(recipe: Recipe, out_dir: str, bars, st: SimpleNamespace) -> SimpleNamespace:
    """The build dir (staged, renamed into place when complete): checkpoints, reference sets, artifacts, reports."""
    model, subs, groups, data, fu, device, seed = st.model, st.subs, st.groups, st.data, st.fu, st.device, st.seed
    m, n_cls, orig_params, spec, peer_info = st.m, st.n_cls, st.orig_params, st.spec, st.peer_info
    te_out, va_out, t_va, wrapped = st.te_out, st.va_out, st.t_va, st.wrapped
    orig_acc, fused_acc, fused_val_acc = st.orig_acc, st.fused_acc, st.fused_val_acc
    logits_test_acc = st.logits_test_acc
    t_start = st.t_start
    orig_bytes = state_bytes(model)
    head, kind, dims = fu.head, fu.kind, fu.dims
    submodel_entries = []
    for gi, (group, sub) in enumerate(zip(groups, subs)):
        submodel_entries.append({
            "name": f"g{gi}", "group": gi, "classes": group, "class_names": [data.classes[c] for c in group],
            "arch": surgery.vit_arch(sub), "params": surgery.count_params(sub), "bytes": state_bytes(sub),
            "flops": flops(sub), "feature_dim": dims[gi], "num_outputs": len(group) + 1,
            "checkpoint": f"submodels/g{gi}.pt",
            "params_ratio": surgery.count_params(sub) / orig_params,
            "accuracy_in_group": group_accuracy(te_out[gi][1], data.test.y, group, n_cls),
            "accuracy_in_group_val": group_accuracy(va_out[gi][1], data.val.y, group, n_cls),
        })
    manifest = {
        "schema_version": 1, "tool_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "name": recipe.name,
        "model": {"name": m.name, "kwargs": m.kwargs, "params": orig_params, "bytes": orig_bytes,
                  "flops": flops(model)},
        "input": spec, "classes": data.classes, "groups": groups, "submodels": submodel_entries,
        "fusion": {"kind": kind, "source": fu.source, "input_dims": [int(d) for d in head.input_dims],
                   "num_classes": n_cls, "checkpoint": "fusion/fusion.pt",
                   "hidden": head.net[0].out_features if kind == "mlp" else None},
        "accuracy": {"original": orig_acc, "fused": fused_acc, "fused_logits": logits_test_acc,
                     "original_val": distill.accuracy(t_va, data.val.y), "fused_val": fused_val_acc,
                     "fusion_choice": fu.choice, "fusion_candidates_test": st.candidates_test,
                     "split_sizes": {"finetune": len(data.finetune), "fusion": len(data.fusion),
                                     "val": len(data.val), "test": len(data.test), "val_source": data.val_source},
                     "exported": {}},
        "artifacts": [],
    }
    from .pipeline import compute_units

    manifest["compute_steps"] = compute_units(recipe, len(groups), st.st.params_target)
    if st.st.sizing is not None:  # group -> board pairing for `assign`
        manifest["sizing"] = st.st.sizing.to_dict()
    out_dir = os.path.abspath(out_dir)
    gate_failures: list[str] = []
    with staged_dir(out_dir) as root:
        os.makedirs(os.path.join(root, "submodels"))
        os.makedirs(os.path.join(root, "fusion"))
        for gi, sub in enumerate(subs):
            checkpoint.save_state_dict(sub, os.path.join(root, "submodels", f"g{gi}.pt"))
        checkpoint.save_state_dict(head, os.path.join(root, "fusion", "fusion.pt"))
        # val.npz: what the export gate and the float fallback decide on; eval.npz: held-out (test) images for
        # the exported figures only. Both class-stratified seeded samples (splits can be class-sorted).
        val_idx = stratified_sample(data.val.y, recipe.data.val_samples, seed + 3)
        eval_idx = stratified_sample(data.test.y, recipe.data.eval_samples, seed + 4)
        from .. import reference  # uint8 pixels at model resolution, normalised on load: never float32 here
        reference.save(os.path.join(root, "reference", "val.npz"), data.val.x.uint8(val_idx), data.val.y[val_idx])
        reference.save(os.path.join(root, "reference", "eval.npz"), data.test.x.uint8(eval_idx),
                       data.test.y[eval_idx])
        manifest["accuracy"].update(eval_samples=len(eval_idx), val_samples=len(val_idx))
        # Calibration: every sub-model sees every class at inference, so all calibrate on one class-stratified
        # random sample of all classes from the fine-tune split; the fusion head on those images' features.
        cal_idx = stratified_sample(data.finetune.y, recipe.export.calibration_samples, seed + 5)
        cal_x = data.finetune.x.subset(cal_idx)  # lazy: predict normalises it batch by batch
        for gi in range(len(groups)):
            reference.save(os.path.join(root, "reference", f"calib-g{gi}.npz"), cal_x.uint8())
        cal_out = [distill.predict(w, cal_x, device) for w in wrapped]
        _save_npz(os.path.join(root, "reference", "calib-fusion.npz"),
                  x=torch.cat([o[0 if fu.source == "features" else 1] for o in cal_out], 1))
        with open(os.path.join(root, "recipe.resolved.yaml"), "w", encoding="utf-8") as f:
            f.write(recipe_mod.dump(recipe))
        if recipe.export.formats:
            from ..export import export_build

            models = {f"g{gi}": surgery.SubModelWrapper(s).cpu().eval() for gi, s in enumerate(subs)}
            models["fusion"] = head.cpu().eval()
            # export/ takes plain mappings (its own defaults for missing keys)
            gate_failures = export_build(root, manifest, models, recipe.export.to_dict(), recipe.gate.to_dict(),
                                         progress=bars)
        elapsed = time.perf_counter() - t_start
        report = write_reports(root, manifest, peer_info, elapsed, gate_failures)
        write_manifest(root, manifest)
    return SimpleNamespace(out_dir=out_dir, manifest=manifest, report=report, gate_failures=gate_failures,
                    submodels=subs, fusion=head, data=data, model=model)
