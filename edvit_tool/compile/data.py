"""Datasets (digits | imagefolder | npz) streamed at the model's resolution, and the splits.

Nothing holds the dataset as float32. Each image is decoded once by the build's own eval geometry
(runtime.preprocess.resize_crop: timm's resize-by-crop_pct + centre crop, the same code `infer` and the boards run)
into uint8 [H, W, C] at model resolution — in DataLoader workers for image folders — and kept as `Pixels`: in RAM
when small, else in a cache file (`data.cache_dir`, reused while the source files and the transform are unchanged)
read per batch with pread (page cache, not process memory). A split's `x` is a lazy view: `x[idx]` decodes those
rows to the normalised float32 batch, so training loops index it like a tensor.

Splits (stratified, seeded): test = read once, for the reported figures; the rest is split into `val` (every choice
compile makes: export gate, float fallback, fusion kind, early stopping), `fusion` (fusion head weights only — the
sub-models never trained on it) and `finetune` (pruning + fine-tuning).

Class order: with `model.classes` (a classes.txt in the checkpoint's head order) the label of a class folder / npz
class is the position of its name in that file; otherwise folders sort alphabetically and npz labels are used as is.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import numpy as np
import torch

from ..config.recipe import DataCfg, Recipe
from ..errors import DataError
from ..runtime import preprocess as pp

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
CACHE_VERSION = 1


# -- sources: raw images, random access -------------------------------------------------------------------------
class FolderSource:
    """Image files (paths) with labels; decoding happens in DataLoader workers."""

    def __init__(self, paths: list[str], labels: np.ndarray):
        self.paths, self.labels = list(paths), np.asarray(labels, dtype=np.int64)

    def __len__(self):
        return len(self.paths)

    def image(self, i: int):
        return self.paths[i]

    def key(self) -> str:
        h = hashlib.sha256()
        for p in self.paths:
            st = os.stat(p)
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()


class ArraySource:
    """Images already in memory as uint8 [N, H, W] or [N, H, W, C] (digits, npz)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, np.asarray(labels, dtype=np.int64)

    def __len__(self):
        return len(self.images)

    def image(self, i: int):
        return self.images[i]

    def key(self) -> str:
        return hashlib.sha256(np.ascontiguousarray(self.images).tobytes()).hexdigest()


def _concat(sources: list) -> "FolderSource | ArraySource":
    if all(isinstance(s, FolderSource) for s in sources):
        return FolderSource([p for s in sources for p in s.paths], np.concatenate([s.labels for s in sources]))
    shapes = {s.images.shape[1:] for s in sources}
    if len(shapes) == 1:
        return ArraySource(np.concatenate([s.images for s in sources]), np.concatenate([s.labels for s in sources]))
    return ArraySource(np.array([im for s in sources for im in s.images], dtype=object),
                       np.concatenate([s.labels for s in sources]))


# -- pixels at model resolution ----------------------------------------------------------------------------------
class _Decode(torch.utils.data.Dataset):
    def __init__(self, source, spec: dict):
        self.source, self.t = source, pp.transform_of(spec)

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        where = self.source.paths[i] if isinstance(self.source, FolderSource) else f"image {i}"
        try:
            return torch.from_numpy(pp.resize_crop(self.source.image(i), self.t, where))
        except pp.ImageError as e:
            raise DataError(f"{e}; remove or replace the file") from None


