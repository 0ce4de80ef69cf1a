"""Host-side image transforms for compile: the manifest's input spec from timm, and timm's train/eval transforms.

    spec = resolve_input_spec(model, {"crop_pct": 1.0})      # -> manifest["input"]
    train_tf = train_transform(spec, {"hflip": False, "auto_augment": "rand-m9-mstd0.5"})
    eval_tf = eval_transform(spec)                           # == runtime.preprocess.preprocess (tested)

Both transforms take what runtime.preprocess takes (path, bytes, PIL image, uint8 HWC array), convert it to the
model's image mode with the same rule as the boards (RGB, or L for a 1-channel model), then run timm's transform
and return a float32 torch tensor [C, H, W]. They are picklable, for DataLoader workers.
"""

from __future__ import annotations

import math

from ..errors import DataError
from ..runtime import preprocess as pp

# Recipe keys that win over the model's pretrained cfg (None = not set).
INPUT_OVERRIDES = ("input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std")

# timm's create_transform(is_training=True) defaults, except interpolation (the spec's) and hflip (a bool is
# accepted: digits and text must not be mirrored).
TRAIN_DEFAULTS = {"scale": (0.08, 1.0), "ratio": (3 / 4, 4 / 3), "hflip": 0.5, "vflip": 0.0, "color_jitter": 0.4,
                  "auto_augment": None, "re_prob": 0.0, "re_mode": "const", "re_count": 1, "interpolation": None,
                  "train_crop_mode": None}


def _model_input(model) -> tuple:
    """(C, H, W) the model was built for: its patch embedding, else its pretrained cfg."""
    pe = getattr(model, "patch_embed", None)
    proj = getattr(pe, "proj", None)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    c = int(getattr(proj, "in_channels", 0) or cfg.get("input_size", (3,))[0])
    size = getattr(pe, "img_size", None) or cfg.get("input_size", (c, 224, 224))[1:]
    h, w = (size, size) if isinstance(size, int) else tuple(int(s) for s in size)
    return c, h, w


def _channels(values, c: int, key: str, where: str) -> tuple:
    vals = tuple(float(v) for v in values)
    if len(vals) == 1:
        vals = vals * c
    if len(vals) != c:
        raise DataError(f"{where}.{key}: {len(vals)} values but the model takes {c} channels; give {c} (or 1)")
    return vals


def resolve_input_spec(model, overrides: dict | None = None, where: str = "recipe data") -> dict:
    """The manifest's input spec: timm's resolve_data_config on the model's pretrained cfg, the model's real
    input size and channels, recipe overrides winning. A 1-channel model with RGB statistics in its cfg gets
    their average."""
    from timm.data import resolve_data_config

    o = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = sorted(set(o) - set(INPUT_OVERRIDES))
    if unknown:
        raise DataError(f"{where}: unknown input setting(s) {', '.join(unknown)}; valid: {', '.join(INPUT_OVERRIDES)}")
    c, h, w = _model_input(model)
    if "input_size" in o:
        size = o["input_size"]
        size = [size, size] if isinstance(size, int) else list(size)
        size = [c] + size if len(size) == 2 else size
        if len(size) != 3 or not all(isinstance(s, int) and s > 0 for s in size):
            raise DataError(f"{where}.input_size: {o['input_size']!r}; give [C, H, W], [H, W] or one int")
        if tuple(size) != (c, h, w) and not getattr(model, "dynamic_img_size", False):
            raise DataError(f"{where}.input_size: {size} but the model is built for {[c, h, w]}; set the model's "
                            "img_size / in_chans in model.kwargs instead")
        c, h, w = size
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    for key in ("mean", "std"):  # ImageNet RGB stats on a 1-channel model: their average
        if cfg.get(key) is not None and len(cfg[key]) != c:
            cfg[key] = (sum(cfg[key]) / len(cfg[key]),) * c
    args = {"input_size": (c, h, w)}
    for key in ("interpolation", "crop_pct", "crop_mode"):
        if key in o:
            args[key] = o[key]
    for key in ("mean", "std"):
        if key in o:
            args[key] = _channels(o[key], c, key, where)
    if "crop_mode" in o and o["crop_mode"] not in pp.CROP_MODES:
        raise DataError(f"{where}.crop_mode: {o['crop_mode']!r}; give one of {', '.join(pp.CROP_MODES)}")
    dc = resolve_data_config(args=args, pretrained_cfg=cfg or None, model=model)
    crop_pct = float(dc["crop_pct"])
    spec = {"name": "pixel_values", "shape": [c, h, w], "layout": "NCHW", "dtype": "float32",
            "mean": [float(v) for v in dc["mean"]], "std": [float(v) for v in dc["std"]],
            "interpolation": str(dc["interpolation"]), "value_range": [0.0, 1.0],
            "crop_pct": crop_pct, "crop_mode": str(dc["crop_mode"] or "center"),
            "resize_size": [int(math.floor(s / crop_pct)) for s in (h, w)],
            "image_mode": "L" if c == 1 else "RGB"}
    try:
        pp.transform_of(spec)
    except pp.ImageError as e:
        raise DataError(f"{where}: {e}") from None
    return spec


