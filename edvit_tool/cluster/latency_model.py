"""Per-board latency model: a pruned ViT structure's single-image latency from FLOP-like terms (pure numpy).

    terms = structure_terms(arch, geometry)            # one row of TERMS
    model = LatencyModel.fit(rows, ms)                 # non-negative least squares on relative error
    model.predict(structure_terms(other_arch, geometry))

Why these terms: an interpreter's time for one image is a fixed cost (invoke, input copy), a cost per operator
(each kept attention / MLP branch adds a handful of kernels), the matmul multiply-accumulates (patch embedding,
qkv, proj, fc1, fc2, head: they scale with tokens x embed x width), the attention matmuls (tokens^2 x heads), and
elementwise work (norms, GELU, softmax, residual adds). Coefficients are >= 0 (scipy's NNLS), so a model fitted on
a few structures stays monotone in every width and cannot predict a negative time. Rows are weighted by 1/ms, so
the fit minimises relative error: small and large structures count alike.

`fit_boards` gives every board a model: its own fit when it has at least MIN_OWN distinct profiled structures
spanning a range of sizes (a ladder, not K near-identical sub-models of one uniform build);
else a shape fitted on all boards' samples (each board's times divided by its speed) times its own measured
scale; a board without measurements gets the shape times the speed ratio of its device profile (`speed`).
"""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np

TERMS = ("fixed", "branches", "linear_mmacs", "attention_mmacs", "elementwise_m")
MIN_OWN = len(TERMS) + 1
# Used only when nothing at all was measured: an effective rate for one Cortex-A72-class core, so that sizes come
# out in proportion to the boards' speed factors (the absolute figure is then a rough estimate, labelled so).
DEFAULT_MMACS_PER_MS = 1.0


@dataclasses.dataclass(frozen=True)
class Geometry:
    """What, besides the per-block sizes, fixes a ViT's work per image."""
    tokens: int          # patches + prefix (class / register) tokens
    patches: int
    patch_in: int        # in_chans x patch height x patch width

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def geometry_of_model(model) -> Geometry:
    pe = model.patch_embed
    k = pe.proj.kernel_size
    patches = int(pe.num_patches)
    return Geometry(patches + int(model.num_prefix_tokens), patches, int(pe.proj.in_channels * k[0] * k[1]))


