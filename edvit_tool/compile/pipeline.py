"""`compile`: checkpoint → class groups → class-wise pruned, KD-fine-tuned sub-models → fusion head → build dir.

Pure orchestration of the stage modules (data, teacher, partition, prune, distill, fuse, peer, build); the CLI
driver only parses flags and prints. The build is staged in a temp dir and renamed into place when complete.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import time
from collections.abc import Callable
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import EdvitError
from ..config.recipe import Recipe
from . import checkpoint, distill, fuse, partition
from .build import write_build
from .data import load_data, input_spec
from .prune import surgery
from .prune.importance import compute_importance
from .prune.plan import plan_keep
from .teacher import TeacherOutputs, class_similarity, teacher_pass


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


def set_threads(n: int) -> None:
    """Small ViTs gain little from intra-op threads, and oversubscribed cores make them much slower."""
    if n > 0:
        torch.set_num_threads(n)


def _importance_batches(train: distill.TrainSet, y_rel, n_group, batch_size, count, seed, other: float = 0.0):
    """Class-balanced batches of the group's own images (class-conditional importance); `other` > 0 mixes in
    that fraction of other classes' images labelled "other", so the structure kept also tells them apart."""
    if other <= 0:
        idx_in = torch.nonzero(y_rel < n_group).flatten()
        sampler = distill.BalancedBatches(y_rel[idx_in], n_group, batch_size, 0.5, seed)
        for _ in range(count):
            sel = idx_in[sampler()]
            yield train.take(sel)[0], y_rel[sel]
        return
    sampler = distill.BalancedBatches(y_rel, n_group, batch_size, other, seed)
    for _ in range(count):
        sel = sampler()
        yield train.take(sel)[0], y_rel[sel]


