"""`compile`: checkpoint → class groups → class-wise pruned, KD-fine-tuned sub-models → fusion head → build dir.

Pure orchestration of the stage modules (partition, prune, finetune, fuse, export, artifacts); the CLI driver
only parses flags and prints. The build is staged in a temp dir and renamed into place when complete.
"""

from __future__ import annotations

import copy
import datetime
import io
import os
import time
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

from . import __version__, checkpoint, finetune, fuse, partition
from .artifacts import staged_dir, write_manifest
from .config import recipe as recipe_mod
from .data import load_data, input_spec
from .prune import surgery
from .prune.importance import compute_importance
from .prune.plan import plan_keep
from .report import write_reports


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


def set_threads(n: int) -> None:
    """Small ViTs gain little from intra-op threads, and oversubscribed cores make them much slower."""
    if n > 0:
        torch.set_num_threads(n)


def state_bytes(model) -> int:
    """Size of the model's fp32 state dict as saved (what a board would have to hold)."""
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buf)
    return buf.tell()


def _flops(model) -> int:
    pe = model.patch_embed
    return surgery.estimate_flops(surgery.vit_arch(model), pe.img_size, pe.patch_size,
                                  pe.proj.in_channels, model.num_prefix_tokens)


def _importance_batches(train: finetune.TrainSet, y_rel, n_group, batch_size, count, seed):
    """Class-balanced batches of the group's own images only (class-conditional importance)."""
    idx_in = torch.nonzero(y_rel < n_group).flatten()
    sampler = finetune.BalancedBatches(y_rel[idx_in], n_group, batch_size, 0.5, seed)
    for _ in range(count):
        sel = idx_in[sampler()]
        yield train.take(sel)[0], y_rel[sel]


def teacher_features(model, x: torch.Tensor, device) -> torch.Tensor:
    """The original's pooled (final-norm CLS) features: the feature-distillation targets."""
    return finetune.predict(surgery.SubModelWrapper(model), x, device)[0]


def prune_and_finetune(model, group: list[int], train: finetune.TrainSet, recipe: dict, params_target: int | None,
                       device, seed: int, bars=None, label: str = "", compute: float = 1.0,
                       validate=None) -> finetune.Student:
    """One sub-model: group head, iterative class-wise pruning with short recoveries, then distillation.

    Returns the finetune.Student (its `.model` is the pruned timm ViT, `.aux` its N-class head for the fusion).
    `group` covering every class gives the class-agnostic peer (no "other" output, no aux head). `compute`
    scales every training phase (the peer gets K sub-models' steps); `validate` enables early stopping.
    """
    pr, ft = recipe["prune"], recipe["finetune"]
    n_cls = train.t_logits.shape[1]
    base = copy.deepcopy(model).to(device)
    everything = len(group) == n_cls
    if not everything:
        surgery.replace_head(base, len(group) + 1, init_from=surgery.group_head_init(base, group))
    aux_init = model.head if not everything and ft["aux_weight"] > 0 else None
    student = finetune.Student.from_teacher(base, aux_init,
                                            feature_distill=ft["feature_weight"] > 0 and train.t_feats is not None)
    student.to(device)
    y_rel = finetune.relabel(train.y, group, n_cls)
    n_out = len(group) if everything else len(group) + 1
    p0 = surgery.count_params(base)
    steps = pr["steps"]
    keep = pr["target"]["keep"]
    rec_steps, ft_steps = int(round(pr["recovery_steps"] * compute)), int(round(ft["steps"] * compute))
    recoveries = steps if ft_steps == 0 else steps - 1
    total = recoveries * rec_steps + ft_steps
    advance = bars.task(f"{label} prune+fine-tune", total) if bars else None
    for i in range(1, steps + 1):
        batches = _importance_batches(train, y_rel, len(group), ft["batch_size"], pr["importance_batches"], seed + i)
        imp = compute_importance(student.model, batches, lambda out, t: F.cross_entropy(out, t), pr["criterion"],
                                 device)
        if params_target is not None:
            target = int(round(p0 * (params_target / p0) ** (i / steps)))
            plan = plan_keep(student.model, imp, params_target=target, prune_embed=pr["prune_embed"])
        else:
            ratios = {k: v ** (1.0 / steps) for k, v in keep.items() if v is not None}
            plan = plan_keep(student.model, imp, keep_ratios=ratios, prune_embed=pr["prune_embed"])
        student = student.prune(plan).to(device)
        if i < steps or ft_steps == 0:
            finetune.distill_finetune(student, train, group, rec_steps, ft, device, seed + 100 * i, advance)
    evals = recipe["peer"]["evals"] if validate is not None else 0
    finetune.distill_finetune(student, train, group, ft_steps, ft, device, seed + 7, advance, validate=validate,
                              eval_every=max(1, ft_steps // evals) if evals else 0)
    assert surgery.vit_arch(student.model)["num_outputs"] == n_out
    return student.eval()


def _group_accuracy(logits: torch.Tensor, y: torch.Tensor, group: list[int], n_cls: int) -> float:
    """Top-1 over the sub-model's |g|+1 outputs on test images of its own classes ("other" counts wrong)."""
    y_rel = finetune.relabel(y, group, n_cls)
    mask = y_rel < len(group)
    return float((logits[mask].argmax(1) == y_rel[mask]).float().mean())


def _save_npz(path: str, **arrays) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.savez(path, **{k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in arrays.items()})


def _eval_subset(n: int, cap: int, seed: int) -> torch.Tensor:
    if n <= cap:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed + 3))[:cap].sort().values


