"""runtime/preprocess.py (the torch-free eval transform) against timm's own eval transform, on generated JPEGs and
PNGs of odd sizes and modes, for the input specs of several timm models; plus the host transforms and the board
venv import."""

from __future__ import annotations

import io
import json
import os
import subprocess

import numpy as np
import pytest
import timm
from PIL import Image
from timm.data import create_transform, resolve_data_config

from edvit_tool.compile import transforms as T
from edvit_tool.errors import DataError
from edvit_tool.runtime import preprocess as pp

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SIZES = [(37, 61), (300, 199), (224, 224), (15, 9), (401, 389)]  # (W, H)
MODES = ["RGB", "L", "RGBA", "P"]
TOLERANCE = 1e-5


def _photo(w: int, h: int, seed: int) -> np.ndarray:
    """A smooth gradient plus noise, so resampling and JPEG both have real work to do."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / max(w - 1, 1), yy * 255 / max(h - 1, 1), (xx + yy) * 127 / max(w + h - 2, 1)], -1)
    return np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list:
    """(path, mode) for every size x mode, PNG for all modes and JPEG where the mode allows it."""
    out = tmp_path_factory.mktemp("images")
    made = []
    for i, (w, h) in enumerate(SIZES):
        rgb = _photo(w, h, i)
        for mode in MODES:
            if mode == "RGBA":
                img = Image.fromarray(np.dstack([rgb, rgb[..., :1]]), "RGBA")
            elif mode == "P":
                img = Image.fromarray(rgb).quantize(colors=37)
                img.info["transparency"] = 3
            else:
                img = Image.fromarray(rgb).convert(mode)
            for ext in (("png", "jpg") if mode in ("RGB", "L") else ("png",)):
                path = str(out / f"{w}x{h}-{mode}.{ext}")
                img.save(path)
                made.append((path, mode))
    return made


def _model(name: str, **kwargs):
    # narrow and shallow: only the pretrained cfg and the input geometry matter here
    return timm.create_model(name, pretrained=False, depth=1, embed_dim=64, num_heads=2, **kwargs)


# (model name, model kwargs, recipe overrides): each a distinct branch of timm's eval transform
CASES = [
    ("vit_small_patch16_224", {}, {}),                                    # bicubic, crop 0.9, mean 0.5
    ("deit_small_patch16_224", {}, {}),                                   # ImageNet mean/std
    ("vit_base_patch16_384", {}, {}),                                     # 384 px, crop 1.0
    ("vit_small_patch16_224", {}, {"crop_pct": 0.875, "interpolation": "bilinear"}),
    ("vit_small_patch16_224", {}, {"crop_pct": 1.0, "interpolation": "nearest"}),
    ("vit_small_patch16_224", {}, {"crop_mode": "squash"}),
    ("vit_small_patch16_224", {}, {"crop_mode": "border", "crop_pct": 0.95}),
    ("vit_small_patch16_224", {}, {"crop_pct": 1.15}),                   # resize below crop: zero padding
    ("vit_small_patch16_224", {"img_size": (64, 96)}, {}),               # non-square: ResizeKeepRatio
    ("vit_small_patch16_224", {"img_size": 32, "in_chans": 1}, {"mean": [0.5], "std": [0.25]}),  # gray model
]


@pytest.mark.parametrize("name,kwargs,overrides", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_equals_timm_eval_transform(images, name, kwargs, overrides):
    model = _model(name, **kwargs)
    spec = T.resolve_input_spec(model, overrides)
    c = spec["shape"][0]
    # timm on its own: resolve_data_config + create_transform on the PIL image converted like timm's datasets
    args = {"input_size": tuple(spec["shape"]), **overrides}
    reference = create_transform(**resolve_data_config(args=args, model=model), is_training=False)
    worst = 0.0
    for path, _ in images:
        with Image.open(path) as img:
            want = reference(img.convert("RGB" if c == 3 else "L")).numpy()
        got = pp.preprocess(path, spec)
        assert got.dtype == np.float32 and got.shape == tuple(spec["shape"])
        worst = max(worst, float(np.abs(got - want).max()))
        assert worst <= TOLERANCE, f"{path}: max |diff| {worst}"
    print(f"{name} {overrides}: max |preprocess - timm| = {worst}")


def test_spec_records_timm_config():
    spec = T.resolve_input_spec(_model("vit_small_patch16_224"), {})
    assert spec == {"name": "pixel_values", "shape": [3, 224, 224], "layout": "NCHW", "dtype": "float32",
                    "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic", "value_range": [0.0, 1.0],
                    "crop_pct": 0.9, "crop_mode": "center", "resize_size": [248, 248], "image_mode": "RGB"}
    deit = T.resolve_input_spec(_model("deit_small_patch16_224"), {"crop_pct": 1.0, "interpolation": "bilinear"})
    assert deit["mean"] == pytest.approx([0.485, 0.456, 0.406]) and deit["resize_size"] == [224, 224]
    assert deit["interpolation"] == "bilinear"
    gray = T.resolve_input_spec(_model("deit_small_patch16_224", in_chans=1), {})
    assert gray["mean"] == pytest.approx([np.mean([0.485, 0.456, 0.406])]) and gray["image_mode"] == "L"
    assert json.loads(json.dumps(spec)) == spec  # goes into manifest.json as is


@pytest.mark.parametrize("overrides,fragment", [
    ({"mean": [0.5, 0.5]}, "mean"), ({"crop_mode": "zoom"}, "crop_mode"), ({"input_size": [3, 32, 32]}, "input_size"),
    ({"interpolation": "cubic-spline"}, "interpolation"), ({"colour": 1}, "unknown")])
def test_bad_overrides_are_data_errors(overrides, fragment):
    with pytest.raises(DataError, match=fragment):
        T.resolve_input_spec(_model("vit_small_patch16_224"), overrides)


def test_every_input_kind_gives_the_same_array(images):
    spec = T.resolve_input_spec(_model("vit_small_patch16_224"), {})
    path = next(p for p, m in images if m == "RGB" and p.endswith(".png"))
    with open(path, "rb") as f:
        data = f.read()
    with Image.open(path) as img:
        arr = np.asarray(img.convert("RGB"))
        pil = img.copy()
    want = pp.preprocess(path, spec)
    for kind in (data, bytearray(data), io.BytesIO(data), pil, arr):
        np.testing.assert_array_equal(pp.preprocess(kind, spec), want)


def test_uint8_stage_then_normalize_is_preprocess(images):
    spec = T.resolve_input_spec(_model("vit_small_patch16_224"), {"crop_mode": "border"})
    paths = [p for p, _ in images][:6]
    pixels = np.stack([pp.resize_crop(p, spec) for p in paths])
    assert pixels.dtype == np.uint8 and pixels.shape == (6, 224, 224, 3)
    batch = pp.preprocess_batch(paths, spec)
    assert batch.shape == (6, 3, 224, 224)
    np.testing.assert_array_equal(pp.normalize(pixels, spec), batch)
    np.testing.assert_array_equal(pp.normalize(pixels[2], spec), pp.preprocess(paths[2], spec))
    assert pp.preprocess_batch([], spec).shape == (0, 3, 224, 224)


@pytest.mark.parametrize("spec", [{"shape": [3, 24, 20], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
                                  {"shape": [1, 8, 8], "mean": [0.5], "std": [0.25]}])
def test_normalize_table_equals_the_arithmetic(spec):
    """normalize's lookup table gives exactly (x / 255 - mean) / std in float32, channels first, for one image
    and a batch (the wire parity tests rely on host and board computing the same bits)."""
    t = pp.transform_of(spec)
    rng = np.random.default_rng(3)
    for shape in [(*t.size, t.channels), (4, *t.size, t.channels)]:
        px = rng.integers(0, 256, shape, dtype=np.uint8)
        px.flat[:256] = np.arange(256)  # every value at least once
        x = (px.astype(np.float32) / np.float32(255) - np.asarray(t.mean, np.float32)) / np.asarray(t.std, np.float32)
        want = np.moveaxis(x, -1, -3)
        got = pp.normalize(px, t)
        assert got.dtype == np.float32 and got.flags.c_contiguous and got.shape == want.shape
        np.testing.assert_array_equal(got, want)


def test_sixteen_bit_gray_is_scaled_not_clipped(tmp_path):
    spec = T.resolve_input_spec(_model("vit_small_patch16_224"), {})
    deep = (_photo(50, 40, 7)[..., 0].astype(np.uint16) * 257 + 100)
    path = str(tmp_path / "deep.png")
    Image.fromarray(deep).save(path)
    with Image.open(path) as img:
        assert img.mode.startswith("I")
    got = pp.preprocess(path, spec)
    np.testing.assert_array_equal(got, pp.preprocess((deep >> 8).astype(np.uint8), spec))
    assert got.std() > 0.1  # PIL's own convert("RGB") would have clipped it to white


def test_legacy_spec_stretches_like_old_builds(images):
    """Manifests without crop_pct were built by stretching to H x W: squash, crop 1.0, recorded interpolation."""
    legacy = {"name": "pixel_values", "shape": [1, 16, 16], "mean": [0.5], "std": [0.5], "interpolation": "bilinear"}
    t = pp.transform_of(legacy)
    assert (t.crop_mode, t.crop_pct, t.resize_size, t.interpolation) == ("squash", 1.0, (16, 16), "bilinear")
    reference = create_transform((1, 16, 16), interpolation="bilinear", mean=(0.5,), std=(0.5,), crop_pct=1.0,
                                 crop_mode="squash")
    for path, _ in images[:6]:
        with Image.open(path) as img:
            want = reference(img.convert("L")).numpy()
        np.testing.assert_allclose(pp.preprocess(path, legacy), want, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("bad,fragment", [
    (b"not an image", "cannot read"), (np.zeros((4, 4, 3), np.float32), "uint8"),
    (np.zeros((4, 4, 2), np.uint8), "shape"), ("/nonexistent/x.png", "no such file")])
def test_bad_images_raise_image_error(bad, fragment):
    spec = T.resolve_input_spec(_model("vit_small_patch16_224"), {})
    with pytest.raises(pp.ImageError, match=fragment):
        pp.preprocess(bad, spec)


def test_oversized_image_refused_before_decoding(monkeypatch, images):
    monkeypatch.setattr(pp, "MAX_PIXELS", 1000)
    with pytest.raises(pp.ImageError, match="more than 1000"):
        pp.preprocess(images[0][0], T.resolve_input_spec(_model("vit_small_patch16_224"), {}))


@pytest.mark.parametrize("spec,fragment", [
    ({"shape": [2, 8, 8], "mean": [0, 0], "std": [1, 1]}, "gray and RGB"),
    ({"shape": [3, 8, 8], "mean": [0], "std": [1, 1, 1]}, "3 values"),
    ({"shape": [3, 8, 8], "mean": [0] * 3, "std": [1] * 3, "crop_pct": 0.9, "crop_mode": "zoom"}, "crop_mode"),
    ({"shape": [3, 8]}, "needs shape")])
def test_bad_specs_raise_image_error(spec, fragment):
    with pytest.raises(pp.ImageError, match=fragment):
        pp.transform_of(spec)


def test_host_eval_transform_equals_preprocess(images):
    spec = T.resolve_input_spec(_model("deit_small_patch16_224"), {"crop_pct": 0.875})
    tf = T.eval_transform(spec)
    for path, _ in images[:8]:
        np.testing.assert_array_equal(tf(path).numpy(), pp.preprocess(path, spec))


def test_train_transform_flip_follows_the_recipe(tmp_path):
    """scale/ratio 1 and no colour jitter leave only the flip random: off never flips, p=1 always does."""
    spec = T.resolve_input_spec(_model("vit_small_patch16_224", img_size=32), {"crop_pct": 1.0})
    img = _photo(32, 32, 3)
    still = {"scale": (1.0, 1.0), "ratio": (1.0, 1.0), "color_jitter": 0.0}
    upright = pp.preprocess(img, spec)
    no_flip = T.train_transform(spec, {**still, "hflip": False})
    always = T.train_transform(spec, {**still, "hflip": 1.0})
    for _ in range(5):
        np.testing.assert_allclose(no_flip(img).numpy(), upright, atol=TOLERANCE)
        np.testing.assert_allclose(always(img).numpy(), upright[..., ::-1], atol=TOLERANCE)


def test_train_transform_randaugment_and_erasing():
    spec = T.resolve_input_spec(_model("vit_small_patch16_224", img_size=32), {})
    tf = T.train_transform(spec, {"auto_augment": "rand-m9-mstd0.5", "re_prob": 0.5, "hflip": False})
    img = _photo(50, 41, 4)
    outs = [tf(img).numpy() for _ in range(4)]
    assert all(o.shape == (3, 32, 32) and np.isfinite(o).all() for o in outs)
    assert max(float(np.abs(o - outs[0]).max()) for o in outs[1:]) > 0  # random, not a fixed transform
    gray = T.resolve_input_spec(_model("vit_small_patch16_224", img_size=32, in_chans=1), {})
    assert T.train_transform(gray, {"auto_augment": "rand-m9-mstd0.5"})(img).shape == (1, 32, 32)
    with pytest.raises(DataError, match="hflip"):
        T.train_transform(spec, {"hflip": 2})
    with pytest.raises(DataError, match="unknown"):
        T.train_transform(spec, {"flip": True})
    with pytest.raises(DataError, match="timm rejects"):
        T.train_transform(spec, {"auto_augment": "rand-x9"})


def test_transforms_pickle_for_dataloader_workers():
    import pickle

    spec = T.resolve_input_spec(_model("vit_small_patch16_224", img_size=32), {})
    img = _photo(40, 30, 5)
    for tf in (T.eval_transform(spec), T.train_transform(spec, {"hflip": False})):
        assert pickle.loads(pickle.dumps(tf))(img).shape == (3, 32, 32)


def test_board_venv_preprocesses_without_torch(images, tmp_path):
    """The board interpreter (no torch) imports runtime.preprocess and gets the host's numbers bit for bit."""
    board_py = os.path.join(os.environ.get("EDVIT_BOARD_VENV", os.path.join(REPO, ".venv-board")), "bin", "python")
    if not os.path.isfile(board_py):
        pytest.skip(f"no board venv at {board_py}; run scripts/make-board-venv.sh")
    spec = T.resolve_input_spec(_model("deit_small_patch16_224"), {})
    paths = [p for p, _ in images][:5]
    out = str(tmp_path / "board.npy")
    code = ("import json, sys, numpy as np\n"
            "from edvit_tool.runtime import preprocess as pp\n"
            "np.save(sys.argv[1], pp.preprocess_batch(sys.argv[3:], json.loads(sys.argv[2])))\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'timm', 'torchvision'))\n"
            "assert not bad, bad\n")
    r = subprocess.run([board_py, "-c", code, out, json.dumps(spec), *paths], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": REPO}, cwd=str(tmp_path))
    assert r.returncode == 0, (r.stderr[-2000:] + "\n(if PIL is missing: rerun scripts/make-board-venv.sh)")
    np.testing.assert_array_equal(np.load(out), pp.preprocess_batch(paths, spec))
