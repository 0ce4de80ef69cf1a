"""Training loops: the distillation fine-tune of a (pruned) student on its group + "other", and plain classifier
training (the demo's original model).

Sub-model targets: its classes relabelled 0..|g|-1 and every other class as |g| ("other"). KD from the original
model: the teacher's logits restricted to the group, the rest folded into one "other" logit with a
temperature-aware logsumexp, so softmax(teacher_group / T) is exactly the teacher's tempered distribution
with the non-group mass summed into "other".

Besides its |g|+1 head, a student carries two training-time heads on its pooled features (both sliced along with
the embedding when it is pruned, see `Student.prune`):
  aux   N-class head, distilled from the teacher's full distribution. It keeps every class visible in the
        features (the fusion head combines them) instead of collapsing all foreign classes into one "other".
        It is not part of the sub-model's parameter count: it moves into the fusion head (fuse.EnsembleFusion).
  proj  linear map to the teacher's pooled features, with a normalised MSE (feature distillation); discarded.

Batches are class-balanced: a share of "other" images, the rest spread evenly over the group's classes —
otherwise a sub-model learns to answer "other" for everything (and long-tailed data stays long-tailed).
`TrainSet.stream` is the one place the loops read training images and teacher targets (`take` for importance
batches: plain images, cached teacher outputs).
"""

from __future__ import annotations

import copy
import dataclasses
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config.recipe import FinetuneCfg, FusionCfg


def relabel(y: torch.Tensor, group: list[int], num_classes: int) -> torch.Tensor:
    """Class ids → 0..|g|-1 for the group, |g| for every other class (no "other" when the group is everything)."""
    table = torch.full((num_classes,), len(group), dtype=torch.long)
    table[torch.tensor(group)] = torch.arange(len(group))
    return table[y]


def group_teacher_logits(teacher: torch.Tensor, group: list[int], temperature: float,
                         other: str = "sum") -> torch.Tensor:
    """[M, N] teacher logits → [M, |g|+1].

    other="sum": softmax(out / T) = group probs + summed other probs (the teacher's distribution, folded).
    other="max": the "other" logit is the best non-group class's logit, so the sub-model answers "other" only
    where the teacher's top class is outside the group (a sum over many foreign classes at temperature T
    outweighs the true class and makes "other" swallow the group's own images).
    """
    inside = teacher[:, group]
    mask = torch.ones(teacher.shape[1], dtype=torch.bool)
    mask[group] = False
    if not mask.any():
        return inside
    if other == "max":
        rest = teacher[:, mask].max(dim=1, keepdim=True).values
    else:
        rest = temperature * torch.logsumexp(teacher[:, mask] / temperature, dim=1, keepdim=True)
    return torch.cat([inside, rest], dim=1)


def augment(x: torch.Tensor, gen: torch.Generator, pad: int = 1) -> torch.Tensor:
    """Random shift by up to `pad` pixels (replicate fill), one shift per batch."""
    if pad <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    dy, dx = torch.randint(0, 2 * pad + 1, (2,), generator=gen).tolist()
    return padded[:, :, dy:dy + h, dx:dx + w]


@dataclasses.dataclass
class TrainSet:
    """Training images with the teacher's outputs on them (computed once, on the plain images)."""
    x: torch.Tensor
    y: torch.Tensor                        # original class ids
    t_logits: torch.Tensor                 # teacher logits [M, N]
    t_feats: torch.Tensor | None = None    # teacher pooled features [M, E] (feature distillation)
    pad: int = 1                           # default augmentation: random shift
    augmenter: object | None = None        # augment.Augmenter: timm training transform, teacher on the fly

    def __len__(self) -> int:
        return len(self.y)

    def take(self, idx: torch.Tensor, gen: torch.Generator | None = None):
        xb = self.x[idx]
        if gen is not None:
            xb = augment(xb, gen, self.pad)
        tf = None if self.t_feats is None else self.t_feats[idx]
        return xb, self.y[idx], self.t_logits[idx], tf

    def stream(self, next_batch, steps: int, seed: int):
        """`steps` training batches (x, y, teacher logits, teacher features), indices from `next_batch()`:
        shifted plain images with the cached teacher outputs, or the augmenter's batches."""
        if self.augmenter is not None:
            yield from self.augmenter.stream([next_batch() for _ in range(steps)], self.y, seed)
            return
        gen = torch.Generator().manual_seed(seed)
        for _ in range(steps):
            yield self.take(next_batch(), gen)


