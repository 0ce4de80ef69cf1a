"""compile/data.py: images decoded once at model resolution, the same transform as the boards, a reusable cache
file read per batch, and lazy splits (no float32 copy of the dataset)."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from edvit_tool.compile import data as D
from edvit_tool.config import recipe as R
from edvit_tool.runtime import preprocess as pp

SPEC = {"shape": [3, 24, 24], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
        "interpolation": "bicubic", "crop_pct": 0.875, "crop_mode": "center"}


def _folder(root, sizes=((37, 61), (300, 199), (24, 24), (15, 9)), classes=("cat", "dog", "emu")):
    rng = np.random.default_rng(0)
    for ci, c in enumerate(classes):
        for split in ("train", "test"):
            d = root / split / c
            d.mkdir(parents=True)
            for i, (w, h) in enumerate(sizes):
                arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                mode, ext = [("RGB", "jpg"), ("L", "png"), ("RGBA", "png"), ("P", "png")][i % 4]
                img = Image.fromarray(arr).convert(mode)
                img.save(d / f"{i}.{ext}")
    return root


def _recipe(root, tmp, **data):
    return R.validate({"data": {"kind": "imagefolder", "root": str(root), "cache_dir": str(tmp / "cache"),
                                "val_fraction": 0.25, "fusion_fraction": 0.25, "workers": 1, **data}})


def test_split_batches_equal_the_board_transform_of_each_file(tmp_path):
    root = _folder(tmp_path / "imgs")
    data = D.load_data(_recipe(root, tmp_path), SPEC, 3)
    src_paths = sorted(str(p) for p in (root / "test").rglob("*.*"))
    assert len(data.test) == len(src_paths) == 12
    batch = data.test.x[torch.arange(len(data.test))]
    assert isinstance(data.test.x, D.Images) and batch.dtype == torch.float32 and batch.shape == (12, 3, 24, 24)
    want = {p: pp.preprocess(p, SPEC) for p in src_paths}
    for row in batch.numpy():   # every decoded test image is exactly one file's board-side preprocessing
        assert min(float(np.abs(row - w).max()) for w in want.values()) == 0.0


def test_cache_file_is_reused_and_pread_rows_equal_ram_rows(tmp_path):
    root = _folder(tmp_path / "imgs")
    ram = D.load_data(_recipe(root, tmp_path), SPEC, 3)
    files = os.listdir(tmp_path / "cache")
    assert len(files) == 1 and files[0].endswith(".u8")
    cache = tmp_path / "cache" / files[0]
    stamp = cache.stat().st_mtime_ns
    disk = D.load_data(_recipe(root, tmp_path, ram_cache_mb=0), SPEC, 3)   # file-backed, read with pread
    assert cache.stat().st_mtime_ns == stamp                                # reused, not rewritten
    assert ram.finetune.x.pixels.array is not None and disk.finetune.x.pixels.array is None
    idx = torch.tensor([3, 0, 2])
    assert torch.equal(ram.finetune.x[idx], disk.finetune.x[idx])
    # a changed transform is a different cache entry
    D.load_data(_recipe(root, tmp_path), {**SPEC, "crop_pct": 1.0}, 3)
    assert len(os.listdir(tmp_path / "cache")) == 2


def test_an_unreadable_image_is_named(tmp_path):
    root = _folder(tmp_path / "imgs")
    bad = root / "train" / "dog" / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(D.DataError, match="broken.png") as e:
        D.load_data(_recipe(root, tmp_path), SPEC, 3)
    assert len(str(e.value).splitlines()) == 1 and "Traceback" not in str(e.value)
