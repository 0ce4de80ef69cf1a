"""Distillation fine-tune units: targets, balanced batches, the student's side heads through pruning, early
stopping, and the peer's budget."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from edvit_tool.compile import distill
from edvit_tool.config import recipe as recipe_mod
from edvit_tool.compile.prune import surgery
from edvit_tool.compile.prune.surgery import KeepPlan
from prune_models import make_vit, one_thread  # noqa: F401  (autouse: one torch thread)

KW = dict(img_size=8, patch_size=4, in_chans=1, num_classes=6, embed_dim=24, depth=1, num_heads=2)


def _toy(n=240, seed=0):
    """Six classes, each lighting its own set of the 4 patches: learnable in a few dozen steps."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 6
    x = torch.randn(n, 1, 8, 8, generator=g) * 0.3
    lit = [[0], [1], [2], [3], [0, 3], [1, 2]]
    for c, patches in enumerate(lit):
        for p in patches:
            r, col = divmod(p, 2)
            x[y == c, :, 4 * r:4 * r + 4, 4 * col:4 * col + 4] += 2.0
    return x, y


def test_group_teacher_logits_fold_the_rest_into_other():
    t = torch.randn(5, 6)
    out = distill.group_teacher_logits(t, [1, 4], temperature=2.0)
    p, q = F.softmax(t / 2, 1), F.softmax(out / 2, 1)
    assert torch.allclose(q[:, :2], p[:, [1, 4]], atol=1e-6)
    assert torch.allclose(q[:, 2], p[:, [0, 2, 3, 5]].sum(1), atol=1e-6)


def test_other_as_best_rival_says_other_only_where_the_teacher_looks_outside():
    t = torch.tensor([[3.0, 1.0, 2.5, 2.4, 2.3, 2.2],    # top class 0 (in the group), many close rivals
                      [1.0, 0.5, 4.0, 0.0, 0.0, 0.0]])   # top class 2 (outside)
    folded = distill.group_teacher_logits(t, [0, 1], temperature=2.0)
    rival = distill.group_teacher_logits(t, [0, 1], temperature=2.0, other="max")
    assert folded[0].argmax() == 2      # the summed foreign mass outweighs the true class...
    assert rival[0].argmax() == 0       # ...the best rival does not
    assert rival[1].argmax() == 2 and torch.equal(rival[:, :2], t[:, :2])


def test_balanced_batches_split_other_and_cover_every_group_class():
    y_rel = distill.relabel(torch.tensor([0] * 50 + [1] * 5 + [2] * 200 + [3] * 30), [0, 1, 3], 4)
    b = distill.BalancedBatches(y_rel, 3, 64, 0.25, seed=0)
    counts = torch.bincount(y_rel[b()], minlength=4)
    assert counts.sum() == 64 and counts[3] == 16          # 25 % "other" (relabelled class 2 → 3)
    assert counts[:3].min() >= 16 and counts[:3].max() <= 17  # the rare class gets its share


def test_student_prune_slices_side_heads_to_the_kept_channels():
    model = make_vit(**KW)
    st = distill.Student.from_teacher(model, model.head, feature_distill=True)
    keep = list(range(0, 24, 2))
    plan = KeepPlan(heads=[[0, 1]], mlp=[list(range(model.blocks[0].mlp.fc1.out_features))], embed=keep)
    pruned = st.prune(plan)
    assert pruned.aux.weight.shape == (6, 12) and pruned.proj.weight.shape == (24, 12)
    assert torch.equal(pruned.aux.weight, model.head.weight[:, keep])
    assert torch.equal(pruned.proj.weight, torch.eye(24)[:, keep])
    logits, aux, proj = pruned(torch.randn(3, 1, 8, 8))
    assert logits.shape == (3, 6) and aux.shape == (3, 6) and proj.shape == (3, 24)
    assert st.aux.weight.shape == (6, 24)  # the unpruned student is untouched


def _cfg(**kw):
    return dataclasses.replace(recipe_mod.validate({}).finetune, **{"batch_size": 32, "lr": 3e-3, **kw})


def _losses(st, data, group, cfg):
    """(total distillation loss, aux-head KD) over the whole set, eval mode."""
    st.eval()
    with torch.no_grad():
        out = st(data.x)
        tg = distill.group_teacher_logits(data.t_logits, group, cfg.temperature)
        total = distill.distill_loss(out, data.y, distill.relabel(data.y, group, 6), data.t_logits, tg,
                                      data.t_feats, cfg, float(data.t_feats.pow(2).mean()))
        aux = F.kl_div(F.log_softmax(out[1], 1), F.log_softmax(data.t_logits, 1), log_target=True,
                       reduction="batchmean")
    return float(total), float(aux)


def test_distill_finetune_reduces_every_part_of_the_loss():
    x, y = _toy()
    teacher = make_vit(**KW)
    t_logits = 4.0 * F.one_hot(y, 6).float()  # a confident, correct teacher
    t_feats = distill.predict(surgery.SubModelWrapper(teacher), x, torch.device("cpu"))[0]
    group = [0, 1]
    base = surgery.replace_head(make_vit(**KW), 3, init_from=surgery.group_head_init(teacher, group))
    st = distill.Student.from_teacher(base, teacher.head, feature_distill=True)
    data = distill.TrainSet(x, y, t_logits, t_feats)
    cfg = _cfg(lr=1e-2)
    total0, aux0 = _losses(st, data, group, cfg)
    distill.distill_finetune(st, data, group, 80, cfg, torch.device("cpu"), seed=1)
    total1, aux1 = _losses(st, data, group, cfg)
    assert total1 < 0.7 * total0 and aux1 < 0.7 * aux0, (total0, total1, aux0, aux1)


