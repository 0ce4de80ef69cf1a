"""Importance criteria: shapes, hook hygiene, and class-conditional Taylor scores on a briefly trained ViT."""
import pytest
import torch
import torch.nn.functional as F

from prune_models import make_vit as _make_vit
from prune_models import one_thread  # noqa: F401  (autouse fixture)

from edvit_tool.errors import DataError, RecipeError
from edvit_tool.compile.prune.importance import CRITERIA, Importance, compute_importance, register_criterion
from edvit_tool.compile.prune.surgery import KeepPlan, apply_keep


def make_vit(**kw):
    return _make_vit(**{"num_classes": 4, **kw})


TEMPLATES = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(42))


def template_data(n, seed=0, classes=(0, 1, 2, 3)):
    """Class c = a fixed random image template c plus noise: separable, learned in a few steps."""
    g = torch.Generator().manual_seed(seed)
    y = torch.tensor(classes)[torch.randint(len(classes), (n,), generator=g)]
    return TEMPLATES[y] + 0.5 * torch.randn(n, 1, 16, 16, generator=g), y


@pytest.fixture(scope="module")
def trained():
    model = make_vit().train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for step in range(20):
        x, y = template_data(64, seed=step)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    x, y = template_data(256, seed=999)
    with torch.no_grad():
        assert (model(x).argmax(1) == y).float().mean() > 0.9  # it really learned the classes
    return model


def batches(classes, n=32, k=2):
    return [template_data(n, seed=100 + i, classes=classes) for i in range(k)]


@pytest.mark.parametrize("criterion", sorted(CRITERIA))
def test_every_criterion_scores_every_head_neuron_and_channel(criterion):
    model = make_vit()
    imp = compute_importance(model, batches((0, 1)), F.cross_entropy, criterion, "cpu")
    assert isinstance(imp, Importance)
    assert [s.shape for s in imp.heads] == [torch.Size([3])] * 3
    assert [s.shape for s in imp.mlp] == [torch.Size([192])] * 3
    assert imp.embed.shape == (48,)
    assert all(torch.isfinite(s).all() and (s >= 0).all() for s in imp.heads + imp.mlp + [imp.embed])
    assert all(s.sum() > 0 for s in imp.heads + imp.mlp)


@pytest.mark.parametrize("criterion", ["taylor", "magnitude"])
def test_scores_on_a_pruned_model_with_dropped_branches(criterion):
    pruned = apply_keep(make_vit(), KeepPlan(heads=[[], [1], [0, 2]], mlp=[[3, 4], list(range(192)), []],
                                             embed=list(range(30))))
    imp = compute_importance(pruned, batches((0, 1), k=1), F.cross_entropy, criterion, "cpu")
    assert [len(s) for s in imp.heads] == [0, 1, 2]
    assert [len(s) for s in imp.mlp] == [2, 192, 0]
    assert imp.embed.shape == (30,)


def test_taylor_is_class_conditional(trained):
    a = compute_importance(trained, batches((0,)), F.cross_entropy, "taylor", "cpu")
    b = compute_importance(trained, batches((3,)), F.cross_entropy, "taylor", "cpu")
    again = compute_importance(trained, batches((0,)), F.cross_entropy, "taylor", "cpu")

    def flat(imp):  # per-layer shares, as the planner sees them
        return torch.cat([s / s.sum() for s in imp.heads + imp.mlp] + [imp.embed / imp.embed.sum()])

    assert torch.allclose(flat(a), flat(again))  # deterministic
    # the two groups rank the units differently (measured: ~0.6 relative L1, 5 of the top-20 neurons shared)
    top = lambda imp: set(imp.mlp[0].topk(20).indices.tolist())  # noqa: E731
    assert len(top(a) & top(b)) < 15
    assert (flat(a) - flat(b)).abs().sum() > 0.2 * flat(a).abs().sum()


def test_importance_leaves_model_state_alone(trained):
    trained.zero_grad(set_to_none=True)
    trained.train()
    try:
        compute_importance(trained, batches((1,), k=1), F.cross_entropy, "taylor", "cpu")
        assert trained.training  # training flag restored
    finally:
        trained.eval()
    assert all(p.grad is None for p in trained.parameters())  # grads w.r.t. activations only
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in trained.modules())


def test_hooks_are_removed_when_the_loss_fails():
    model = make_vit()

    def bad_loss(logits, y):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        compute_importance(model, batches((0,), k=1), bad_loss, "taylor", "cpu")
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_unknown_criterion_names_the_valid_ones():
    with pytest.raises(RecipeError, match="magnitude.*taylor|taylor.*magnitude"):
        compute_importance(make_vit(), batches((0,), k=1), F.cross_entropy, "nope", "cpu")


def test_empty_data_is_a_data_error():
    with pytest.raises(DataError):
        compute_importance(make_vit(), [], F.cross_entropy, "magnitude", "cpu")


def test_registered_criterion_is_used():
    @register_criterion("count_tokens")
    def count_tokens(act, grad):
        return torch.full((act.shape[2],), float(act.shape[0] * act.shape[1]))

    try:
        imp = compute_importance(make_vit(), batches((0,), n=8, k=2), F.cross_entropy, "count_tokens", "cpu")
        assert torch.allclose(imp.heads[0], torch.full((3,), 17.0))  # 16 patches + cls per sample, per sample
    finally:
        del CRITERIA["count_tokens"]


def test_taylor_equals_the_derivative_of_the_loss_wrt_a_unit_gate():
    """taylor(unit) = |dL/dg| for a gate g scaling that head's / neuron's output (finite differences, float64)."""
    model = make_vit().double()
    x, y = template_data(1, seed=5)
    x = x.double()
    imp = compute_importance(model, [(x, y)], F.cross_entropy, "taylor", "cpu")

    def loss_with_gate(lin, cols, g):
        with torch.no_grad():
            saved = lin.weight[:, cols].clone()
            lin.weight[:, cols] *= g
            loss = F.cross_entropy(model(x), y).item()
            lin.weight[:, cols] = saved
        return loss

    eps = 1e-5
    for blk_i, head in [(0, 0), (1, 2), (2, 1)]:
        lin, cols = model.blocks[blk_i].attn.proj, slice(16 * head, 16 * head + 16)
        d = (loss_with_gate(lin, cols, 1 + eps) - loss_with_gate(lin, cols, 1 - eps)) / (2 * eps)
        assert imp.heads[blk_i][head].item() == pytest.approx(abs(d), rel=1e-4, abs=1e-9)
    for blk_i, j in [(0, 7), (2, 100)]:
        lin = model.blocks[blk_i].mlp.fc2
        d = (loss_with_gate(lin, [j], 1 + eps) - loss_with_gate(lin, [j], 1 - eps)) / (2 * eps)
        assert imp.mlp[blk_i][j].item() == pytest.approx(abs(d), rel=1e-4, abs=1e-9)
