"""The teacher: the original model's outputs, computed once per split, and what they say before any training.

`teacher_pass` runs the original over the fine-tune split (pooled features for feature distillation and the
similarity partition, logits for KD) and, in the main process, over the fusion and validation splits.
`class_similarity` turns the features into the class-similarity matrix the partition groups by.

The label-order check catches a checkpoint whose head order does not match the dataset's labels before compile
spends minutes on it. A checkpoint's output j means "class j of the order it was trained with"; an ImageFolder's
labels come from sorted folder names unless `model.classes` gives that order. When they disagree the original
scores near chance, and the confusion matrix shows the mapping: the Hungarian assignment on it recovers which
head output each folder is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import DataError

# A permutation must beat the identity by this much (absolute, and as a ratio) to count as "far better"; a
# model near chance is called out on its own.
MIN_GAIN = 0.10
MIN_RATIO = 1.5


def confusion(pred: np.ndarray, y: np.ndarray, n: int) -> np.ndarray:
    c = np.zeros((n, n), dtype=np.int64)
    np.add.at(c, (np.asarray(y), np.asarray(pred)), 1)
    return c


def best_permutation(conf: np.ndarray) -> tuple[np.ndarray, float]:
    """(perm, accuracy under it): perm[i] = the head output that best explains data class i."""
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(-conf)
    perm = np.empty(conf.shape[0], dtype=np.int64)
    perm[rows] = cols
    return perm, float(conf[rows, cols].sum() / max(1, conf.sum()))


def check_label_order(pred: np.ndarray, y: np.ndarray, classes: list[str], order_source: str | None,
                      data_desc: str) -> dict:
    """Raise DataError when the original model's predictions fit the labels only under a permutation (or not at
    all). Returns the figures it looked at (for the log and manifest)."""
    n = len(classes)
    conf = confusion(pred, y, n)
    acc = float(np.trace(conf) / max(1, conf.sum()))
    perm, perm_acc = best_permutation(conf)
    chance = 1.0 / n
    info = {"accuracy": acc, "best_permutation_accuracy": perm_acc, "chance": chance}
    permuted = bool((perm != np.arange(n)).any()) and perm_acc - acc >= MIN_GAIN and perm_acc >= MIN_RATIO * acc
    near_chance = acc <= 1.5 * chance
    if not (permuted or near_chance):
        return info
    order = f"the labels come from {order_source}" if order_source else \
        f"the labels come from {data_desc} (sorted folder names unless model.classes gives the head order)"
    msg = (f"the original model scores {acc:.1%} on the fine-tune split (chance {chance:.1%}); {order}: "
           f"{', '.join(classes[:12])}{' …' if n > 12 else ''}.")
    if permuted:
        head = [""] * n
        for i, j in enumerate(perm):
            head[j] = classes[i]
        moved = [f"{classes[i]}→output {j}" for i, j in enumerate(perm) if i != j][:8]
        msg += (f" Under a reordering of the head it would score {perm_acc:.1%} ({', '.join(moved)}"
                f"{' …' if sum(perm != np.arange(n)) > 8 else ''}), so the checkpoint's class order differs. "
                f"Write this classes.txt (one name per line, head order) and set model.classes to it: "
                f"{' | '.join(head)}")
    else:
        msg += (" No reordering of the head explains it either: check model.name/kwargs, the checkpoint, and "
                "the preprocessing (data.mean/std).")
    msg += " (data.check_labels: false skips this check.)"
    raise DataError(msg)


def class_similarity(features: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Cosine similarity of class-mean feature vectors."""
    means = np.stack([features[labels == c].mean(axis=0) for c in range(num_classes)])
    means = means - means.mean(axis=0, keepdims=True)
    means /= np.linalg.norm(means, axis=1, keepdims=True) + 1e-12
    return means @ means.T


@dataclass
class TeacherOutputs:
    features: torch.Tensor  # fine-tune split, pooled: feature distillation and the similarity partition
    logits: torch.Tensor  # fine-tune split: the KD targets
    fusion_logits: torch.Tensor | None  # fusion split (the fine-tune split's when it has none); None in a worker
    val_logits: torch.Tensor | None  # validation split; None in a worker


def teacher_pass(model, data, device, *, label_check: tuple[str | None, str] | None,
                 other_splits: bool) -> TeacherOutputs:
    """The original model over `data`'s splits. `label_check` = (model.classes, dataset description) runs the
    head-order check right after the fine-tune pass, before any real work; `other_splits` False (a --jobs
    worker) skips the fusion and validation passes."""
    from .distill import predict
    from .prune.surgery import SubModelWrapper

    features, logits = predict(SubModelWrapper(model), data.finetune.x, device)
    if label_check is not None:
        order_source, desc = label_check
        check_label_order(logits.argmax(1).numpy(), data.finetune.y.numpy(), data.classes, order_source, desc)
    fusion_logits = val_logits = None
    if other_splits:
        fusion_logits = predict(model, data.fusion.x, device) if len(data.fusion) else logits
        val_logits = predict(model, data.val.x, device)
    return TeacherOutputs(features, logits, fusion_logits, val_logits)
