"""Fusion heads: sub-model outputs (concatenated in group order) → N-class logits.

mlp    — a small MLP on the sub-models' features, trained on the `fusion` split (which no sub-model trained on:
         features are too clean on a sub-model's own training images and the head overfits otherwise), with
         sub-model dropout (a whole sub-model's slice zeroed, which is exactly what the coordinator sends when a
         board is missing), feature noise, weight decay and KD from the original model's logits.
logits — training-free product of experts: score(c) = log p_g(c) + Σ_{h≠g} log p_h(other), for c in group g.
         A missing sub-model's slice is zeros → its log-softmax is uniform, a constant shift for its classes.
ensemble — on the sub-models' features: Σ_k a_k · log_softmax(aux_k(f_k)) + b · (the `logits` product of experts
         on the sub-models' own heads, copied in) + a class bias. aux_k is sub-model k's N-class head, distilled
         from the original during its fine-tune (distill.Student); only a_k, b and the bias (K + 1 + N numbers)
         are fitted on the fusion split, so it cannot overfit a small split the way an MLP can.
"""

from __future__ import annotations

import copy
import dataclasses
from types import SimpleNamespace

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config.recipe import FusionCfg
from . import distill
from .data import stratified_sample


class FusionMLP(nn.Module):
    def __init__(self, input_dims: list[int], num_classes: int, hidden: int = 128, dropout: float = 0.3):
        super().__init__()
        self.input_dims = list(input_dims)
        self.net = nn.Sequential(nn.Linear(sum(input_dims), hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, num_classes))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


class LogitFusion(nn.Module):
    """Fixed linear map on per-segment log-softmax (no trainable parameters; exported like any module)."""

    def __init__(self, groups: list[list[int]], num_classes: int):
        super().__init__()
        self.input_dims = [len(g) + 1 for g in groups]
        total = sum(self.input_dims)
        w = torch.zeros(num_classes, total)
        start = 0
        for gi, g in enumerate(groups):
            for j, c in enumerate(g):
                w[c, start + j] = 1.0
            other = start + len(g)
            for hi, h in enumerate(groups):
                if hi != gi:
                    w[h, other] = 1.0
            start += len(g) + 1
        self.register_buffer("weight", w)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        bounds = _bounds(self.input_dims)
        logp = torch.cat([F.log_softmax(features[:, a:b], dim=1) for a, b in bounds], dim=1)
        return logp @ self.weight.t()


def _bounds(dims: list[int]) -> list[tuple[int, int]]:
    # fixed slices rather than torch.split: Split-18 has no down-converter to opset 17 in onnx
    out, start = [], 0
    for d in dims:
        out.append((start, start + d))
        start += d
    return out


class EnsembleFusion(nn.Module):
    """Weighted product of the sub-models' N-class (aux) experts and of their group-head product of experts."""

    def __init__(self, input_dims: list[int], groups: list[list[int]], num_classes: int):
        super().__init__()
        self.input_dims = list(input_dims)
        self.aux = nn.ModuleList(nn.Linear(d, num_classes) for d in input_dims)
        self.heads = nn.ModuleList(nn.Linear(d, len(g) + 1) for d, g in zip(input_dims, groups))
        self.poe = LogitFusion(groups, num_classes)
        self.aux_weight = nn.Parameter(torch.ones(len(groups)))
        self.poe_weight = nn.Parameter(torch.ones(1))
        self.bias = nn.Parameter(torch.zeros(num_classes))

    @classmethod
    def from_students(cls, students, groups: list[list[int]], num_classes: int) -> "EnsembleFusion":
        dims = [s.model.head.in_features for s in students]
        fusion = cls(dims, groups, num_classes)
        with torch.no_grad():
            for k, s in enumerate(students):
                fusion.heads[k].load_state_dict(s.model.head.state_dict())
                if s.aux is not None:
                    fusion.aux[k].load_state_dict(s.aux.state_dict())
                else:  # no aux head trained: this sub-model speaks through the product of experts only
                    fusion.aux[k].weight.zero_()
                    fusion.aux[k].bias.zero_()
        return fusion

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        out, group_logits = self.bias, []
        for k, (a, b) in enumerate(_bounds(self.input_dims)):
            f = features[:, a:b]
            out = out + self.aux_weight[k] * F.log_softmax(self.aux[k](f), dim=1)
            group_logits.append(self.heads[k](f))
        return out + self.poe_weight * self.poe(torch.cat(group_logits, dim=1))

    def fit(self, features: torch.Tensor, y: torch.Tensor, steps: int = 300, lr: float = 0.05) -> "EnsembleFusion":
        """Fit only the combination weights and the class bias (full batch; the experts stay frozen)."""
        for p in self.parameters():
            p.requires_grad_(False)
        free = [self.aux_weight, self.poe_weight, self.bias]
        for p in free:
            p.requires_grad_(True)
        opt = torch.optim.Adam(free, lr=lr)
        self.train()
        for _ in range(steps):
            loss = F.cross_entropy(self(features), y) + 1e-3 * self.bias.pow(2).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        for p in self.parameters():
            p.requires_grad_(True)
        return self.eval()


