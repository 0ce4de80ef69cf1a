"""What the int8 gate's fallback costs on a board, per sub-model of an existing build (ONNX, onnxruntime, 1 thread,
batch 1): fp32, plain int8-static (every weight op int8 compute), and every weight op kept out of int8 compute
either with int8 weights (export.int8_fallback weights: float activations, weights dequantised on load) or with
float weights (the sessions 2-9 fallback). Median latency over --runs calls after a warm-up, file bytes, and
max |Δ| of the features vs fp32 on the build's calibration images.

    .venv/bin/python bench/int8_fallback_speed.py BUILD_DIR [--runs 300] [--label NAME]

Appends one run per call to bench/results/int8_fallback_speed.json. Runs the quantisers first, then times each
artifact in its own process (nothing else loaded there).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
RESULTS = os.path.join(HERE, "results", "int8_fallback_speed.json")

TIMER = r"""
import json, sys, time
import numpy as np
import onnxruntime as ort
so = ort.SessionOptions(); so.intra_op_num_threads = 1; so.inter_op_num_threads = 1; so.log_severity_level = 3
s = ort.InferenceSession(sys.argv[1], sess_options=so, providers=["CPUExecutionProvider"])
x = np.load(sys.argv[2])[:1]
for _ in range(30):
    s.run(None, {"pixel_values": x})
t = []
for _ in range(int(sys.argv[3])):
    t0 = time.perf_counter(); s.run(None, {"pixel_values": x}); t.append(time.perf_counter() - t0)
print(json.dumps({"ms": 1000 * float(np.median(t))}))
"""


def variants(fp32: str, calib: np.ndarray, tmp: str) -> dict:
    import onnx

    from edvit_tool.export.quantize import onnx_preprocess, quantize_onnx

    pre = os.path.join(tmp, "pre.onnx")
    onnx_preprocess(fp32, pre)
    every = [n.name for n in onnx.load(pre).graph.node if n.name]
    out = {"fp32": fp32}
    for kind, exclude, float_weights in (("int8", [], []), ("fallback: int8 weights", every, []),
                                         ("fallback: float weights", every, every)):
        out[kind] = os.path.join(tmp, kind.replace(" ", "_").replace(":", "") + ".onnx")
        quantize_onnx(fp32, pre, out[kind], "int8-static", "pixel_values", calib, exclude,
                      float_weights=float_weights)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("build")
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--label", default="")
    args = ap.parse_args()
    from edvit_tool import reference
    from edvit_tool.export import validate as V

    with open(os.path.join(args.build, "manifest.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for sm in manifest["submodels"]:
            name = sm["name"]
            calib = reference.load(os.path.join(args.build, "reference", f"calib-{name}.npz"),
                                   manifest["input"])[0].astype(np.float32)
            xfile = os.path.join(tmp, "x.npy")
            np.save(xfile, calib)
            work = os.path.join(tmp, name)
            os.makedirs(work)
            paths = variants(os.path.join(args.build, "submodels", f"{name}.fp32.onnx"), calib, work)
            ref = V.Runner(paths["fp32"], "onnx").run({"pixel_values": calib})["features"]
            for kind, path in paths.items():
                feats = V.Runner(path, "onnx").run({"pixel_values": calib})["features"]
                r = subprocess.run([sys.executable, "-c", TIMER, path, xfile, str(args.runs)], capture_output=True,
                                   text=True, check=True)
                rows.append({"submodel": name, "variant": kind, "bytes": os.path.getsize(path),
                             "ms": json.loads(r.stdout)["ms"],
                             "rel_err": float(np.abs(feats - ref).max() / max(1e-9, np.abs(ref).max()))})
    kinds = list(dict.fromkeys(r["variant"] for r in rows))
    print(f"{'variant':26s} {'median ms':>9s} {'÷ fp32':>7s} {'bytes ÷ fp32':>12s} {'feature err':>11s}")
    summary = {}
    for k in kinds:
        mine = [r for r in rows if r["variant"] == k]
        base = {r["submodel"]: r for r in rows if r["variant"] == "fp32"}
        ms = float(np.median([r["ms"] for r in mine]))
        ratio = float(np.median([r["ms"] / base[r["submodel"]]["ms"] for r in mine]))
        size = float(np.median([r["bytes"] / base[r["submodel"]]["bytes"] for r in mine]))
        err = float(np.median([r["rel_err"] for r in mine]))
        summary[k] = {"ms": ms, "ms_ratio_fp32": ratio, "bytes_ratio_fp32": size, "rel_err": err}
        print(f"{k:26s} {ms:9.3f} {ratio:7.2f} {size:12.2f} {err:11.4f}")
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    data = {"about": __doc__.splitlines()[0], "runs": {}}
    if os.path.exists(RESULTS):
        with open(RESULTS, encoding="utf-8") as f:
            data = json.load(f)
    key = args.label or os.path.basename(args.build.rstrip("/"))
    data["runs"][key] = {"build": os.path.basename(args.build.rstrip("/")), "rows": rows, "summary": summary,
                         "written": datetime.datetime.now().isoformat(timespec="seconds")}
    with open(RESULTS, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
