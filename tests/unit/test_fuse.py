"""Fusion heads: the ensemble fusion's pieces, its fit, its rebuild from a manifest entry; and the peer's budget."""

import torch
import torch.nn.functional as F

from edvit_tool.compile import distill, fuse
from edvit_tool.config import recipe as recipe_mod
from edvit_tool.compile.prune import surgery
from prune_models import make_vit, one_thread  # noqa: F401  (autouse: one torch thread)

GROUPS = [[0, 2], [1, 3, 4]]


def _ensemble(seed=0):
    torch.manual_seed(seed)
    f = fuse.EnsembleFusion([5, 7], GROUPS, 5)
    for lin in list(f.aux) + list(f.heads):
        torch.nn.init.normal_(lin.weight)
    return f


def test_ensemble_is_the_logit_fusion_when_the_aux_experts_are_silenced():
    f = _ensemble()
    with torch.no_grad():
        f.aux_weight.zero_()
    feats = torch.randn(4, 12)
    group_logits = torch.cat([f.heads[0](feats[:, :5]), f.heads[1](feats[:, 5:])], 1)
    expected = fuse.LogitFusion(GROUPS, 5)(group_logits)
    assert torch.allclose(f(feats), expected, atol=1e-5)


def test_ensemble_sums_the_aux_experts_log_probabilities():
    f = _ensemble()
    with torch.no_grad():
        f.poe_weight.zero_()
        f.aux_weight.copy_(torch.tensor([1.0, 2.0]))
    feats = torch.randn(3, 12)
    expected = F.log_softmax(f.aux[0](feats[:, :5]), 1) + 2 * F.log_softmax(f.aux[1](feats[:, 5:]), 1)
    assert torch.allclose(f(feats), expected, atol=1e-5)


def test_fit_moves_only_the_combination_weights_and_lowers_the_loss():
    f = _ensemble()
    feats = torch.randn(200, 12)
    y = (feats[:, 0] > 0).long() * 2  # class 0 or 2; the experts are random, so the bias and weights must adapt
    experts = {k: v.clone() for k, v in f.state_dict().items() if k.startswith(("aux.", "heads."))}
    before = F.cross_entropy(f(feats), y).item()
    f.fit(feats, y, steps=100)
    after = F.cross_entropy(f(feats), y).item()
    assert after < before
    assert all(torch.equal(f.state_dict()[k], v) for k, v in experts.items())
    assert all(p.requires_grad for p in f.parameters())  # restored for later use


def test_manifest_entry_rebuilds_every_fusion_kind():
    f = _ensemble()
    entry = {"kind": "ensemble", "input_dims": [5, 7], "num_classes": 5}
    g = fuse.build_fusion_head(entry, GROUPS)
    g.load_state_dict(f.state_dict(), strict=True)
    x = torch.randn(2, 12)
    assert torch.equal(f(x), g(x))
    assert isinstance(fuse.build_fusion_head({**entry, "kind": "mlp", "hidden": 16}, GROUPS), fuse.FusionMLP)
    assert isinstance(fuse.build_fusion_head({**entry, "kind": "logits"}, GROUPS), fuse.LogitFusion)


def test_from_students_copies_each_group_head_and_aux_head():
    kw = dict(img_size=8, patch_size=4, in_chans=1, num_classes=5, embed_dim=16, depth=1, num_heads=2)
    teacher = make_vit(**kw)
    students = []
    for g in GROUPS:
        base = surgery.replace_head(make_vit(**kw), len(g) + 1, init_from=surgery.group_head_init(teacher, g))
        students.append(distill.Student.from_teacher(base, teacher.head if g is GROUPS[0] else None, False))
    f = fuse.EnsembleFusion.from_students(students, GROUPS, 5)
    assert torch.equal(f.heads[1].weight, students[1].model.head.weight)
    assert torch.equal(f.aux[0].weight, teacher.head.weight)
    assert not f.aux[1].weight.any()  # no aux head trained: that expert is silent


def test_peer_gets_k_sub_models_steps_and_stays_within_the_budget():
    from edvit_tool.compile.peer import build_peer

    kw = dict(img_size=8, patch_size=4, in_chans=1, num_classes=4, embed_dim=24, depth=2, num_heads=2)
    teacher = make_vit(**kw)
    x, y = torch.randn(64, 1, 8, 8), torch.arange(64) % 4
    t = distill.predict(teacher, x, torch.device("cpu"))
    feats = distill.predict(surgery.SubModelWrapper(teacher), x, torch.device("cpu"))[0]
    recipe = recipe_mod.validate({"prune": {"steps": 2, "recovery_steps": 3, "importance_batches": 1},
                                  "finetune": {"steps": 4, "batch_size": 16}, "peer": {"evals": 2}})
    budget = surgery.count_params(teacher) // 3
    peer, info = build_peer(teacher, distill.TrainSet(x, y, t, feats), x[:16], y[:16], recipe, budget, 3,
                            torch.device("cpu"), seed=0)
    assert info["params"] <= budget and peer.num_classes == 4
    assert info["train_steps"] == 3 * (3 * 1 + 4)  # K x (recovery between the 2 prune steps + fine-tune)
    same = {k: recipe.to_dict()[k] for k in ("prune", "finetune")}
    one = recipe_mod.validate({**same, "peer": {"compute": "submodel"}})
    _, info1 = build_peer(teacher, distill.TrainSet(x, y, t, feats), x[:16], y[:16], one, budget, 3,
                          torch.device("cpu"), seed=0)
    assert info1["train_steps"] == 3 * 1 + 4
