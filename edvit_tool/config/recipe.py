"""The compile recipe: YAML → validated nested dict with defaults, every problem reported with its path.

A schema is a nested dict of `Field`s; `validate` walks YAML and schema together, collecting every problem
(unknown key with the valid ones, wrong type, out of range) before raising one RecipeError.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from typing import Any, Callable

import yaml

from ..errors import RecipeError
from .yamlfile import read_yaml


@dataclasses.dataclass
class Field:
    types: tuple            # accepted Python types (int is accepted where float is)
    default: Any = None
    check: Callable[[Any], bool] | None = None
    expect: str = ""         # human text for the check, e.g. "in (0, 1]"
    choices: tuple | None = None
    nullable: bool = False


def _num(lo=None, hi=None, lo_open=False, hi_open=False):
    def ok(v):
        if lo is not None and (v <= lo if lo_open else v < lo):
            return False
        if hi is not None and (v >= hi if hi_open else v > hi):
            return False
        return True
    lb = "(" if lo_open else "["
    rb = ")" if hi_open else "]"
    text = f"in {lb}{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}{rb}"
    return ok, text


def F(types, default=None, rng=None, choices=None, nullable=False):
    check, expect = (rng if rng else (None, ""))
    if not isinstance(types, tuple):
        types = (types,)
    return Field(types, default, check, expect, choices, nullable)


FORMATS = ("onnx", "tflite")
QUANTS = ("fp32", "fp16", "int8-dynamic", "int8-static")
RATIO = _num(0, 1, lo_open=True)
POS = _num(1)
NONNEG = _num(0)
FRACTION = _num(0, 1, lo_open=True, hi_open=True)

SCHEMA: dict = {
    "name": F(str, "edvit-build"),
    "seed": F(int, 0, NONNEG),
    "device": F(str, "auto", choices=("auto", "cpu", "cuda")),
    "threads": F(int, 0, NONNEG),  # torch intra-op threads on CPU; 0 = torch's default
    "model": {
        "name": F(str, "vit_tiny_patch16_224"),
        "kwargs": F(dict, {}),
        "checkpoint": F(str, None, nullable=True),
        "classes": F(str, None, nullable=True),
    },
    "data": {
        "kind": F(str, "digits", choices=("digits", "imagefolder", "npz")),
        "root": F(str, None, nullable=True),
        "distort": F(bool, False),
        "distort_copies": F(int, 1, _num(1, 20)),  # distorted views per digit (digits + distort only)
        "test_fraction": F(float, 0.2, FRACTION),
        "fusion_fraction": F(float, 0.0, _num(0, 1, hi_open=True)),  # 0: fusion heads fit on the fine-tune split
        # validation: every choice compile makes (gate, float fallback, fusion kind, early stopping) is made here
        "val_fraction": F(float, 0.15, FRACTION),
        "val_samples": F(int, 1000, POS),      # cap on the validation images the export gate runs
        "check_labels": F(bool, True),         # stop when the checkpoint's head order does not fit the labels
        "mean": F(list, None, nullable=True),
        "std": F(list, None, nullable=True),
        # eval transform overrides (else the checkpoint's timm pretrained cfg): resize by crop_pct, centre crop
        "interpolation": F(str, None, nullable=True,
                           choices=("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")),
        "crop_pct": F(float, None, _num(0, 4, lo_open=True), nullable=True),
        "crop_mode": F(str, None, nullable=True, choices=("center", "squash", "border")),
        # decoded images at model resolution: in RAM up to this size, else a cache file read per batch
        "ram_cache_mb": F(int, 1024, NONNEG),
        "cache_dir": F(str, None, nullable=True),   # default $EDVIT_CACHE_DIR or ~/.cache/edvit-tool
        "workers": F(int, 2, NONNEG),               # DataLoader workers decoding image files
        "max_images_per_class": F(int, None, POS, nullable=True),
        "eval_samples": F(int, 1000, POS),
    },
    "split": {
        "groups": F(int, 4, _num(1)),
        "strategy": F(str, "balanced", choices=("balanced", "similarity")),
        # heterogeneous boards: size group i's sub-model (and class count) for board i (compile/sizing.py)
        "boards": F(str, None, nullable=True),         # boards.yaml
        "profiles": F(str, None, nullable=True),       # profiles.json of a ladder build on those boards
        "latency_stat": F(str, "p50", choices=("p50", "mean")),
        "variant": F(str, None, nullable=True),        # format/quant the latency models use (default: most profiled)
    },
    "prune": {
        "criterion": F(str, "taylor", choices=("taylor", "magnitude")),
        "target": {
            "params_ratio": F(float, 0.25, RATIO, nullable=True),
            "keep": {
                "heads": F(float, None, RATIO, nullable=True),
                "mlp": F(float, None, RATIO, nullable=True),
                "embed": F(float, None, RATIO, nullable=True),
            },
        },
        "prune_embed": F(bool, True),
        "steps": F(int, 3, _num(1, 20)),
        "importance_batches": F(int, 8, POS),
        # share of "other" classes' images in a sub-model's importance batches (0 = its own classes only)
        "importance_other": F(float, 0.0, _num(0, 1, hi_open=True)),
        "recovery_steps": F(int, 100, NONNEG),
        # shared trunk: this fraction of the ensemble's steps trains one class-agnostic student at shared_size x
        # the sub-model budget; each sub-model is pruned class-wise from it (0 = from the original)
        "shared_fraction": F(float, 0.5, _num(0, 1, hi_open=True)),
        "shared_size": F(float, 2.0, _num(1, 100)),
    },
    "finetune": {
        "steps": F(int, 600, NONNEG),
        "batch_size": F(int, 64, POS),
        "lr": F(float, 1e-3, _num(0, 1, lo_open=True)),
        "weight_decay": F(float, 0.05, NONNEG),
        "kd_weight": F(float, 0.7, _num(0, 1)),
        "temperature": F(float, 2.0, _num(0, lo_open=True)),
        "other_fraction": F(float, 0.5, FRACTION),
        "other_target": F(str, "sum", choices=("sum", "max")),  # teacher's "other": folded mass or best rival
        "aux_weight": F(float, 1.0, NONNEG),       # N-class KD head on the features (goes into the fusion head)
        "feature_weight": F(float, 1.0, NONNEG),   # distil the original's pooled features
        "warmup_fraction": F(float, 0.05, _num(0, 0.5)),
        "clip_grad": F(float, 1.0, NONNEG),        # 0 = no clipping
        # share of each sub-model's fine-tune steps spent in the joint phase: all sub-models + the fusion MLP
        # trained together on the fused loss (one joint step = K sub-model steps, so compute is unchanged)
        "joint_fraction": F(float, 1.0, _num(0, 1)),
        "joint_fusion_weight": F(float, 1.0, NONNEG),
        "joint_lr": F(float, None, _num(0, 1, lo_open=True), nullable=True),  # null: finetune.lr
        # keep the best of peer.evals checkpoints on the validation split: shared trunk and joint phase
        "early_stopping": F(bool, False),
    },
    "peer": {
        "compute": F(str, "ensemble", choices=("ensemble", "submodel")),  # steps: K sub-models' or one's
        "evals": F(int, 10, NONNEG),               # early-stopping evaluations on the validation split
    },
    "fusion": {
        "kind": F(str, "auto", choices=("auto", "mlp", "joint", "logits", "ensemble")),
        "hidden": F(int, 128, POS),
        "dropout": F(float, 0.3, _num(0, 1, hi_open=True)),
        "submodel_dropout": F(float, 0.2, _num(0, 1, hi_open=True)),
        "feature_noise": F(float, 0.1, NONNEG),
        "fit_samples": F(int, 4000, POS),    # data.fusion_fraction 0: fine-tune images the heads are fitted on
        "augment_views": F(int, 4, NONNEG),  # shifted copies of the fusion split added to its training set
        "kd_weight": F(float, 0.5, _num(0, 1)),
        "steps": F(int, 1500, NONNEG),
        "lr": F(float, 3e-3, _num(0, 1, lo_open=True)),
        "weight_decay": F(float, 0.05, NONNEG),
    },
    "export": {
        "formats": F(list, [], choices=FORMATS),
        "quant": F(list, ["fp32"], choices=QUANTS),
        "opset": F(int, 17, _num(17, 23)),
        "simplify": F(str, "onnxslim", choices=("onnxslim", "onnxsim", "none")),
        "calibration_samples": F(int, 64, POS),
        "reference_samples": F(int, 16, POS),
    },
    "gate": {
        "max_accuracy_drop_pp": F(float, 1.0, NONNEG),
        "max_quant_drop_pp": F(float, 0.5, NONNEG),
    },
}


def _type_name(types: tuple) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true/false", list: "a list",
             dict: "a mapping"}
    return " or ".join(names.get(t, t.__name__) for t in types)


def _check_value(field: Field, value, path: str, problems: list[str]):
    if value is None:
        if not field.nullable:
            problems.append(f"{path} must be {_type_name(field.types)}, got null")
        return value
    types = field.types
    if float in types and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(value, bool) and bool not in types or not isinstance(value, types):
        problems.append(f"{path} must be {_type_name(types)}, got {value!r}")
        return value
    if field.choices is not None:
        items = value if isinstance(value, list) else [value]
        for item in items:
            if item not in field.choices:
                problems.append(f"{path} must be one of {', '.join(field.choices)}, got {item!r}")
    if field.check is not None and not field.check(value):
        problems.append(f"{path} must be {field.expect}, got {value!r}")
    return value


def _walk(schema: dict, data, path: str, problems: list[str]) -> dict:
    out = {}
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.append(f"{path or 'recipe'} must be a mapping, got {type(data).__name__}")
        data = {}
    for key in data:
        if key not in schema:
            where = f"{path}.{key}" if path else str(key)
            problems.append(f"unknown key {where} (valid: {', '.join(schema)})")
    for key, spec in schema.items():
        where = f"{path}.{key}" if path else key
        if isinstance(spec, dict):
            out[key] = _walk(spec, data.get(key), where, problems)
        elif key in data:
            out[key] = _check_value(spec, data[key], where, problems)
        else:
            out[key] = copy.deepcopy(spec.default)
    return out


def _set_dotted(data: dict, dotted: str, value) -> None:
    node = data
    parts = dotted.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise RecipeError(f"override {dotted}: {p} is not a section")
    node[parts[-1]] = value


def validate(raw: dict, source: str = "recipe", overrides: dict | None = None) -> dict:
    """Validated recipe with defaults; overrides are dotted keys (CLI flags) applied before validation."""
    data = copy.deepcopy(raw) if raw else {}
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(data, dotted, value)
    problems: list[str] = []
    recipe = _walk(SCHEMA, data, "", problems)
    _cross_checks(recipe, problems)
    if problems:
        raise RecipeError(f"{source}: " + "; ".join(problems))
    return recipe


def _cross_checks(r: dict, problems: list[str]) -> None:
    keep = r["prune"]["target"]["keep"]
    if any(v is not None for v in keep.values()):
        r["prune"]["target"]["params_ratio"] = None
    elif r["prune"]["target"]["params_ratio"] is None:
        problems.append("prune.target needs params_ratio or keep.{heads,mlp,embed}")
    if r["data"]["kind"] in ("imagefolder", "npz") and not r["data"]["root"]:
        problems.append(f"data.root is required for data.kind={r['data']['kind']} (a folder or .npz path)")
    d = r["data"]
    if d["test_fraction"] + d["fusion_fraction"] + d["val_fraction"] >= 0.9:
        problems.append("data.test_fraction + data.fusion_fraction + data.val_fraction must leave at least 10 % "
                        "for fine-tuning")
    for key in ("mean", "std"):
        vals = r["data"][key]
        if vals is not None and not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
            problems.append(f"data.{key} must be a list of numbers, got {vals!r}")
        if key == "std" and vals and any(v <= 0 for v in vals if isinstance(v, (int, float))):
            problems.append(f"data.std must be > 0, got {vals!r}")


def load(path: str, overrides: dict | None = None) -> dict:
    """Read a YAML recipe; relative paths inside it resolve against the recipe's folder."""
    if not os.path.isfile(path):
        raise RecipeError(f"{path}: recipe file not found; pass an existing YAML file to --recipe")
    raw = read_yaml(path)
    recipe = validate(raw or {}, source=path, overrides=overrides)
    base = os.path.dirname(os.path.abspath(path))
    for section, key in (("model", "checkpoint"), ("model", "classes"), ("data", "root"), ("split", "boards"),
                         ("split", "profiles")):
        value = recipe[section][key]
        if value and not os.path.isabs(value) and not os.path.exists(value):
            candidate = os.path.join(base, value)
            if os.path.exists(candidate):
                recipe[section][key] = candidate
    return recipe


def dump(recipe: dict) -> str:
    return yaml.safe_dump(recipe, sort_keys=False)