class Pixels:
    """uint8 [N, H, W, C] at model resolution: a RAM array, or a cache file read row by row with pread."""

    def __init__(self, shape: tuple, array: np.ndarray | None = None, path: str | None = None):
        self.shape, self.array, self.path = tuple(shape), array, path
        self.row_bytes = int(np.prod(self.shape[1:]))
        self._fd = None

    def __len__(self):
        return self.shape[0]

    def read(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        if self.array is not None:
            return self.array[rows]
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        out = np.empty((len(rows),) + self.shape[1:], dtype=np.uint8)
        flat = out.reshape(len(rows), -1)
        for j, r in enumerate(rows):
            buf = os.pread(self._fd, self.row_bytes, int(r) * self.row_bytes)
            if len(buf) != self.row_bytes:
                raise DataError(f"{self.path}: cache file is truncated; delete it and compile again")
            flat[j] = np.frombuffer(buf, dtype=np.uint8)
        return out

    def __getstate__(self):  # DataLoader workers reopen the file themselves
        return {**self.__dict__, "_fd": None}


def _decode_all(source, spec: dict, workers: int, progress=None):
    """Yield uint8 [n, H, W, C] chunks in source order."""
    loader = torch.utils.data.DataLoader(_Decode(source, spec), batch_size=64, num_workers=workers,
                                         shuffle=False)
    it = iter(loader)
    while True:
        try:
            chunk = next(it)
        except StopIteration:
            return
        except DataError as e:  # from a worker: keep the one-line message, not the worker's traceback
            last = str(e).strip().splitlines()[-1]
            raise DataError(last.split("DataError: ", 1)[-1]) from None
        if progress:
            progress(len(chunk))
        yield chunk.numpy()


def _geometry(spec: dict) -> dict:
    t = pp.transform_of(spec)
    return {"channels": t.channels, "size": list(t.size), "resize": list(t.resize_size), "crop_pct": t.crop_pct,
            "crop_mode": t.crop_mode, "interpolation": t.interpolation}


def build_pixels(source, spec: dict, cfg: DataCfg, bars=None) -> Pixels:
    """Decode every image once at model resolution. Image folders go through a cache file (reused when the files
    and the transform are unchanged); RAM holds the pixels only when they are small."""
    t = pp.transform_of(spec)
    shape = (len(source),) + t.size + (t.channels,)
    nbytes = int(np.prod(shape))
    in_ram = nbytes <= cfg.ram_cache_mb * 2**20
    workers = 0 if isinstance(source, ArraySource) else min(cfg.workers, os.cpu_count() or 1)
    advance = bars.task("decode images", len(source)) if bars else None
    if isinstance(source, ArraySource) and in_ram:
        arr = np.empty(shape, dtype=np.uint8)
        for i in range(len(source)):
            try:
                arr[i] = pp.resize_crop(source.image(i), t, f"image {i}")
            except pp.ImageError as e:
                raise DataError(str(e)) from None
            if advance and i % 256 == 255:
                advance(256)
        return Pixels(shape, array=arr)
    cache_dir = os.path.expanduser(cfg.cache_dir or os.environ.get("EDVIT_CACHE_DIR") or "~/.cache/edvit-tool")
    key = hashlib.sha256(json.dumps({"v": CACHE_VERSION, "source": source.key(), "geometry": _geometry(spec)},
                                    sort_keys=True).encode()).hexdigest()[:32]
    path = os.path.join(cache_dir, f"pixels-{key}.u8")
    if not (os.path.isfile(path) and os.path.getsize(path) == nbytes):
        try:
            os.makedirs(cache_dir, exist_ok=True)
            tmp = f"{path}.tmp-{os.getpid()}"
            with open(tmp, "wb") as f:
                for chunk in _decode_all(source, spec, workers, advance):
                    f.write(np.ascontiguousarray(chunk).tobytes())
            os.replace(tmp, path)
        except OSError as e:
            raise DataError(f"{cache_dir}: cannot write the image cache ({e.strerror}); set data.cache_dir to a "
                            "writable folder with room for it") from None
    elif bars:
        bars.log(f"data: reusing the decoded-image cache {path}")
    if in_ram:
        return Pixels(shape, array=np.fromfile(path, dtype=np.uint8).reshape(shape))
    return Pixels(shape, path=path)


class Images:
    """A lazy float32 [N, C, H, W] view of some pixel rows: indexing decodes and normalises just those rows."""

    def __init__(self, pixels: Pixels, rows: np.ndarray, spec: dict):
        self.pixels, self.rows, self.spec = pixels, np.asarray(rows, dtype=np.int64), spec
        t = pp.transform_of(spec)
        self._mean = torch.tensor(t.mean, dtype=torch.float32).view(1, -1, 1, 1)
        self._std = torch.tensor(t.std, dtype=torch.float32).view(1, -1, 1, 1)

    def __len__(self):
        return len(self.rows)

    @property
    def shape(self) -> tuple:
        h, w, c = self.pixels.shape[1:]
        return (len(self.rows), c, h, w)

    def uint8(self, key=slice(None)) -> np.ndarray:
        """uint8 [n, H, W, C] of the selected rows (what runtime.preprocess.normalize takes)."""
        if isinstance(key, torch.Tensor):
            key = key.cpu().numpy()
        return self.pixels.read(np.atleast_1d(self.rows[key]))

    def __getitem__(self, key) -> torch.Tensor:
        # one float32 array per call, filled in place (a 1,000-image 224-px batch is 600 MB; temporaries would
        # triple it): the same float32 operations, in the same order, as runtime.preprocess.normalize
        x = torch.from_numpy(self.uint8(key)).permute(0, 3, 1, 2)
        x = x.to(torch.float32, memory_format=torch.contiguous_format)
        return x.div_(255.0).sub_(self._mean).div_(self._std)

    def subset(self, key) -> "Images":
        if isinstance(key, torch.Tensor):
            key = key.cpu().numpy()
        return Images(self.pixels, self.rows[key], self.spec)


@dataclasses.dataclass
class Split:
    x: Images         # lazy: x[idx] -> float32 [n, C, H, W], normalised
    y: torch.Tensor   # int64 [N]

    def __len__(self):
        return len(self.y)

    def subset(self, idx) -> "Split":
        idx = torch.as_tensor(idx, dtype=torch.long)
        return Split(self.x.subset(idx), self.y[idx])


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
        """finetune + fusion: everything but validation and test."""
        x = Images(self.finetune.x.pixels, np.concatenate([self.finetune.x.rows, self.fusion.x.rows]), self.spec)
        return Split(x, torch.cat([self.finetune.y, self.fusion.y]))


# -- loaders per kind --------------------------------------------------------------------------------------------
def _to_uint8(x: np.ndarray) -> np.ndarray:
    """float images in [0, 1] (or already 0-255) -> uint8, HW or HWC per image."""
    if x.dtype == np.uint8:
        return x
    x = x.astype(np.float32)
    if x.max(initial=0) <= 1.0:
        x = x * 255.0
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def distort(images: torch.Tensor, seed: int) -> torch.Tensor:
    """The 'harder digits' variant: rotation ±20°, scale 0.8–1.2, shift, contrast/brightness, noise (fixed seed)."""
    import torch.nn.functional as F

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
    """digits as 8-bit images, or `copies` independently distorted 16x16 views of each digit (base ids returned
    so that all views of one digit land in the same split — otherwise the test set would hold near-copies of
    training images)."""
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = d.target.astype(np.int64)
    base = np.arange(len(y))
    if distorted:
        x = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
        x = torch.cat([distort(x, seed=seed + 12345 + c) for c in range(copies)])
        y, base = np.tile(y, copies), np.tile(base, copies)
    return ArraySource(_to_uint8(x[:, 0].numpy()), y), [str(i) for i in range(10)], None, None, base


def _class_folders(folder: str) -> list[str]:
    if not os.path.isdir(folder):
        raise DataError(f"{folder}: folder not found; imagefolder data needs ROOT/train/<class>/*.png")
    return sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))