class BalancedBatches:
    """Index batches: `other_fraction` of each batch from non-group images, the rest class-balanced in the group."""

    def __init__(self, y_rel: torch.Tensor, n_group: int, batch_size: int, other_fraction: float, seed: int):
        self.by_class = [torch.nonzero(y_rel == c).flatten() for c in range(n_group + 1)]
        self.has_other = len(self.by_class[-1]) > 0
        self.n_group, self.batch_size = n_group, batch_size
        self.n_other = int(round(batch_size * other_fraction)) if self.has_other else 0
        self.gen = torch.Generator().manual_seed(seed)

    def __call__(self) -> torch.Tensor:
        n_in = self.batch_size - self.n_other
        # every class gets floor(n_in / |g|) images, the remainder goes to random classes
        per = torch.full((self.n_group,), n_in // self.n_group, dtype=torch.long)
        extra = n_in - int(per.sum())
        if extra > 0:
            per[torch.randperm(self.n_group, generator=self.gen)[:extra]] += 1
        parts = []
        for c in range(self.n_group):
            pool = self.by_class[c]
            if len(pool) and per[c] > 0:
                parts.append(pool[torch.randint(len(pool), (int(per[c]),), generator=self.gen)])
        if self.n_other:
            pool = self.by_class[-1]
            parts.append(pool[torch.randint(len(pool), (self.n_other,), generator=self.gen)])
        return torch.cat(parts)


class Student(nn.Module):
    """A (pruned) timm ViT + the training-time heads: aux (N classes) and proj (→ teacher features)."""

    def __init__(self, model: nn.Module, aux: nn.Linear | None, proj: nn.Linear | None):
        super().__init__()
        self.model, self.aux, self.proj = model, aux, proj

    @classmethod
    def from_teacher(cls, model: nn.Module, aux_init: nn.Linear | None, feature_distill: bool) -> "Student":
        """Before any pruning: aux = copy of `aux_init` (the teacher's classifier), proj = identity."""
        e = model.patch_embed.proj.out_channels
        aux = copy.deepcopy(aux_init) if aux_init is not None else None
        proj = None
        if feature_distill:
            proj = nn.Linear(e, e)
            with torch.no_grad():
                proj.weight.copy_(torch.eye(e))
                proj.bias.zero_()
        return cls(model, aux, proj)

    def forward(self, x):
        feats = self.model.forward_head(self.model.forward_features(x), pre_logits=True)
        aux = self.aux(feats) if self.aux is not None else None
        proj = self.proj(feats) if self.proj is not None else None
        return self.model.head(feats), aux, proj

    def prune(self, plan) -> "Student":
        """Physically prune the ViT (surgery) and slice the side heads' inputs to the kept embedding channels."""
        from .prune import surgery

        model = surgery.apply_keep(self.model, plan)
        aux, proj = copy.deepcopy(self.aux), copy.deepcopy(self.proj)
        if plan.embed is not None:
            keep = torch.as_tensor(plan.embed, dtype=torch.long)
            for lin in (aux, proj):
                if lin is not None:
                    lin.weight = nn.Parameter(lin.weight.detach()[:, keep].clone())
                    lin.in_features = len(keep)
        return Student(model, aux, proj)


def _schedule(opt, steps: int, lr: float, warmup_frac: float = 0.05):
    warm = max(1, int(steps * warmup_frac))

    def factor(i):
        if i < warm:
            return (i + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (i - warm) / max(1, steps - warm))) * 0.95 + 0.05
    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _step(model, opt, sched, loss, progress, clip: float = 1.0) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    sched.step()
    if progress is not None:
        progress(1, loss=loss.item())


def _kd(out: torch.Tensor, target: torch.Tensor, temp: float) -> torch.Tensor:
    return F.kl_div(F.log_softmax(out / temp, 1), F.log_softmax(target / temp, 1), log_target=True,
                    reduction="batchmean") * temp * temp


