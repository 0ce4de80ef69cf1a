"""Tiny timm ViTs shared by the prune tests (`from prune_models import ...`; pytest puts tests/unit on sys.path)."""
import pytest
import timm
import torch

NAME = "vit_tiny_patch16_224"
BASE = dict(img_size=16, patch_size=4, in_chans=1, num_classes=10, embed_dim=48, depth=3, num_heads=3)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: intra-op threads only add contention (10-25x slower on a loaded 2-core box).

    Autouse in every test module that imports it."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_vit(**kw):
    """A seeded tiny ViT (BASE, overridden by kw), in eval mode."""
    torch.manual_seed(0)
    return timm.create_model(NAME, pretrained=False, **{**BASE, **kw}).eval()
