"""distill.predict keeps compact copies of each batch's outputs: a pooled feature is a view of the batch's whole
token tensor, and keeping the view would keep every batch's tokens alive until the end (3 GB for a teacher pass
over 10,000 ViT-S images)."""

import weakref

import torch

from edvit_tool.compile import distill


class _ViewOutputs(torch.nn.Module):
    """(features, logits) like SubModelWrapper: features a view of a big per-batch tensor. Records, per call, how
    many earlier batches' big tensors are still alive."""

    def __init__(self):
        super().__init__()
        self.bases, self.alive = [], []

    def forward(self, x):
        self.alive.append(sum(r() is not None for r in self.bases))
        tokens = x.flatten(1).unsqueeze(1).repeat(1, 50, 1)       # [B, 50, D]
        self.bases.append(weakref.ref(tokens))
        return tokens[:, 0], tokens[:, 0].sum(1, keepdim=True)


def test_predict_does_not_keep_earlier_batches_alive():
    model = _ViewOutputs()
    x = torch.randn(40, 3, 4, 4)
    feats, logits = distill.predict(model, x, torch.device("cpu"), batch_size=8)
    # at most the previous batch (the loop's last `out` until it is rebound), not every earlier one
    assert model.alive == [0, 1, 1, 1, 1]
    assert torch.equal(feats, x.flatten(1)) and feats.shape == (40, 48) and logits.shape == (40, 1)
