"""Budget planning: exact analytic parameter counts, hitting a parameter target, keep ratios, determinism."""
import pytest
import torch

from prune_models import make_vit
from prune_models import one_thread  # noqa: F401  (autouse fixture)

from edvit_tool.errors import ModelError, RecipeError
from edvit_tool.compile.prune.importance import Importance
from edvit_tool.compile.prune.plan import arch_spec, params_of_arch, plan_keep
from edvit_tool.compile.prune.surgery import KeepPlan, apply_keep, count_params, vit_arch

VARIANTS = [
    {},
    dict(qkv_bias=False, proj_bias=False),
    dict(reg_tokens=1, init_values=1e-5, qk_norm=True),
    dict(global_pool="avg", class_token=False, pre_norm=True, no_embed_class=True, norm_layer="rmsnorm"),
]


def random_importance(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = vit_arch(model)
    return Importance(heads=[torch.rand(h, generator=g) for h in a["heads"]],
                      mlp=[torch.rand(m, generator=g) for m in a["mlp_hidden"]],
                      embed=torch.rand(a["embed_dim"], generator=g))


@pytest.mark.parametrize("kw", VARIANTS, ids=range(len(VARIANTS)))
def test_params_of_arch_equals_count_params_for_original_and_pruned(kw):
    vit = make_vit(**kw)
    assert params_of_arch(vit_arch(vit), arch_spec(vit)) == count_params(vit)
    pruned = apply_keep(vit, KeepPlan(heads=[[], [1], [0, 2]], mlp=[[5], list(range(192)), []],
                                      embed=list(range(3, 40))))
    assert params_of_arch(vit_arch(pruned), arch_spec(vit)) == count_params(pruned)
    assert params_of_arch(vit_arch(pruned), pruned) == count_params(pruned)


@pytest.mark.parametrize("kw", VARIANTS, ids=range(len(VARIANTS)))
@pytest.mark.parametrize("ratio", [0.1, 0.25, 0.5])
def test_params_target_is_hit_from_below(kw, ratio):
    vit = make_vit(**kw)
    target = int(ratio * count_params(vit))
    plan = plan_keep(vit, random_importance(vit), params_target=target)
    pruned = apply_keep(vit, plan)
    n = count_params(pruned)
    assert 0.98 * target <= n <= target
    assert n == params_of_arch(vit_arch(pruned), vit)
    assert sum(vit_arch(pruned)["heads"]) >= 1 and vit_arch(pruned)["embed_dim"] >= 8
    with torch.no_grad():
        assert torch.isfinite(pruned(torch.randn(2, 1, 16, 16))).all()


def test_params_target_without_embedding_pruning_keeps_every_channel():
    vit = make_vit()
    target = int(0.3 * count_params(vit))
    plan = plan_keep(vit, random_importance(vit), params_target=target, prune_embed=False)
    assert plan.embed is None
    assert 0.98 * target <= count_params(apply_keep(vit, plan)) <= target


def test_plan_is_deterministic_even_with_tied_scores():
    vit = make_vit()
    tied = Importance(heads=[torch.ones(3)] * 3, mlp=[torch.ones(192)] * 3, embed=torch.ones(48))
    target = int(0.25 * count_params(vit))
    assert plan_keep(vit, tied, params_target=target) == plan_keep(vit, tied, params_target=target)
    imp = random_importance(vit)
    assert plan_keep(vit, imp, keep_ratios={"heads": 0.5}) == plan_keep(vit, imp, keep_ratios={"heads": 0.5})


def test_keep_ratios_keep_the_best_units_and_the_asked_counts():
    vit = make_vit()
    imp = random_importance(vit)
    imp.heads[1] = torch.tensor([0.1, 5.0, 0.2])  # head 1 is by far the best of block 1
    plan = plan_keep(vit, imp, keep_ratios={"heads": 4 / 9, "mlp": 0.25, "embed": 0.5})
    assert sum(len(h) for h in plan.heads) == 4 and 1 in plan.heads[1]
    assert sum(len(m) for m in plan.mlp) == 144
    assert plan.embed == sorted(imp.embed.topk(24).indices.tolist())
    top_neurons = set(imp.mlp[0].topk(5).indices.tolist())
    assert top_neurons <= set(plan.mlp[0]) or len(plan.mlp[0]) < 5


def test_never_drops_every_head_or_the_embedding():
    vit = make_vit()
    plan = plan_keep(vit, random_importance(vit), keep_ratios={"heads": 0, "mlp": 0, "embed": 0})
    assert sum(len(h) for h in plan.heads) == 1 and len(plan.embed) == 8
    assert sum(len(m) for m in plan.mlp) == 0
    pruned = apply_keep(vit, plan)  # only one attention branch left in the whole model: still runs
    with torch.no_grad():
        assert pruned(torch.randn(2, 1, 16, 16)).shape == (2, 10)
    plan = plan_keep(vit, random_importance(vit), keep_ratios={"heads": 0}, min_heads_total=2)
    assert sum(len(h) for h in plan.heads) == 2


def test_plan_on_an_already_pruned_model():
    vit = make_vit()
    pruned = apply_keep(vit, KeepPlan(heads=[[], [0, 1], [2]], mlp=[[1, 2, 3], [], list(range(100))],
                                      embed=list(range(40))))
    target = int(0.5 * count_params(pruned))
    again = apply_keep(pruned, plan_keep(pruned, random_importance(pruned), params_target=target))
    assert 0.98 * target <= count_params(again) <= target
    assert vit_arch(again)["heads"][0] == 0 and vit_arch(again)["mlp_hidden"][1] == 0


def test_bad_budgets_are_recipe_errors():
    vit = make_vit()
    imp = random_importance(vit)
    with pytest.raises(RecipeError, match="exactly one"):
        plan_keep(vit, imp)
    with pytest.raises(RecipeError, match="exactly one"):
        plan_keep(vit, imp, params_target=1000, keep_ratios={"heads": 0.5})
    with pytest.raises(RecipeError, match="unknown key 'layers'"):
        plan_keep(vit, imp, keep_ratios={"layers": 0.5})
    with pytest.raises(RecipeError, match=r"keep_ratios.mlp must be in \[0, 1\]"):
        plan_keep(vit, imp, keep_ratios={"mlp": 1.5})
    with pytest.raises(RecipeError, match="below the smallest model"):
        plan_keep(vit, imp, params_target=100)
    with pytest.raises(ModelError, match="do not match"):
        plan_keep(vit, Importance(heads=imp.heads[:2], mlp=imp.mlp, embed=imp.embed), keep_ratios={})


def test_target_above_the_model_keeps_everything():
    vit = make_vit()
    plan = plan_keep(vit, random_importance(vit), params_target=count_params(vit) + 10)
    assert count_params(apply_keep(vit, plan)) == count_params(vit)
