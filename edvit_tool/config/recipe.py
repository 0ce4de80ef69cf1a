"""The compile recipe: YAML → a typed `Recipe` (one dataclass per section) with defaults, every problem reported
with its path.

The section classes are the schema: each field's annotation gives the accepted types (`X | None`: null allowed)
and `F(default, range, choices)` its default and checks. `validate` walks YAML and the classes together,
collecting every problem (unknown key with the valid ones, wrong type, out of range) before raising one
RecipeError; overrides (`--set a.b=c`, CLI flags) are applied to the YAML mapping before that. `Recipe.to_dict()`
is the plain mapping the manifest, recipe.resolved.yaml and the resume fingerprint are made from.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable

import yaml

from ..errors import RecipeError
from .yamlfile import read_yaml


@dataclass
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


def F(default=None, rng=None, choices=None):
    """A recipe field: its default, an optional (check, text) range and allowed values. Lists and mappings get a
    fresh copy per recipe."""
    meta = {"rng": rng, "choices": choices}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def section(cls):
    """A nested section: built with its own defaults."""
    return dataclasses.field(default_factory=cls)


FORMATS = ("onnx", "tflite")
QUANTS = ("fp32", "fp16", "int8-dynamic", "int8-static")
RATIO = _num(0, 1, lo_open=True)
POS = _num(1)
NONNEG = _num(0)
FRACTION = _num(0, 1, lo_open=True, hi_open=True)


class Section:
    """Shared by every section class: to_dict / from_dict (plain mappings, field order = schema order)."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict):
        """From an already validated mapping (validate() output, or a to_dict() copy): no checks here."""
        hints = _hints(cls)
        kw = {}
        for f in dataclasses.fields(cls):
            v = data[f.name]
            kw[f.name] = hints[f.name].from_dict(v) if _is_section(hints[f.name]) else copy.deepcopy(v)
        return cls(**kw)


@dataclass
class ModelCfg(Section):
    name: str = F("vit_tiny_patch16_224")
    kwargs: dict = F({})
    checkpoint: str | None = F(None)
    classes: str | None = F(None)


@dataclass
class DataCfg(Section):
    kind: str = F("digits", choices=("digits", "imagefolder", "npz"))
    root: str | None = F(None)
    distort: bool = F(False)
    distort_copies: int = F(1, _num(1, 20))  # distorted views per digit (digits + distort only)
    test_fraction: float = F(0.2, FRACTION)
    fusion_fraction: float = F(0.0, _num(0, 1, hi_open=True))  # 0: fusion heads fit on the fine-tune split
    # validation: every choice compile makes (gate, float fallback, fusion kind, early stopping) is made here
    val_fraction: float = F(0.15, FRACTION)
    val_samples: int = F(1000, POS)      # cap on the validation images the export gate runs
    check_labels: bool = F(True)         # stop when the checkpoint's head order does not fit the labels
    mean: list | None = F(None)
    std: list | None = F(None)
    # eval transform overrides (else the checkpoint's timm pretrained cfg): resize by crop_pct, centre crop
    interpolation: str | None = F(None, choices=("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos"))
    crop_pct: float | None = F(None, _num(0, 4, lo_open=True))
    crop_mode: str | None = F(None, choices=("center", "squash", "border"))
    # decoded images at model resolution: in RAM up to this size, else a cache file read per batch
    ram_cache_mb: int = F(1024, NONNEG)
    cache_dir: str | None = F(None)   # default $EDVIT_CACHE_DIR or ~/.cache/edvit-tool
    workers: int = F(2, NONNEG)       # DataLoader workers decoding image files
    max_images_per_class: int | None = F(None, POS)
    eval_samples: int = F(1000, POS)