def cross_val_ensemble_accuracy(fusion: EnsembleFusion, features: torch.Tensor, y: torch.Tensor, seed: int,
                                folds: int = 4) -> float:
    """Held-out accuracy of fitting the ensemble weights (same folds as the MLP's, plain view only)."""
    gen = torch.Generator().manual_seed(seed)
    m = features.shape[1]
    perm = torch.randperm(m, generator=gen)
    correct = 0
    for f in range(folds):
        val = perm[f::folds]
        train = torch.cat([perm[g::folds] for g in range(folds) if g != f])
        head = copy.deepcopy(fusion).fit(_flat(features[:, train]), y[train].repeat(features.shape[0]))
        with torch.no_grad():
            correct += int((head(features[0, val]).argmax(1) == y[val]).sum())
    return correct / m


def build_fusion_head(fusion: dict, groups: list[list[int]]) -> nn.Module:
    """The (untrained) fusion module a manifest's `fusion` entry describes, ready for load_state_dict."""
    if fusion["kind"] == "mlp":
        return FusionMLP(fusion["input_dims"], fusion["num_classes"], fusion.get("hidden") or 128)
    if fusion["kind"] == "ensemble":
        return EnsembleFusion(fusion["input_dims"], groups, fusion["num_classes"])
    return LogitFusion(groups, fusion["num_classes"])


def submodel_dropout_mask(n: int, dims: list[int], p: float, gen: torch.Generator) -> torch.Tensor:
    """[n, sum(dims)] 0/1 mask dropping whole sub-models with probability p (never all of them)."""
    k = len(dims)
    keep = (torch.rand(n, k, generator=gen) >= p).float()
    dead = keep.sum(1) == 0
    if dead.any():
        keep[dead, torch.randint(k, (int(dead.sum()),), generator=gen)] = 1.0
    return torch.repeat_interleave(keep, torch.tensor(dims), dim=1)


def train_fusion_mlp(features: torch.Tensor, y: torch.Tensor, teacher: torch.Tensor | None, input_dims: list[int],
                     num_classes: int, cfg: FusionCfg, seed: int, progress=None) -> FusionMLP:
    torch.manual_seed(seed)
    head = FusionMLP(input_dims, num_classes, cfg.hidden, cfg.dropout)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.steps
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
    gen = torch.Generator().manual_seed(seed)
    scale = features.std(0, keepdim=True) + 1e-6
    batch = min(128, len(y))
    kd_w = cfg.kd_weight if teacher is not None else 0.0
    head.train()
    for _ in range(steps):
        idx = torch.randint(len(y), (batch,), generator=gen)
        xb = features[idx]
        xb = xb + torch.randn(xb.shape, generator=gen) * scale * cfg.feature_noise
        if cfg.submodel_dropout > 0 and len(input_dims) > 1:
            xb = xb * submodel_dropout_mask(len(idx), input_dims, cfg.submodel_dropout, gen)
        out = head(xb)
        loss = F.cross_entropy(out, y[idx], label_smoothing=0.05)
        if kd_w > 0:
            kd = F.kl_div(F.log_softmax(out / 2, 1), F.log_softmax(teacher[idx] / 2, 1), log_target=True,
                          reduction="batchmean") * 4
            loss = (1 - kd_w) * loss + kd_w * kd
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if progress is not None:
            progress(1, loss=loss.item())
    return head.eval()