def distill_loss(student_out, yb, y_rel, t_logits, t_group, t_feats, cfg: FinetuneCfg,
                 feat_scale: float) -> torch.Tensor:
    """CE + KD on the group head, KD + CE on the aux head, normalised MSE on projected features."""
    logits, aux, proj = student_out
    temp, kd_w = cfg.temperature, cfg.kd_weight
    loss = (1 - kd_w) * F.cross_entropy(logits, y_rel, label_smoothing=0.05) + kd_w * _kd(logits, t_group, temp)
    if aux is not None and cfg.aux_weight > 0:
        aux_loss = (1 - kd_w) * F.cross_entropy(aux, yb, label_smoothing=0.05) + kd_w * _kd(aux, t_logits, temp)
        loss = loss + cfg.aux_weight * aux_loss
    if proj is not None and t_feats is not None and cfg.feature_weight > 0:
        loss = loss + cfg.feature_weight * F.mse_loss(proj, t_feats) / feat_scale
    return loss


def distill_finetune(student: Student, data: TrainSet, group: list[int], steps: int, cfg: FinetuneCfg,
                     device: torch.device, seed: int, progress=None, validate=None, eval_every: int = 0):
    """Fine-tune `student` in place on its group (+ "other") with the distillation loss; returns it.

    validate: optional callable(student) -> score (higher is better), run every `eval_every` steps and at the
    end; the best-scoring weights are kept (early stopping on a validation split).
    """
    if steps <= 0:
        return student
    n_cls = data.t_logits.shape[1]
    student.to(device).train()
    lr = cfg.lr
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=cfg.weight_decay)
    sched = _schedule(opt, steps, lr, cfg.warmup_fraction)
    y_rel_all = relabel(data.y, group, n_cls)
    batches = BalancedBatches(y_rel_all, len(group), cfg.batch_size, cfg.other_fraction, seed)
    temp = cfg.temperature
    feat_scale = float(data.t_feats.pow(2).mean()) + 1e-8 if data.t_feats is not None else 1.0
    best = (-math.inf, None)
    for i, (xb, yb, tl, tf) in enumerate(data.stream(batches, steps, seed + 1), 1):
        tg = group_teacher_logits(tl, group, temp, cfg.other_target)
        out = student(xb.to(device))
        loss = distill_loss(out, yb.to(device), relabel(yb, group, n_cls).to(device), tl.to(device),
                            tg.to(device), None if tf is None else tf.to(device), cfg, feat_scale)
        _step(student, opt, sched, loss, progress, cfg.clip_grad)
        if validate is not None and (i == steps or (eval_every and i % eval_every == 0)):
            score = validate(student)
            student.train()
            if score > best[0]:
                best = (score, copy.deepcopy(student.state_dict()))
    if best[1] is not None:
        student.load_state_dict(best[1])
    return student.eval()


def train_classifier(model, x: torch.Tensor, y: torch.Tensor, steps: int, batch_size: int, lr: float,
                     device: torch.device, seed: int, progress=None, weight_decay: float = 0.05):
    """Plain CE training with shuffled batches (used to make the demo's original model)."""
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = _schedule(opt, steps, lr)
    gen = torch.Generator().manual_seed(seed)
    perm, pos = torch.randperm(len(y), generator=gen), 0
    for _ in range(steps):
        if pos + batch_size > len(y):
            perm, pos = torch.randperm(len(y), generator=gen), 0
        idx = perm[pos:pos + batch_size]
        pos += batch_size
        out = model(augment(x[idx], gen).to(device))
        loss = F.cross_entropy(out, y[idx].to(device), label_smoothing=0.1)
        _step(model, opt, sched, loss, progress)
    return model.eval()


@torch.no_grad()
def predict(model, x: torch.Tensor, device: torch.device, batch_size: int = 256) -> torch.Tensor:
    """Model outputs for x in eval mode, on CPU. Works for plain models and (features, logits) wrappers."""
    model.to(device).eval()
    outs = []
    for i in range(0, len(x), batch_size):
        out = model(x[i:i + batch_size].to(device))
        # copy=True: a compact copy, never a view (pooled features are a view of the batch's whole token tensor,
        # which would stay alive for every batch: 75 MB per 256 ViT-S images)
        outs.append(out.to("cpu", torch.float32, copy=True) if isinstance(out, torch.Tensor)
                    else tuple(None if o is None else o.to("cpu", torch.float32, copy=True) for o in out))
    if isinstance(outs[0], tuple):
        return tuple(None if parts[0] is None else torch.cat(parts) for parts in zip(*outs))
    return torch.cat(outs)