def _fit_fusion(fcfg: dict, wrapped, students, model, groups, data, t_fu, te_out, device, seed: int,
                bars) -> SimpleNamespace:
    """The chosen fusion head (and what choosing it measured).

    Trained / picked on the fusion split (which no sub-model trained on). The split is small, so shifted views
    of it are added (features through the frozen sub-models, teacher logits from the original). `auto` compares
    the k-fold accuracy of the MLP and of the ensemble weights with the training-free logit fusion there.
    `candidates` also holds every kind's test accuracy — for reports and ablations only, never for choosing.
    """
    log = bars.log if bars else (lambda s: None)
    n_cls = len(data.classes)
    gen = torch.Generator().manual_seed(seed + 5)
    views = [data.fusion.x] + [finetune.augment(data.fusion.x, gen, pad=2) for _ in range(fcfg["augment_views"])]
    fu_views = [[finetune.predict(w, v, device) for w in wrapped] for v in views]   # [view][sub] -> (feat, logit)
    feats_fu = torch.stack([torch.cat([o[0] for o in vo], 1) for vo in fu_views])    # [V, M, F]
    logits_fu = torch.stack([torch.cat([o[1] for o in vo], 1) for vo in fu_views])   # [V, M, L]
    t_fu = torch.stack([t_fu] + [finetune.predict(model, v, device) for v in views[1:]])
    dims = [o[0].shape[1] for o in fu_views[0]]
    feats_te = torch.cat([o[0] for o in te_out], 1)
    logits_te = torch.cat([o[1] for o in te_out], 1)
    logit_fusion = fuse.LogitFusion(groups, n_cls)
    ensemble = fuse.EnsembleFusion.from_students(students, groups, n_cls)
    with torch.no_grad():
        acc_logits_fu = finetune.accuracy(logit_fusion(logits_fu[0]), data.fusion.y)
        acc_logits_te = finetune.accuracy(logit_fusion(logits_te), data.test.y)
    kind, cv = fcfg["kind"], {"logits": acc_logits_fu}
    if kind == "auto":
        cv["mlp"] = fuse.cross_val_mlp_accuracy(feats_fu, data.fusion.y, t_fu, dims, n_cls, fcfg, seed)
        cv["ensemble"] = fuse.cross_val_ensemble_accuracy(ensemble, feats_fu, data.fusion.y, seed)
        kind = max(("logits", "ensemble", "mlp"), key=lambda k_: cv[k_])  # ties: fewest fitted numbers
        log("fusion on the fusion split: " + ", ".join(f"{k_} {v:.4f}" for k_, v in cv.items()) + f" → {kind}")
    v = feats_fu.shape[0]
    ensemble.fit(feats_fu.reshape(-1, feats_fu.shape[-1]), data.fusion.y.repeat(v))
    candidates = {"logits": acc_logits_te}
    with torch.no_grad():
        candidates["ensemble"] = finetune.accuracy(ensemble(feats_te), data.test.y)
    mlp = None
    if kind == "mlp" or fcfg["kind"] == "auto":
        advance = bars.task("fusion head", fcfg["steps"]) if bars else None
        mlp = fuse.train_fusion_mlp(feats_fu.reshape(-1, feats_fu.shape[-1]), data.fusion.y.repeat(v),
                                    t_fu.reshape(-1, t_fu.shape[-1]), dims, n_cls, fcfg, seed, advance)
        with torch.no_grad():
            candidates["mlp"] = finetune.accuracy(mlp(feats_te), data.test.y)
            both = F.log_softmax(mlp(feats_te), 1) + F.log_softmax(ensemble(feats_te), 1)
            candidates["mlp*ensemble"] = finetune.accuracy(both, data.test.y)
    common = dict(kind=kind, dims=dims, mlp_cv_accuracy=cv.get("mlp"), logits_test_accuracy=acc_logits_te,
                  cv=cv, candidates=candidates)
    if kind in ("mlp", "ensemble"):
        head = mlp if kind == "mlp" else ensemble
        return SimpleNamespace(head=head, source="features", calibration=feats_fu[0], test_inputs=feats_te, **common)
    return SimpleNamespace(head=logit_fusion, source="logits", calibration=logits_fu[0], test_inputs=logits_te,
                           **common)