@dataclass
class SplitCfg(Section):
    groups: int = F(4, _num(1))
    strategy: str = F("balanced", choices=("balanced", "similarity"))
    # sub-model views: sub-model i sees the image moved by its own fixed offset of this many pixels (sub-model 0
    # the plain image), so the K boards' errors decorrelate and the fusion head averages them out. null = auto
    # (max(1, patch_size / 8) px, twice that when K > 5: partition.auto_view_shift), 0 = every sub-model sees the
    # plain image
    view_shift: int | None = F(None, NONNEG)
    # heterogeneous boards: size group i's sub-model (and class count) for board i (compile/sizing.py)
    boards: str | None = F(None)         # boards.yaml
    profiles: str | None = F(None)       # profiles.json of a ladder build on those boards
    latency_stat: str = F("p50", choices=("p50", "mean"))
    variant: str | None = F(None)        # format/quant the latency models use (default: most profiled)


@dataclass
class KeepCfg(Section):
    heads: float | None = F(None, RATIO)
    mlp: float | None = F(None, RATIO)
    embed: float | None = F(None, RATIO)


@dataclass
class PruneTargetCfg(Section):
    params_ratio: float | None = F(0.25, RATIO)
    keep: KeepCfg = section(KeepCfg)


@dataclass
class PruneCfg(Section):
    criterion: str = F("taylor", choices=("taylor", "magnitude"))
    target: PruneTargetCfg = section(PruneTargetCfg)
    prune_embed: bool = F(True)
    steps: int = F(3, _num(1, 20))
    importance_batches: int = F(8, POS)
    # share of "other" classes' images in a sub-model's importance batches (0 = its own classes only)
    importance_other: float = F(0.0, _num(0, 1, hi_open=True))
    recovery_steps: int = F(100, NONNEG)
    # shared trunk: this fraction of the ensemble's steps trains one class-agnostic student at shared_size x
    # the sub-model budget; each sub-model starts from it with the rest (0 = pruned from the original) and is
    # pruned class-wise from it when the trunk is bigger than its budget. At shared_size 1 (the default) a
    # sub-model is not pruned again (only smaller budgets, compile --boards, are): the trunk takes most of the
    # compute and the sub-models specialise from it at finetune.branch_lr_scale x the learning rate. Measured
    # ahead of the session-6 defaults (shared_size 2, shared_fraction 0.5) on the accuracy suite (README)
    shared_fraction: float = F(0.8, _num(0, 1, hi_open=True))
    shared_size: float = F(1.0, _num(1, 100))


@dataclass
class FinetuneCfg(Section):
    steps: int = F(600, NONNEG)
    batch_size: int = F(64, POS)
    lr: float = F(1e-3, _num(0, 1, lo_open=True))
    weight_decay: float = F(0.05, NONNEG)
    kd_weight: float = F(0.7, _num(0, 1))
    temperature: float = F(2.0, _num(0, lo_open=True))
    other_fraction: float = F(0.5, FRACTION)
    other_target: str = F("sum", choices=("sum", "max"))  # teacher's "other": folded mass or best rival
    aux_weight: float = F(1.0, NONNEG)       # N-class KD head on the features (goes into the fusion head)
    feature_weight: float = F(1.0, NONNEG)   # distil the original's pooled features
    warmup_fraction: float = F(0.05, _num(0, 0.5))
    clip_grad: float = F(1.0, NONNEG)        # 0 = no clipping
    # timm's training transform on every training batch (random-resized-crop, flip, RandAugment...: keys of
    # transforms.TRAIN_DEFAULTS, {} = timm's defaults) with the teacher run on the augmented batch; null = a
    # 1-px shift and the teacher's outputs cached per image
    augment: dict | None = F(None)
    # share of each sub-model's fine-tune steps spent in the joint phase: all sub-models + the fusion MLP
    # trained together on the fused loss (one joint step = K sub-model steps, so compute is unchanged)
    joint_fraction: float = F(1.0, _num(0, 1))
    joint_fusion_weight: float = F(1.0, NONNEG)
    joint_lr: float | None = F(None, _num(0, 1, lo_open=True))  # null: lr x branch_lr_scale with a trunk
    # learning rate of every phase of a sub-model started from the shared trunk (its recoveries, the joint
    # phase), as a fraction of lr: the trunk ends its schedule near a minimum that a full-rate restart leaves
    branch_lr_scale: float = F(0.2, _num(0, 1, lo_open=True))
    # keep the best of peer.evals checkpoints on the validation split: shared trunk and joint phase
    early_stopping: bool = F(False)


