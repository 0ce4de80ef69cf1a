"""report.json + report.md of a build: the figures a user compares before shipping."""

from __future__ import annotations

import json
import os


def build_report(manifest: dict, peer: dict | None, seconds: float, gate_failures: list[str]) -> dict:
    subs = manifest["submodels"]
    acc = manifest["accuracy"]
    largest = max(s["bytes"] for s in subs)
    report = {
        "name": manifest.get("name"),
        "model": manifest["model"]["name"],
        "original": {"accuracy": acc["original"], "params": manifest["model"]["params"],
                     "bytes": manifest["model"]["bytes"], "flops": manifest["model"]["flops"]},
        "fused": {"accuracy": acc["fused"], "logits_fusion_accuracy": acc["fused_logits"],
                  "mlp_cross_val_accuracy": acc.get("fusion_mlp_cv")},
        "fusion_kind": manifest["fusion"]["kind"],
        "accuracy_drop_pp": 100 * (acc["original"] - acc["fused"]),
        "submodels": [{k: s[k] for k in ("name", "group", "classes", "class_names", "params", "bytes", "flops",
                                         "params_ratio", "accuracy_in_group")} for s in subs],
        "size_ratio": manifest["model"]["bytes"] / largest,
        "compile_seconds": seconds,
        "artifacts": [{k: a.get(k) for k in ("file", "format", "quant", "bytes", "sha256", "max_abs_diff",
                                             "top1_agreement", "top1_agreement_val", "status", "float_layers",
                                             "float_weights")}
                      for a in manifest.get("artifacts", [])],
        "exported_accuracy": acc.get("exported", {}),
        "exported_validation_accuracy": acc.get("exported_val", {}),
        "quant_agreement": acc.get("quant_agreement", {}),
        "gate_failures": gate_failures,
        "compute_steps": manifest.get("compute_steps"),
        "fused_validation_accuracy": acc.get("fused_val"),
    }
    if peer:
        report["peer"] = peer
    return report


def _pct(v):
    return "—" if v is None else f"{100 * v:.2f} %"


def render_markdown(r: dict) -> str:
    o = r["original"]
    lines = [f"# ED-ViT build report: {r.get('name') or ''}", "",
             f"Model `{r['model']}`; fusion `{r['fusion_kind']}`; compiled in {r['compile_seconds']:.0f} s.", "",
             "| model | params | bytes | accuracy |", "|---|---:|---:|---:|",
             f"| original | {o['params']:,} | {o['bytes']:,} | {_pct(o['accuracy'])} |",
             f"| fused ({r['fusion_kind']}) | | | {_pct(r['fused']['accuracy'])} |",
             f"| fused (logits, training-free) | | | {_pct(r['fused']['logits_fusion_accuracy'])} |"]
    if r.get("peer"):
        p = r["peer"]
        lines.append(f"| peer: one class-agnostic pruned ViT | {p['params']:,} | {p['bytes']:,} | {_pct(p['accuracy'])} |")
        if p.get("views_accuracy") is not None:
            lines.append(f"| peer run once per sub-model view, averaged (K× its latency; a reference) | | | "
                         f"{_pct(p['views_accuracy'])} |")
    c = r.get("compute_steps")
    if c:
        p = r.get("peer") or {}
        secs = (f"; measured {p['ensemble_seconds']:.0f} s vs {p['seconds']:.0f} s"
                if isinstance(p.get("ensemble_seconds"), (int, float)) and isinstance(p.get("seconds"), (int, float))
                else "")
        lines += ["", f"Compile compute in sub-model-sized training steps: ensemble {c['ensemble']:,} (shared trunk "
                      f"{c['trunk']:,}, groups {c['groups']:,}, joint {c['joint']:,}) vs peer {c['peer']:,}{secs}."]
    lines += ["", f"Accuracy drop vs original: {r['accuracy_drop_pp']:+.2f} pp. "
                  f"Size ratio (original ÷ largest sub-model): {r['size_ratio']:.2f}×.", "",
              "| sub-model | classes | params | % of original | bytes | MFLOPs | in-group accuracy |",
              "|---|---|---:|---:|---:|---:|---:|"]
    for s in r["submodels"]:
        lines.append(f"| {s['name']} | {', '.join(s['class_names'])} | {s['params']:,} | {100 * s['params_ratio']:.1f} |"
                     f" {s['bytes']:,} | {s['flops'] / 1e6:.2f} | {_pct(s['accuracy_in_group'])} |")
    if r["artifacts"]:
        lines += ["", "| artifact | format | quant | bytes | max abs diff | top-1 agreement (validation) | status |",
                  "|---|---|---|---:|---:|---:|---|"]
        for a in r["artifacts"]:
            mad = a.get("max_abs_diff")
            agree = a.get("top1_agreement_val", a.get("top1_agreement"))
            lines.append(f"| {a['file']} | {a['format']} | {a['quant']} | {a['bytes']:,} | "
                         f"{'—' if mad is None else f'{mad:.2e}'} | {_pct(agree)} | {a.get('status')} |")
    if r["exported_accuracy"]:
        agree = r.get("quant_agreement") or {}
        lines += ["", "| exported variant | fused accuracy | answers equal to fp32 (validation / held-out) |",
                  "|---|---:|---:|"]
        lines += [f"| {k} | {_pct(v)} | " + (f"{_pct(agree[k]['val'])} / {_pct(agree[k]['held_out'])}" if k in agree
                                             else "—") + " |" for k, v in sorted(r["exported_accuracy"].items())]
    if r["gate_failures"]:
        lines += ["", "**Gate failures:**", ""] + [f"- {g}" for g in r["gate_failures"]]
    return "\n".join(lines) + "\n"


def write_reports(root: str, manifest: dict, peer: dict | None, seconds: float, gate_failures: list[str]) -> dict:
    report = build_report(manifest, peer, seconds, gate_failures)
    with open(os.path.join(root, "report.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    with open(os.path.join(root, "report.md"), "w", encoding="utf-8") as f:
        f.write(render_markdown(report))
    return report


def refresh_reports(root: str, manifest: dict, gate_failures: list[str]) -> dict:
    """Rewrite the reports after a re-export, keeping what only compile knew (peer, compile time)."""
    previous = {}
    path = os.path.join(root, "report.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            previous = json.load(f)
    return write_reports(root, manifest, previous.get("peer"), previous.get("compile_seconds", 0.0), gate_failures)
