"""Export a build's sub-models and fusion head to ONNX / TFLite in every requested quantisation, prove each
artifact against PyTorch in its real interpreter, measure the fused accuracy through the artifacts and gate it.

    failures = export_build(root, manifest, models, export_cfg, gate)

Choices (the gate, the layer-by-layer float fallback) are made on reference/val.npz, the validation split; the
held-out reference/eval.npz is only run, once per shipped variant, for the reported exported accuracy.

Importing this package is cheap and torch-free (`check` imports export.validate); the heavy modules load inside
export_build. See DESIGN.md §5 and the manifest schema in runtime/manifest.py.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time

import numpy as np

from ..errors import ExportError

EXT = {"onnx": "onnx", "tflite": "tflite"}
# int8 within half a point of fp32 (issue 10's target); a variant that misses it keeps layer groups float
DEFAULT_GATE = {"max_accuracy_drop_pp": 1.0, "max_quant_drop_pp": 0.5, "min_quant_agreement": 0.99}
DEFAULT_CALIBRATION = "percentile"  # export.calibration_method when a config leaves it out (recipe.py says why)
FLOAT_WEIGHTS = " (float weights)"  # suffix of a fallback step that keeps a layer group's weights float too


def artifact_path(name: str, quant: str, fmt: str) -> str:
    """Build-relative file of an artifact: submodels/g0.int8-static.onnx, fusion/fusion.fp32.tflite."""
    folder = "fusion" if name == "fusion" else "submodels"
    return f"{folder}/{name}.{quant}.{EXT[fmt]}"


def reference_path(rel: str) -> str:
    return f"reference/outputs-{os.path.basename(rel)}.npz"


def export_build(root: str, manifest: dict, models: dict, export_cfg: dict, gate: dict,
                 progress=None) -> list[str]:
    """Write every artifact into `root`, fill manifest['artifacts'], ['accuracy']['exported'] and ['export'].

    models: {"g0": module, ..., "fusion": module} in eval mode. Returns the gate/parity failures (empty = every
    artifact passed); failed artifacts stay in the build marked `status: failed` with the reason.
    Raises ExportError for unusable input (unknown mode, missing model or data, calibration set too small).
    """
    return _Exporter(root, manifest, models, export_cfg, gate, progress).run()


def _check_simplifier(tool: str) -> None:
    import importlib.util

    if tool not in ("onnxslim", "onnxsim", "none"):
        raise ExportError(f"export.simplify must be onnxslim, onnxsim or none, got {tool!r}")
    if tool != "none" and importlib.util.find_spec(tool) is None:
        other = "onnxsim" if tool == "onnxslim" else "onnxslim"
        hint = f"use `simplify: {other}` (installed) or `none`" if importlib.util.find_spec(other) else "use `none`"
        raise ExportError(f"export.simplify: {tool} is not installed; {hint}, or pip install {tool}")


class _Progress:
    """Adapter for the lead's progress.Bars (task/log) or a plain callable(message), or nothing."""

    def __init__(self, progress, total: int):
        self._p = progress
        self._advance = progress.task("export", total) if hasattr(progress, "task") else None

    def log(self, msg: str):
        if hasattr(self._p, "log"):
            self._p.log(msg)
        elif callable(self._p):
            self._p(msg)

    def step(self, **info):
        if self._advance:
            self._advance(1, **info)


class _Built:
    """One artifact built and validated."""

    def __init__(self, entry: dict, runner, parity: list[str], io: list[str], rel_err: float):
        self.entry, self.runner, self.rel_err = entry, runner, rel_err
        self.parity = parity  # numeric mismatch: keeping more layers float can fix it
        self.problems = parity + io  # io: wrong tensor names/shapes, which no fallback fixes


