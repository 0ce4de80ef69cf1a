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
from .compile.data import load_data, input_spec, stratified_sample
from .label_order import check_label_order
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


def prune_and_finetune(model, group: list[int], train: finetune.TrainSet, recipe: dict, params_target: int | None,
                       device, seed: int, bars=None, label: str = "", compute: float = 1.0,
                       validate=None, start: finetune.Student | None = None) -> finetune.Student:
    """One sub-model: group head, iterative class-wise pruning with short recoveries, then distillation.

    Returns the finetune.Student (its `.model` is the pruned timm ViT, `.aux` its N-class head for the fusion).
    `group` covering every class gives the class-agnostic peer (no "other" output, no aux head). `compute`
    scales every training phase (the peer gets K sub-models' steps); `validate` enables early stopping.
    `start`: prune from this class-agnostic student (the shared trunk) instead of the original model.
    """
    pr, ft = recipe["prune"], recipe["finetune"]
    n_cls = train.t_logits.shape[1]
    origin = model if start is None else start.model
    base = copy.deepcopy(origin).to(device)
    everything = len(group) == n_cls
    if not everything:
        surgery.replace_head(base, len(group) + 1, init_from=surgery.group_head_init(base, group))
    aux_init = origin.head if not everything and ft["aux_weight"] > 0 else None
    student = finetune.Student.from_teacher(base, aux_init,
                                            feature_distill=ft["feature_weight"] > 0 and train.t_feats is not None)
    if start is not None and start.proj is not None and student.proj is not None:
        student.proj = copy.deepcopy(start.proj)  # the trunk's map to the teacher's features (its embed is pruned)
    student.to(device)
    y_rel = finetune.relabel(train.y, group, n_cls)
    n_out = len(group) if everything else len(group) + 1
    p0 = surgery.count_params(base)
    steps = pr["steps"]
    keep = pr["target"]["keep"]
    joint = 0.0 if everything else ft["joint_fraction"]  # the rest of the fine-tune is the joint phase
    rec_steps = int(round(pr["recovery_steps"] * compute))
    ft_steps = int(round(ft["steps"] * compute * (1 - joint)))
    recoveries = steps if ft_steps == 0 and joint == 0 else steps - 1
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
        if i < steps or (ft_steps == 0 and joint == 0):
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


def _joint_phase(recipe: dict, st: SimpleNamespace, students: list, partial, device, bars):
    """The joint fine-tune (finetune.joint_fraction > 0, K > 1): every sub-model and the fusion MLP together.
    Updates `students` in place and returns the jointly trained fusion MLP (None when off). Resumable as a
    whole: its result is kept in the partial dir like the sub-models."""
    ft, fcfg = recipe["finetune"], recipe["fusion"]
    steps = int(round(ft["steps"] * ft["joint_fraction"]))
    if steps <= 0 or len(students) < 2:
        return None
    dims = [s.model.head.in_features for s in students]
    n_cls = st.n_cls
    seed_everything(st.seed + 11)  # the head's init too: the same whether the groups were trained here or not
    head = fuse.FusionMLP(dims, n_cls, max(fcfg["hidden"], 2 * n_cls), fcfg["dropout"])
    names = [f"joint-g{gi}" for gi in range(len(students))]
    if all(partial.has(n) for n in names) and partial.has_tensors("joint-fusion"):
        for gi, n in enumerate(names):
            students[gi] = partial.load(n, st.m["name"], st.m["kwargs"]).to(device).eval()
        head.load_state_dict(partial.load_tensors("joint-fusion"))
        return head.eval()
    advance = bars.task("joint fine-tune (all sub-models + fusion)", steps) if bars else None
    finetune.joint_finetune(students, st.groups, head, st.train, steps, ft, fcfg, device, st.seed + 11, advance)
    for gi, n in enumerate(names):
        partial.save(n, students[gi])
    partial.save_tensors("joint-fusion", head.state_dict())
    return head.eval()