@dataclass
class PeerCfg(Section):
    compute: str = F("ensemble", choices=("ensemble", "submodel"))  # steps: K sub-models' or one's
    evals: int = F(10, NONNEG)               # early-stopping evaluations on the validation split
    # train the peer in a second process beside the ensemble: auto = on a CPU with cores for both (at least
    # twice `threads`) and --jobs 1; the peer is the same either way
    parallel: str = F("auto", choices=("auto", "always", "never"))


@dataclass
class FusionCfg(Section):
    kind: str = F("auto", choices=("auto", "mlp", "joint", "logits", "ensemble"))
    hidden: int = F(128, POS)
    dropout: float = F(0.3, _num(0, 1, hi_open=True))
    submodel_dropout: float = F(0.2, _num(0, 1, hi_open=True))
    feature_noise: float = F(0.1, NONNEG)
    fit_samples: int = F(4000, POS)    # data.fusion_fraction 0: fine-tune images the heads are fitted on
    augment_views: int = F(4, NONNEG)  # shifted copies of the fusion split added to its training set
    kd_weight: float = F(0.5, _num(0, 1))
    steps: int = F(1500, NONNEG)
    lr: float = F(3e-3, _num(0, 1, lo_open=True))
    weight_decay: float = F(0.05, NONNEG)


@dataclass
class ExportCfg(Section):
    formats: list = F([], choices=FORMATS)
    quant: list = F(["fp32"], choices=QUANTS)
    opset: int = F(17, _num(17, 23))
    simplify: str = F("onnxslim", choices=("onnxslim", "onnxsim", "none"))
    calibration_samples: int = F(64, POS)
    # ONNX int8-static activation ranges: a percentile of the calibration images' histogram (CALIBRATION_PERCENTILE;
    # clips rare outliers), min/max over them, or the entropy (KL) optimum. TFLite: min/max. Session 11
    # (bench/results/int8_gate.json, 12 K = 4 / K = 10 suite builds): percentile's validation drop against fp32 was
    # better on 5 builds and equal on 7 (mean -0.08 vs -0.23 pp) at the same agreement and file size
    calibration_method: str = F("percentile", choices=("minmax", "percentile", "entropy"))
    # ONNX int8-static: quantise only the weight ops and their inputs (MatMul, Gemm, Conv: "weights"; layernorm,
    # softmax, GELU and the residual adds stay float) or every op ("all"). The weights are int8 either way. Session
    # 8 (bench/results/int8_gate.json, 10 builds): weights tied all on validation (-0.25 vs -0.30 pp against
    # fp32), and its sub-models ran 3x faster (0.41 vs 1.21 ms; fp32 0.54-0.58) at the same size
    int8_ops: str = F("weights", choices=("all", "weights"))
    # int8 layer groups the gate keeps out of int8 compute: activations float with int8 weights ("weights": the file
    # stays int8-sized, those ops run at float speed) or entirely float ("float", sessions 2-9)
    int8_fallback: str = F("weights", choices=("weights", "float"))
    reference_samples: int = F(16, POS)


@dataclass
class GateCfg(Section):
    max_accuracy_drop_pp: float = F(1.0, NONNEG)
    max_quant_drop_pp: float = F(0.5, NONNEG)
    # a quantised variant's fused answers must equal its format's fp32 on at least this share of the validation
    # images (0 = off). The net drop alone let int8 change 1-3 % of the answers as long as about as many flipped
    # each way on validation; on held-out images such a variant lost up to 1.15 pp (session 10, K = 10 builds).
    # Bounding the changed answers bounds that noise: at 1 % of n held-out images it is ~sqrt(0.01 / n)
    min_quant_agreement: float = F(0.99, _num(0, 1))


@dataclass
class Recipe(Section):
    name: str = F("edvit-build")
    seed: int = F(0, NONNEG)
    device: str = F("auto", choices=("auto", "cpu", "cuda"))
    threads: int = F(0, NONNEG)  # torch intra-op threads on CPU; 0 = torch's default
    model: ModelCfg = section(ModelCfg)
    data: DataCfg = section(DataCfg)
    split: SplitCfg = section(SplitCfg)
    prune: PruneCfg = section(PruneCfg)
    finetune: FinetuneCfg = section(FinetuneCfg)
    peer: PeerCfg = section(PeerCfg)
    fusion: FusionCfg = section(FusionCfg)
    export: ExportCfg = section(ExportCfg)
    gate: GateCfg = section(GateCfg)


