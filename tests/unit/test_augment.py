"""finetune.augment: timm's training transform on the cached pixels, the teacher run on the augmented batch."""

import numpy as np
import pytest
import torch

from edvit_tool.compile import distill, transforms
from edvit_tool.compile.augment import Augmenter
from edvit_tool.compile.data import Images, Pixels
from edvit_tool.compile.prune.surgery import SubModelWrapper
from edvit_tool.errors import DataError
from prune_models import make_vit, one_thread  # noqa: F401  (autouse: one torch thread)

KW = dict(img_size=16, patch_size=4, in_chans=3, num_classes=5, embed_dim=24, depth=1, num_heads=2)
STILL = {"scale": (1.0, 1.0), "ratio": (1.0, 1.0), "color_jitter": 0.0, "hflip": False}


def _set(n=40):
    model = make_vit(**KW)
    spec = transforms.resolve_input_spec(model, {"crop_pct": 1.0})
    rng = np.random.default_rng(0)
    pixels = Pixels((n, 16, 16, 3), array=rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8))
    images = Images(pixels, np.arange(n), spec)
    with torch.no_grad():
        feats, logits = SubModelWrapper(model)(images[:])
    return model, spec, distill.TrainSet(images, torch.arange(n) % 5, logits, feats)


def _batches(n, size=8, count=4, seed=3):
    """A fixed sequence of index batches (what BalancedBatches would draw) and a next_batch() over it."""
    g = torch.Generator().manual_seed(seed)
    fixed = [torch.randint(n, (size,), generator=g) for _ in range(count)]
    return fixed, iter(fixed).__next__


def test_neutral_augmentation_gives_the_plain_images_and_the_cached_teacher_outputs():
    """scale/ratio 1, no jitter, no flip: the training transform is the eval transform, so the on-the-fly teacher
    must reproduce the cached outputs — the augmented path reads the same pixels, in the same order."""
    model, spec, train = _set()
    train.augmenter = Augmenter(train.x, spec, STILL, model, torch.device("cpu"), workers=0, features=True)
    fixed, nxt = _batches(len(train))
    got = list(train.stream(nxt, 4, seed=0))
    assert len(got) == 4
    for idx, (xb, yb, tl, tf) in zip(fixed, got):
        torch.testing.assert_close(xb, train.x[idx], atol=1e-5, rtol=0)
        assert torch.equal(yb, train.y[idx])
        torch.testing.assert_close(tl, train.t_logits[idx], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(tf, train.t_feats[idx], atol=1e-4, rtol=1e-4)


def test_augmented_batches_get_the_teachers_outputs_on_the_augmented_images():
    model, spec, train = _set()
    train.augmenter = Augmenter(train.x, spec, {"scale": (0.3, 0.6), "hflip": True}, model, torch.device("cpu"),
                                workers=2, features=False)
    teacher = SubModelWrapper(model)
    fixed, nxt = _batches(len(train), count=3)
    for idx, (xb, yb, tl, tf) in zip(fixed, train.stream(nxt, 3, seed=1)):
        assert tf is None and torch.isfinite(xb).all() and torch.equal(yb, train.y[idx])
        with torch.no_grad():
            torch.testing.assert_close(tl, teacher(xb)[1])
        assert (tl - train.t_logits[idx]).abs().max() > 1e-3  # not the cached, un-augmented outputs
    # the same seed gives the same batches (DataLoader workers seeded from it)
    runs = [[xb for xb, *_ in train.stream(_batches(len(train))[1], 2, seed=5)] for _ in range(2)]
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b)


def test_bad_augment_settings_fail_before_training_and_name_the_field():
    model, spec, train = _set(8)
    with pytest.raises(DataError, match="finetune.augment: unknown setting"):
        Augmenter(train.x, spec, {"flip": True}, model, torch.device("cpu"), workers=0, features=False)


def test_default_training_stream_is_the_shifted_plain_images_with_cached_targets():
    _, _, train = _set()
    fixed, nxt = _batches(len(train))
    for idx, (xb, yb, tl, tf) in zip(fixed, train.stream(nxt, 4, seed=0)):
        assert xb.shape == (8, 3, 16, 16) and torch.equal(tl, train.t_logits[idx]) and torch.equal(tf, train.t_feats[idx])