def _fit_fusion(fcfg: dict, wrapped, students, model, groups, data, t_fu, va_out, device, seed: int,
                bars, joint_head=None) -> SimpleNamespace:
    """The chosen fusion head (and what choosing it measured).

    Fitted on the fusion split, or — `data.fusion_fraction: 0`, the default — on a class-stratified sample of the
    fine-tune split, plus shifted views of it (features through the frozen sub-models, teacher logits from the
    original): the MLP, and the ensemble head's combination weights (its experts are the sub-models' own heads
    and aux N-class heads). `joint` is the MLP trained together with the sub-models (finetune.joint_fraction).
    `auto` keeps whichever of logits / ensemble / mlp / joint is most accurate on the validation split (ties:
    fewest fitted numbers). Every candidate head is returned so the report can show each one's test figure —
    read after every choice is made.
    """
    log = bars.log if bars else (lambda s: None)
    n_cls = len(data.classes)
    gen = torch.Generator().manual_seed(seed + 5)
    feats_va = torch.cat([o[0] for o in va_out], 1)
    logits_va = torch.cat([o[1] for o in va_out], 1)
    dims = [o[0].shape[1] for o in va_out]
    logit_fusion = fuse.LogitFusion(groups, n_cls)
    ensemble = fuse.EnsembleFusion.from_students(students, groups, n_cls)
    fit, t_fit = data.fusion, t_fu
    if not len(fit):  # data.fusion_fraction 0: a class-stratified sample of the fine-tune split
        sel = stratified_sample(data.finetune.y, fcfg["fit_samples"], seed + 6)
        fit = SimpleNamespace(x=data.finetune.x.subset(sel), y=data.finetune.y[sel])
        t_fit = t_fu[sel]
    feats_views, t_views = [torch.cat([finetune.predict(w, fit.x, device)[0] for w in wrapped], 1)], [t_fit]
    for _ in range(fcfg["augment_views"]):  # shifted views, decoded chunk by chunk
        fs, ts = [], []
        for i in range(0, len(fit.y), 256):
            xb = finetune.augment(fit.x[i:i + 256], gen, pad=2)
            fs.append(torch.cat([finetune.predict(w, xb, device)[0] for w in wrapped], 1))
            ts.append(finetune.predict(model, xb, device))
        feats_views.append(torch.cat(fs))
        t_views.append(torch.cat(ts))
    feats_fu, t_views = torch.stack(feats_views), torch.stack(t_views)
    v = feats_fu.shape[0]
    ensemble.fit(feats_fu.reshape(-1, feats_fu.shape[-1]), fit.y.repeat(v))
    heads = {"logits": logit_fusion, "ensemble": ensemble}
    kind = fcfg["kind"]
    if kind in ("auto", "mlp") or (kind == "joint" and joint_head is None):
        advance = bars.task("fusion head", fcfg["steps"]) if bars else None
        # the hidden layer follows the class count: 128 squeezes 100 classes through too few units
        wide = {**fcfg, "hidden": max(fcfg["hidden"], 2 * n_cls)}
        heads["mlp"] = fuse.train_fusion_mlp(feats_fu.reshape(-1, feats_fu.shape[-1]), fit.y.repeat(v),
                                             t_views.reshape(-1, t_views.shape[-1]), dims, n_cls, wide, seed,
                                             advance).eval()
    if joint_head is not None:
        heads["joint"] = joint_head.cpu().eval()
    inputs_va = {"logits": logits_va, "ensemble": feats_va, "mlp": feats_va, "joint": feats_va}
    with torch.no_grad():
        val_acc = {k_: finetune.accuracy(h(inputs_va[k_]), data.val.y) for k_, h in heads.items()}
    if kind == "joint" and joint_head is None:
        kind = "mlp"  # no joint phase ran (K = 1 or finetune.joint_fraction 0): the MLP fitted afterwards
    if kind == "auto":
        kind = max(("logits", "ensemble", "mlp", "joint"), key=lambda k_: val_acc.get(k_, -1.0))
        log("fusion on the validation split: " + ", ".join(f"{k_} {a:.4f}" for k_, a in val_acc.items())
            + f" → {kind}")
    choice = {"kind": kind, **{f"{k_}_val": a for k_, a in val_acc.items()}}
    chosen = heads[kind]
    if kind == "joint":  # exported and described as the MLP it is; the choice records how it was trained
        kind = "mlp"
    source = "logits" if kind == "logits" else "features"
    return SimpleNamespace(head=chosen, kind=kind, source=source, dims=dims, val_inputs=inputs_va[kind],
                           choice=choice, heads=heads)


def autocast_for(device: torch.device):
    """bf16 autocast on CUDA (teacher, importance, fine-tuning, fusion); nothing on CPU. Parameters and optimiser
    state stay fp32; export runs on CPU outside it."""
    import contextlib

    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast(device_type="cuda", dtype=dtype)
    return contextlib.nullcontext()


