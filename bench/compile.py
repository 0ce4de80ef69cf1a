"""Compile benchmark (issue 2): digits and a harder distorted digits, K in {2, 4, 5}.

For each: original vs fused accuracy, per-sub-model params/bytes, size_ratio, compile wall time, and the peer a
user would otherwise deploy — ONE class-agnostic pruned ViT at the largest sub-model's parameter budget, same
importance machinery on all classes, same fine-tune budget (steps) as one sub-model.
Writes bench/results/compile.json and prints a table.

    python bench/compile.py [--ks 2,4,5] [--variants digits,digits-hard] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

# a bench script named like a stdlib module would shadow it (tests/unit/test_bench_names.py): drop bench/.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))

from edvit_tool.config import recipe as recipe_mod  # noqa: E402
from edvit_tool.demo_model import train_demo_model  # noqa: E402
from edvit_tool.compile.pipeline import compile_build  # noqa: E402
from edvit_tool.progress import Bars  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ks", default="2,4,5")
    ap.add_argument("--variants", default="digits,digits-hard")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "compile.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for variant in args.variants.split(","):
        hard = variant == "digits-hard"
        # digits-hard: 3 distorted views per digit (views of one digit stay in one split) -> 1080 test images,
        # so one image is 0.09 pp instead of 0.28 pp.
        ckpt = os.path.join(ROOT, "runs", f"bench-{variant}{'-x3' if hard else ''}", "model.safetensors")
        base = recipe_mod.load(os.path.join(ROOT, "recipes", "digits.yaml"),
                               {"model.checkpoint": ckpt, "data.distort": hard,
                                "data.distort_copies": 3 if hard else 1,
                                "export.formats": [], "device": "cpu"})
        with Bars(enabled=True) as bars:
            if not os.path.isfile(ckpt):
                acc = train_demo_model(base, ckpt, steps=3000 if hard else 1500, bars=bars)
                bars.log(f"{variant}: trained original, accuracy {acc:.4f}")
            for k in [int(v) for v in args.ks.split(",")]:
                recipe = recipe_mod.validate(base.to_dict(), overrides={"split.groups": k})
                t0 = time.perf_counter()
                res = compile_build(recipe, os.path.join(ROOT, "runs", f"bench-{variant}-k{k}"), bars=bars, peer=True)
                wall = time.perf_counter() - t0
                r = res.report
                rows.append({"variant": variant, "k": k, "original_accuracy": r["original"]["accuracy"],
                             "original_params": r["original"]["params"], "original_bytes": r["original"]["bytes"],
                             "fused_accuracy": r["fused"]["accuracy"], "fusion_kind": r["fusion_kind"],
                             "logits_fusion_accuracy": r["fused"]["logits_fusion_accuracy"],
                             "peer_accuracy": r["peer"]["accuracy"], "peer_params": r["peer"]["params"],
                             "submodels": [{k2: s[k2] for k2 in ("name", "params", "bytes", "params_ratio",
                                                                 "accuracy_in_group")} for s in r["submodels"]],
                             "max_params_ratio": max(s["params_ratio"] for s in r["submodels"]),
                             "size_ratio": r["size_ratio"], "compile_seconds_incl_peer": wall,
                             "compile_seconds": r["compile_seconds"]})
                print(json.dumps(rows[-1]), flush=True)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"threads": args.threads, "torch": torch.__version__, "rows": rows}, f, indent=2)
    hdr = f"{'variant':<12} {'K':>2} {'orig':>7} {'fused':>7} {'kind':>6} {'logits':>7} {'peer':>7} " \
          f"{'max%par':>8} {'size×':>6} {'time s':>7}"
    print(hdr)
    for r in rows:
        print(f"{r['variant']:<12} {r['k']:>2} {r['original_accuracy']:>7.4f} {r['fused_accuracy']:>7.4f} "
              f"{r['fusion_kind']:>6} {r['logits_fusion_accuracy']:>7.4f} {r['peer_accuracy']:>7.4f} "
              f"{100 * r['max_params_ratio']:>7.1f}% {r['size_ratio']:>6.2f} {r['compile_seconds']:>7.0f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
