"""Physical structured pruning of timm (1.0.x) VisionTransformer models.

Everything here slices real tensors (the pruned model really is smaller); nothing masks. Supported: timm
`VisionTransformer` with standard `Block` / `Attention` / `Mlp`, optional class token, register tokens, layer
scale, qk-norm, pre-norm, fc-norm, patch-embed norm, scale-norms (sliced like their branch, which changes their
statistics, so only the plain case is exact w.r.t. masking).

A block whose heads (or MLP neurons) are all pruned loses the whole branch: its class is switched to
`PrunedBlock` (a `Block` subclass) and `norm1/attn/ls1` (or `norm2/mlp/ls2`) are set to None, so the residual
passes through and no zero-size tensor exists anywhere (ONNX Runtime rejects zero-size reshapes).
"""
from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from edvit_tool.errors import CheckpointError, ModelError

try:  # timm >= 1.0 keeps the building blocks in timm.layers
    from timm.layers import Attention, LayerScale, Mlp, PatchEmbed
    from timm.models.vision_transformer import Block, VisionTransformer
except ImportError as e:  # pragma: no cover - timm is a hard dependency
    raise ImportError(f"edvit_tool.compile.prune needs timm>=1.0 ({e})") from e


class PrunedBlock(Block):
    """A timm Block whose attention and/or MLP branch may be None; an absent branch adds nothing."""

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        if self.attn is not None:
            x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal)))
        if self.mlp is not None:
            x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x


def shift_image(x: Tensor, dy: int, dx: int) -> Tensor:
    """x [N, C, H, W] moved down dy / right dx pixels (negative: up / left), edge pixels repeated into the gap.
    Slices and concatenations only, so it exports to every format and runtime the tool targets."""
    for dim, d in ((2, dy), (3, dx)):
        if d > 0:
            edge = x.narrow(dim, 0, 1)
            x = torch.cat([edge] * d + [x.narrow(dim, 0, x.shape[dim] - d)], dim)
        elif d < 0:
            edge = x.narrow(dim, x.shape[dim] - 1, 1)
            x = torch.cat([x.narrow(dim, -d, x.shape[dim] + d)] + [edge] * -d, dim)
    return x


class ViewPatchEmbed(PatchEmbed):
    """A PatchEmbed that first moves the image by its fixed `edvit_view` (dy, dx) pixels: a sub-model's view.
    Same modules and state_dict keys; the view is part of the architecture (vit_arch "view")."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(shift_image(x, *self.edvit_view))


def set_view(model: nn.Module, view) -> nn.Module:
    """Give `model` (in place, also returned) the fixed input translation `view` = (dy, dx); (0, 0) removes it."""
    pe = model.patch_embed
    dy, dx = (int(v) for v in view)
    if (dy, dx) == (0, 0):
        if type(pe) is ViewPatchEmbed:
            pe.__class__ = PatchEmbed
            del pe.edvit_view
        return model
    if type(pe) not in (PatchEmbed, ViewPatchEmbed):
        raise ModelError(f"patch_embed of type {type(pe).__name__} cannot take a view")
    pe.__class__ = ViewPatchEmbed
    pe.edvit_view = (dy, dx)
    return model


def view_of(model: nn.Module) -> tuple[int, int]:
    return tuple(getattr(model.patch_embed, "edvit_view", (0, 0)))


@dataclass
class KeepPlan:
    """Indices to keep, in the model's *current* numbering. Empty list = drop that branch."""

    heads: list[list[int]]
    mlp: list[list[int]]
    embed: list[int] | None = None


# ---------------------------------------------------------------------------------------------- inspection

# Every parameter a supported model may hold; anything else (dist_token, attn_pool, gate...) is refused.
_KNOWN_PARAM = re.compile(
    r"^(cls_token|reg_token|pos_embed|patch_embed\.proj\.(weight|bias)|patch_embed\.norm\.\w+|norm_pre\.\w+"
    r"|norm\.\w+|fc_norm\.\w+|head\.(weight|bias)"
    r"|blocks\.\d+\.(norm1|norm2|attn\.qkv|attn\.proj|attn\.q_norm|attn\.k_norm|attn\.norm|mlp\.fc1|mlp\.fc2"
    r"|mlp\.norm)\.\w+|blocks\.\d+\.ls[12]\.gamma)$"
)


def _is_norm(mod: nn.Module) -> bool:
    return isinstance(mod, nn.Identity) or hasattr(mod, "normalized_shape")


