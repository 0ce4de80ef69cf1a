"""Training augmentation with timm's training transform and the teacher on the fly (`finetune.augment`).

Without `finetune.augment` the loops read the cached pixels with a 1-px random shift and the teacher's outputs
computed once per image (cheap; right for digits-sized data). With it, every training batch is the cached
uint8 pixels (already at the model's resolution) through timm's `create_transform(is_training=True)` —
random-resized-crop, flip, optional RandAugment / colour jitter / random erasing, see
`transforms.train_transform` — decoded by DataLoader workers ahead of the loop, and the original model runs on
that same augmented batch for the KD targets (its cached outputs describe the un-augmented image). The teacher
pass costs about one student step per batch; the peer pays it too, so compile compute stays comparable.
"""

from __future__ import annotations

import numpy as np
import torch

from .transforms import train_transform


class _Augmented(torch.utils.data.Dataset):
    """Row i of the cached pixels through the training transform (picklable: DataLoader workers reopen the
    pixel file themselves)."""

    def __init__(self, images, tf):
        self.images, self.tf = images, tf

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.tf(self.images.uint8(np.array([i]))[0])


class _Batches(torch.utils.data.Sampler):
    def __init__(self, batches: list):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


class Augmenter:
    """Augmented batches + the teacher's outputs on them. `stream(index_batches, y, seed)` yields
    (x, y, teacher_logits, teacher_features) per batch, in order."""

    def __init__(self, images, spec: dict, settings: dict, teacher, device: torch.device, workers: int,
                 features: bool, where: str = "recipe finetune.augment"):
        from .prune.surgery import SubModelWrapper

        self.tf = train_transform(spec, settings, where=where)  # bad settings fail here, before any training
        self.images, self.device, self.workers, self.features = images, device, workers, features
        self.teacher = SubModelWrapper(teacher).to(device).eval()

    @torch.no_grad()
    def _teacher(self, x: torch.Tensor):
        feats, logits = self.teacher(x)
        return logits.float(), (feats.float() if self.features else None)

    def stream(self, index_batches: list, y: torch.Tensor, seed: int):
        loader = torch.utils.data.DataLoader(
            _Augmented(self.images, self.tf), batch_sampler=_Batches([b.tolist() for b in index_batches]),
            num_workers=self.workers, generator=torch.Generator().manual_seed(seed),
            persistent_workers=False, prefetch_factor=4 if self.workers else None)
        for idx, xb in zip(index_batches, loader):
            xd = xb.to(self.device)
            tl, tf = self._teacher(xd)
            yield xd, y[idx], tl.cpu(), None if tf is None else tf.cpu()