@functools.lru_cache(maxsize=None)
def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _is_section(tp) -> bool:
    return isinstance(tp, type) and issubclass(tp, Section)


@functools.lru_cache(maxsize=None)
def _spec(cls) -> dict:
    """{name: section class | Field} for `cls`, in field order: the schema validate() walks."""
    out = {}
    for f in dataclasses.fields(cls):
        tp = _hints(cls)[f.name]
        if _is_section(tp):
            out[f.name] = tp
            continue
        args = typing.get_args(tp) if isinstance(tp, types.UnionType) else (tp,)
        accepted = tuple(typing.get_origin(a) or a for a in args if a is not type(None))
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        check, expect = f.metadata["rng"] or (None, "")
        out[f.name] = Field(accepted, default, check, expect, f.metadata["choices"], type(None) in args)
    return out


def _type_name(types_: tuple) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true/false", list: "a list",
             dict: "a mapping"}
    return " or ".join(names.get(t, t.__name__) for t in types_)


def _check_value(field: Field, value, path: str, problems: list[str]):
    if value is None:
        if not field.nullable:
            problems.append(f"{path} must be {_type_name(field.types)}, got null")
        return value
    types_ = field.types
    if float in types_ and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(value, bool) and bool not in types_ or not isinstance(value, types_):
        expect = (f"one of {', '.join(map(str, field.choices))}" if field.choices is not None and str in types_
                  else _type_name(types_))
        yaml_bool = isinstance(value, bool) and str in types_  # YAML 1.1 reads a bare yes/no/on/off as true/false
        hint = " (quote it: YAML reads bare yes/no/on/off as true/false)" if yaml_bool else ""
        problems.append(f"{path} must be {expect}, got {value!r}{hint}")
        return value
    if field.choices is not None:
        items = value if isinstance(value, list) else [value]
        for item in items:
            if item not in field.choices:
                problems.append(f"{path} must be one of {', '.join(field.choices)}, got {item!r}")
    if field.check is not None and not field.check(value):
        problems.append(f"{path} must be {field.expect}, got {value!r}")
    return value


def _walk(cls, data, path: str, problems: list[str]) -> dict:
    schema = _spec(cls)
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
        if not isinstance(spec, Field):
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


def _validated_dict(raw: dict, source: str, overrides: dict | None) -> dict:
    data = copy.deepcopy(raw) if raw else {}
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(data, dotted, value)
    problems: list[str] = []
    recipe = _walk(Recipe, data, "", problems)
    _cross_checks(recipe, problems)
    if problems:
        raise RecipeError(f"{source}: " + "; ".join(problems))
    return recipe


def validate(raw: dict, source: str = "recipe", overrides: dict | None = None) -> Recipe:
    """Validated recipe with defaults; overrides are dotted keys (CLI flags) applied before validation."""
    return Recipe.from_dict(_validated_dict(raw, source, overrides))


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


def load(path: str, overrides: dict | None = None) -> Recipe:
    """Read a YAML recipe; relative paths inside it resolve against the recipe's folder."""
    if not os.path.isfile(path):
        raise RecipeError(f"{path}: recipe file not found; pass an existing YAML file to --recipe")
    raw = read_yaml(path)
    recipe = _validated_dict(raw or {}, path, overrides)
    base = os.path.dirname(os.path.abspath(path))
    for section_, key in (("model", "checkpoint"), ("model", "classes"), ("data", "root"), ("split", "boards"),
                          ("split", "profiles")):
        value = recipe[section_][key]
        if value and not os.path.isabs(value) and not os.path.exists(value):
            candidate = os.path.join(base, value)
            if os.path.exists(candidate):
                recipe[section_][key] = candidate
    return Recipe.from_dict(recipe)


def dump(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.to_dict(), sort_keys=False)