def _folder_split(folder: str, classes: list[str] | None, order_source: str | None = None):
    """Image files of `folder`/<class>/ labelled by the class's position in `classes` (default: sorted folder
    names). `order_source` names the file that gave `classes`, for the error when folders and names disagree."""
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
    paths, ys = [], []
    for ci, name in enumerate(classes):
        cdir = os.path.join(folder, name)
        files = sorted(f for f in os.listdir(cdir) if f.lower().endswith(IMAGE_EXTS)) if os.path.isdir(cdir) else []
        if not files:
            raise DataError(f"{cdir}: class folder is empty or missing (no {', '.join(IMAGE_EXTS)} files); "
                            f"add images or remove the class")
        paths += [os.path.join(cdir, f) for f in files]
        ys += [ci] * len(files)
    return FolderSource(paths, np.asarray(ys, dtype=np.int64)), classes


def _load_imagefolder(root: str, classes: list[str] | None, order_source: str | None):
    """ROOT/train (+ ROOT/val, ROOT/test). With both val/ and test/, val/ is the validation split; with val/
    alone it is the test split (the usual train/val layout whose val is what one reports on)."""
    train, classes = _folder_split(os.path.join(root, "train"), classes, order_source)
    val_dir, test_dir = os.path.join(root, "val"), os.path.join(root, "test")
    test = val = None
    if os.path.isdir(test_dir):
        test = _folder_split(test_dir, classes, order_source)[0]
        if os.path.isdir(val_dir):
            val = _folder_split(val_dir, classes, order_source)[0]
    elif os.path.isdir(val_dir):
        test = _folder_split(val_dir, classes, order_source)[0]
    return train, classes, test, val