def compile_build(recipe: dict, out_dir: str, bars=None, peer: bool = False, resume: bool = False,
                  jobs: int = 1) -> SimpleNamespace:
    """Compile `recipe` into `out_dir`. Finished sub-models are kept in `<out_dir>.partial/`; `resume` continues
    from them after a crash or Ctrl-C."""
    from .compile.resume import Partial

    device = checkpoint.resolve_device(recipe["device"])
    partial = Partial(out_dir, recipe, resume, bars.log if bars else (lambda s: None))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    with autocast_for(device):
        trained = _train_stages(recipe, bars, peer, device, partial, jobs)
    result = _write_build(recipe, out_dir, bars, trained)
    partial.done()
    return result


def prepare(recipe: dict, device, bars=None, for_worker: bool = False) -> SimpleNamespace:
    """Model, data, teacher logits, class groups and the params budget: what every group's training needs.
    `for_worker`: a --jobs worker (the main process already checked the labels and needs the other splits)."""
    seed = recipe["seed"]
    seed_everything(seed)
    set_threads(recipe["threads"])
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
    data = load_data(recipe, spec, n_cls, bars)
    log(f"data: {len(data.finetune)} fine-tune / {len(data.fusion)} fusion / {len(data.val)} validation"
        f"{' (val/ folder)' if data.val_source == 'folder' else ''} / {len(data.test)} test images, {n_cls} classes")

    # The original model is the teacher: its logits are computed once for every split.
    # one pass over the fine-tune split gives the teacher's pooled features (feature distillation, similarity
    # partition) and its logits
    f_ft, t_ft = finetune.predict(surgery.SubModelWrapper(model), data.finetune.x, device)
    if recipe["data"]["check_labels"] and not for_worker:
        # before any real work: a checkpoint whose head order does not fit the labels scores near chance
        desc = f"{recipe['data']['kind']} {recipe['data']['root'] or ''}".strip()
        check_label_order(t_ft.argmax(1).numpy(), data.finetune.y.numpy(), data.classes, m["classes"], desc)
    t_fu = t_va = None
    orig_params = surgery.count_params(model)
    if not for_worker:
        t_fu = finetune.predict(model, data.fusion.x, device) if len(data.fusion) else t_ft
        t_va = finetune.predict(model, data.val.x, device)
        log(f"original {m['name']}: {orig_params:,} params, validation accuracy "
            f"{finetune.accuracy(t_va, data.val.y):.4f}")

    sim = None
    if recipe["split"]["strategy"] == "similarity":
        sim = partition.class_similarity(f_ft.numpy(), data.finetune.y.numpy(), n_cls)
    groups = partition.partition(recipe["split"]["strategy"], n_cls, k, sim)
    ratio = recipe["prune"]["target"]["params_ratio"]
    params_target = int(orig_params * ratio) if ratio is not None else None
    params_targets, sizing = [params_target] * len(groups), None
    if recipe["split"]["boards"]:  # heterogeneous boards: group i sized (budget, classes) for board i
        from .compile.sizing import size_for_boards
        sizing = size_for_boards(recipe, model, n_cls, k, params_target)
        groups, params_targets = sizing.groups, sizing.params_targets
        log(sizing.summary())
    log("groups: " + "  ".join(f"g{i}={[data.classes[c] for c in g]}" for i, g in enumerate(groups)))

    ft = recipe["finetune"]
    t_feats = f_ft if ft["feature_weight"] > 0 else None
    train = finetune.TrainSet(data.finetune.x, data.finetune.y, t_ft, t_feats)
    return SimpleNamespace(**locals())


def shared_trunk_plan(recipe: dict, k: int, params_target: int | None):
    """(compute, params) of the shared trunk, or None. `prune.shared_fraction` of the ensemble's compute (K
    sub-models' steps) trains one class-agnostic student at `prune.shared_size` x the sub-model budget; every
    sub-model is then pruned class-wise from it with the rest. The peer keeps K sub-models' steps in all."""
    frac = recipe["prune"]["shared_fraction"]
    if frac <= 0 or k < 2 or params_target is None:
        return None
    return k * frac, int(params_target * recipe["prune"]["shared_size"])


def train_trunk(st: SimpleNamespace, recipe: dict, device, bars=None) -> finetune.Student:
    # sized for the biggest sub-model: boards of different speeds get different budgets (compile --boards)
    biggest = max(st.params_targets) if st.params_target is not None else None
    compute, params = shared_trunk_plan(recipe, st.k, biggest)
    seed_everything(st.seed + 500)
    return prune_and_finetune(st.model, list(range(st.n_cls)), st.train, recipe, params, device, st.seed + 500,
                              bars, label="trunk", compute=compute)