def test_early_stopping_keeps_the_best_scoring_weights():
    x, y = _toy(96)
    model = make_vit(**KW)
    st = distill.Student.from_teacher(model, None, feature_distill=False)
    data = distill.TrainSet(x, y, torch.randn(96, 6))
    seen = []

    def validate(s):
        seen.append({k: v.clone() for k, v in s.state_dict().items()})
        return [0.2, 0.9, 0.5, 0.1][len(seen) - 1]

    distill.distill_finetune(st, data, list(range(6)), 40, _cfg(), torch.device("cpu"), seed=0,
                              validate=validate, eval_every=10)
    assert len(seen) == 4
    final = st.state_dict()
    assert all(torch.equal(final[k], seen[1][k]) for k in final)       # the second evaluation scored best
    assert not all(torch.equal(final[k], seen[3][k]) for k in final)   # not simply the last weights


def test_joint_finetune_trains_every_sub_model_and_the_fusion_head_towards_the_fused_answer():
    from edvit_tool.compile import fuse

    x, y = _toy()
    teacher = make_vit(**KW)
    t_logits = 4.0 * F.one_hot(y, 6).float()
    t_feats = distill.predict(surgery.SubModelWrapper(teacher), x, torch.device("cpu"))[0]
    groups = [[0, 1, 2], [3, 4, 5]]
    students = []
    for g in groups:
        base = surgery.replace_head(make_vit(**KW), 4, init_from=surgery.group_head_init(teacher, g))
        students.append(distill.Student.from_teacher(base, teacher.head, feature_distill=True))
    head = fuse.FusionMLP([24, 24], 6, hidden=32, dropout=0.0)
    data = distill.TrainSet(x, y, t_logits, t_feats)
    before = [{k: v.clone() for k, v in s.state_dict().items()} for s in students]

    def fused_accuracy():
        feats = torch.cat([distill.predict(surgery.SubModelWrapper(s.model), x, torch.device("cpu"))[0]
                           for s in students], 1)
        with torch.no_grad():
            return distill.accuracy(head.eval()(feats), y)

    acc0 = fused_accuracy()
    fcfg = recipe_mod.FusionCfg(submodel_dropout=0.2)
    distill.joint_finetune(students, groups, head, data, 150, _cfg(lr=1e-2), fcfg, torch.device("cpu"), seed=0)
    assert fused_accuracy() >= max(0.9, acc0 + 0.3)
    for s, b in zip(students, before):  # every sub-model moved, and is left in eval mode
        assert any(not torch.equal(v, b[k]) for k, v in s.state_dict().items())
        assert not s.training


def test_a_branch_from_a_trunk_at_the_sub_model_size_is_not_pruned_and_trains_at_the_branch_rate(monkeypatch):
    """prune.shared_size 1: the trunk is already at the sub-model budget, so a group's sub-model keeps its
    structure (no importance pass, no recoveries) and every phase after the trunk runs at finetune.lr x
    branch_lr_scale; the compile-compute accounting counts no group recoveries either."""
    from edvit_tool.compile import pipeline

    x, y = _toy(96)
    teacher = make_vit(**KW)
    data = distill.TrainSet(x, y, 4.0 * F.one_hot(y, 6).float())
    recipe = recipe_mod.validate({"prune": {"shared_size": 1.0, "shared_fraction": 0.5, "recovery_steps": 5,
                                            "steps": 3},
                                  "finetune": {"steps": 12, "joint_fraction": 0.5, "branch_lr_scale": 0.2,
                                               "batch_size": 16, "feature_weight": 0.0}})
    trunk = distill.Student.from_teacher(make_vit(**KW), None, feature_distill=False)
    budget = surgery.count_params(trunk.model)
    rates, importance = [], []
    real_finetune = distill.distill_finetune
    monkeypatch.setattr(distill, "distill_finetune",
                        lambda st, d, g, steps, cfg, *a, **k: (rates.append((steps, cfg.lr)),
                                                               real_finetune(st, d, g, steps, cfg, *a, **k))[1])
    monkeypatch.setattr(pipeline, "compute_importance", lambda *a, **k: importance.append(1))
    branch = pipeline.prune_and_finetune(teacher, [0, 1], data, recipe, budget, torch.device("cpu"), seed=0,
                                         start=trunk)
    arch, trunk_arch = surgery.vit_arch(branch.model), surgery.vit_arch(trunk.model)
    assert {k: v for k, v in arch.items() if k != "num_outputs"} == \
        {k: v for k, v in trunk_arch.items() if k != "num_outputs"} and arch["num_outputs"] == 3
    # no recoveries: only its own half of the fine-tune, at 0.2 x the default 1e-3
    assert importance == [] and rates == [(6, pytest.approx(2e-4))]
    units = pipeline.compute_units(recipe, 3, budget)
    assert units["groups"] == 3 * int(round(12 * 0.5 * (1 - 0.5)))  # shared_fraction 0.5 of the budget