def check_supported(model: nn.Module) -> None:
    """Raise ModelError (one line, names the feature) unless `model` is a timm ViT we can slice."""
    name = type(model).__name__
    if not isinstance(model, VisionTransformer):
        raise ModelError(f"model is a {name}, not a timm VisionTransformer; ED-ViT pruning supports timm "
                         "VisionTransformer models (vit_*, deit3_*, ...) only")
    problems = []
    if getattr(model, "attn_pool", None) is not None:
        problems.append(f"global_pool={model.global_pool!r} (attention pooling)")
    if not isinstance(model.patch_embed, PatchEmbed) or not isinstance(model.patch_embed.proj, nn.Conv2d):
        problems.append(f"patch_embed of type {type(model.patch_embed).__name__}")
    if not isinstance(model.head, (nn.Linear, nn.Identity)):
        problems.append(f"head of type {type(model.head).__name__}")
    for i, blk in enumerate(model.blocks):
        if type(blk) not in (Block, PrunedBlock):
            problems.append(f"blocks.{i} is a {type(blk).__name__} (need timm Block)")
            continue
        if blk.attn is not None:
            if type(blk.attn) is not Attention:
                problems.append(f"blocks.{i}.attn is a {type(blk.attn).__name__} (need timm Attention)")
            elif getattr(blk.attn, "gate", None) is not None:
                problems.append(f"blocks.{i}.attn is gated")
        if blk.mlp is not None and (type(blk.mlp) is not Mlp or not isinstance(blk.mlp.fc1, nn.Linear)):
            problems.append(f"blocks.{i}.mlp is a {type(blk.mlp).__name__} (need timm Mlp with Linear layers)")
        for n in ("ls1", "ls2"):
            ls = getattr(blk, n)
            if ls is not None and not isinstance(ls, (nn.Identity, LayerScale)):
                problems.append(f"blocks.{i}.{n} is a {type(ls).__name__}")
    for n, mod in model.named_modules():
        if n.rsplit(".", 1)[-1] in ("norm", "norm1", "norm2", "norm_pre", "fc_norm", "q_norm", "k_norm") \
                and not _is_norm(mod):
            problems.append(f"{n} is a {type(mod).__name__} (need a LayerNorm/RmsNorm-like norm)")
    unknown = [n for n, _ in model.named_parameters() if not _KNOWN_PARAM.match(n)]
    if unknown:
        problems.append("unknown parameters " + ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else ""))
    if problems:
        raise ModelError(f"{name} is not supported for pruning: " + "; ".join(problems))


def _head_dim(blk: nn.Module) -> int:
    return blk.attn.head_dim if blk.attn is not None else blk.edvit_head_dim