class _Exporter:
    def __init__(self, root, manifest, models, cfg, gate, progress):
        from .quantize import QUANT_MODES, check_int8_options, check_modes

        self.root, self.manifest, self.models = root, manifest, models
        self.formats = list(dict.fromkeys(cfg.get("formats") or []))
        quants = list(dict.fromkeys(cfg.get("quant") or ["fp32"]))
        check_modes(self.formats, quants)
        self.quants = sorted(quants, key=QUANT_MODES.index)  # fp32 first: quant drop is measured against it
        self.opset = int(cfg.get("opset", 17))
        self.simplify = cfg.get("simplify", "onnxslim")
        if "onnx" in self.formats:
            _check_simplifier(self.simplify)
        self.n_calib = int(cfg.get("calibration_samples", 64))
        self.calib_method = str(cfg.get("calibration_method", DEFAULT_CALIBRATION))
        self.int8_ops = str(cfg.get("int8_ops", "weights"))
        self.int8_fallback = str(cfg.get("int8_fallback", "weights"))
        check_int8_options(self.calib_method, self.int8_ops, self.int8_fallback)
        self.n_ref = int(cfg.get("reference_samples", 16))
        self.gate = {k: float(gate.get(k, v)) for k, v in DEFAULT_GATE.items()}
        self.subs = [sm["name"] for sm in manifest["submodels"]]
        self.names = self.subs + ["fusion"]
        missing = [n for n in self.names if n not in models]
        if missing:
            raise ExportError(f"export: no model for {missing}; export_build needs one module per sub-model "
                              "and 'fusion'")
        self.source = manifest["fusion"].get("source", "features")
        self.input_shape = list(manifest["input"]["shape"])
        self.threads = os.cpu_count() or 1
        self.qsv_cache: dict = {}  # TFLite calibration ranges, reused by the float fallback's attempts
        n_variants = len(self.quants) + ("fp32" not in self.quants)
        self.progress = _Progress(progress, len(self.formats) * n_variants * len(self.names))

    # -- inputs ------------------------------------------------------------------------------------------
    def _path(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def _load_split(self, rel: str, what: str):
        path = self._path(rel)
        if not os.path.isfile(path):
            raise ExportError(f"{path}: not found; compile writes the {what} there (pixels uint8 [M,H,W,C], "
                              "y [M])")
        x, y = self._load_reference(path)
        if y is None:
            raise ExportError(f"{path}: no labels y; recompile the build to rewrite it")
        if list(x.shape[1:]) != self.input_shape or len(x) != len(y) or len(x) == 0:
            raise ExportError(f"{path}: x {list(x.shape)}, y {list(y.shape)}; expected x [M, "
                              f"{', '.join(map(str, self.input_shape))}] and y [M] with M > 0")
        return x, y

    def _load_reference(self, path: str):
        """(float32 x, y or None): uint8 `pixels` normalised with the build's input spec, or an older float x."""
        from .. import reference
        from ..errors import DataError

        try:
            return reference.load(path, self.manifest["input"])
        except DataError as e:
            raise ExportError(str(e)) from None

    def _load_val(self):
        """The validation images every choice is made on; an older build without them gates on eval.npz (said in
        the manifest)."""
        if os.path.isfile(self._path("reference/val.npz")):
            return self._load_split("reference/val.npz", "validation split"), "validation"
        self.progress.log("export: reference/val.npz missing (a build from an older edvit-tool): the gate runs on "
                          "reference/eval.npz, the held-out set — recompile to gate on a validation split")
        return self._load_split("reference/eval.npz", "held-out set"), "test (older build without val.npz)"

    def _torch_correct(self, y: np.ndarray) -> np.ndarray:
        """Per validation image: does PyTorch's fused model get it right (what the gate compares against)."""
        return self.val_torch["fusion"]["logits"].argmax(-1) == y

    def _torch_outputs(self, x: np.ndarray) -> dict:
        """PyTorch's outputs per model name on x, the fusion head fed PyTorch's sub-model outputs."""
        import torch

        outs = {}
        with torch.no_grad():
            for i in range(0, len(x), 256):
                t = torch.from_numpy(x[i:i + 256])
                part = {}
                for n in self.subs:
                    f, lo = self.models[n](t)
                    part[n] = {"features": f.float().numpy(), "logits": lo.float().numpy()}
                feats = np.concatenate([part[n][self.source] for n in self.subs], axis=1)
                part["fusion"] = {"features_in": feats,
                                  "logits": self.models["fusion"](torch.from_numpy(feats)).float().numpy()}
                for n, d in part.items():
                    for k, v in d.items():
                        outs.setdefault(n, {}).setdefault(k, []).append(v)
        return {n: {k: np.concatenate(v) for k, v in d.items()} for n, d in outs.items()}

    def _load_calibration(self) -> dict:
        from .quantize import MIN_CALIBRATION

        if "int8-static" not in self.quants or not self.formats:
            return {}
        fusion_dim = sum(self.manifest["fusion"]["input_dims"])
        calib, problems = {}, []
        for name in self.names:
            rel = f"reference/calib-{name}.npz"
            path = self._path(rel)
            want = [fusion_dim] if name == "fusion" else self.input_shape
            if not os.path.isfile(path):
                problems.append(f"{rel}: not found; int8-static needs the {name} calibration images "
                                "(x [M, ...]) there, or drop int8-static from export.quant")
                continue
            try:
                x = self._load_reference(path)[0]
            except ExportError as e:
                problems.append(str(e))
                continue
            if list(x.shape[1:]) != want:
                problems.append(f"{rel}: x has shape {list(x.shape)}, expected [M, {', '.join(map(str, want))}]")
            elif len(x) < min(MIN_CALIBRATION, self.n_calib):
                problems.append(f"{rel}: {len(x)} calibration samples is too few for int8-static (need at least "
                                f"{min(MIN_CALIBRATION, self.n_calib)}); give the group more images or use "
                                "int8-dynamic")
            else:
                if len(x) < self.n_calib:
                    self.progress.log(f"export: {rel} has {len(x)} samples, fewer than "
                                      f"export.calibration_samples={self.n_calib}; calibrating on all of them")
                calib[name] = x[:self.n_calib]
        if problems:
            raise ExportError("; ".join(problems))
        return calib

    def _reference(self, x, y) -> tuple[dict, dict]:
        """(reference inputs {pixel_values, features}, torch outputs per model name)."""
        import torch

        groups = self.manifest["groups"]
        per = max(1, math.ceil(self.n_ref / max(1, len(groups))))
        idx = [i for g in groups for i in np.flatnonzero(np.isin(y, g))[:per]]
        if not idx:
            idx = list(range(min(self.n_ref, len(x))))
        ref_x = x[np.sort(np.asarray(idx))]
        outs = {}
        with torch.no_grad():
            t = torch.from_numpy(ref_x)
            for n in self.subs:
                f, lo = self.models[n](t)
                outs[n] = {"features": f.float().numpy(), "logits": lo.float().numpy()}
            feats = np.concatenate([outs[n][self.source] for n in self.subs], axis=1)
            outs["fusion"] = {"logits": self.models["fusion"](torch.from_numpy(feats)).float().numpy()}
        return {"pixel_values": ref_x, "features": feats}, outs

    # -- main ------------------------------------------------------------------------------------------
    def run(self) -> list[str]:
        if not self.formats:
            return []
        t0 = time.perf_counter()
        (x, y), gate_split = self._load_val()
        self.eval_x, self.eval_y = self._load_split("reference/eval.npz", "held-out set")
        self.calib = self._load_calibration()
        self.ref_inputs, self.ref_outputs = self._reference(x, y)
        self.val_x = x
        self.val_torch = self._torch_outputs(x)
        self.torch_val_correct = self._torch_correct(y)
        eval_torch = self._torch_outputs(self.eval_x)["fusion"]["logits"].argmax(-1)
        self.torch_eval_acc = float(np.mean(eval_torch == self.eval_y))
        os.makedirs(self._path("reference"), exist_ok=True)
        np.savez(self._path("reference/inputs.npz"), **self.ref_inputs)
        for d in ("submodels", "fusion"):
            os.makedirs(self._path(d), exist_ok=True)
        # beside the build, not in /tmp (often a small tmpfs): working copies of big models are big
        self.scratch = tempfile.mkdtemp(prefix=".edvit-export-", dir=os.path.dirname(os.path.abspath(self.root)))
        artifacts, exported, exported_val, agreement, failures = [], {}, {}, {}, []
        info = {"reference_samples": len(self.ref_inputs["pixel_values"]),
                "calibration_samples": {n: int(len(v)) for n, v in self.calib.items()},
                "gate": dict(self.gate), "gate_split": gate_split, "gate_samples": int(len(y)),
                "fused_torch_accuracy": self.torch_eval_acc,
                "fused_torch_accuracy_val": float(np.mean(self.torch_val_correct))}
        try:
            for fmt in self.formats:
                info[fmt] = self._export_fp32(fmt)
                self.fp32_pred = self.fp32_eval_pred = None
                # fp32 always runs (it is what the quantisers start from and what quant drop is measured
                # against); it is shipped only when asked for
                for quant in ["fp32"] + [q for q in self.quants if q != "fp32"]:
                    built, pred, eval_pred, fails = self._variant(fmt, quant, x, y)
                    if quant == "fp32":
                        self.fp32_pred, self.fp32_eval_pred = pred, eval_pred
                    if self._ships(quant):
                        if quant != "fp32":  # share of fused answers kept from the same format's fp32
                            agreement[f"{fmt}/{quant}"] = {"val": float(np.mean(pred == self.fp32_pred)),
                                                           "held_out": float(np.mean(eval_pred == self.fp32_eval_pred))}
                        exported[f"{fmt}/{quant}"] = float(np.mean(eval_pred == self.eval_y))
                        exported_val[f"{fmt}/{quant}"] = float(np.mean(pred == y))
                        artifacts.extend(built[n].entry for n in self.names)
                        failures.extend(fails)
                    elif fails:  # an unshipped fp32 that fails is still why the quantised ones cannot be trusted
                        failures.extend(f"{f} (the unshipped fp32 reference)" for f in fails)
        finally:
            shutil.rmtree(self.scratch, ignore_errors=True)
        self.manifest["artifacts"] = artifacts
        self.manifest.setdefault("accuracy", {})["exported"] = exported
        self.manifest["accuracy"]["exported_val"] = exported_val
        self.manifest["accuracy"]["quant_agreement"] = agreement
        info["seconds"] = round(time.perf_counter() - t0, 1)
        self.manifest["export"] = info
        return failures

    def _ships(self, quant: str) -> bool:
        return quant != "fp32" or "fp32" in self.quants

    def _keeps_int8_weights(self, quant: str) -> bool:
        """Whether the fallback's first pass keeps a float group's weights int8 (export.int8_fallback weights)."""
        return quant.startswith("int8") and self.int8_fallback == "weights"

    # -- fp32 --------------------------------------------------------------------------------------------
    def _fp32_file(self, fmt: str, name: str) -> str:
        """The fp32 working copy (scratch) with the exporter's full names, which the float fallback's layer groups
        are read from and every quantisation starts from; shipped artifacts are compacted copies."""
        return os.path.join(self.scratch, artifact_path(name, "fp32", fmt).replace("/", "_"))

    def _export_fp32(self, fmt: str) -> dict:
        import torch

        from .onnx import export_onnx, random_example

        info = {"nodes": {}} if fmt == "onnx" else {}
        for name in self.names:
            kind = "fusion" if name == "fusion" else "submodel"
            shape = [sum(self.manifest["fusion"]["input_dims"])] if name == "fusion" else self.input_shape
            example = random_example(shape, batch=2)
            dst = self._fp32_file(fmt, name)
            self.progress.log(f"export: {name} → {fmt} fp32")
            if fmt == "onnx":
                r = export_onnx(self.models[name], kind, example, dst, self.opset, self.simplify)
                info["nodes"][name] = {"before": r["nodes_before"], "after": r["nodes_after"]}
                info.update(exporter=f"torch.onnx (torch.export) {torch.__version__}", opset=self.opset,
                            simplifier=r["simplifier"])
                from onnxruntime import __version__ as ort_version

                info["quantizer"] = f"onnxruntime.quantization {ort_version}"
                self._preprocessed(name)  # int8 modes start from the pre-processed graph
            else:
                from importlib.metadata import version

                from .tflite import convert_tflite

                info.update(convert_tflite(self.models[name], kind, example, dst))
                info["quantizer"] = f"ai-edge-quantizer {version('ai-edge-quantizer')}"
        return info

    def _preprocessed(self, name: str) -> str:
        path = os.path.join(self.scratch, f"{name}.pre.onnx")
        if not os.path.exists(path) and any(q.startswith("int8") for q in self.quants):
            from .quantize import onnx_preprocess

            onnx_preprocess(self._fp32_file("onnx", name), path)
        return path

    # -- one variant (format x quant) with the float fallback ---------------------------------------------
    def _groups(self, fmt: str, quant: str, name: str) -> dict:
        if quant == "fp32":
            return {}
        if fmt == "onnx":
            from .quantize import onnx_fallback_groups

            src = self._preprocessed(name) if quant.startswith("int8") else self._fp32_file(fmt, name)
            groups = onnx_fallback_groups(src, quant, self.int8_ops)
            if name == "fusion":  # last resort: the whole (tiny) fusion head in float, e.g. a logit fusion's
                import onnx       # per-segment log-softmax that per-tensor int8 cannot hold

                everything = [n.name for n in onnx.load(src).graph.node if n.name]
                if everything and sorted(everything) != sorted(n for v in groups.values() for n in v):
                    groups["fusion head"] = everything
            return groups
        from .tflite import node_groups

        groups = node_groups(self._fp32_file(fmt, name))
        if quant == "int8-static" and self.int8_ops == "weights":  # those ops are float already: nothing to gain
            groups = {k: v for k, v in groups.items() if k not in ("layernorm", "softmax", "gelu")}
        return groups

    def _fallback_steps(self, fmt: str, quant: str, name: str) -> dict:
        """The float fallback's steps in order, {label: nodes}: every layer group with float activations (and, with
        export.int8_fallback weights in an int8 mode, its weights still int8), then — where that is not enough —
        the same groups with float weights too (labels ending FLOAT_WEIGHTS)."""
        groups = self._groups(fmt, quant, name)
        if self._keeps_int8_weights(quant):
            groups = {**groups, **{k + FLOAT_WEIGHTS: v for k, v in groups.items()}}
        return groups

    def _variant(self, fmt: str, quant: str, x, y):
        """Build every artifact of fmt/quant, keeping layer groups float until parity and the gate pass (judged
        on the validation images x, y). Returns (built, fused predictions on x, on the held-out images, failures)."""
        from .validate import fused_predict

        groups = {n: self._fallback_steps(fmt, quant, n) for n in self.names}
        level = {n: 0 for n in self.names}
        built: dict[str, _Built] = {}
        while True:
            for n in self.names:
                if n not in built:
                    built[n] = self._build(fmt, quant, n, list(groups[n])[:level[n]], groups[n])
            bad = [n for n in self.names if built[n].problems]
            escalate = [n for n in bad if built[n].parity and len(built[n].problems) == len(built[n].parity)
                        and level[n] < len(groups[n])]
            if escalate:
                for n in escalate:
                    level[n] += 1
                    del built[n]
                continue
            pred = fused_predict([built[n].runner for n in self.subs], built["fusion"].runner, self.source, x)
            acc = float(np.mean(pred == y))
            gate_problems = self._gate(fmt, quant, pred, y)
            if gate_problems and not bad:
                cands = [n for n in self.names if level[n] < len(groups[n])]
                if cands:  # keep the worst-matching artifact's next layer group float, then measure again
                    worst = max(cands, key=lambda n: (1 - built[n].entry["top1_agreement_val"], built[n].rel_err))
                    level[worst] += 1
                    self.progress.log(f"export: {fmt}/{quant} fused accuracy {acc:.4f} fails the gate; keeping "
                                      f"{list(groups[worst])[level[worst] - 1]} of {worst} in float")
                    del built[worst]
                    continue
            break
        failures = []
        for n in self.names:
            e = built[n].entry
            reasons = built[n].problems + gate_problems
            if reasons:
                e["status"], e["reason"] = "failed", "; ".join(reasons)
            for p in built[n].problems:
                failures.append(f"{n}:{fmt}/{quant}: {p}")
        failures.extend(f"{fmt}/{quant}: {p}" for p in gate_problems)
        # all choices for this variant are made: now (and only now) run the held-out images, for the report
        eval_pred = fused_predict([built[n].runner for n in self.subs], built["fusion"].runner, self.source,
                                  self.eval_x)
        self.progress.log(f"export: {fmt}/{quant} fused accuracy {acc:.4f} on validation"
                          + (" FAILED" if failures else ""))
        for b in built.values():
            b.runner = None  # release interpreters
        return built, pred, eval_pred, failures

    def _gate(self, fmt: str, quant: str, pred: np.ndarray, y: np.ndarray) -> list[str]:
        from .validate import drop_problem, fused_agreement_problem

        correct = pred == y
        p = [drop_problem(self.torch_val_correct, correct, self.gate["max_accuracy_drop_pp"], "PyTorch",
                          f"{fmt}/{quant}", "gate.max_accuracy_drop_pp")]
        if quant != "fp32" and self.fp32_pred is not None:
            p.append(drop_problem(self.fp32_pred == y, correct, self.gate["max_quant_drop_pp"], f"{fmt}/fp32",
                                  f"{fmt}/{quant}", "gate.max_quant_drop_pp"))
            p.append(fused_agreement_problem(pred, self.fp32_pred, self.gate["min_quant_agreement"], f"{fmt}/fp32"))
        return [q for q in p if q]

    def _build(self, fmt: str, quant: str, name: str, labels: list, groups: dict) -> _Built:
        from ..runtime.manifest import sha256_file
        from .validate import Runner, agreement_problem, compare, parity_problems, tolerance_for

        rel = artifact_path(name, quant, fmt)
        named = self._fp32_file(fmt, name)
        dst = self._path(rel) if self._ships(quant) else named
        input_name = "features" if name == "fusion" else "pixel_values"
        if quant == "fp32" and dst != named:
            shutil.copyfile(named, dst)
        elif quant != "fp32":
            exclude = [item for lb in labels for item in groups[lb]]
            float_weights = ([item for lb in labels if lb.endswith(FLOAT_WEIGHTS) for item in groups[lb]]
                             if self._keeps_int8_weights(quant) else exclude)
            if fmt == "onnx":
                from .quantize import quantize_onnx

                quantize_onnx(self._fp32_file(fmt, name), self._preprocessed(name), dst, quant, input_name,
                              self.calib.get(name), exclude, self.calib_method, self.int8_ops,
                              float_weights)
            else:
                from .quantize import quantize_tflite

                quantize_tflite(self._fp32_file(fmt, name), dst, quant, input_name, self.calib.get(name), exclude,
                                self.qsv_cache, float_weights=float_weights, ops=self.int8_ops)
        if dst != named:
            self._compact(fmt, quant, dst)
        self.progress.step(artifact=f"{name}:{fmt}/{quant}")
        runner = Runner(dst, fmt, threads=self.threads)
        ref = self.ref_outputs[name]
        stats = compare(runner.run({input_name: self.ref_inputs[input_name]}), ref)
        tol = tolerance_for(quant, stats["scale"], stats["max_abs_diff"])
        parity = parity_problems(quant, stats, tol)
        val_in = self.val_torch["fusion"]["features_in"] if name == "fusion" else None
        val_logits = runner.run({input_name: val_in if val_in is not None else self.val_x})["logits"]
        val_agree = float(np.mean(val_logits.argmax(-1) == self.val_torch[name]["logits"].argmax(-1)))
        if quant != "fp32":
            problem = agreement_problem(val_logits.argmax(-1), self.val_torch[name]["logits"].argmax(-1))
            if problem:
                parity.append(problem)
        io = self._io_problems(name, runner)
        ref_rel = reference_path(rel)
        if self._ships(quant):
            np.savez(self._path(ref_rel), **ref)
        entry = {"name": name, "file": rel, "format": fmt, "quant": quant,
                 "bytes": os.path.getsize(dst), "sha256": sha256_file(dst),
                 "inputs": runner.inputs, "outputs": runner.outputs, "reference": ref_rel,
                 "tolerance": float(tol), "max_abs_diff": float(stats["max_abs_diff"]),
                 "top1_agreement": float(stats["top1_agreement"]), "top1_agreement_val": val_agree,
                 # layer groups computed in float, and those of them whose weights are float too (the rest of
                 # them keep int8 weights, dequantised on load: export.int8_fallback weights)
                 "float_layers": [lb for lb in labels if not lb.endswith(FLOAT_WEIGHTS)],
                 "float_weights": ([lb[:-len(FLOAT_WEIGHTS)] for lb in labels if lb.endswith(FLOAT_WEIGHTS)]
                                   if self._keeps_int8_weights(quant) else list(labels)),
                 "status": "ok", "reason": ""}
        return _Built(entry, runner, parity, io, stats["max_abs_diff"] / max(1.0, stats["scale"]))

    @staticmethod
    def _compact(fmt: str, quant: str, path: str) -> None:
        """Shorten generated tensor names in a shipped artifact (they are a third of a small int8 model)."""
        if fmt == "onnx":
            from .onnx import compact_names

            compact_names(path, node_names=quant != "fp32")
        else:
            from .tflite import compact_tensor_names

            compact_tensor_names(path)

    def _io_problems(self, name: str, runner) -> list[str]:
        """The interpreter's tensors must be the schema's: names, float32, non-batch dims."""
        if name == "fusion":
            fu = self.manifest["fusion"]
            want_in = {"features": [sum(fu["input_dims"])]}
            want_out = {"logits": [fu["num_classes"]]}
        else:
            sm = next(s for s in self.manifest["submodels"] if s["name"] == name)
            want_in = {"pixel_values": self.input_shape}
            want_out = {"features": [sm["feature_dim"]], "logits": [sm["num_outputs"]]}
        p = []
        for kind, want, got in (("input", want_in, runner.inputs), ("output", want_out, runner.outputs)):
            have = {t["name"]: t for t in got}
            if sorted(have) != sorted(want):
                p.append(f"{kind}s are {sorted(have)}, expected {sorted(want)}")
                continue
            for n, dims in want.items():
                if have[n]["shape"][1:] != list(dims) or have[n]["dtype"] != "float32":
                    p.append(f"{kind} {n} is {have[n]['dtype']} {have[n]['shape']}, expected float32 [B, "
                             f"{', '.join(map(str, dims))}]")
        return p