def _npz_images(arr: np.ndarray, path: str, key: str) -> np.ndarray:
    """[N,H,W], [N,H,W,C] or [N,C,H,W] -> uint8 [N,H,W] / [N,H,W,C]."""
    a = np.asarray(arr)
    if a.ndim == 4 and a.shape[1] in (1, 3) and a.shape[-1] not in (1, 3):
        a = a.transpose(0, 2, 3, 1)
    if a.ndim == 4 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (3, 4) or (a.ndim == 4 and a.shape[-1] != 3):
        raise DataError(f"{path}: {key} must be [N,H,W], [N,H,W,C] or [N,C,H,W] with C 1 or 3, got shape {arr.shape}")
    return _to_uint8(a)


def _load_npz(path: str, names: list[str] | None, order_source: str | None):
    if not os.path.isfile(path):
        raise DataError(f"{path}: npz file not found; data.root must point at a .npz with arrays x and y")
    with np.load(path, allow_pickle=False) as z:
        for key in ("x", "y"):
            if key not in z:
                raise DataError(f"{path}: array '{key}' missing (found {', '.join(z.files)}); save x and y")
        x = _npz_images(z["x"], path, "x")
        y = z["y"].astype(np.int64)
        classes = [str(c) for c in z["classes"]] if "classes" in z else None
        test = None
        if "x_test" in z and "y_test" in z:
            test = (_npz_images(z["x_test"], path, "x_test"), z["y_test"].astype(np.int64))
    if len(x) != len(y):
        raise DataError(f"{path}: x has {len(x)} images but y has {len(y)} labels")
    n_cls = int(max(y.max(), test[1].max() if test else 0)) + 1
    if names is not None and classes is not None:
        # y indexes the npz's own `classes`; the checkpoint's head order is `names`: relabel by name
        unknown = [c for c in classes if c not in names]
        if unknown:
            raise DataError(f"{path}: class(es) {', '.join(unknown[:5])} of its `classes` array are not named in "
                            f"{order_source}; name every class there, in the checkpoint's head order")
        table = np.asarray([names.index(c) for c in classes], dtype=np.int64)
        y = table[y]
        test = None if test is None else (test[0], table[test[1]])
        classes = list(names)
    test_src = None if test is None else ArraySource(*test)
    return ArraySource(x, y), classes or [str(i) for i in range(n_cls)], test_src


def read_classes_file(path: str) -> list[str]:
    if not os.path.isfile(path):
        raise DataError(f"{path}: classes file not found; give one class name per line or drop model.classes")
    with open(path, encoding="utf-8") as f:
        names = [line.strip() for line in f if line.strip()]
    if not names:
        raise DataError(f"{path}: classes file is empty; give one class name per line")
    return names


def _stratified(y: np.ndarray, fraction: float, seed: int, base: np.ndarray | None = None):
    """Stratified split of positions 0..len(y)-1; with `base` ids, all images sharing a base id go to one side."""
    from sklearn.model_selection import train_test_split

    if base is None:
        base = np.arange(len(y))
    uniq, first = np.unique(base, return_index=True)
    labels = y[first]
    counts = np.bincount(labels)
    strat = labels if counts[counts > 0].min() >= 2 else None
    _, b = train_test_split(uniq, test_size=fraction, random_state=seed, stratify=strat)
    in_b = np.isin(base, b)
    return np.flatnonzero(~in_b), np.flatnonzero(in_b)