def train_group(st: SimpleNamespace, gi: int, recipe: dict, device, bars=None,
                trunk: finetune.Student | None = None) -> finetune.Student:
    """Sub-model gi (a finetune.Student), seeded by its index alone: the same whatever ran before it (resume,
    --jobs)."""
    seed_everything(st.seed + 1000 * (gi + 1))
    plan = shared_trunk_plan(recipe, st.k, st.params_target)
    compute = 1.0 if plan is None else 1.0 - recipe["prune"]["shared_fraction"]
    return prune_and_finetune(st.model, st.groups[gi], st.train, recipe, st.params_targets[gi], device,
                              st.seed + 1000 * (gi + 1), bars, label=f"g{gi}", compute=compute, start=trunk)


def _train_stages(recipe: dict, bars, peer: bool, device, partial, jobs: int = 1) -> SimpleNamespace:
    t_start = time.perf_counter()
    st = prepare(recipe, device, bars)
    model, data, t_ft, groups, params_target = st.model, st.data, st.t_ft, st.groups, st.params_target
    m, n_cls, orig_params, spec, seed, k, train = st.m, st.n_cls, st.orig_params, st.spec, st.seed, st.k, st.train
    t_fu, t_va = st.t_fu, st.t_va
    log = bars.log if bars else (lambda s: None)
    t_sub = time.perf_counter()
    trunk = None
    if shared_trunk_plan(recipe, k, params_target) is not None:
        trunk = partial.load("trunk", m["name"], m["kwargs"])
        if trunk is None:
            trunk = train_trunk(st, recipe, device, bars)
            partial.save("trunk", trunk)
        log(f"shared trunk: {surgery.count_params(trunk.model):,} params")
    if jobs > 1:
        from .compile.jobs import train_groups_in_workers

        train_groups_in_workers(recipe, partial, [gi for gi in range(len(groups)) if not partial.has(f"g{gi}")],
                                jobs, device, bars)
    students = []
    for gi, group in enumerate(groups):
        student = partial.load(f"g{gi}", m["name"], m["kwargs"])
        if student is None:
            student = train_group(st, gi, recipe, device, bars, trunk)
            partial.save(f"g{gi}", student)
        students.append(student.to(device).eval())
        n = surgery.count_params(student.model)
        log(f"g{gi}: {n:,} params ({n / orig_params:.1%})")
    joint_head = _joint_phase(recipe, st, students, partial, device, bars)
    subs = [s.model for s in students]
    seed_everything(seed + 7)  # what follows does not depend on how the groups were obtained (resumed or not)
    wrapped = [surgery.SubModelWrapper(s) for s in subs]
    va_out = [finetune.predict(w, data.val.x, device) for w in wrapped]
    fu = _fit_fusion(recipe["fusion"], wrapped, students, model, groups, data, t_fu, va_out, device, seed, bars,
                     joint_head)
    ensemble_seconds = time.perf_counter() - t_sub
    with torch.no_grad():
        fused_val_acc = finetune.accuracy(fu.head(fu.val_inputs), data.val.y)
    log(f"fused ({fu.kind}) validation accuracy {fused_val_acc:.4f}")

    peer_info = None
    if peer:
        from .peer import build_peer

        biggest = max(surgery.count_params(s) for s in subs)
        seed_everything(seed + 99)
        peer_model, peer_info = build_peer(model, train, data.val.x, data.val.y, recipe, biggest, k, device,
                                           seed + 99, bars, "validation split")
        peer_info["ensemble_seconds"] = ensemble_seconds

    # Every choice is made: the test split is read here, once, for the reported figures.
    t_te = finetune.predict(model, data.test.x, device)
    orig_acc = finetune.accuracy(t_te, data.test.y)
    te_out = [finetune.predict(w, data.test.x, device) for w in wrapped]
    te_inputs = torch.cat([o[0 if fu.source == "features" else 1] for o in te_out], 1)
    with torch.no_grad():
        fused_logits_te = fu.head(te_inputs)
    fused_acc = finetune.accuracy(fused_logits_te, data.test.y)
    feats_te, logits_te = torch.cat([o[0] for o in te_out], 1), torch.cat([o[1] for o in te_out], 1)
    with torch.no_grad():  # every candidate head's test figure, for the report and ablations (never for choosing)
        candidates_test = {k_: finetune.accuracy(h(logits_te if k_ == "logits" else feats_te), data.test.y)
                           for k_, h in fu.heads.items()}
    logits_test_acc = candidates_test["logits"]
    log(f"test: fused ({fu.kind}) {fused_acc:.4f} vs original {orig_acc:.4f}")
    if peer_info is not None:
        peer_info["accuracy"] = finetune.accuracy(finetune.predict(peer_model, data.test.x, device), data.test.y)
        log(f"peer (one class-agnostic pruned ViT at {peer_info['params_budget']:,} params, "
            f"{peer_info['train_steps']} steps): test accuracy {peer_info['accuracy']:.4f} vs fused {fused_acc:.4f}")

    return SimpleNamespace(**{k: v for k, v in locals().items() if k != "recipe"})