def val_accuracy(x: torch.Tensor, y: torch.Tensor, device):
    """score(student) -> its top-1 accuracy on (x, y): the early-stopping criterion of class-agnostic students."""
    def score(student) -> float:
        return accuracy(predict(student, x, device)[0], y)
    return score


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(1) == y).float().mean())


def joint_finetune(students: list[Student], groups: list[list[int]], head: nn.Module, data: TrainSet, steps: int,
                   cfg: FinetuneCfg, fusion_cfg: FusionCfg, device: torch.device, seed: int, progress=None,
                   validate=None, eval_every: int = 0):
    """Fine-tune every sub-model and the fusion MLP together, in place: each step runs one batch through all K
    sub-models; the loss is each sub-model's own distillation loss plus the fused output's (CE + KD from the
    original's full distribution), with whole sub-models dropped from the fusion input as when a board is
    missing. The sub-models learn to complement each other instead of each covering the task alone. One joint
    step costs K sub-model steps: `steps` is one sub-model's fine-tune budget.

    validate: optional callable() -> fused score on a validation split, run every `eval_every` steps and at the
    end; the best-scoring weights of every sub-model and the head are kept (early stopping, as the peer has).
    """
    from .fuse import submodel_dropout_mask

    if steps <= 0:
        return students, head
    n_cls = data.t_logits.shape[1]
    modules = nn.ModuleList([*students, head]).to(device).train()
    lr = cfg.joint_lr or cfg.lr  # sub-models that start trained (shared trunk) may want a gentler rate
    opt = torch.optim.AdamW(modules.parameters(), lr=lr, weight_decay=cfg.weight_decay)
    sched = _schedule(opt, steps, lr, cfg.warmup_fraction)
    # class-balanced over every class: each sub-model meets its group and "other" as the fused model does
    batches = BalancedBatches(data.y, n_cls, cfg.batch_size, 0.0, seed)
    gen = torch.Generator().manual_seed(seed + 2)  # sub-model dropout
    temp, kd_w = cfg.temperature, cfg.kd_weight
    feat_scale = float(data.t_feats.pow(2).mean()) + 1e-8 if data.t_feats is not None else 1.0
    dims = list(head.input_dims)
    best = (-math.inf, None)
    for i, (xb, yb, tl, tf) in enumerate(data.stream(batches, steps, seed + 1), 1):
        xb, yb, tl = xb.to(device), yb.to(device), tl.to(device)
        tf = None if tf is None else tf.to(device)
        loss, feats = 0.0, []
        for s, g in zip(students, groups):
            f = s.model.forward_head(s.model.forward_features(xb), pre_logits=True)
            out = (s.model.head(f), s.aux(f) if s.aux is not None else None, s.proj(f) if s.proj is not None else None)
            tg = group_teacher_logits(tl, g, temp, cfg.other_target)
            loss = loss + distill_loss(out, yb, relabel(yb.cpu(), g, n_cls).to(device), tl, tg, tf, cfg, feat_scale)
            feats.append(f)
        fused_in = torch.cat(feats, 1)
        if fusion_cfg.submodel_dropout > 0 and len(dims) > 1:
            fused_in = fused_in * submodel_dropout_mask(len(yb), dims, fusion_cfg.submodel_dropout,
                                                        gen).to(device)
        fused = head(fused_in)
        fused_loss = (1 - kd_w) * F.cross_entropy(fused, yb, label_smoothing=0.05) + kd_w * _kd(fused, tl, temp)
        loss = loss / len(students) + cfg.joint_fusion_weight * fused_loss
        _step(modules, opt, sched, loss, progress, cfg.clip_grad)
        if validate is not None and (i == steps or (eval_every and i % eval_every == 0)):
            score = validate()
            modules.train()
            if score > best[0]:
                best = (score, copy.deepcopy(modules.state_dict()))
    if best[1] is not None:
        modules.load_state_dict(best[1])
    for m in modules:
        m.eval()
    return students, head