def prune_and_finetune(model, group: list[int], train: distill.TrainSet, recipe: Recipe, params_target: int | None,
                       device, seed: int, bars=None, label: str = "", compute: float = 1.0,
                       validate=None, start: distill.Student | None = None,
                       view: tuple[int, int] = (0, 0)) -> distill.Student:
    """One sub-model: group head, iterative class-wise pruning with short recoveries, then distillation.

    Returns the distill.Student (its `.model` is the pruned timm ViT, `.aux` its N-class head for the fusion).
    `group` covering every class gives the class-agnostic peer (no "other" output, no aux head). `compute`
    scales every training phase (the peer gets K sub-models' steps); `validate` enables early stopping.
    `start`: prune from this class-agnostic student (the shared trunk) instead of the original model.
    `view`: the sub-model's fixed input offset (split.view_shift), part of its architecture from the start.
    """
    pr, ft = recipe.prune, recipe.finetune
    if start is not None and ft.branch_lr_scale != 1.0:
        ft = dataclasses.replace(ft, lr=ft.lr * ft.branch_lr_scale)
    n_cls = train.t_logits.shape[1]
    origin = model if start is None else start.model
    base = copy.deepcopy(origin).to(device)
    everything = len(group) == n_cls
    surgery.set_view(base, view)
    if not everything:
        surgery.replace_head(base, len(group) + 1, init_from=surgery.group_head_init(base, group))
    aux_init = origin.head if not everything and ft.aux_weight > 0 else None
    student = distill.Student.from_teacher(base, aux_init,
                                            feature_distill=ft.feature_weight > 0 and train.t_feats is not None)
    if start is not None and start.proj is not None and student.proj is not None:
        student.proj = copy.deepcopy(start.proj)  # the trunk's map to the teacher's features (its embed is pruned)
    student.to(device)
    y_rel = distill.relabel(train.y, group, n_cls)
    n_out = len(group) if everything else len(group) + 1
    p0 = surgery.count_params(base)
    steps = pr.steps
    keep = pr.target.keep
    joint = 0.0 if everything else ft.joint_fraction  # the rest of the fine-tune is the joint phase
    rec_steps = int(round(pr.recovery_steps * compute))
    ft_steps = int(round(ft.steps * compute * (1 - joint)))
    recoveries = steps if ft_steps == 0 and joint == 0 else steps - 1
    total = recoveries * rec_steps + ft_steps
    at_budget = start is not None and params_target is not None and p0 <= params_target
    if at_budget:  # a trunk already at the sub-model's size: nothing to prune, nothing to recover from
        steps, total = 0, ft_steps
    advance = bars.task(f"{label} prune+fine-tune", total) if bars else None
    for i in range(1, steps + 1):
        batches = _importance_batches(train, y_rel, len(group), ft.batch_size, pr.importance_batches, seed + i,
                                      0.0 if everything else pr.importance_other)
        imp = compute_importance(student.model, batches, lambda out, t: F.cross_entropy(out, t), pr.criterion,
                                 device)
        if params_target is not None:
            target = int(round(p0 * (params_target / p0) ** (i / steps)))
            plan = plan_keep(student.model, imp, params_target=target, prune_embed=pr.prune_embed)
        else:
            ratios = {k: v ** (1.0 / steps) for k, v in keep.to_dict().items() if v is not None}
            plan = plan_keep(student.model, imp, keep_ratios=ratios, prune_embed=pr.prune_embed)
        student = student.prune(plan).to(device)
        if i < steps or (ft_steps == 0 and joint == 0):
            distill.distill_finetune(student, train, group, rec_steps, ft, device, seed + 100 * i, advance)
    evals = recipe.peer.evals if validate is not None else 0
    distill.distill_finetune(student, train, group, ft_steps, ft, device, seed + 7, advance, validate=validate,
                              eval_every=max(1, ft_steps // evals) if evals else 0)
    assert surgery.vit_arch(student.model)["num_outputs"] == n_out
    return student.eval()


def joint_phase(recipe: Recipe, st: SimpleNamespace, students: list, partial, device, bars):
    """The joint fine-tune (finetune.joint_fraction > 0, K > 1): every sub-model and the fusion MLP together.
    Updates `students` in place and returns the jointly trained fusion MLP (None when off). Resumable as a
    whole: its result is kept in the partial dir like the sub-models."""
    ft, fcfg = recipe.finetune, recipe.fusion
    # one joint step costs K sub-model steps: each group spends its share of the fine-tune budget here
    steps = int(round(ft.steps * ft.joint_fraction * group_share(recipe, st.k, st.params_target)))
    if steps <= 0 or len(students) < 2:
        return None
    dims = [s.model.head.in_features for s in students]
    n_cls = st.n_cls
    seed_everything(st.seed + 11)  # the head's init too: the same whether the groups were trained here or not
    head = fuse.FusionMLP(dims, n_cls, max(fcfg.hidden, 2 * n_cls), fcfg.dropout)
    names = [f"joint-g{gi}" for gi in range(len(students))]
    if all(partial.has(n) for n in names) and partial.has_tensors("joint-fusion"):
        for gi, n in enumerate(names):
            students[gi] = partial.load(n, st.m.name, st.m.kwargs).to(device).eval()
        head.load_state_dict(partial.load_tensors("joint-fusion"))
        return head.eval()
    advance = bars.task("joint fine-tune (all sub-models + fusion)", steps) if bars else None
    evals = recipe.peer.evals if ft.early_stopping else 0
    val = st.data.val

    def fused_val_accuracy() -> float:  # the early-stopping criterion: the fused head on the validation split
        feats = [distill.predict(surgery.SubModelWrapper(s.model), val.x, device)[0] for s in students]
        with torch.no_grad():
            head.eval()
            return distill.accuracy(head(torch.cat(feats, 1).to(device)).cpu(), val.y)
    if ft.joint_lr is None and shared_trunk_plan(recipe, st.k, st.params_target):
        ft = dataclasses.replace(ft, joint_lr=ft.lr * ft.branch_lr_scale)
    distill.joint_finetune(students, st.groups, head, st.train, steps, ft, fcfg, device, st.seed + 11, advance,
                           validate=fused_val_accuracy if evals else None,
                           eval_every=max(1, steps // evals) if evals else 0)
    for gi, n in enumerate(names):
        partial.save(n, students[gi])
    partial.save_tensors("joint-fusion", head.state_dict())
    return head.eval()


def views_accuracy(model, views, x, y, device) -> float:
    """Accuracy of `model` with its softmax averaged over the ensemble's views: what the peer gets when its one
    board runs it once per view (K times its latency), the reference for what the views alone are worth."""
    probs = 0.0
    for view in views:
        surgery.set_view(model, view)
        probs = probs + distill.predict(model, x, device).softmax(1)
    surgery.set_view(model, (0, 0))
    return distill.accuracy(probs, y)


def autocast_for(device: torch.device):
    """bf16 autocast on CUDA (teacher, importance, fine-tuning, fusion); nothing on CPU. Parameters and optimiser
    state stay fp32; export runs on CPU outside it."""
    import contextlib

    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast(device_type="cuda", dtype=dtype)
    return contextlib.nullcontext()


def compile_build(recipe: Recipe, out_dir: str, bars=None, peer: bool = False, resume: bool = False,
                  jobs: int = 1) -> SimpleNamespace:
    """Compile `recipe` into `out_dir`. Finished sub-models are kept in `<out_dir>.partial/`; `resume` continues
    from them after a crash or Ctrl-C."""
    from .jobs import PeerProcess, WorkerPool, peer_in_process
    from .resume import Partial

    device = checkpoint.resolve_device(recipe.device)
    partial = Partial(out_dir, recipe, resume, bars.log if bars else (lambda s: None))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    try:
        # --jobs workers and the peer's process start now, so their start-up overlaps the data and teacher pass
        with autocast_for(device), (WorkerPool(recipe, partial, jobs, device) if jobs > 1 else
                                    contextlib.nullcontext()) as pool, \
                (PeerProcess(recipe, partial, device) if peer and peer_in_process(recipe, device, jobs) else
                 contextlib.nullcontext()) as peer_proc:
            trained = _train_stages(recipe, bars, peer, device, partial, pool, peer_proc)
    except EdvitError:
        if partial.empty():  # a user error before any sub-model was trained: leave nothing behind
            partial.done()
        raise
    result = write_build(recipe, out_dir, bars, trained)
    partial.done()
    return result


def prepare(recipe: Recipe, device, bars=None, for_worker: bool = False,
            teacher: TeacherOutputs | Callable[[], TeacherOutputs] | None = None) -> SimpleNamespace:
    """Model, data, teacher logits, class groups and the params budget: what every group's training needs.
    `for_worker`: a --jobs worker (the main process already checked the labels and needs the other splits);
    `teacher`: the main process's teacher outputs on the fine-tune split, so a worker skips that pass — or a
    callable that waits for them, called only once the model and data are loaded (a worker's start-up then
    overlaps the main process's teacher pass)."""
    seed = recipe.seed
    seed_everything(seed)
    set_threads(recipe.threads)
    m = recipe.model
    if not m.checkpoint:
        from ..errors import RecipeError
        raise RecipeError("model.checkpoint is required (a .pth/.pt/.safetensors state dict of the fine-tuned ViT)")
    model = checkpoint.load_model(m.name, m.kwargs, m.checkpoint)
    surgery.check_supported(model)
    n_cls = model.num_classes
    k = recipe.split.groups
    if k == 1:
        from ..errors import RecipeError
        raise RecipeError("split.groups: 1 gives no ensemble to build; use 2 or more (-k), and for one "
                          "class-agnostic pruned ViT of the same size see the peer that `compile --peer` reports")
    partition.group_sizes(n_cls, k)  # fail on K > N before any work
    spec = input_spec(model, recipe.data)
    if recipe.finetune.augment is not None:  # bad settings: one error line before the data is read
        from .transforms import train_transform
        train_transform(spec, recipe.finetune.augment, where="recipe finetune.augment")
    log = bars.log if bars else (lambda s: None)
    data = load_data(recipe, spec, n_cls, bars)
    log(f"data: {len(data.finetune)} fine-tune / {len(data.fusion)} fusion / {len(data.val)} validation"
        f"{' (val/ folder)' if data.val_source == 'folder' else ''} / {len(data.test)} test images, {n_cls} classes")

    # The original model is the teacher: its outputs are computed once for every split. Before any real work: a
    # checkpoint whose head order does not fit the labels scores near chance.
    label_check = None
    if recipe.data.check_labels and not for_worker:
        label_check = (m.classes, f"{recipe.data.kind} {recipe.data.root or ''}".strip())
    if callable(teacher):
        teacher = teacher()
    if teacher is None or len(teacher.logits) != len(data.finetune):
        teacher = teacher_pass(model, data, device, label_check=label_check, other_splits=not for_worker)
    f_ft, t_ft, t_fu, t_va = teacher.features, teacher.logits, teacher.fusion_logits, teacher.val_logits
    orig_params = surgery.count_params(model)
    if not for_worker:
        log(f"original {m.name}: {orig_params:,} params, validation accuracy "
            f"{distill.accuracy(t_va, data.val.y):.4f}")

    sim = None
    if recipe.split.strategy == "similarity":
        sim = class_similarity(f_ft.numpy(), data.finetune.y.numpy(), n_cls)
    groups = partition.partition(recipe.split.strategy, n_cls, k, sim)
    ratio = recipe.prune.target.params_ratio
    params_target = int(orig_params * ratio) if ratio is not None else None
    params_targets, sizing = [params_target] * len(groups), None
    if recipe.split.boards:  # heterogeneous boards: group i sized (budget, classes) for board i
        from .sizing import size_for_boards
        sizing = size_for_boards(recipe, model, n_cls, k, params_target)
        groups, params_targets = sizing.groups, sizing.params_targets
        log(sizing.summary())
    log("groups: " + "  ".join(f"g{i}={[data.classes[c] for c in g]}" for i, g in enumerate(groups)))
    views = partition.views(len(groups), recipe.split.view_shift, model.patch_embed.patch_size[0])
    viewed = any(v != (0, 0) for v in views)
    if viewed:
        log("views (input offset dy,dx px): " + "  ".join(f"g{i}={v[0]},{v[1]}" for i, v in enumerate(views)))

    ft = recipe.finetune
    t_feats = f_ft if ft.feature_weight > 0 else None
    train = distill.TrainSet(data.finetune.x, data.finetune.y, t_ft, t_feats)
    if ft.augment is not None:
        from .augment import Augmenter
        train.augmenter = Augmenter(data.finetune.x, spec, ft.augment, model, device, recipe.data.workers,
                                    features=t_feats is not None)
    return SimpleNamespace(**locals())


def shared_trunk_plan(recipe: Recipe, k: int, params_target: int | None):
    """(compute, params) of the shared trunk, or None. `prune.shared_fraction` of the ensemble's compute (K
    sub-models' steps) trains one class-agnostic student at `prune.shared_size` x the sub-model budget; every
    sub-model is then pruned class-wise from it with the rest. A trunk step costs `shared_size` sub-model steps,
    so the trunk gets that many times fewer steps: the whole ensemble costs what the peer gets, K sub-models'
    steps (counted in sub-model-sized steps)."""
    frac, size = recipe.prune.shared_fraction, recipe.prune.shared_size
    if frac <= 0 or k < 2 or params_target is None:
        return None
    return k * frac / size, int(params_target * size)


def train_steps(recipe: Recipe, compute: float, fine_share: float = 1.0) -> int:
    """Steps of one prune_and_finetune run at `compute` budgets: its recoveries plus `fine_share` of its fine-tune."""
    pr, ft = recipe.prune, recipe.finetune
    return int(round(pr.recovery_steps * compute)) * (pr.steps - 1) + int(round(ft.steps * compute * fine_share))


def compute_units(recipe: Recipe, k: int, params_target: int | None) -> dict:
    """Training steps of the ensemble and of the peer, counted in sub-model-sized steps (a step of a model
    shared_size x bigger counts shared_size; a joint step counts K): what "the same compile compute" means."""
    pr, ft = recipe.prune, recipe.finetune
    run = functools.partial(train_steps, recipe)
    trunk = shared_trunk_plan(recipe, k, params_target)
    share = group_share(recipe, k, params_target)
    joint = ft.joint_fraction if k > 1 else 0.0
    # a trunk at the sub-model size leaves the groups nothing to prune: no recoveries (prune_and_finetune)
    groups = (int(round(ft.steps * share * (1.0 - joint))) if trunk and pr.shared_size <= 1.0
              else run(share, 1.0 - joint))
    units = {"trunk": round(run(trunk[0]) * pr.shared_size) if trunk else 0,
             "groups": k * groups,
             "joint": k * int(round(ft.steps * joint * share))}
    units["ensemble"] = sum(units.values())
    units["peer"] = run(float(k) if recipe.peer.compute == "ensemble" else 1.0)
    return units


def group_share(recipe: Recipe, k: int, params_target: int | None) -> float:
    """The share of one sub-model's budget left to each group (its recoveries and its part of the joint phase)
    once the shared trunk has had its share."""
    return 1.0 if shared_trunk_plan(recipe, k, params_target) is None else 1.0 - recipe.prune.shared_fraction


def train_trunk(st: SimpleNamespace, recipe: Recipe, device, bars=None) -> distill.Student:
    # sized for the biggest sub-model: boards of different speeds get different budgets (compile --boards)
    biggest = max(st.params_targets) if st.params_target is not None else None
    compute, params = shared_trunk_plan(recipe, st.k, biggest)
    seed_everything(st.seed + 500)
    # class-agnostic like the peer: the same early stopping as the peer
    validate = distill.val_accuracy(st.data.val.x, st.data.val.y, device) if recipe.finetune.early_stopping else None
    return prune_and_finetune(st.model, list(range(st.n_cls)), st.train, recipe, params, device, st.seed + 500,
                              bars, label="trunk", compute=compute, validate=validate)


def train_group(st: SimpleNamespace, gi: int, recipe: Recipe, device, bars=None,
                trunk: distill.Student | None = None) -> distill.Student:
    """Sub-model gi (a distill.Student), seeded by its index alone: the same whatever ran before it (resume,
    --jobs)."""
    seed_everything(st.seed + 1000 * (gi + 1))
    compute = group_share(recipe, st.k, st.params_target)
    return prune_and_finetune(st.model, st.groups[gi], st.train, recipe, st.params_targets[gi], device,
                              st.seed + 1000 * (gi + 1), bars, label=f"g{gi}", compute=compute, start=trunk,
                              view=st.views[gi])


def _peer(st: SimpleNamespace, recipe: Recipe, device, bars, partial, peer_proc, subs: list):
    """(peer timm ViT, report entry): from its own process (jobs.PeerProcess), resumed, or trained here now."""
    if peer_proc is not None and peer_proc.proc is not None:
        return peer_proc.result(st.m.name, st.m.kwargs, bars)
    resumed = partial.load_peer(st.m.name, st.m.kwargs)
    if resumed is not None:
        return resumed
    from .peer import train_peer

    model, info = train_peer(st, recipe, device, bars, subs)
    partial.save_peer(model, info)
    return model, info


def _train_stages(recipe: Recipe, bars, peer: bool, device, partial, pool=None, peer_proc=None) -> SimpleNamespace:
    """`pool`: the --jobs WorkerPool (None: every group trains here); `peer_proc`: the peer's own process
    (jobs.PeerProcess; None: the peer, when asked for, trains here after the ensemble)."""
    t_start = time.perf_counter()
    st = prepare(recipe, device, bars)
    for helper in (pool, peer_proc):
        if helper is not None:
            helper.hand_teacher(st.teacher)
    model, data, t_ft, groups, params_target = st.model, st.data, st.t_ft, st.groups, st.params_target
    m, n_cls, orig_params, spec, seed, k, train = st.m, st.n_cls, st.orig_params, st.spec, st.seed, st.k, st.train
    t_fu, t_va = st.t_fu, st.t_va
    log = bars.log if bars else (lambda s: None)
    if peer_proc is not None and peer_proc.proc is not None:
        log("peer: training in a second process beside the ensemble (peer.parallel)")
    t_sub = time.perf_counter()
    trunk = None
    if shared_trunk_plan(recipe, k, params_target) is not None:
        trunk = partial.load("trunk", m.name, m.kwargs)
        if trunk is None:
            trunk = train_trunk(st, recipe, device, bars)
            partial.save("trunk", trunk)
        log(f"shared trunk: {surgery.count_params(trunk.model):,} params")
    if pool is not None:
        pool.finish(lambda gi: partial.save(f"g{gi}", train_group(st, gi, recipe, device, bars, trunk)), bars)
    students = []
    for gi, group in enumerate(groups):
        if peer_proc is not None:
            peer_proc.check()
        student = partial.load(f"g{gi}", m.name, m.kwargs)
        if student is None:
            student = train_group(st, gi, recipe, device, bars, trunk)
            partial.save(f"g{gi}", student)
        students.append(student.to(device).eval())
        n = surgery.count_params(student.model)
        log(f"g{gi}: {n:,} params ({n / orig_params:.1%})")
    joint_head = joint_phase(recipe, st, students, partial, device, bars)
    subs = [s.model for s in students]
    seed_everything(seed + 7)  # what follows does not depend on how the groups were obtained (resumed or not)
    wrapped = [surgery.SubModelWrapper(s) for s in subs]
    va_out = [distill.predict(w, data.val.x, device) for w in wrapped]
    fu = fuse.fit_fusion(recipe.fusion, wrapped, students, model, groups, data, t_fu, va_out, device, seed, bars,
                     joint_head)
    ensemble_seconds = time.perf_counter() - t_sub
    with torch.no_grad():
        fused_val_acc = distill.accuracy(fu.head(fu.val_inputs), data.val.y)
    log(f"fused ({fu.kind}) validation accuracy {fused_val_acc:.4f}")

    peer_info = None
    if peer:
        peer_model, peer_info = _peer(st, recipe, device, bars, partial, peer_proc, subs)
        peer_info["ensemble_seconds"] = ensemble_seconds

    # Every choice is made: the test split is read here, once, for the reported figures.
    t_te = distill.predict(model, data.test.x, device)
    orig_acc = distill.accuracy(t_te, data.test.y)
    te_out = [distill.predict(w, data.test.x, device) for w in wrapped]
    te_inputs = torch.cat([o[0 if fu.source == "features" else 1] for o in te_out], 1)
    with torch.no_grad():
        fused_logits_te = fu.head(te_inputs)
    fused_acc = distill.accuracy(fused_logits_te, data.test.y)
    feats_te, logits_te = torch.cat([o[0] for o in te_out], 1), torch.cat([o[1] for o in te_out], 1)
    with torch.no_grad():  # every candidate head's test figure, for the report and ablations (never for choosing)
        candidates_test = {k_: distill.accuracy(h(logits_te if k_ == "logits" else feats_te), data.test.y)
                           for k_, h in fu.heads.items()}
    logits_test_acc = candidates_test["logits"]
    log(f"test: fused ({fu.kind}) {fused_acc:.4f} vs original {orig_acc:.4f}")
    if peer_info is not None:
        peer_info["accuracy"] = distill.accuracy(distill.predict(peer_model, data.test.x, device), data.test.y)
        if st.viewed:  # a reference, not a deployment: K runs of the peer per image
            peer_info["views_accuracy"] = views_accuracy(peer_model, st.views, data.test.x, data.test.y, device)
        log(f"peer (one class-agnostic pruned ViT at {peer_info['params_budget']:,} params, "
            f"{peer_info['train_steps']} steps): test accuracy {peer_info['accuracy']:.4f} vs fused {fused_acc:.4f}")

    return SimpleNamespace(**{k: v for k, v in locals().items() if k != "recipe"})
