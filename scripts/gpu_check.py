"""Short compile of a ViT-S/16 at 224 px, K = 4, few steps, on CUDA; checks the build and prints the figures.

    python scripts/gpu_check.py [--out DIR] [--steps 60] [--train-steps 300]

Makes its own data (scripts/synth_photos.py: 224-px JPEG/PNG ImageFolder) and its own "user checkpoint" (a
vit_small_patch16_224 trained briefly on it, on the GPU), then runs `edvit-tool compile --device cuda` and
`edvit-tool check`. Exits non-zero if CUDA is missing, compile fails, or the build's check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT") or "runs/gpu-check")
    ap.add_argument("--steps", type=int, default=60, help="fine-tune steps per sub-model")
    ap.add_argument("--train-steps", type=int, default=300, help="steps for the 'user checkpoint'")
    ap.add_argument("--per-class", type=int, default=80)
    ap.add_argument("--cpu-dry-run", action="store_true",
                    help="check the script itself on CPU (tiny sizes, label check off); not a GPU check")
    a = ap.parse_args()
    import torch
    import yaml

    device = "cuda"
    if not torch.cuda.is_available():
        if not a.cpu_dry_run:
            print("gpu-check: no CUDA device here", file=sys.stderr)
            return 2
        device = "cpu"
    from synth_photos import write_folder

    from edvit_tool.config import recipe as R
    from edvit_tool.demo_model import train_demo_model

    work = os.path.join(a.out, "work")
    os.makedirs(work, exist_ok=True)
    fig = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu (dry run)",
           "torch": torch.__version__, "bf16": device == "cuda" and torch.cuda.is_bf16_supported()}
    t = time.perf_counter()
    data_root = write_folder(os.path.join(work, "photos"), 10, a.per_class, 20, 224, seed=0, val_per_class=10)
    fig["data_seconds"] = round(time.perf_counter() - t, 1)
    ckpt = os.path.join(work, "vit_s.safetensors")
    rec = {"name": "gpu-check", "device": device,
           "model": {"name": "vit_small_patch16_224", "kwargs": {"num_classes": 10}, "checkpoint": ckpt},
           "data": {"kind": "imagefolder", "root": data_root, "cache_dir": os.path.join(work, "cache"),
                    "workers": 8 if device == "cuda" else 1, "check_labels": not a.cpu_dry_run},
           "split": {"groups": 4},
           "prune": {"steps": 2, "recovery_steps": max(5, a.steps // 4), "importance_batches": 2},
           # timm training transform in DataLoader workers, teacher on the augmented batch (on the GPU)
           "finetune": {"steps": a.steps, "batch_size": 64, "augment": {"scale": [0.35, 1.0]}},
           "fusion": {"steps": 200, "augment_views": 1},
           "export": {"formats": ["onnx"], "quant": ["fp32"], "simplify": "none"}}
    t = time.perf_counter()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    fig["original_test_accuracy"] = train_demo_model(R.validate(rec), ckpt, steps=a.train_steps)
    fig["train_checkpoint_seconds"] = round(time.perf_counter() - t, 1)
    recipe = os.path.join(work, "recipe.yaml")
    with open(recipe, "w") as f:
        yaml.safe_dump(rec, f)
    build = os.path.join(work, "build")
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "edvit_tool.cli.main", "compile", "--recipe", recipe, "--out", build,
                        "--device", device, "--json", "--peer"], capture_output=True, text=True)
    fig["compile_seconds"] = round(time.perf_counter() - t, 1)
    fig["compile_exit"] = p.returncode
    fig["compile_stderr_tail"] = p.stderr[-1500:]
    if p.returncode not in (0, 1):
        print(p.stderr[-4000:], file=sys.stderr)
        print(json.dumps(fig, indent=2))
        return 1
    report = json.loads(p.stdout)
    fig.update(original=report["original"]["accuracy"], fused=report["fused"]["accuracy"],
               fusion_kind=report["fusion_kind"], peer=(report.get("peer") or {}).get("accuracy"),
               submodel_params=[s["params"] for s in report["submodels"]],
               original_params=report["original"]["params"], exported=report.get("exported_accuracy"),
               gate_failures=report.get("gate_failures"))
    c = subprocess.run([sys.executable, "-m", "edvit_tool.cli.main", "check", build], capture_output=True,
                       text=True)
    fig["check_exit"] = c.returncode
    fig["check_tail"] = c.stdout[-600:] + c.stderr[-600:]
    print(json.dumps(fig, indent=2))
    with open(os.path.join(a.out, "gpu-check.json"), "w") as f:
        json.dump(fig, f, indent=2)
    return 0 if p.returncode == 0 and c.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