class _InModeThen:
    """Decode/convert like the boards (runtime.preprocess), then a timm transform. Picklable."""

    def __init__(self, timm_transform, mode: str):
        self.timm = timm_transform
        self.mode = mode

    def __call__(self, image):
        try:
            img = pp.to_mode(pp.open_image(image), self.mode)
        except pp.ImageError as e:
            raise DataError(str(e)) from None
        return self.timm(img)

    def __repr__(self):
        return f"{type(self).__name__}(mode={self.mode!r}, {self.timm!r})"


def _timm_eval_args(spec: dict) -> dict:
    t = pp.transform_of(spec)
    return {"input_size": (t.channels,) + t.size, "interpolation": t.interpolation, "mean": t.mean,
            "std": t.std, "crop_pct": t.crop_pct, "crop_mode": t.crop_mode}


def eval_transform(spec: dict):
    """timm's eval transform (create_transform, is_training=False) for the spec -> float32 tensor [C, H, W]."""
    from timm.data import create_transform

    t = pp.transform_of(spec)
    return _InModeThen(create_transform(is_training=False, **_timm_eval_args(spec)), t.mode)


def train_transform(spec: dict, recipe_aug: dict | None = None, where: str = "recipe augment"):
    """timm's training transform (create_transform, is_training=True): random-resized-crop (`scale`, `ratio`),
    `hflip` (probability, or true/false), optional RandAugment (`auto_augment`, e.g. 'rand-m9-mstd0.5'),
    `color_jitter`, random erasing (`re_prob`); the rest of TRAIN_DEFAULTS as timm has them."""
    from timm.data import create_transform

    aug = dict(TRAIN_DEFAULTS)
    unknown = sorted(set(recipe_aug or {}) - set(TRAIN_DEFAULTS))
    if unknown:
        raise DataError(f"{where}: unknown setting(s) {', '.join(unknown)}; valid: {', '.join(TRAIN_DEFAULTS)}")
    aug.update({k: v for k, v in (recipe_aug or {}).items() if v is not None})
    if isinstance(aug["hflip"], bool):
        aug["hflip"] = 0.5 if aug["hflip"] else 0.0
    for key in ("hflip", "vflip", "re_prob"):
        if not 0.0 <= float(aug[key]) <= 1.0:
            raise DataError(f"{where}.{key}: {aug[key]}; give a probability in [0, 1]")
    scale, ratio = tuple(float(v) for v in aug["scale"]), tuple(float(v) for v in aug["ratio"])
    if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1 or len(ratio) != 2 or not 0 < ratio[0] <= ratio[1]:
        raise DataError(f"{where}: scale {list(scale)} must be 0 < lo <= hi <= 1, ratio {list(ratio)} 0 < lo <= hi")
    args = _timm_eval_args(spec)
    args["interpolation"] = aug["interpolation"] or args["interpolation"]
    try:
        tf = create_transform(
            is_training=True, scale=scale, ratio=ratio, hflip=float(aug["hflip"]), vflip=float(aug["vflip"]),
            color_jitter=aug["color_jitter"], auto_augment=aug["auto_augment"], re_prob=float(aug["re_prob"]),
            re_mode=aug["re_mode"], re_count=int(aug["re_count"]), train_crop_mode=aug["train_crop_mode"],
            **{k: args[k] for k in ("input_size", "interpolation", "mean", "std")})
    except (AssertionError, ValueError, KeyError) as e:
        raise DataError(f"{where}: timm rejects these settings ({e}); see timm's create_transform") from None
    return _InModeThen(tf, pp.transform_of(spec).mode)