def stratified_sample(y: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """Up to `count` indices, seeded and class-stratified: every class present in `y` gets its share (at least one
    image each while count allows), drawn at random within the class — never the first images of a class-sorted
    split. Sorted, so the sample keeps the split's order."""
    y = torch.as_tensor(y)
    n = len(y)
    if n <= count:
        return torch.arange(n)
    gen = torch.Generator().manual_seed(seed)
    pools = [torch.nonzero(y == c).flatten() for c in torch.unique(y)]
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


def load_data(recipe: Recipe, spec: dict, num_classes: int, bars=None) -> Data:
    d = recipe.data
    seed = recipe.seed
    base = val = None
    order_source = recipe.model.classes
    names = read_classes_file(order_source) if order_source else None
    if names is not None and len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise DataError(f"{order_source}: class name(s) {', '.join(dup[:5])} appear more than once; "
                        f"give each class once, in the checkpoint's head order")
    if d.kind == "digits":
        train, classes, test, val, base = _load_digits(d.distort, seed, d.distort_copies)
    elif d.kind == "imagefolder":
        train, classes, test, val = _load_imagefolder(d.root, names, order_source)
    else:
        train, classes, test = _load_npz(d.root, names, order_source)
    if names is not None:
        if len(names) != len(classes):
            raise DataError(f"{order_source}: {len(names)} class names but the data has {len(classes)} classes")
        classes = names
    if len(classes) != num_classes:
        raise DataError(f"data has {len(classes)} classes but the model has num_classes={num_classes}; "
                        f"set model.kwargs.num_classes or use the matching dataset")
    y = train.labels
    for src in (train, test, val):
        if src is not None and len(src) and (int(src.labels.min()) < 0 or int(src.labels.max()) >= num_classes):
            raise DataError(f"labels must be in 0..{num_classes - 1}, got {int(src.labels.min())}.."
                            f"{int(src.labels.max())}")
    missing = sorted(set(range(num_classes)) - set(y.tolist()))
    if missing:
        raise DataError(f"no training images for class(es) {', '.join(classes[i] for i in missing)}; "
                        f"every class needs images")
    # one pixel store for every image; the splits are rows of it
    parts = [train] + [s for s in (test, val) if s is not None]
    offsets = np.cumsum([0] + [len(s) for s in parts])
    pixels = build_pixels(_concat(parts) if len(parts) > 1 else train, spec, d, bars)
    rows = np.arange(len(train))
    cap = d.max_images_per_class
    if cap:
        keep = np.sort(np.concatenate([np.flatnonzero(y == c)[:cap] for c in range(num_classes)]))
        rows, y = rows[keep], y[keep]
        base = None if base is None else base[keep]
    if test is None:
        rest, te = _stratified(y, d.test_fraction, seed, base)
        test_rows, test_y = rows[te], y[te]
        rows, y = rows[rest], y[rest]
        base = None if base is None else base[rest]
    else:
        test_rows, test_y = np.arange(offsets[1], offsets[2]), test.labels
    val_source = "folder"
    if val is None:
        val_source = "carved"
        rest, va = _stratified(y, d.val_fraction, seed + 2, base)
        val_rows, val_y = rows[va], y[va]
        rows, y = rows[rest], y[rest]
        base = None if base is None else base[rest]
    else:
        val_rows, val_y = np.arange(offsets[2], offsets[3]), val.labels
    if d.fusion_fraction > 0:
        ft, fu = _stratified(y, d.fusion_fraction, seed + 1, base)
    else:  # no fusion split: the fusion head fits on the fine-tune split (see fuse.fit_fusion)
        ft, fu = np.arange(len(y)), np.arange(0)

    def split(r, labels):
        return Split(Images(pixels, r, spec), torch.as_tensor(np.asarray(labels), dtype=torch.long))
    return Data(classes=classes, finetune=split(rows[ft], y[ft]), fusion=split(rows[fu], y[fu]),
                val=split(val_rows, val_y), test=split(test_rows, test_y), spec=spec, val_source=val_source)


def input_spec(model, recipe_data: DataCfg) -> dict:
    """The manifest's input spec: timm's data config for the model, the recipe's data section winning."""
    from .transforms import resolve_input_spec

    overrides = {k: getattr(recipe_data, k) for k in ("mean", "std", "interpolation", "crop_pct", "crop_mode")}
    return resolve_input_spec(model, overrides, where="recipe data")