def compile_build(recipe: dict, out_dir: str, bars=None, peer: bool = False) -> SimpleNamespace:
    t_start = time.perf_counter()
    seed = recipe["seed"]
    seed_everything(seed)
    set_threads(recipe["threads"])
    device = checkpoint.resolve_device(recipe["device"])
    m = recipe["model"]
    if not m["checkpoint"]:
        from .errors import RecipeError
        raise RecipeError("model.checkpoint is required (a .pth/.pt/.safetensors state dict of the fine-tuned ViT)")
    model = checkpoint.load_model(m["name"], m["kwargs"], m["checkpoint"])
    surgery.check_supported(model)
    n_cls = model.num_classes
    k = recipe["split"]["groups"]
    partition.group_sizes(n_cls, k)  # fail on K > N before any work
    spec = input_spec(model, recipe["data"])
    log = bars.log if bars else (lambda s: None)
    data = load_data(recipe, spec, n_cls)
    log(f"data: {len(data.finetune)} fine-tune / {len(data.fusion)} fusion / {len(data.test)} test images, "
        f"{n_cls} classes")

    # The original model is the teacher: its logits are computed once for every split.
    t_ft = finetune.predict(model, data.finetune.x, device)
    t_fu = finetune.predict(model, data.fusion.x, device)
    t_te = finetune.predict(model, data.test.x, device)
    orig_acc = finetune.accuracy(t_te, data.test.y)
    orig_params = surgery.count_params(model)
    log(f"original {m['name']}: {orig_params:,} params, test accuracy {orig_acc:.4f}")

    sim = None
    if recipe["split"]["strategy"] == "similarity":
        feats, _ = finetune.predict(surgery.SubModelWrapper(model), data.finetune.x, device)
        sim = partition.class_similarity(feats.numpy(), data.finetune.y.numpy(), n_cls)
    groups = partition.partition(recipe["split"]["strategy"], n_cls, k, sim)
    log("groups: " + "  ".join(f"g{i}={[data.classes[c] for c in g]}" for i, g in enumerate(groups)))

    ratio = recipe["prune"]["target"]["params_ratio"]
    params_target = int(orig_params * ratio) if ratio is not None else None
    train = finetune.TrainSet(data.finetune.x, data.finetune.y, t_ft, teacher_features(model, data.finetune.x, device))
    t_sub = time.perf_counter()
    students = []
    for gi, group in enumerate(groups):
        students.append(prune_and_finetune(model, group, train, recipe, params_target, device, seed + 1000 * (gi + 1),
                                           bars, label=f"g{gi}"))
        n = surgery.count_params(students[-1].model)
        log(f"g{gi}: {n:,} params ({n / orig_params:.1%})")
    subs = [s.model for s in students]

    wrapped = [surgery.SubModelWrapper(s) for s in subs]
    te_out = [finetune.predict(w, data.test.x, device) for w in wrapped]
    fu = _fit_fusion(recipe["fusion"], wrapped, students, model, groups, data, t_fu, te_out, device, seed, bars)
    ensemble_seconds = time.perf_counter() - t_sub
    # reference/eval.npz holds a seeded random subset (a class-ordered split must not give a class-ordered
    # subset); exported artifacts are gated against the PyTorch fused accuracy on that same subset.
    eval_idx = _eval_subset(len(data.test), recipe["data"]["eval_samples"], seed)
    with torch.no_grad():
        fused_logits_te = fu.head(fu.test_inputs)
    fused_acc = finetune.accuracy(fused_logits_te, data.test.y)
    fused_eval_acc = finetune.accuracy(fused_logits_te[eval_idx], data.test.y[eval_idx])
    log(f"fused ({fu.kind}) test accuracy {fused_acc:.4f} vs original {orig_acc:.4f}")

    peer_info = None
    if peer:
        from .peer import build_peer

        biggest = max(surgery.count_params(s) for s in subs)
        val = getattr(data, "val", None)
        val_name = "validation split" if val is not None else "fusion split (no validation split in this build)"
        val = val if val is not None else data.fusion
        peer_model, peer_info = build_peer(model, train, val.x, val.y, recipe, biggest, k, device, seed + 99, bars,
                                           val_name)
        peer_info["accuracy"] = finetune.accuracy(finetune.predict(peer_model, data.test.x, device), data.test.y)
        peer_info["ensemble_seconds"] = ensemble_seconds
        log(f"peer (one class-agnostic pruned ViT at {biggest:,} params, {peer_info['train_steps']} steps): "
            f"accuracy {peer_info['accuracy']:.4f} vs fused {fused_acc:.4f}")

    orig_bytes = state_bytes(model)
    head, kind, dims = fu.head, fu.kind, fu.dims
    submodel_entries = []
    for gi, (group, sub) in enumerate(zip(groups, subs)):
        submodel_entries.append({
            "name": f"g{gi}", "group": gi, "classes": group, "class_names": [data.classes[c] for c in group],
            "arch": surgery.vit_arch(sub), "params": surgery.count_params(sub), "bytes": state_bytes(sub),
            "flops": _flops(sub), "feature_dim": dims[gi], "num_outputs": len(group) + 1,
            "checkpoint": f"submodels/g{gi}.pt",
            "params_ratio": surgery.count_params(sub) / orig_params,
            "accuracy_in_group": _group_accuracy(te_out[gi][1], data.test.y, group, n_cls),
        })
    manifest = {
        "schema_version": 1, "tool_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "name": recipe["name"],
        "model": {"name": m["name"], "kwargs": m["kwargs"], "params": orig_params, "bytes": orig_bytes,
                  "flops": _flops(model)},
        "input": spec, "classes": data.classes, "groups": groups, "submodels": submodel_entries,
        "fusion": {"kind": kind, "source": fu.source, "input_dims": [int(d) for d in head.input_dims],
                   "num_classes": n_cls, "checkpoint": "fusion/fusion.pt",
                   "hidden": recipe["fusion"]["hidden"] if kind == "mlp" else None},
        "accuracy": {"original": orig_acc, "fused": fused_acc, "fused_logits": fu.logits_test_accuracy,
                     "fusion_mlp_cv": fu.mlp_cv_accuracy, "fusion_cv": fu.cv,
                     "fusion_candidates_test": fu.candidates, "fused_eval": fused_eval_acc,
                     "eval_samples": len(eval_idx), "exported": {}},
        "artifacts": [],
    }
    out_dir = os.path.abspath(out_dir)
    gate_failures: list[str] = []
    with staged_dir(out_dir) as root:
        os.makedirs(os.path.join(root, "submodels"))
        os.makedirs(os.path.join(root, "fusion"))
        for gi, sub in enumerate(subs):
            checkpoint.save_state_dict(sub, os.path.join(root, "submodels", f"g{gi}.pt"))
        checkpoint.save_state_dict(head, os.path.join(root, "fusion", "fusion.pt"))
        _save_npz(os.path.join(root, "reference", "eval.npz"), x=data.test.x[eval_idx], y=data.test.y[eval_idx])
        n_cal = recipe["export"]["calibration_samples"]
        for gi, group in enumerate(groups):
            in_group = torch.nonzero(finetune.relabel(data.finetune.y, group, n_cls) < len(group)).flatten()
            _save_npz(os.path.join(root, "reference", f"calib-g{gi}.npz"), x=data.finetune.x[in_group[:n_cal]])
        _save_npz(os.path.join(root, "reference", "calib-fusion.npz"), x=fu.calibration[:n_cal])
        with open(os.path.join(root, "recipe.resolved.yaml"), "w", encoding="utf-8") as f:
            f.write(recipe_mod.dump(recipe))
        if recipe["export"]["formats"]:
            from .export import export_build

            models = {f"g{gi}": surgery.SubModelWrapper(s).cpu().eval() for gi, s in enumerate(subs)}
            models["fusion"] = head.cpu().eval()
            gate_failures = export_build(root, manifest, models, recipe["export"], recipe["gate"], fused_eval_acc,
                                         progress=bars)
        elapsed = time.perf_counter() - t_start
        report = write_reports(root, manifest, peer_info, elapsed, gate_failures)
        write_manifest(root, manifest)
    return SimpleNamespace(out_dir=out_dir, manifest=manifest, report=report, gate_failures=gate_failures,
                    submodels=subs, fusion=head, data=data, model=model)


