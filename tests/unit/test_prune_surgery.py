"""Physical surgery on tiny timm ViTs: equals masking, drops empty branches, exports, rebuilds from arch."""
import copy

import pytest
import timm
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from prune_models import BASE, NAME
from prune_models import make_vit as _make_vit
from prune_models import one_thread  # noqa: F401  (autouse fixture)

from edvit_tool.errors import CheckpointError, ModelError
from edvit_tool.compile.prune.plan import params_of_arch
from edvit_tool.compile.prune.surgery import (
    KeepPlan, PrunedBlock, SubModelWrapper, apply_keep, build_pruned, check_supported, count_params,
    estimate_flops, group_head_init, mask_heads, mask_mlp, replace_head, vit_arch,
)

VARIANTS = {
    "plain": {},
    "no_qkv_bias": dict(qkv_bias=False),
    # layer scale at 0.5 (not 1e-5) so a wrongly sliced gamma would show in the outputs
    "reg_ls_qknorm": dict(reg_tokens=1, init_values=0.5, qk_norm=True),
    "avg_prenorm": dict(global_pool="avg", class_token=False, pre_norm=True, no_embed_class=True),
}


def make_vit(**kw):
    model = _make_vit(**kw)
    with torch.no_grad():  # timm zero-inits some biases / tokens; randomise so slicing errors are visible
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def images(n=4):
    return torch.randn(n, 1, 16, 16, generator=torch.Generator().manual_seed(1))


def full(model):
    a = vit_arch(model)
    return KeepPlan(heads=[list(range(h)) for h in a["heads"]], mlp=[list(range(m)) for m in a["mlp_hidden"]])


def max_diff(a, b, x):
    with torch.no_grad():
        return (a(x) - b(x)).abs().max().item()


@pytest.fixture(params=sorted(VARIANTS))
def vit(request):
    return make_vit(**VARIANTS[request.param])


def test_keeping_everything_reproduces_the_original_logits(vit):
    pruned = apply_keep(vit, KeepPlan(**{**full(vit).__dict__, "embed": list(range(48))}))
    assert max_diff(vit, pruned, images()) < 1e-5
    assert count_params(pruned) == count_params(vit)


def test_pruned_heads_equal_masked_heads(vit):
    drop = [[1], [0, 2], []]
    plan = full(vit)
    plan.heads = [[h for h in range(3) if h not in d] for d in drop]
    pruned = apply_keep(vit, plan)
    assert vit_arch(pruned)["heads"] == [2, 1, 3]
    assert max_diff(pruned, mask_heads(vit, drop), images()) < 1e-5
    assert count_params(pruned) < count_params(vit)


def test_pruned_mlp_neurons_equal_masked_neurons(vit):
    g = torch.Generator().manual_seed(2)
    keep = [sorted(torch.randperm(192, generator=g)[:k].tolist()) for k in (10, 100, 191)]
    plan = full(vit)
    plan.mlp = keep
    pruned = apply_keep(vit, plan)
    drop = [[j for j in range(192) if j not in set(k)] for k in keep]
    assert vit_arch(pruned)["mlp_hidden"] == [10, 100, 191]
    assert max_diff(pruned, mask_mlp(vit, drop), images()) < 1e-5


def test_surgery_leaves_the_original_untouched():
    vit = make_vit()
    before = copy.deepcopy(vit.state_dict())
    apply_keep(vit, KeepPlan(heads=[[0], [], [1, 2]], mlp=[[1, 2], [], list(range(192))], embed=list(range(20))))
    assert all(torch.equal(before[k], v) for k, v in vit.state_dict().items())
    assert vit_arch(vit)["heads"] == [3, 3, 3]


ZERO_PLAN = dict(heads=[[], [0, 2], [1]], mlp=[list(range(50)), [], list(range(7))])


@pytest.mark.parametrize("variant", ["plain", "reg_ls_qknorm"])
def test_zero_head_and_zero_mlp_blocks_drop_the_branch_and_match_masking(variant):
    vit = make_vit(**VARIANTS[variant])
    pruned = apply_keep(vit, KeepPlan(**ZERO_PLAN))
    b0, b1 = pruned.blocks[0], pruned.blocks[1]
    assert isinstance(b0, PrunedBlock) and b0.attn is None and b0.norm1 is None and b0.ls1 is None
    assert b1.mlp is None and b1.norm2 is None
    assert all(p.numel() > 0 for p in pruned.parameters())
    assert not any(k.startswith(("blocks.0.attn", "blocks.0.norm1", "blocks.1.mlp")) for k in pruned.state_dict())
    masked = mask_mlp(mask_heads(vit, [[0, 1, 2], [1], [0, 2]]),
                      [list(range(50, 192)), list(range(192)), list(range(7, 192))])
    x = images()
    assert torch.isfinite(pruned(x)).all()
    assert max_diff(pruned, masked, x) < 1e-5
    assert vit_arch(pruned)["heads"] == [0, 2, 1] and vit_arch(pruned)["head_dim"] == 16


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
def test_zero_branch_model_exports_to_onnx_and_matches_onnxruntime(tmp_path, dynamo):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript" if dynamo else "onnx")
    vit = make_vit(**VARIANTS["reg_ls_qknorm"])
    pruned = apply_keep(vit, KeepPlan(**ZERO_PLAN, embed=list(range(0, 48, 2))))
    wrapped = SubModelWrapper(pruned).eval()
    x = images(2)
    path = tmp_path / "sub.onnx"
    torch.onnx.export(wrapped, (x,), str(path), opset_version=17, dynamo=dynamo,
                      input_names=["x"], output_names=["features", "logits"])
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feats, logits = sess.run(None, {"x": x.numpy()})
    with torch.no_grad():
        ref_f, ref_l = wrapped(x)
    assert abs(feats - ref_f.numpy()).max() < 1e-4 and abs(logits - ref_l.numpy()).max() < 1e-4