def vit_arch(model: nn.Module) -> dict:
    """Per-block sizes of a (possibly pruned) supported ViT; JSON-serialisable."""
    check_supported(model)
    return {
        "embed_dim": int(model.patch_embed.proj.out_channels),
        "head_dim": int(_head_dim(model.blocks[0])) if len(model.blocks) else 0,
        "heads": [int(b.attn.num_heads) if b.attn is not None else 0 for b in model.blocks],
        "mlp_hidden": [int(b.mlp.fc1.out_features) if b.mlp is not None else 0 for b in model.blocks],
        "num_outputs": int(model.head.out_features) if isinstance(model.head, nn.Linear) else 0,
        **({"view": list(view_of(model))} if view_of(model) != (0, 0) else {}),
    }


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def estimate_flops(arch: dict, img_size, patch_size, in_chans: int, num_prefix_tokens: int) -> int:
    """FLOPs (= 2 x multiply-accumulates) of one image's forward, from matmuls/convs only.

    T = patches + prefix tokens, E = embed, A = heads x head_dim, m = MLP hidden:
      patch embed  P*E*C*ph*pw;   per block with A>0: qkv T*E*3A + scores T*T*A + attn@v T*T*A + proj T*A*E;
      per block with m>0: fc1+fc2 2*T*E*m;   head E*outputs (CLS token only).
    Norms, softmax, GELU, adds and biases are ignored (a few % for small T).
    """
    ih, iw = (img_size, img_size) if isinstance(img_size, int) else img_size
    ph, pw = (patch_size, patch_size) if isinstance(patch_size, int) else patch_size
    n_patch = (ih // ph) * (iw // pw)
    t, e, hd = n_patch + num_prefix_tokens, arch["embed_dim"], arch["head_dim"]
    macs = n_patch * e * in_chans * ph * pw + e * arch["num_outputs"]
    for h, m in zip(arch["heads"], arch["mlp_hidden"]):
        a = h * hd
        macs += (t * e * 3 * a + 2 * t * t * a + t * a * e) if h else 0
        macs += 2 * t * e * m
    return 2 * macs


# ---------------------------------------------------------------------------------------------- slicing helpers

def _param(old: nn.Parameter, new: Tensor) -> nn.Parameter:
    return nn.Parameter(new.clone(), requires_grad=old.requires_grad)


def _sel(t: Tensor, idx: Tensor, dim: int = 0) -> Tensor:
    return t.index_select(dim, idx.to(t.device))  # indices live on the CPU, weights may not


def _slice_linear(lin: nn.Linear, out: Tensor | None = None, inp: Tensor | None = None) -> None:
    w = lin.weight
    if out is not None:
        w = _sel(w, out)
        if lin.bias is not None:
            lin.bias = _param(lin.bias, _sel(lin.bias, out))
        lin.out_features = len(out)
    if inp is not None:
        w = _sel(w, inp, 1)
        lin.in_features = len(inp)
    lin.weight = _param(lin.weight, w)


def _slice_norm(norm: nn.Module | None, idx: Tensor) -> None:
    if norm is None or isinstance(norm, nn.Identity):
        return
    for n in ("weight", "bias"):
        p = getattr(norm, n, None)
        if p is not None:
            setattr(norm, n, _param(p, _sel(p, idx)))
    norm.normalized_shape = (len(idx),)


def _slice_ls(ls: nn.Module | None, idx: Tensor) -> None:
    if isinstance(ls, LayerScale):
        ls.gamma = _param(ls.gamma, _sel(ls.gamma, idx))


def _index(keep, size: int, what: str) -> Tensor:
    keep = sorted(set(int(k) for k in keep))
    if keep and (keep[0] < 0 or keep[-1] >= size):
        raise ModelError(f"keep plan: {what} index out of range [0, {size}): {keep}")
    return torch.tensor(keep, dtype=torch.long)


def _to_pruned_block(blk: nn.Module) -> None:
    if type(blk) is Block:
        blk.__class__ = PrunedBlock  # same modules and state_dict keys, forward tolerates absent branches


def _keep_heads(blk: nn.Module, keep, i: int) -> None:
    attn = blk.attn
    if attn is None:
        if len(keep):
            raise ModelError(f"keep plan: blocks.{i} has no attention left, cannot keep heads {list(keep)}")
        return
    idx = _index(keep, attn.num_heads, f"blocks.{i} heads")
    if len(idx) == attn.num_heads:
        return
    if len(idx) == 0:
        _to_pruned_block(blk)
        blk.edvit_head_dim = attn.head_dim  # remembered so vit_arch still knows head_dim
        blk.norm1 = blk.attn = blk.ls1 = None
        return
    hd, a = attn.head_dim, attn.attn_dim
    cols = (idx[:, None] * hd + torch.arange(hd)).reshape(-1)  # channels of the kept heads inside q (or k, v)
    _slice_linear(attn.qkv, out=torch.cat([cols, cols + a, cols + 2 * a]))
    _slice_linear(attn.proj, inp=cols)
    _slice_norm(attn.norm, cols)  # scale_norm (approximate: its statistics change)
    attn.num_heads, attn.attn_dim = len(idx), len(idx) * hd  # head_dim and scale stay; q/k norms are per head_dim


def _keep_mlp(blk: nn.Module, keep, i: int) -> None:
    mlp = blk.mlp
    if mlp is None:
        if len(keep):
            raise ModelError(f"keep plan: blocks.{i} has no MLP left, cannot keep neurons")
        return
    idx = _index(keep, mlp.fc1.out_features, f"blocks.{i} mlp")
    if len(idx) == mlp.fc1.out_features:
        return
    if len(idx) == 0:
        _to_pruned_block(blk)
        blk.norm2 = blk.mlp = blk.ls2 = None
        return
    _slice_linear(mlp.fc1, out=idx)
    _slice_norm(mlp.norm, idx)
    _slice_linear(mlp.fc2, inp=idx)


def _keep_embed(m: nn.Module, keep) -> None:
    e = _index(keep, m.patch_embed.proj.out_channels, "embed")
    if len(e) == m.patch_embed.proj.out_channels:
        return
    if len(e) == 0:
        raise ModelError("keep plan: cannot drop every embedding channel")
    pe = m.patch_embed.proj
    pe.weight = _param(pe.weight, _sel(pe.weight, e))
    if pe.bias is not None:
        pe.bias = _param(pe.bias, _sel(pe.bias, e))
    pe.out_channels = len(e)
    _slice_norm(m.patch_embed.norm, e)
    for n in ("cls_token", "reg_token", "pos_embed"):
        p = getattr(m, n)
        if p is not None:
            setattr(m, n, _param(p, _sel(p, e, -1)))
    for n in ("norm_pre", "norm", "fc_norm"):
        _slice_norm(getattr(m, n), e)
    for blk in m.blocks:
        if blk.attn is not None:
            _slice_norm(blk.norm1, e)
            _slice_linear(blk.attn.qkv, inp=e)
            _slice_linear(blk.attn.proj, out=e)
            _slice_ls(blk.ls1, e)
        if blk.mlp is not None:
            _slice_norm(blk.norm2, e)
            _slice_linear(blk.mlp.fc1, inp=e)
            _slice_linear(blk.mlp.fc2, out=e)
            _slice_ls(blk.ls2, e)
    if isinstance(m.head, nn.Linear):
        _slice_linear(m.head, inp=e)
    # timm reads these in reset_classifier / feature_info users
    m.embed_dim = m.num_features = m.head_hidden_size = len(e)
    for fi in getattr(m, "feature_info", []):
        fi["num_chs"] = len(e)


def apply_keep(model: nn.Module, plan: KeepPlan) -> nn.Module:
    """Return a physically pruned deep copy of `model` (the original is untouched)."""
    check_supported(model)
    depth = len(model.blocks)
    if len(plan.heads) != depth or len(plan.mlp) != depth:
        raise ModelError(f"keep plan has {len(plan.heads)} head / {len(plan.mlp)} mlp entries, model has "
                         f"{depth} blocks")
    m = copy.deepcopy(model)
    with torch.no_grad():
        for i, blk in enumerate(m.blocks):
            _keep_heads(blk, plan.heads[i], i)
            _keep_mlp(blk, plan.mlp[i], i)
        if plan.embed is not None:
            _keep_embed(m, plan.embed)
    return m


def full_plan(arch: dict, embed: int | None = None) -> KeepPlan:
    """First-n indices for each size in `arch` (meaningless indices, used to get shapes)."""
    return KeepPlan(heads=[list(range(h)) for h in arch["heads"]], mlp=[list(range(n)) for n in arch["mlp_hidden"]],
                    embed=None if embed is None else list(range(embed)))


def build_pruned(model_name: str, model_kwargs: dict, arch: dict) -> nn.Module:
    """A fresh (random-weight) model whose state_dict shapes match a pruned model with `arch`."""
    import timm

    model = timm.create_model(model_name, pretrained=False, **model_kwargs)
    check_supported(model)
    base = vit_arch(model)
    bad = []
    if len(arch["heads"]) != len(base["heads"]) or len(arch["mlp_hidden"]) != len(base["mlp_hidden"]):
        bad.append(f"depth {len(arch['heads'])} vs {len(base['heads'])}")
    elif any(a > b for a, b in zip(arch["heads"], base["heads"])) or \
            any(a > b for a, b in zip(arch["mlp_hidden"], base["mlp_hidden"])):
        bad.append("more heads / MLP neurons than the base model")
    if any(arch["heads"]) and arch["head_dim"] != base["head_dim"]:
        bad.append(f"head_dim {arch['head_dim']} vs {base['head_dim']}")
    if not 0 < arch["embed_dim"] <= base["embed_dim"]:
        bad.append(f"embed_dim {arch['embed_dim']} vs {base['embed_dim']}")
    if bad:
        raise CheckpointError(f"pruned architecture does not fit {model_name} {model_kwargs}: " + "; ".join(bad))
    pruned = apply_keep(model, full_plan(arch, embed=arch["embed_dim"]))
    if arch["num_outputs"] != base["num_outputs"]:
        replace_head(pruned, arch["num_outputs"])
    return set_view(pruned, arch.get("view", (0, 0)))


# ---------------------------------------------------------------------------------------------- heads / masks

def replace_head(model: nn.Module, num_outputs: int, init_from: nn.Linear | tuple[Tensor, Tensor] | None = None
                 ) -> nn.Module:
    """Swap (in place, also returned) the classifier for `num_outputs` outputs.

    init_from: an nn.Linear or (weight, bias) of shape [num_outputs, embed] to copy; None = timm-style init
    (trunc-normal std 0.02, zero bias).
    """
    ref = model.patch_embed.proj.weight
    if num_outputs <= 0:
        head = nn.Identity()
    else:
        head = nn.Linear(model.patch_embed.proj.out_channels, num_outputs, device=ref.device, dtype=ref.dtype)
        with torch.no_grad():
            if init_from is None:
                nn.init.trunc_normal_(head.weight, std=0.02)
                head.bias.zero_()
            else:
                w, b = (init_from.weight, init_from.bias) if isinstance(init_from, nn.Linear) else init_from
                if tuple(w.shape) != tuple(head.weight.shape):
                    raise ModelError(f"head init has shape {tuple(w.shape)}, need {tuple(head.weight.shape)}")
                head.weight.copy_(w)
                head.bias.copy_(b if b is not None else torch.zeros(num_outputs))
    head.train(model.training)
    model.head = head
    model.num_classes = num_outputs
    return model


def group_head_init(model: nn.Module, class_indices) -> nn.Linear:
    """A |group|+1-output head: rows copy the original head rows of `class_indices`, last row is "other".

    "other" should score like logsumexp of the remaining classes' logits; with equal logits that is their mean
    + log(n), so: weight = mean of the other rows, bias = mean of the other biases + log(n). If the group covers
    every class, "other" gets zero weight and a bias 4 below the lowest bias (rarely predicted).
    """
    head = model.head
    if not isinstance(head, nn.Linear):
        raise ModelError("model has no linear classifier head to initialise the group head from")
    idx, n = [int(c) for c in class_indices], head.out_features  # caller's order = output row order
    if not idx or len(set(idx)) != len(idx) or min(idx) < 0 or max(idx) >= n:
        raise ModelError(f"class indices must be distinct and in [0, {n}), got {list(class_indices)}")
    rest = [c for c in range(n) if c not in set(idx)]
    w = head.weight.detach()
    b = head.bias.detach() if head.bias is not None else w.new_zeros(n)
    new = nn.Linear(head.in_features, len(idx) + 1, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight[:-1] = w[idx]
        new.bias[:-1] = b[idx]
        if rest:
            new.weight[-1] = w[rest].mean(0)
            new.bias[-1] = b[rest].mean() + math.log(len(rest))
        else:
            new.weight[-1] = 0
            new.bias[-1] = b.min() - 4.0
    return new


def mask_heads(model: nn.Module, heads_to_zero: list[list[int]]) -> nn.Module:
    """Deep copy with those heads' output zeroed (proj input columns), shapes unchanged.

    If every head of a block is masked the proj bias is zeroed too, so the branch adds exactly nothing,
    matching surgery that drops the branch.
    """
    m = copy.deepcopy(model)
    with torch.no_grad():
        for blk, heads in zip(m.blocks, heads_to_zero):
            if not heads:
                continue
            attn, hd = blk.attn, blk.attn.head_dim
            for h in heads:
                attn.proj.weight[:, h * hd:(h + 1) * hd] = 0
            if len(set(heads)) == attn.num_heads and attn.proj.bias is not None:
                attn.proj.bias.zero_()
    return m


def mask_mlp(model: nn.Module, neurons_to_zero: list[list[int]]) -> nn.Module:
    """Deep copy with those MLP neurons zeroed (fc2 input columns; fc2 bias too if all are masked)."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        for blk, idx in zip(m.blocks, neurons_to_zero):
            if not idx:
                continue
            blk.mlp.fc2.weight[:, list(idx)] = 0
            if len(set(idx)) == blk.mlp.fc2.in_features and blk.mlp.fc2.bias is not None:
                blk.mlp.fc2.bias.zero_()
    return m


class SubModelWrapper(nn.Module):
    """forward(x) -> (features, logits): features = pooled, final-normed embedding (timm pre_logits)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        if not getattr(model, "global_pool", "token"):
            raise ModelError("model has global_pool='' (no pooled features); use 'token' or 'avg'")
        self.model = model

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        m = self.model
        tokens = m.forward_features(x)
        if m.global_pool == "avg":
            # timm's .mean() exports as ReduceMean with opset-18 attributes under opset 17 (the checker refuses
            # it); a sum over the patch tokens exports as ReduceSum, valid since opset 13
            patches = tokens[:, m.num_prefix_tokens:]
            feats = m.head_drop(m.fc_norm(patches.sum(dim=1) * (1.0 / patches.shape[1])))
        else:
            feats = m.forward_head(tokens, pre_logits=True)
        return feats, m.head(feats)
