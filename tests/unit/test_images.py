"""edvit_tool/images.py (what `infer` and `check --eval` read): every raw image goes through runtime/preprocess.py
with the manifest's input spec; old manifests (no crop_pct) keep their stretch-to-size preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from edvit_tool import images as I
from edvit_tool.errors import DataError
from edvit_tool.runtime import preprocess as pp

SPEC = {"name": "pixel_values", "shape": [3, 32, 32], "layout": "NCHW", "dtype": "float32",
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "interpolation": "bicubic",
        "value_range": [0.0, 1.0], "crop_pct": 0.875, "crop_mode": "center", "resize_size": [36, 36],
        "image_mode": "RGB"}
LEGACY = {"name": "pixel_values", "shape": [1, 16, 16], "layout": "NCHW", "dtype": "float32", "mean": [0.5],
          "std": [0.5], "interpolation": "bilinear"}


def _pixels(n: int, h: int, w: int, c: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, c), dtype=np.uint8)


def test_files_and_uint8_npz_layouts_match_preprocess(tmp_path):
    raw = _pixels(3, 45, 29)
    paths = []
    for i, ext in enumerate(("png", "jpg", "png")):
        paths.append(str(tmp_path / f"im{i}.{ext}"))
        Image.fromarray(raw[i]).save(paths[-1])
    got = I.load_inputs(paths, SPEC)
    assert got.names == paths and got.y is None and got.x.shape == (3, 3, 32, 32)
    np.testing.assert_array_equal(got.x, pp.preprocess_batch(paths, SPEC))
    want = pp.preprocess_batch(list(raw), SPEC)
    for layout in (raw, raw.transpose(0, 3, 1, 2)):  # NHWC and NCHW
        np.savez(tmp_path / "raw.npz", x=layout, y=np.arange(3))
        x, y = I.load_npz(str(tmp_path / "raw.npz"), SPEC)
        np.testing.assert_array_equal(x, want)
        assert list(y) == [0, 1, 2]
    gray = raw[..., 0]
    np.savez(tmp_path / "gray.npz", x=gray)
    x, _ = I.load_npz(str(tmp_path / "gray.npz"), SPEC)  # gray -> RGB like PIL's convert("RGB")
    np.testing.assert_array_equal(x, pp.preprocess_batch(list(np.repeat(gray[..., None], 3, -1)), SPEC))


def test_float_npz_is_taken_as_preprocessed(tmp_path):
    x = np.random.default_rng(1).normal(size=(2, 3, 32, 32)).astype(np.float32)
    np.savez(tmp_path / "f.npz", x=x, y=np.array([1, 0]))
    got, y = I.load_npz(str(tmp_path / "f.npz"), SPEC)
    np.testing.assert_array_equal(got, x)
    np.savez(tmp_path / "bad.npz", x=x[:, :1])
    with pytest.raises(DataError, match="already preprocessed"):
        I.load_npz(str(tmp_path / "bad.npz"), SPEC)


def test_legacy_manifest_stretches_to_size(tmp_path):
    """Builds made before crop_pct was recorded stretched images to H x W (bilinear): still so."""
    img = _pixels(1, 20, 40, 1)[0, ..., 0]
    path = str(tmp_path / "wide.png")
    Image.fromarray(img).save(path)
    want = np.asarray(Image.fromarray(img).resize((16, 16), Image.Resampling.BILINEAR), np.float32) / 255
    got = I.load_image(path, LEGACY)
    np.testing.assert_allclose(got[0, 0], (want - 0.5) / 0.5, atol=1e-6)


def test_image_folder_labels_by_manifest_class_names(tmp_path):
    classes = ["cat", "dog", "eel"]
    raw = _pixels(4, 30, 30, seed=2)
    for i, cls in enumerate(["dog", "dog", "eel", "cat"]):
        (tmp_path / "set" / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(raw[i]).save(tmp_path / "set" / cls / f"{i}.png")
    (tmp_path / "set" / "cat" / "notes.txt").write_text("not an image")
    got = I.load_inputs([str(tmp_path / "set")], SPEC, classes)
    assert list(got.y) == [0, 1, 1, 2] and len(got.names) == 4
    np.testing.assert_array_equal(got.x, pp.preprocess_batch(got.names, SPEC))
    (tmp_path / "set" / "fox").mkdir()
    with pytest.raises(DataError, match="fox"):
        I.load_image_folder(str(tmp_path / "set"), SPEC, classes)


@pytest.mark.parametrize("name,content,fragment", [
    ("broken.png", b"\x89PNG not really", "cannot read"), ("notes.txt", b"x", "unknown input type")])
def test_bad_inputs_are_data_errors(tmp_path, name, content, fragment):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError, match=fragment):
        I.load_inputs([str(tmp_path / name)], SPEC)
