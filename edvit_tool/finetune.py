"""Training loops: the KD fine-tune of a sub-model on its group + "other", and plain classifier training
(the demo's original model).

Sub-model targets: its classes relabelled 0..|g|-1 and every other class as |g| ("other"). KD from the original
model: the teacher's logits restricted to the group, the rest folded into one "other" logit with a
temperature-aware logsumexp, so softmax(teacher_group / T) is exactly the teacher's tempered distribution
with the non-group mass summed into "other". Teacher logits are precomputed once (cheaper than a teacher
forward per step). Batches are class-balanced: a fixed share of "other" images, the rest spread evenly over
the group's classes — otherwise a sub-model learns to answer "other" for everything.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def relabel(y: torch.Tensor, group: list[int], num_classes: int) -> torch.Tensor:
    """Class ids → 0..|g|-1 for the group, |g| for every other class (no "other" when the group is everything)."""
    table = torch.full((num_classes,), len(group), dtype=torch.long)
    table[torch.tensor(group)] = torch.arange(len(group))
    return table[y]


def group_teacher_logits(teacher: torch.Tensor, group: list[int], temperature: float) -> torch.Tensor:
    """[M, N] teacher logits → [M, |g|+1] so that softmax(out / T) = group probs + summed other probs."""
    inside = teacher[:, group]
    mask = torch.ones(teacher.shape[1], dtype=torch.bool)
    mask[group] = False
    if not mask.any():
        return inside
    other = temperature * torch.logsumexp(teacher[:, mask] / temperature, dim=1, keepdim=True)
    return torch.cat([inside, other], dim=1)


def augment(x: torch.Tensor, gen: torch.Generator, pad: int = 1) -> torch.Tensor:
    """Random shift by up to `pad` pixels (zero fill in normalised space is fine for small shifts)."""
    if pad <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    dy, dx = torch.randint(0, 2 * pad + 1, (2,), generator=gen).tolist()
    return padded[:, :, dy:dy + h, dx:dx + w]


class BalancedBatches:
    """Index batches: `other_fraction` of each batch from non-group images, the rest class-balanced in the group."""

    def __init__(self, y_rel: torch.Tensor, n_group: int, batch_size: int, other_fraction: float, seed: int):
        self.by_class = [torch.nonzero(y_rel == c).flatten() for c in range(n_group + 1)]
        self.has_other = len(self.by_class[-1]) > 0
        self.n_group, self.batch_size = n_group, batch_size
        self.n_other = int(round(batch_size * other_fraction)) if self.has_other else 0
        self.gen = torch.Generator().manual_seed(seed)

    def __call__(self) -> torch.Tensor:
        per = max(1, (self.batch_size - self.n_other) // self.n_group)
        parts = []
        for c in range(self.n_group):
            pool = self.by_class[c]
            if len(pool):
                parts.append(pool[torch.randint(len(pool), (per,), generator=self.gen)])
        if self.n_other:
            pool = self.by_class[-1]
            parts.append(pool[torch.randint(len(pool), (self.n_other,), generator=self.gen)])
        return torch.cat(parts)


def _schedule(opt, steps: int, lr: float, warmup_frac: float = 0.05):
    warm = max(1, int(steps * warmup_frac))

    def factor(i):
        if i < warm:
            return (i + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (i - warm) / max(1, steps - warm))) * 0.95 + 0.05
    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _step(model, opt, sched, loss, progress) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()
    if progress is not None:
        progress(1, loss=loss.item())


def kd_finetune(model, x: torch.Tensor, y_rel: torch.Tensor, teacher_rel: torch.Tensor | None, n_group: int,
                steps: int, cfg: dict, device: torch.device, seed: int, progress=None, lr: float | None = None):
    """Fine-tune `model` (returns logits over n_group (+1 other)) with CE + KD; in place, returns the model."""
    if steps <= 0:
        return model
    model.to(device).train()
    lr = lr or cfg["lr"]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=cfg["weight_decay"])
    sched = _schedule(opt, steps, lr)
    batches = BalancedBatches(y_rel, n_group, cfg["batch_size"], cfg["other_fraction"], seed)
    gen = torch.Generator().manual_seed(seed + 1)
    temp, kd_w = cfg["temperature"], cfg["kd_weight"] if teacher_rel is not None else 0.0
    for _ in range(steps):
        idx = batches()
        xb = augment(x[idx], gen).to(device)
        yb = y_rel[idx].to(device)
        out = model(xb)
        loss = F.cross_entropy(out, yb, label_smoothing=0.05)
        if kd_w > 0:
            t = teacher_rel[idx].to(device)
            kd = F.kl_div(F.log_softmax(out / temp, 1), F.log_softmax(t / temp, 1), log_target=True,
                          reduction="batchmean") * temp * temp
            loss = (1 - kd_w) * loss + kd_w * kd
        _step(model, opt, sched, loss, progress)
    return model.eval()


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
        outs.append(out.float().cpu() if isinstance(out, torch.Tensor) else tuple(o.float().cpu() for o in out))
    if isinstance(outs[0], tuple):
        return tuple(torch.cat(parts) for parts in zip(*outs))
    return torch.cat(outs)


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(1) == y).float().mean())
