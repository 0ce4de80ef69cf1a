"""int8-static through the gated export (float fallback on) of existing builds, for several export settings: what a
user gets from `edvit-tool export`, where bench/int8.py shows plain int8 without the fallback.

Each (build, setting) re-exports a copy of the build (fp32 + int8-static in --format: onnx, the default, or
tflite) with `edvit-tool export` in its own process after writing the setting into the copy's
recipe.resolved.yaml, then reads the copy's manifest: fused accuracy on the validation split (what the gate and
the fallback judge) and on the held-out split (for the report), int8 bytes ÷ fp32 bytes, the layer groups kept
float, and the export's wall time. The builds are left as they were.

    .venv/bin/python bench/int8_gate.py BUILD_DIR [BUILD_DIR ...] --set export.int8_ops=all \\
        --set export.int8_ops=weights [--format onnx|tflite] [--jobs 2] [--label NAME]

Appends one run per call to bench/results/int8_gate.json.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results", "int8_gate.json")


def _setting(text: str) -> dict:
    """'export.int8_ops=weights,export.calibration_method=percentile' -> {('export', 'int8_ops'): 'weights', ...}"""
    out = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        section, _, field = key.partition(".")
        if section not in ("export", "gate") or not field or not value:
            sys.exit(f"Error: --set {item!r}: expected export.KEY=VALUE or gate.KEY=VALUE")
        out[(section, field)] = yaml.safe_load(value)
    return out


def run_one(build: str, setting: str, fmt: str = "onnx") -> dict:
    with tempfile.TemporaryDirectory(prefix="int8-gate-") as tmp:
        copy = os.path.join(tmp, os.path.basename(build.rstrip("/")))
        shutil.copytree(build, copy)
        path = os.path.join(copy, "recipe.resolved.yaml")
        with open(path, encoding="utf-8") as f:
            recipe = yaml.safe_load(f)
        for (section, field), value in _setting(setting).items():
            recipe.setdefault(section, {})[field] = value
        with open(path, "w", encoding="utf-8") as f:
            yaml.safe_dump(recipe, f)
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "edvit_tool.cli.main", "export", copy, "--formats", fmt,
                            "--quant", "fp32,int8-static", "-q"], capture_output=True, text=True, cwd=ROOT)
        seconds = time.perf_counter() - t0
        with open(os.path.join(copy, "manifest.json"), encoding="utf-8") as f:
            manifest = json.load(f)
    if r.returncode:  # the export is atomic: the copy still holds the build's old artifacts, not this setting's
        return {"build": os.path.basename(build.rstrip("/")), "setting": setting, "format": fmt,
                "returncode": r.returncode,
                "error": (r.stderr.strip().splitlines() or ["(no output)"])[-1], "val_fp32": None,
                "val_int8": None, "test_fp32": None, "test_int8": None, "int8_bytes_ratio": None,
                "float_layers": {}, "seconds": seconds}
    acc = manifest["accuracy"]
    size = {"fp32": 0, "int8-static": 0}
    for a in manifest["artifacts"]:
        if a["format"] == fmt and a["quant"] in size:
            size[a["quant"]] += a["bytes"]
    val, test = acc.get("exported_val", {}), acc.get("exported", {})
    fp32, int8 = f"{fmt}/fp32", f"{fmt}/int8-static"
    agreement = acc.get("quant_agreement", {}).get(int8, {})
    return {"build": os.path.basename(build.rstrip("/")), "setting": setting, "format": fmt, "returncode": 0,
            "error": "",
            "val_samples": acc.get("val_samples"), "eval_samples": acc.get("eval_samples"),
            "val_fp32": val.get(fp32), "val_int8": val.get(int8), "test_fp32": test.get(fp32),
            "test_int8": test.get(int8),
            "int8_bytes_ratio": size["int8-static"] / size["fp32"] if size["fp32"] else None,
            # share of fused answers int8 keeps from fp32 (validation / held-out), where the export records it
            "val_agreement": agreement.get("val"), "test_agreement": agreement.get("held_out"),
            "float_layers": {a["name"]: a["float_layers"] for a in manifest["artifacts"]
                             if a["format"] == fmt and a["quant"] == "int8-static" and a.get("float_layers")},
            "seconds": seconds}


def _pp(a, b):
    return "—" if a is None or b is None else f"{100 * (b - a):+.2f}"


def table(rows: list) -> str:
    lines = [f"{'build':28s} {'setting':34s} {'val int8-fp32':>13s} {'test int8-fp32':>14s} {'agree val/test':>14s} "
             f"{'bytes':>6s} {'float':>5s} {'s':>5s}"]
    for r in rows:
        agree = ("—" if r.get("val_agreement") is None
                 else f"{100 * r['val_agreement']:.1f}/{100 * r['test_agreement']:.1f}")
        lines.append(f"{r['build'][:28]:28s} {r['setting'][:34]:34s} {_pp(r['val_fp32'], r['val_int8']):>13s} "
                     f"{_pp(r['test_fp32'], r['test_int8']):>14s} {agree:>14s} "
                     f"{(r['int8_bytes_ratio'] or 0):6.2f} {len(r['float_layers']):5d} {r['seconds']:5.0f}"
                     + (f"  FAILED: {r['error']}" if r["returncode"] else ""))
    for s in dict.fromkeys(r["setting"] for r in rows):
        mine = [r for r in rows if r["setting"] == s and r["val_int8"] is not None]
        if mine:
            mv = sum(100 * (r["val_int8"] - r["val_fp32"]) for r in mine) / len(mine)
            mt = sum(100 * (r["test_int8"] - r["test_fp32"]) for r in mine) / len(mine)
            worst = min(100 * (r["test_int8"] - r["test_fp32"]) for r in mine)
            within = sum(100 * (r["test_int8"] - r["test_fp32"]) >= -0.5 - 1e-9 for r in mine)
            lines.append(f"{s}: mean int8 − fp32 {mv:+.2f} pp validation, {mt:+.2f} pp test (worst {worst:+.2f}); "
                         f"test within 0.5 pp on {within} of {len(mine)}; bytes ÷ fp32 "
                         f"{sum(r['int8_bytes_ratio'] for r in mine) / len(mine):.2f}")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("builds", nargs="+")
    ap.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE[,KEY=VALUE]",
                    help="one export setting to compare (repeat for several); none = the builds' own")
    ap.add_argument("--format", default="onnx", choices=("onnx", "tflite"),
                    help="the format re-exported and measured (TFLite: litert-torch, ai-edge-quantizer, LiteRT)")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--label", default="default")
    ap.add_argument("--out", default=RESULTS)
    args = ap.parse_args()
    settings = args.settings or [""]
    for s in settings:
        _setting(s)
    for b in args.builds:
        if not os.path.isfile(os.path.join(b, "manifest.json")):
            sys.exit(f"Error: {b}: no manifest.json (not a build dir)")
    jobs = [(b, s) for b in args.builds for s in settings]
    rows = []
    with cf.ThreadPoolExecutor(max_workers=args.jobs) as pool:  # each export is its own process
        for row in pool.map(lambda j: run_one(*j, args.format), jobs):
            rows.append(row)
            print(json.dumps({k: row[k] for k in ("build", "setting", "val_fp32", "val_int8", "test_fp32",
                                                  "test_int8", "int8_bytes_ratio", "seconds")}), flush=True)
    data = {"about": "bench/int8_gate.py: gated int8-static export (ONNX or TFLite) of existing builds per export "
                     "setting",
            "runs": {}}
    if os.path.isfile(args.out):
        with open(args.out, encoding="utf-8") as f:
            data = json.load(f)
    data["runs"][args.label] = {"written": datetime.datetime.now().isoformat(timespec="seconds"),
                                "format": args.format, "settings": settings, "rows": rows}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
    print(table(rows))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
