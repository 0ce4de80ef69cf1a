"""reference.py: the build's reference sets (val/eval/calib npz) stored as uint8 pixels at model resolution load
back as exactly the normalised tensors of the split compile took them from, through every reader (export's
loader, check --eval / images.load_npz, infer's wire inputs); older float `x` files still load."""

import numpy as np
import pytest
import torch
from PIL import Image

from edvit_tool import images, reference
from edvit_tool.compile import data as D
from edvit_tool.config import recipe as R
from edvit_tool.errors import DataError

RGB = {"shape": [3, 24, 24], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
       "interpolation": "bicubic", "crop_pct": 0.875, "crop_mode": "center"}
GRAY = {"shape": [1, 20, 20], "mean": [0.5], "std": [0.25], "interpolation": "bilinear", "crop_pct": 0.9}


def _folder(root, n_per_class=6, classes=("cat", "dog", "emu")):
    rng = np.random.default_rng(0)
    for c in classes:
        for split in ("train", "test"):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n_per_class):
                w, h = int(rng.integers(15, 90)), int(rng.integers(15, 90))
                Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(d / f"{i}.jpg")
    return root


@pytest.mark.parametrize("spec", [RGB, GRAY], ids=["rgb", "gray"])
def test_uint8_reference_round_trips_to_the_splits_tensors(tmp_path, spec):
    root = _folder(tmp_path / "imgs")
    rec = R.validate({"data": {"kind": "imagefolder", "root": str(root), "cache_dir": str(tmp_path / "cache"),
                               "val_fraction": 0.3, "workers": 1}})
    data = D.load_data(rec, spec, 3)
    idx = D.stratified_sample(data.test.y, 10, seed=4)
    path = str(tmp_path / "reference" / "eval.npz")
    reference.save(path, data.test.x.uint8(idx), data.test.y[idx])

    with np.load(path, allow_pickle=False) as z:   # compact on disk: pixels at model size, no float copy
        assert sorted(z.files) == ["pixels", "y"] and z["pixels"].dtype == np.uint8
        c, h, w = spec["shape"]
        assert z["pixels"].shape == (len(idx), h, w, c)
    want = data.test.x[idx].numpy()                # what compile computed on these images
    x, y = reference.load(path, spec)              # export, loop
    assert x.dtype == np.float32 and x.shape == want.shape
    assert float(np.abs(x - want).max()) <= 1e-6
    assert np.array_equal(y, data.test.y[idx].numpy())
    x2, y2 = images.load_npz(path, spec)           # check --eval
    assert float(np.abs(x2 - want).max()) <= 1e-6 and np.array_equal(y2, y)
    wire = images.load_wire_inputs([path], spec)   # infer: sent as the stored pixels, not re-cropped
    assert np.array_equal(wire.x, data.test.x.uint8(idx)) and np.array_equal(wire.y, y)


def test_chunked_normalise_equals_one_pass(tmp_path):
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (reference.CHUNK * 2 + 5, 24, 24, 3), dtype=np.uint8)
    from edvit_tool.runtime import preprocess as pp
    assert np.array_equal(reference.normalize(pixels, RGB), pp.normalize(pixels, RGB))


def test_older_float_x_files_still_load(tmp_path):
    x = np.random.default_rng(2).standard_normal((7, 3, 24, 24)).astype(np.float32)
    y = np.arange(7) % 3
    path = str(tmp_path / "old.npz")
    np.savez(path, x=x, y=y)
    got, gy = reference.load(path, RGB)
    assert np.array_equal(got, x) and np.array_equal(gy, y)
    np.savez(path, x=x)                           # calib-*.npz: no labels
    assert reference.load(path, RGB)[1] is None


def test_bad_reference_files_are_named(tmp_path):
    path = str(tmp_path / "eval.npz")
    reference.save(path, np.zeros((4, 32, 32, 3), np.uint8), np.arange(4))
    with pytest.raises(DataError, match=r"eval.npz: pixels is uint8 \[4, 32, 32, 3\]; expected uint8 "
                                        r"\[M, 24, 24, 3\]"):
        reference.load(path, RGB)
    np.savez(path, pixels=np.zeros((4, 24, 24, 3), np.uint8), y=np.arange(3))
    with pytest.raises(DataError, match="y must be 4 integer labels"):
        reference.load(path, RGB)
    np.savez(path, z=np.zeros(3))
    with pytest.raises(DataError, match="no array 'pixels' or 'x'"):
        reference.load(path, RGB)
    with pytest.raises(DataError, match="no such file"):
        reference.load(str(tmp_path / "missing.npz"), RGB)


def test_split_batches_equal_the_boards_normalise_bit_for_bit(tmp_path):
    """Images[idx] (normalised in place) gives the same float32 bits as runtime.preprocess.normalize."""
    root = _folder(tmp_path / "imgs", n_per_class=8)
    rec = R.validate({"data": {"kind": "imagefolder", "root": str(root), "cache_dir": str(tmp_path / "cache"),
                               "workers": 0}})
    data = D.load_data(rec, RGB, 3)
    batch = data.train.x[torch.arange(len(data.train))]
    assert batch.is_contiguous() and batch.dtype == torch.float32
    from edvit_tool.runtime import preprocess as pp
    assert np.array_equal(batch.numpy(), pp.normalize(data.train.x.uint8(), RGB))