def cross_val_mlp_accuracy(features, y, teacher, input_dims, num_classes, cfg: FusionCfg, seed,
                           folds: int = 4) -> float:
    """Held-out accuracy of the MLP fusion estimated by k-fold CV on the fusion split (picks mlp vs logits).

    features/teacher: [copies, M, ...] — copy 0 is the plain image, the rest augmented views. Folds split by
    image, so no view of a validation image is trained on; validation uses the plain view only.
    """
    gen = torch.Generator().manual_seed(seed)
    m = features.shape[1]
    perm = torch.randperm(m, generator=gen)
    correct = 0
    quick = dataclasses.replace(cfg, steps=max(1, cfg.steps // 2))
    for f in range(folds):
        val = perm[f::folds]
        train = torch.cat([perm[g::folds] for g in range(folds) if g != f])
        head = train_fusion_mlp(_flat(features[:, train]), y[train].repeat(features.shape[0]),
                                None if teacher is None else _flat(teacher[:, train]),
                                input_dims, num_classes, quick, seed + f)
        with torch.no_grad():
            correct += int((head(features[0, val]).argmax(1) == y[val]).sum())
    return correct / m


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, t.shape[-1])


def fit_fusion(fcfg: FusionCfg, wrapped, students, model, groups, data, t_fu, va_out, device, seed: int,
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
    logit_fusion = LogitFusion(groups, n_cls)
    ensemble = EnsembleFusion.from_students(students, groups, n_cls)
    fit, t_fit = data.fusion, t_fu
    if not len(fit):  # data.fusion_fraction 0: a class-stratified sample of the fine-tune split
        sel = stratified_sample(data.finetune.y, fcfg.fit_samples, seed + 6)
        fit = SimpleNamespace(x=data.finetune.x.subset(sel), y=data.finetune.y[sel])
        t_fit = t_fu[sel]
    feats_views, t_views = [torch.cat([distill.predict(w, fit.x, device)[0] for w in wrapped], 1)], [t_fit]
    for _ in range(fcfg.augment_views):  # shifted views, decoded chunk by chunk
        fs, ts = [], []
        for i in range(0, len(fit.y), 256):
            xb = distill.augment(fit.x[i:i + 256], gen, pad=2)
            fs.append(torch.cat([distill.predict(w, xb, device)[0] for w in wrapped], 1))
            ts.append(distill.predict(model, xb, device))
        feats_views.append(torch.cat(fs))
        t_views.append(torch.cat(ts))
    feats_fu, t_views = torch.stack(feats_views), torch.stack(t_views)
    v = feats_fu.shape[0]
    ensemble.fit(feats_fu.reshape(-1, feats_fu.shape[-1]), fit.y.repeat(v))
    heads = {"logits": logit_fusion, "ensemble": ensemble}
    kind = fcfg.kind
    if kind in ("auto", "mlp") or (kind == "joint" and joint_head is None):
        advance = bars.task("fusion head", fcfg.steps) if bars else None
        # the hidden layer follows the class count: 128 squeezes 100 classes through too few units
        wide = dataclasses.replace(fcfg, hidden=max(fcfg.hidden, 2 * n_cls))
        heads["mlp"] = train_fusion_mlp(feats_fu.reshape(-1, feats_fu.shape[-1]), fit.y.repeat(v),
                                        t_views.reshape(-1, t_views.shape[-1]), dims, n_cls, wide, seed,
                                        advance).eval()
    if joint_head is not None:
        heads["joint"] = joint_head.cpu().eval()
    inputs_va = {"logits": logits_va, "ensemble": feats_va, "mlp": feats_va, "joint": feats_va}
    with torch.no_grad():
        val_acc = {k_: distill.accuracy(h(inputs_va[k_]), data.val.y) for k_, h in heads.items()}
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