def geometry_of_manifest(manifest: dict) -> Geometry:
    """From a build manifest: input [C, H, W], the model's patch size (kwargs, else `patchNN` in its name) and
    its prefix tokens (one class token unless kwargs say otherwise)."""
    g = manifest.get("geometry")
    if isinstance(g, dict) and all(isinstance(g.get(k), int) for k in ("tokens", "patches", "patch_in")):
        return Geometry(g["tokens"], g["patches"], g["patch_in"])
    m = manifest.get("model") or {}
    kw = m.get("kwargs") or {}
    c, h, w = manifest["input"]["shape"]
    patch = kw.get("patch_size")
    if patch is None:
        found = re.search(r"patch(\d+)", str(m.get("name", "")))
        patch = int(found.group(1)) if found else 16
    ph, pw = (patch, patch) if isinstance(patch, int) else patch
    patches = (h // ph) * (w // pw)
    prefix = (0 if kw.get("class_token") is False else 1) + int(kw.get("reg_tokens", 0))
    return Geometry(patches + prefix, patches, int(c * ph * pw))


def structure_terms(arch: dict, geo: Geometry) -> np.ndarray:
    """One row of TERMS for a structure (vit_arch's dict: embed_dim, head_dim, heads[], mlp_hidden[],
    num_outputs). MACs in millions, elementwise values in millions."""
    t, e, hd = geo.tokens, arch["embed_dim"], arch["head_dim"]
    branches = linear = attn = elem = 0.0
    linear += geo.patches * geo.patch_in * e + e * arch.get("num_outputs", 0)
    elem += t * e  # final norm
    for h, m in zip(arch["heads"], arch["mlp_hidden"]):
        if h:
            a = h * hd
            branches += 1
            linear += t * e * 4 * a          # qkv (3) + proj (1)
            attn += 2 * t * t * a            # scores + weighted sum
            elem += 2 * t * e + t * t * h    # norm + residual, softmax
        if m:
            branches += 1
            linear += 2 * t * e * m          # fc1 + fc2
            elem += 2 * t * e + t * m        # norm + residual, GELU
    return np.array([1.0, branches, linear / 1e6, attn / 1e6, elem / 1e6])


@dataclasses.dataclass
class LatencyModel:
    """ms = coef . terms; `source` says where the coefficients came from (fitted / scaled / speed / default)."""
    coef: np.ndarray
    source: str = "fitted"
    samples: int = 0
    note: str = ""

    @classmethod
    def fit(cls, rows, ms) -> "LatencyModel":
        from scipy.optimize import nnls

        x = np.asarray(rows, dtype=np.float64)
        y = np.asarray(ms, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
            raise ValueError("need one terms row per latency")
        if not np.all(np.isfinite(y)) or np.any(y <= 0):
            raise ValueError("latencies must be finite and > 0")
        w = 1.0 / y
        scale = np.maximum(np.abs(x).max(axis=0), 1e-12)  # columns to ~1 for a well-conditioned NNLS
        coef, _ = nnls((x / scale) * w[:, None], y * w)
        return cls(coef / scale, "fitted", int(x.shape[0]))

    def predict(self, terms) -> float | np.ndarray:
        return np.asarray(terms, dtype=np.float64) @ self.coef

    def scaled(self, factor: float, source: str, note: str = "") -> "LatencyModel":
        return LatencyModel(self.coef * factor, source, self.samples, note)

    def to_dict(self) -> dict:
        return {"terms": list(TERMS), "coef": [float(c) for c in self.coef], "source": self.source,
                "samples": self.samples, "note": self.note}


def relative_errors(model: LatencyModel, rows, ms) -> np.ndarray:
    """(predicted - measured) / measured per held-out structure."""
    y = np.asarray(ms, dtype=np.float64)
    return (model.predict(np.asarray(rows, dtype=np.float64)) - y) / y


def _distinct(samples):
    """Average repeated measurements of one structure (same terms row): they are one point, not several."""
    by_row: dict[tuple, list[float]] = {}
    for row, ms in samples:
        by_row.setdefault(tuple(np.round(np.asarray(row, dtype=np.float64), 9)), []).append(float(ms))
    return [np.array(k) for k in by_row], [float(np.median(v)) for v in by_row.values()]


def _spans(rows, ratio: float = 1.5) -> bool:
    """Do the structures differ enough in size to fit more than a scale? (K near-identical sub-models of one
    uniform build do not: a fit on them would extrapolate from noise.)"""
    work = [float(r[TERMS.index("linear_mmacs")]) for r in rows]
    return min(work) > 0 and max(work) / min(work) >= ratio


def fit_boards(samples: dict[str, list], speeds: dict[str, float] | None = None) -> dict[str, LatencyModel]:
    """A LatencyModel for every board in `speeds` (and every board with samples).

    samples: board -> [(terms row, ms), ...]; speeds: board -> relative speed from its device profile (higher
    is faster; used only for boards without measurements).
    """
    speeds = dict(speeds or {})
    boards = list(dict.fromkeys(list(speeds) + list(samples)))
    pts = {b: _distinct(samples.get(b) or []) for b in boards}
    measured = [b for b in boards if pts[b][0]]
    out: dict[str, LatencyModel] = {}
    for b in measured:
        rows, ms = pts[b]
        if len(rows) >= MIN_OWN and _spans(rows):
            out[b] = LatencyModel.fit(rows, ms)
    shape, scale = _shared_shape(pts, measured)
    for b in measured:
        if b in out:
            continue
        rows, ms = pts[b]
        ratio = float(np.median(np.asarray(ms) / shape.predict(np.asarray(rows))))
        out[b] = shape.scaled(ratio, "scaled", f"shape fitted on all boards x this board's scale "
                                               f"({len(rows)} structure(s) measured, {MIN_OWN} needed for its own fit)")
    for b in boards:
        if b in out:
            continue
        sp = speeds.get(b) or 1.0
        if measured:
            ref = [s for s in measured if speeds.get(s)]
            # a measured board's scale per unit of its speed, carried over to this board's speed
            per_speed = float(np.median([scale[s] * speeds[s] for s in ref])) if ref else float(np.median(
                [scale[s] for s in measured]))
            out[b] = shape.scaled(per_speed / sp, "speed", "not measured: the measured boards' model x the "
                                                           "ratio of device-profile speeds")
        else:
            out[b] = shape.scaled(1.0 / sp, "default", "nothing measured: MACs at a default rate / "
                                                       "device-profile speed (an estimate)")
    return out


def _shared_shape(pts: dict, measured: list[str]) -> tuple[LatencyModel, dict[str, float]]:
    """One shape for every board, fitted on all boards' samples with each board's own scale factored out
    (alternating: fit the shape, re-estimate each board's scale, a few rounds)."""
    if not measured:
        coef = np.zeros(len(TERMS))
        coef[TERMS.index("linear_mmacs")] = 1.0 / DEFAULT_MMACS_PER_MS
        coef[TERMS.index("attention_mmacs")] = 1.0 / DEFAULT_MMACS_PER_MS
        return LatencyModel(coef, "default"), {}
    scale = {b: 1.0 for b in measured}
    shape = None
    for _ in range(4):
        rows = [r for b in measured for r in pts[b][0]]
        ms = [m / scale[b] for b in measured for m in pts[b][1]]
        if len({tuple(r) for r in rows}) >= 2 and _spans(rows):
            shape = LatencyModel.fit(rows, ms)
        else:  # one structure everywhere: latency proportional to its MACs
            lin = TERMS.index("linear_mmacs"), TERMS.index("attention_mmacs")
            work = float(sum(rows[0][i] for i in lin)) or 1.0
            coef = np.zeros(len(TERMS))
            coef[list(lin)] = float(np.median(ms)) / work
            shape = LatencyModel(coef, "fitted", len(rows))
        for b in measured:
            r, m = pts[b]
            pred = shape.predict(np.asarray(r))
            scale[b] = float(np.median(np.asarray(m) / np.maximum(pred, 1e-12)))
        norm = float(np.median(list(scale.values())))
        scale = {b: v / norm for b, v in scale.items()}
    return shape, scale


def samples_from_profiles(profiles: dict, manifests: list[dict], stat: str = "p50",
                          variant: str | None = None) -> tuple[dict[str, list], dict[str, str]]:
    """(board -> [(terms row, ms)], board -> variant used) from profiles.json results whose sha256 is a
    sub-model artifact of one of `manifests` (builds with per-block `arch`). Per board, one variant
    (format/quant): `variant` if given, else the one with the most measured structures there."""
    by_sha = {}
    for man in manifests:
        geo = geometry_of_manifest(man)
        archs = {sm["name"]: sm.get("arch") for sm in man.get("submodels", [])}
        for art in man.get("artifacts", []):
            arch = archs.get(art.get("name"))
            if isinstance(arch, dict) and "heads" in arch:
                by_sha[art["sha256"]] = (structure_terms(arch, geo), f"{art['format']}/{art['quant']}")
    per: dict[str, dict[str, list]] = {}
    for r in profiles.get("results", []):
        hit = by_sha.get(r.get("sha256"))
        lat = r.get("latency_ms") if isinstance(r.get("latency_ms"), dict) else {}
        ms = lat.get(stat)
        if not hit or not r.get("usable") or not isinstance(ms, (int, float)) or not ms > 0 or math.isinf(ms):
            continue
        per.setdefault(r["board"], {}).setdefault(hit[1], []).append((hit[0], float(ms)))
    out, used = {}, {}
    for board, by_variant in per.items():
        if variant is not None:
            if variant in by_variant:
                out[board], used[board] = by_variant[variant], variant
            continue
        best = max(by_variant, key=lambda v: (len(_distinct(by_variant[v])[0]), v))
        out[board], used[board] = by_variant[best], best
    return out, used
