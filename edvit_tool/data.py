"""Datasets (digits | imagefolder | npz) loaded into memory as preprocessed tensors, and the splits.

Preprocessing follows the model's input spec (size, channels, mean, std from its pretrained cfg unless the
recipe overrides them) and is recorded in the manifest so boards and `infer` apply exactly the same.
Splits (stratified, seeded): test = never seen by compile except for the final report; the rest is split into
`val` (every choice compile makes: export gate, float fallback, fusion kind, early stopping), `fusion` (fusion head
weights only — the sub-models never trained on it) and `finetune` (pruning + fine-tuning).

Class order: with `model.classes` (a classes.txt in the checkpoint's head order) the label of a class folder / npz
class is the position of its name in that file; otherwise folders sort alphabetically and npz labels are used as is.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import torch
import torch.nn.functional as F

from .errors import DataError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclasses.dataclass
class Split:
    x: torch.Tensor  # float32 [N, C, H, W], normalised
    y: torch.Tensor  # int64 [N]

    def __len__(self):
        return len(self.y)

    def subset(self, idx) -> "Split":
        idx = torch.as_tensor(idx, dtype=torch.long)
        return Split(self.x[idx], self.y[idx])


@dataclasses.dataclass
class Data:
    classes: list[str]
    finetune: Split
    fusion: Split
    val: Split
    test: Split
    spec: dict  # manifest input spec
    val_source: str = "carved"  # "carved" from the training images, or "folder" (imagefolder val/)

    @property
    def train(self) -> Split:
        """finetune + fusion: everything but the test set."""
        return Split(torch.cat([self.finetune.x, self.fusion.x]), torch.cat([self.finetune.y, self.fusion.y]))


def input_spec(model, recipe_data: dict) -> dict:
    """Input shape/mean/std from the model's pretrained cfg, adapted to its channel count, recipe wins."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    c = model.patch_embed.proj.in_channels
    size = model.patch_embed.img_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    mean = list(cfg.get("mean", (0.5,) * c))
    std = list(cfg.get("std", (0.5,) * c))
    if len(mean) != c:  # e.g. ImageNet RGB stats on a 1-channel model: use their average
        mean, std = [float(np.mean(mean))] * c, [float(np.mean(std))] * c
    if recipe_data.get("mean") is not None:
        mean = [float(v) for v in recipe_data["mean"]]
    if recipe_data.get("std") is not None:
        std = [float(v) for v in recipe_data["std"]]
    for key, vals in (("mean", mean), ("std", std)):
        if len(vals) != c:
            raise DataError(f"recipe data.{key} has {len(vals)} values but the model takes {c} channels; "
                            f"give {c} values")
    return {"name": "pixel_values", "shape": [c, h, w], "layout": "NCHW", "dtype": "float32",
            "mean": [float(m) for m in mean], "std": [float(s) for s in std], "interpolation": "bilinear",
            "value_range": [0.0, 1.0]}