def _write_build(recipe: dict, out_dir: str, bars, st: SimpleNamespace) -> SimpleNamespace:
    """The build dir (staged, renamed into place when complete): checkpoints, reference sets, artifacts, reports."""
    model, subs, groups, data, fu, device, seed = st.model, st.subs, st.groups, st.data, st.fu, st.device, st.seed
    m, n_cls, orig_params, spec, peer_info = st.m, st.n_cls, st.orig_params, st.spec, st.peer_info
    te_out, va_out, t_va, wrapped = st.te_out, st.va_out, st.t_va, st.wrapped
    orig_acc, fused_acc, logits_test_acc, fused_val_acc = st.orig_acc, st.fused_acc, st.logits_test_acc, st.fused_val_acc
    t_start = st.t_start
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
            "accuracy_in_group_val": _group_accuracy(va_out[gi][1], data.val.y, group, n_cls),
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
                   "hidden": head.net[0].out_features if kind == "mlp" else None},
        "accuracy": {"original": orig_acc, "fused": fused_acc, "fused_logits": logits_test_acc,
                     "original_val": finetune.accuracy(t_va, data.val.y), "fused_val": fused_val_acc,
                     "fusion_choice": fu.choice, "fusion_candidates_test": st.candidates_test,
                     "split_sizes": {"finetune": len(data.finetune), "fusion": len(data.fusion),
                                     "val": len(data.val), "test": len(data.test), "val_source": data.val_source},
                     "exported": {}},
        "artifacts": [],
    }
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
        val_idx = stratified_sample(data.val.y, recipe["data"]["val_samples"], seed + 3)
        eval_idx = stratified_sample(data.test.y, recipe["data"]["eval_samples"], seed + 4)
        from . import reference  # uint8 pixels at model resolution, normalised on load: never float32 here
        reference.save(os.path.join(root, "reference", "val.npz"), data.val.x.uint8(val_idx), data.val.y[val_idx])
        reference.save(os.path.join(root, "reference", "eval.npz"), data.test.x.uint8(eval_idx),
                       data.test.y[eval_idx])
        manifest["accuracy"].update(eval_samples=len(eval_idx), val_samples=len(val_idx))
        # Calibration: every sub-model sees every class at inference, so all calibrate on one class-stratified
        # random sample of all classes from the fine-tune split; the fusion head on those images' features.
        cal_idx = stratified_sample(data.finetune.y, recipe["export"]["calibration_samples"], seed + 5)
        cal_x = data.finetune.x.subset(cal_idx)  # lazy: predict normalises it batch by batch
        for gi in range(len(groups)):
            reference.save(os.path.join(root, "reference", f"calib-g{gi}.npz"), cal_x.uint8())
        cal_out = [finetune.predict(w, cal_x, device) for w in wrapped]
        _save_npz(os.path.join(root, "reference", "calib-fusion.npz"),
                  x=torch.cat([o[0 if fu.source == "features" else 1] for o in cal_out], 1))
        with open(os.path.join(root, "recipe.resolved.yaml"), "w", encoding="utf-8") as f:
            f.write(recipe_mod.dump(recipe))
        if recipe["export"]["formats"]:
            from .export import export_build

            models = {f"g{gi}": surgery.SubModelWrapper(s).cpu().eval() for gi, s in enumerate(subs)}
            models["fusion"] = head.cpu().eval()
            gate_failures = export_build(root, manifest, models, recipe["export"], recipe["gate"], progress=bars)
        elapsed = time.perf_counter() - t_start
        report = write_reports(root, manifest, peer_info, elapsed, gate_failures)
        write_manifest(root, manifest)
    return SimpleNamespace(out_dir=out_dir, manifest=manifest, report=report, gate_failures=gate_failures,
                    submodels=subs, fusion=head, data=data, model=model)


