"""int8-static vs fp32 through the exported artifacts of existing builds, per format, and for TFLite the two ways
of calibrating activation ranges (ai-edge-quantizer's own moving average of each batch-1 sample's min/max, which
the export used before, vs the true min/max over every calibration image, what it uses now). Per variant: fused
accuracy on the build's validation and held-out sets, and per sub-model the relative error of its `features`
against PyTorch and its top-1 agreement. No float fallback here: plain int8 of every layer, so the figures show
what quantisation alone costs.

    .venv/bin/python bench/int8.py BUILD_DIR [BUILD_DIR ...] [--out bench/results/int8.json]

Uses each build's reference/val.npz, eval.npz and calib-*.npz, and its submodels/*.pt (torch is needed to
re-export the fp32 working copies, in a temporary folder).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from edvit_tool import reference  # noqa: E402
from edvit_tool.build_models import load_build_models  # noqa: E402
from edvit_tool.export import quantize as Q  # noqa: E402
from edvit_tool.export.validate import Runner  # noqa: E402

VARIANTS = {"onnx": ["fp32", "int8-static"], "tflite": ["fp32", "int8-static/ema", "int8-static"]}


class Build:
    def __init__(self, root: str):
        import torch

        with open(os.path.join(root, "manifest.json"), encoding="utf-8") as f:
            self.m = json.load(f)
        self.root, self.models = root, load_build_models(root, self.m)
        self.subs = [s["name"] for s in self.m["submodels"]]
        self.source = self.m["fusion"]["source"]
        spec = self.m["input"]
        self.sets = {s: reference.load(os.path.join(root, f"reference/{s}.npz"), spec) for s in ("val", "eval")}
        self.calib = {n: reference.load(os.path.join(root, f"reference/calib-{n}.npz"), spec)[0] for n in self.subs}
        with np.load(os.path.join(root, "reference/calib-fusion.npz"), allow_pickle=False) as z:
            self.calib["fusion"] = z["x"]
        self.torch = {}
        with torch.no_grad():
            for s, (x, _) in self.sets.items():
                out = {n: [a.numpy() for a in self.models[n](torch.from_numpy(x))] for n in self.subs}
                feats = np.concatenate([out[n][0 if self.source == "features" else 1] for n in self.subs], 1)
                out["fusion_logits"] = self.models["fusion"](torch.from_numpy(feats)).numpy()
                self.torch[s] = out

    def fp32_files(self, fmt: str, folder: str) -> dict:
        import torch

        files = {}
        for n in self.subs + ["fusion"]:
            kind = "fusion" if n == "fusion" else "submodel"
            shape = [sum(self.m["fusion"]["input_dims"])] if n == "fusion" else list(self.m["input"]["shape"])
            dst = os.path.join(folder, f"{n}.fp32.{fmt}")
            example = torch.randn([2] + shape)
            if fmt == "tflite":
                from edvit_tool.export.tflite import convert_tflite

                convert_tflite(self.models[n], kind, example, dst)
            else:
                from edvit_tool.export.onnx import export_onnx

                export_onnx(self.models[n], kind, example, dst, 17, "onnxslim")
                Q.onnx_preprocess(dst, dst + ".pre.onnx")
            files[n] = dst
        return files

    def measure(self, fmt: str, files: dict) -> dict:
        runners = {n: Runner(p, fmt) for n, p in files.items()}
        res = {"bytes": sum(os.path.getsize(p) for p in files.values()), "submodels": {}}
        for s, (x, y) in self.sets.items():
            outs = {n: runners[n].run({"pixel_values": x}) for n in self.subs}
            feats = np.concatenate([outs[n][self.source] for n in self.subs], 1)
            logits = runners["fusion"].run({"features": feats})["logits"]
            res[f"fused_{s}"] = round(100 * float(np.mean(logits.argmax(-1) == y)), 2)
            for n in self.subs:
                ref_f, ref_l = self.torch[s][n]
                rel = float(np.linalg.norm(outs[n]["features"] - ref_f) / np.linalg.norm(ref_f))
                agree = float(np.mean(outs[n]["logits"].argmax(-1) == ref_l.argmax(-1)))
                res["submodels"].setdefault(n, {})[s] = {"feature_rel_err": round(rel, 4),
                                                        "top1_agreement": round(100 * agree, 2)}
        return res


def run_build(root: str) -> list[dict]:
    b = Build(root)
    rows = []
    for fmt, variants in VARIANTS.items():
        with tempfile.TemporaryDirectory(prefix="edvit-int8-") as tmp:
            fp32 = b.fp32_files(fmt, tmp)
            for v in variants:
                t0 = time.perf_counter()
                files = dict(fp32)
                if v != "fp32":
                    for n, src in fp32.items():
                        dst = os.path.join(tmp, f"{n}.{v.replace('/', '-')}.{fmt}")
                        inp = "features" if n == "fusion" else "pixel_values"
                        if fmt == "tflite":
                            Q.quantize_tflite(src, dst, "int8-static", inp, b.calib[n],
                                              ranges="ema" if v.endswith("/ema") else "minmax")
                        else:
                            Q.quantize_onnx(src, src + ".pre.onnx", dst, "int8-static", inp, b.calib[n])
                        files[n] = dst
                row = {"build": root, "format": fmt, "variant": v, "quantise_s": round(time.perf_counter() - t0, 1),
                       "calibration_samples": len(b.calib[b.subs[0]]), **b.measure(fmt, files)}
                rows.append(row)
                print(_line(row), flush=True)
    return rows


def _line(r: dict) -> str:
    err = np.mean([d["eval"]["feature_rel_err"] for d in r["submodels"].values()])
    agree = min(d["eval"]["top1_agreement"] for d in r["submodels"].values())
    return (f"| {os.path.basename(r['build'].rstrip('/'))} | {r['format']} | {r['variant']} | {r['fused_val']:.2f} | "
            f"{r['fused_eval']:.2f} | {err:.3f} | {agree:.2f} | {r['bytes']:,} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("builds", nargs="+")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "int8.json"))
    a = ap.parse_args()
    print("| build | format | variant | fused val % | fused eval % | mean feature rel. err (eval) | "
          "min sub-model top-1 agreement % | bytes |\n|---|---|---|---:|---:|---:|---:|---:|", flush=True)
    rows = [r for b in a.builds for r in run_build(b)]
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w", encoding="utf-8") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