def to_model_input(images: torch.Tensor, spec: dict) -> torch.Tensor:
    """float images in [0, 1], [N, C', H', W'] → resized, channel-matched, normalised [N, C, H, W]."""
    c, h, w = spec["shape"]
    if images.shape[1] != c:
        if images.shape[1] == 3 and c == 1:
            images = images.mean(dim=1, keepdim=True)
        elif images.shape[1] == 1 and c == 3:
            images = images.expand(-1, 3, -1, -1)
        else:
            raise DataError(f"images have {images.shape[1]} channels but the model takes {c}")
    if tuple(images.shape[2:]) != (h, w):
        images = F.interpolate(images, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(spec["mean"]).view(1, c, 1, 1)
    std = torch.tensor(spec["std"]).view(1, c, 1, 1)
    return ((images - mean) / std).float().contiguous()


def distort(images: torch.Tensor, seed: int) -> torch.Tensor:
    """The 'harder digits' variant: rotation ±20°, scale 0.8–1.2, shift, contrast/brightness, noise (fixed seed)."""
    g = torch.Generator().manual_seed(seed)
    n = images.shape[0]
    angle = (torch.rand(n, generator=g) * 40 - 20) * torch.pi / 180
    scale = torch.rand(n, generator=g) * 0.4 + 0.8
    shift = (torch.rand(n, 2, generator=g) - 0.5) * 0.3
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    out = F.grid_sample(images, grid, align_corners=False, padding_mode="zeros")
    contrast = torch.rand(n, 1, 1, 1, generator=g) * 0.6 + 0.4
    bright = torch.rand(n, 1, 1, 1, generator=g) * 0.3
    out = out * contrast + bright + torch.randn(out.shape, generator=g) * 0.12
    return out.clamp(0, 1)


def _load_digits(distorted: bool, seed: int, copies: int = 1):
    """digits, or `copies` independently distorted views of each digit (base ids returned so that all views
    of one digit land in the same split — otherwise the test set would hold near-copies of training images)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    base = torch.arange(len(y))
    if distorted:
        x = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
        x = torch.cat([distort(x, seed=seed + 12345 + c) for c in range(copies)])
        y, base = y.repeat(copies), base.repeat(copies)
    return x, y, [str(i) for i in range(10)], None, base


def _read_image(path: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB") if im.mode not in ("L", "RGB") else im
            arr = np.asarray(im, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"{path}: cannot read image ({e}); remove or replace the file") from None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _class_folders(folder: str) -> list[str]:
    if not os.path.isdir(folder):
        raise DataError(f"{folder}: folder not found; imagefolder data needs ROOT/train/<class>/*.png")
    return sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))


def _folder_split(folder: str, classes: list[str] | None, order_source: str | None = None):
    """Images of `folder`/<class>/ labelled by the class's position in `classes` (default: sorted folder names).
    `order_source` names the file that gave `classes`, for the error when folders and names disagree."""
    found = _class_folders(folder)
    if classes is not None:
        extra = [d for d in found if d not in classes]
        if extra:
            raise DataError(f"{folder}: class folder(s) {', '.join(extra[:5])} are not named in "
                            f"{order_source or 'the class list'}; name every class folder there (one per line, "
                            f"in the checkpoint's head order)")
    classes = classes or found
    if not classes:
        raise DataError(f"{folder}: no class folders; expected {folder}/<class name>/<images>")
    xs, ys = [], []
    for ci, name in enumerate(classes):
        cdir = os.path.join(folder, name)
        files = sorted(f for f in os.listdir(cdir) if f.lower().endswith(IMAGE_EXTS)) if os.path.isdir(cdir) else []
        if not files:
            raise DataError(f"{cdir}: class folder is empty or missing (no {', '.join(IMAGE_EXTS)} files); "
                            f"add images or remove the class")
        for f in files:
            xs.append(_read_image(os.path.join(cdir, f)))
            ys.append(ci)
    shapes = {a.shape for a in xs}
    if len(shapes) > 1:  # different sizes: bring everything to the most common size first
        target = max(shapes, key=lambda s: sum(a.shape == s for a in xs))
        xs = [a if a.shape == target else F.interpolate(torch.from_numpy(a)[None], size=target[1:],
                                                         mode="bilinear", align_corners=False)[0].numpy()
              for a in xs]
        xs = [np.repeat(a, 3, 0) if a.shape[0] == 1 and target[0] == 3 else a for a in xs]
    return torch.from_numpy(np.stack(xs)), torch.tensor(ys, dtype=torch.long), classes


def _load_imagefolder(root: str, classes: list[str] | None, order_source: str | None):
    """ROOT/train (+ ROOT/val, ROOT/test). With both val/ and test/, val/ is the validation split; with val/
    alone it is the test split (the usual train/val layout whose val is what one reports on)."""
    x, y, classes = _folder_split(os.path.join(root, "train"), classes, order_source)
    val_dir, test_dir = os.path.join(root, "val"), os.path.join(root, "test")
    test = val = None
    if os.path.isdir(test_dir):
        test = _folder_split(test_dir, classes, order_source)[:2]
        if os.path.isdir(val_dir):
            val = _folder_split(val_dir, classes, order_source)[:2]
    elif os.path.isdir(val_dir):
        test = _folder_split(val_dir, classes, order_source)[:2]
    return x, y, classes, test, val


def _npz_images(arr: np.ndarray, path: str, key: str) -> torch.Tensor:
    a = np.asarray(arr)
    if a.ndim == 3:
        a = a[:, None]
    elif a.ndim == 4 and a.shape[-1] in (1, 3) and a.shape[1] not in (1, 3):
        a = a.transpose(0, 3, 1, 2)
    if a.ndim != 4:
        raise DataError(f"{path}: {key} must be [N,H,W], [N,H,W,C] or [N,C,H,W], got shape {arr.shape}")
    a = a.astype(np.float32)
    if a.max(initial=0) > 1.0:
        a = a / 255.0
    return torch.from_numpy(np.ascontiguousarray(a))


def _load_npz(path: str, names: list[str] | None, order_source: str | None):
    if not os.path.isfile(path):
        raise DataError(f"{path}: npz file not found; data.root must point at a .npz with arrays x and y")
    with np.load(path, allow_pickle=False) as z:
        for key in ("x", "y"):
            if key not in z:
                raise DataError(f"{path}: array '{key}' missing (found {', '.join(z.files)}); save x and y")
        x = _npz_images(z["x"], path, "x")
        y = torch.from_numpy(z["y"].astype(np.int64))
        classes = [str(c) for c in z["classes"]] if "classes" in z else None
        test = None
        if "x_test" in z and "y_test" in z:
            test = (_npz_images(z["x_test"], path, "x_test"), torch.from_numpy(z["y_test"].astype(np.int64)))
    if len(x) != len(y):
        raise DataError(f"{path}: x has {len(x)} images but y has {len(y)} labels")
    n_cls = int(max(y.max().item(), test[1].max().item() if test else 0)) + 1
    if names is not None and classes is not None:
        # y indexes the npz's own `classes`; the checkpoint's head order is `names`: relabel by name
        unknown = [c for c in classes if c not in names]
        if unknown:
            raise DataError(f"{path}: class(es) {', '.join(unknown[:5])} of its `classes` array are not named in "
                            f"{order_source}; name every class there, in the checkpoint's head order")
        table = torch.tensor([names.index(c) for c in classes], dtype=torch.long)
        y = table[y]
        test = None if test is None else (test[0], table[test[1]])
        classes = list(names)
    return x, y, classes or [str(i) for i in range(n_cls)], test


def read_classes_file(path: str) -> list[str]:
    if not os.path.isfile(path):
        raise DataError(f"{path}: classes file not found; give one class name per line or drop model.classes")
    with open(path, encoding="utf-8") as f:
        names = [line.strip() for line in f if line.strip()]
    if not names:
        raise DataError(f"{path}: classes file is empty; give one class name per line")
    return names


def _stratified(y: torch.Tensor, fraction: float, seed: int, base: torch.Tensor | None = None):
    """Stratified split; with `base` ids, all images sharing a base id go to the same side."""
    from sklearn.model_selection import train_test_split

    if base is None:
        base = torch.arange(len(y))
    uniq, first = np.unique(base.numpy(), return_index=True)
    labels = y.numpy()[first]
    counts = np.bincount(labels)
    strat = labels if counts[counts > 0].min() >= 2 else None
    a, b = train_test_split(uniq, test_size=fraction, random_state=seed, stratify=strat)
    in_b = np.isin(base.numpy(), b)
    return np.flatnonzero(~in_b), np.flatnonzero(in_b)


def load_data(recipe: dict, spec: dict, num_classes: int) -> Data:
    d = recipe["data"]
    seed = recipe["seed"]
    base = val = None
    order_source = recipe["model"]["classes"]
    names = read_classes_file(order_source) if order_source else None
    if names is not None and len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise DataError(f"{order_source}: class name(s) {', '.join(dup[:5])} appear more than once; "
                        f"give each class once, in the checkpoint's head order")
    if d["kind"] == "digits":
        x, y, classes, test, base = _load_digits(d["distort"], seed, d["distort_copies"])
    elif d["kind"] == "imagefolder":
        x, y, classes, test, val = _load_imagefolder(d["root"], names, order_source)
    else:
        x, y, classes, test = _load_npz(d["root"], names, order_source)
    if names is not None:
        if len(names) != len(classes):
            raise DataError(f"{order_source}: {len(names)} class names but the data has {len(classes)} classes")
        classes = names
    if len(classes) != num_classes:
        raise DataError(f"data has {len(classes)} classes but the model has num_classes={num_classes}; "
                        f"set model.kwargs.num_classes or use the matching dataset")
    if int(y.min()) < 0 or int(y.max()) >= num_classes:
        raise DataError(f"labels must be in 0..{num_classes - 1}, got {int(y.min())}..{int(y.max())}")
    missing = sorted(set(range(num_classes)) - set(y.tolist()))
    if missing:
        raise DataError(f"no training images for class(es) {', '.join(classes[i] for i in missing)}; "
                        f"every class needs images")
    cap = d["max_images_per_class"]
    if cap:
        keep = np.concatenate([np.flatnonzero(y.numpy() == c)[:cap] for c in range(num_classes)])
        keep = np.sort(keep)
        x, y = x[keep], y[keep]
        base = None if base is None else base[keep]
    if test is None:
        rest, te = _stratified(y, d["test_fraction"], seed, base)
        test = (x[te], y[te])
        x, y = x[rest], y[rest]
        base = None if base is None else base[rest]
    val_source = "folder"
    if val is None:
        val_source = "carved"
        rest, va = _stratified(y, d["val_fraction"], seed + 2, base)
        val = (x[va], y[va])
        x, y = x[rest], y[rest]
        base = None if base is None else base[rest]
    ft, fu = _stratified(y, d["fusion_fraction"], seed + 1, base)
    conv = lambda imgs: to_model_input(imgs, spec)  # noqa: E731
    return Data(classes=classes, finetune=Split(conv(x[ft]), y[ft]), fusion=Split(conv(x[fu]), y[fu]),
                val=Split(conv(val[0]), val[1]), test=Split(conv(test[0]), test[1]), spec=spec,
                val_source=val_source)


def stratified_sample(y: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """Up to `count` indices, seeded and class-stratified: every class present in `y` gets its share (at least one
    image each while count allows), drawn at random within the class — never the first images of a class-sorted
    split. Sorted, so the sample keeps the split's order."""
    n = len(y)
    if n <= count:
        return torch.arange(n)
    gen = torch.Generator().manual_seed(seed)
    classes = torch.unique(y)
    pools = [torch.nonzero(y == c).flatten() for c in classes]
    pools = [p[torch.randperm(len(p), generator=gen)] for p in pools]
    # proportional shares, at least one per class while count allows; rounding goes to the largest remainders
    sizes = torch.tensor([len(p) for p in pools], dtype=torch.float64)
    quota = sizes / sizes.sum() * count
    take = torch.minimum(torch.clamp(quota.floor().long(), min=1), sizes.long())
    while int(take.sum()) > count:          # more classes than the floor-of-one allows: trim the biggest shares
        take[int(torch.argmax(take))] -= 1
    left = count - int(take.sum())
    for i in torch.argsort(quota - quota.floor(), descending=True).tolist() * 2:
        if left == 0:
            break
        if take[i] < sizes[i]:
            take[i] += 1
            left -= 1
    idx = torch.cat([p[:int(t)] for p, t in zip(pools, take)])
    return idx[:count].sort().values