def test_embedding_pruning_slices_every_tensor_and_shrinks_params(vit):
    keep = sorted(torch.randperm(48, generator=torch.Generator().manual_seed(3))[:20].tolist())
    pruned = apply_keep(vit, KeepPlan(heads=[[0, 1], [2], []], mlp=[list(range(30)), [], list(range(192))],
                                      embed=keep))
    arch = vit_arch(pruned)
    assert arch["embed_dim"] == 20 and pruned.num_features == pruned.embed_dim == 20
    for name, mod in pruned.named_modules():
        last = name.rsplit(".", 1)[-1]
        if last in ("qkv", "fc1", "head"):
            assert mod.in_features == 20, name
        elif last in ("proj", "fc2") and isinstance(mod, nn.Linear):
            assert mod.out_features == 20, name
        elif hasattr(mod, "normalized_shape") and last not in ("q_norm", "k_norm"):
            assert mod.weight.shape == (20,), name
        elif hasattr(mod, "gamma"):
            assert mod.gamma.shape == (20,), name
    assert all(t.shape[-1] == 20 for t in (pruned.cls_token, pruned.reg_token, pruned.pos_embed) if t is not None)
    with torch.no_grad():
        out = pruned(images())
    assert out.shape == (4, 10) and torch.isfinite(out).all()
    assert count_params(pruned) == params_of_arch(arch, vit) < count_params(vit)


def test_build_pruned_loads_the_pruned_state_dict_strictly():
    kw = {**BASE, **VARIANTS["reg_ls_qknorm"]}
    vit = make_vit(**VARIANTS["reg_ls_qknorm"])
    pruned = apply_keep(vit, KeepPlan(**ZERO_PLAN, embed=list(range(5, 40))))
    replace_head(pruned, 4, init_from=group_head_init(pruned, [3, 1, 7]))
    arch = vit_arch(pruned)
    rebuilt = build_pruned(NAME, kw, arch)
    rebuilt.load_state_dict(pruned.state_dict(), strict=True)
    rebuilt.eval()
    assert vit_arch(rebuilt) == arch
    assert max_diff(rebuilt, pruned, images()) == 0


def test_build_pruned_rejects_an_arch_larger_than_the_model():
    arch = vit_arch(make_vit())
    arch["heads"][0] = 5
    with pytest.raises(CheckpointError, match="more heads"):
        build_pruned(NAME, BASE, arch)


def test_group_head_copies_class_rows_and_inits_other_from_the_rest():
    vit = make_vit()
    head = group_head_init(vit, [4, 2])
    w, b = vit.head.weight, vit.head.bias
    rest = [c for c in range(10) if c not in (2, 4)]
    assert torch.equal(head.weight[:2], w[[4, 2]]) and torch.equal(head.bias[:2], b[[4, 2]])
    assert torch.allclose(head.weight[2], w[rest].mean(0))
    assert head.bias[2] > b[rest].mean()  # + log(8): "other" stands for 8 classes
    replace_head(vit, 3, init_from=head)
    assert vit(images()).shape == (4, 3) and vit.num_classes == 3
    with pytest.raises(ModelError):
        group_head_init(make_vit(), [1, 1])


def test_submodel_wrapper_returns_pre_logit_features_and_logits(vit):
    x = images()
    with torch.no_grad():
        feats, logits = SubModelWrapper(vit)(x)
        ref = vit.forward_head(vit.forward_features(x), pre_logits=True)
        assert torch.equal(feats, ref) and torch.allclose(logits, vit(x), atol=1e-6)
    assert feats.shape == (4, 48)


def test_flop_estimate_matches_torch_flop_counter():
    vit = make_vit(reg_tokens=2)
    pruned = apply_keep(vit, KeepPlan(**ZERO_PLAN, embed=list(range(24))))
    for model in (vit, pruned):
        for blk in model.blocks:
            if blk.attn is not None:
                blk.attn.fused_attn = False  # the counter sees q@k and attn@v only on the explicit path
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            model(images(1))
        assert estimate_flops(vit_arch(model), 16, 4, 1, model.num_prefix_tokens) == fc.get_total_flops()


def test_non_vit_and_unsupported_vit_features_are_rejected():
    with pytest.raises(ModelError, match="ResNet, not a timm VisionTransformer"):
        check_supported(timm.create_model("resnet18", pretrained=False, num_classes=3))
    with pytest.raises(ModelError, match="attention pooling"):
        check_supported(timm.create_model(NAME, pretrained=False, **{**BASE, "global_pool": "map"}))
    vit = make_vit()
    vit.blocks[1].mlp = nn.Sequential(nn.Linear(48, 8), nn.GELU(), nn.Linear(8, 48))
    with pytest.raises(ModelError, match=r"blocks\.1\.mlp is a Sequential"):
        apply_keep(vit, full(make_vit()))


def test_bad_keep_plan_is_rejected():
    vit = make_vit()
    with pytest.raises(ModelError, match="out of range"):
        apply_keep(vit, KeepPlan(heads=[[0, 3], [0], [0]], mlp=[[0], [0], [0]]))
    with pytest.raises(ModelError, match="3 blocks"):
        apply_keep(vit, KeepPlan(heads=[[0]], mlp=[[0]]))
