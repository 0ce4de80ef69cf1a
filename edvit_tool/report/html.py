"""report.html: one self-contained page (PNG plots embedded as base64, tables, no external assets) beside the
plots as PNG files (report-plots/*.png), so it can be mailed or attached to a CI run as one file."""

from __future__ import annotations

import base64
import html
import os
import time

from .inputs import ReportInputs, load_inputs
from .plots import latency_comparison, p50_by_artifact, render_all

PLOTS_DIR = "report-plots"

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:980px;color:#222;padding:0 1em}
table{border-collapse:collapse;margin:.6em 0 1.4em;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}
img{max-width:100%;border:1px solid #eee}.note{color:#666;font-size:.9em}
code{background:#f5f5f5;padding:0 .2em}
"""


def _esc(v) -> str:
    return html.escape("—" if v is None else str(v))


def _pct(v) -> str:
    return "—" if not isinstance(v, (int, float)) else f"{100 * v:.2f} %"


def _num(v) -> str:
    return "—" if not isinstance(v, (int, float)) else f"{v:,}"


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _summary_tables(inp: ReportInputs) -> list[str]:
    m, s = inp.manifest, inp.summary or {}
    model, acc = m.get("model") or {}, m.get("accuracy") or {}
    rows = [["original", _num(model.get("params")), _num(model.get("bytes")), _num(model.get("flops")),
             _pct(acc.get("original"))],
            [f"fused ({(m.get('fusion') or {}).get('kind', '?')})", "", "", "", _pct(acc.get("fused"))]]
    if s.get("peer"):
        p = s["peer"]
        rows.append(["peer: one class-agnostic pruned ViT", _num(p.get("params")), _num(p.get("bytes")), "",
                     _pct(p.get("accuracy"))])
    out = [_table(["model", "params", "bytes", "FLOPs", "accuracy"], rows)]
    subs = m.get("submodels") or []
    if subs:
        classes = m.get("classes") or []
        out.append(_table(
            ["sub-model", "classes", "params", "bytes", "MFLOPs", "in-group accuracy"],
            [[sm["name"], ", ".join(str(classes[c]) if isinstance(c, int) and c < len(classes) else str(c)
                                    for c in sm.get("classes") or []),
              _num(sm.get("params")), _num(sm.get("bytes")),
              f"{sm['flops'] / 1e6:.2f}" if isinstance(sm.get("flops"), (int, float)) else "—",
              _pct(sm.get("accuracy_in_group"))] for sm in subs]))
    return out


def _fusion_choice_table(inp: ReportInputs) -> str | None:
    """Which fusion head `fusion.kind: auto` kept, and the validation accuracy of every candidate it tried."""
    choice = (inp.manifest.get("accuracy") or {}).get("fusion_choice") or {}
    cands = [(k[:-len("_val")], v) for k, v in choice.items() if k.endswith("_val") and isinstance(v, (int, float))]
    if not cands:
        return None
    return ("<p>Fusion head chosen on the validation split: <b>" + _esc(choice.get("kind")) + "</b></p>"
            + _table(["fusion candidate", "validation accuracy"], [[k, _pct(v)] for k, v in cands]))


def _sizing_table(inp: ReportInputs) -> str:
    """compile --boards: each board's group, budget and predicted time, sized vs uniform."""
    s = inp.manifest["sizing"]
    rows = [[f"g{i}", b, len(g), _num(t), f"{ms:.3f}", f"{u:.3f}"] for i, (b, g, t, ms, u) in
            enumerate(zip(s["boards"], s["groups"], s["params_targets"], s["predicted_ms"],
                          s["uniform_predicted_ms"]))]
    sized, uniform = max(s["predicted_ms"]), max(s["uniform_predicted_ms"])
    ratio = f" ({uniform / sized:.2f}× shorter)" if sized > 0 else ""
    return (_table(["group", "board", "classes", "params budget", "predicted ms (sized)",
                    "predicted ms (uniform budget)"], rows)
            + f"<p>Predicted makespan {sized:.3f} ms sized vs {uniform:.3f} ms with uniform budgets{ratio}; spread "
            f"between boards {100 * s.get('spread', 0):.1f} %. Predictions come from the per-board latency models "
            "fitted on the profiled ladder, not from a deployed run.</p>")


def _artifact_table(inp: ReportInputs) -> str:
    rows = []
    for a in inp.manifest.get("artifacts") or []:
        mad = a.get("max_abs_diff")
        rows.append([a["file"], a["format"], a["quant"], _num(a.get("bytes")),
                     "—" if not isinstance(mad, (int, float)) else f"{mad:.2e}", _pct(a.get("top1_agreement_val", a.get("top1_agreement"))),
                     a.get("status", "ok")])
    return _table(["artifact", "format", "quant", "bytes", "max abs diff", "top-1 agreement (validation)", "status"], rows) \
        if rows else "<p class='note'>No exported artifacts.</p>"


def _run_tables(inp: ReportInputs) -> list[str]:
    out = []
    arts = {a["sha256"]: a for a in inp.manifest.get("artifacts") or []}
    p50 = p50_by_artifact(inp)
    if p50:
        out.append("<h3>Measured on the boards (profiles)</h3>")
        out.append(_table(["board", "artifact", "p50 ms"],
                          [[b, f"{arts[s]['name']}:{arts[s]['format']}/{arts[s]['quant']}", f"{v:.3f}"]
                           for (b, s), v in sorted(p50.items(), key=lambda kv: (kv[0][0], arts[kv[0][1]]["file"]))]))
    if inp.plan:
        out.append("<h3>Placement (plan)</h3>")
        out.append(_table(["board", "sub-model", "variant", "predicted ms", "estimated"],
                          [[p["board"], p["submodel"], f"{p.get('format', '?')}/{p.get('quant', '?')}",
                            f"{p['predicted_ms']:.3f}", "yes" if p.get("estimated") else "no"]
                           for p in inp.plan["placements"]]))
        g = inp.plan.get("greedy_makespan_ms")
        out.append(f"<p>Makespan (exact, {_esc(inp.plan.get('solver'))}): {inp.plan['makespan_ms']:.3f} ms; greedy: "
                   + (f"{g:.3f} ms" if isinstance(g, (int, float)) else "no placement") + ".</p>")
    if inp.deployment:
        out.append("<h3>Deployment</h3>")
        out.append(_table(["board", "models", "variant", "endpoint"],
                          [[b["name"], ", ".join(b["models"]), b.get("variant"), b.get("endpoint")]
                           for b in inp.deployment["boards"]]))
    rows = latency_comparison(inp)
    if rows:
        out.append("<h3>Original vs distributed latency</h3>")
        out.append(_table(["what", "ms", "how"], [[r[0], f"{r[1]:.3f}", r[2]] for r in rows]))
    return out


def render_html(inp: ReportInputs, plots) -> str:
    m = inp.manifest
    title = f"ED-ViT build report: {m.get('name') or os.path.basename(inp.build_dir)}"
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_esc(title)}</title>"
             f"<style>{_STYLE}</style></head><body>", f"<h1>{_esc(title)}</h1>",
             f"<p>Model <code>{_esc((m.get('model') or {}).get('name'))}</code>, {len(m.get('submodels') or [])} "
             f"sub-models, generated {_esc(time.strftime('%Y-%m-%d %H:%M:%S %z'))}.</p>", "<h2>Build</h2>"]
    parts += _summary_tables(inp)
    fusion = _fusion_choice_table(inp)
    if fusion:
        parts.append(fusion)
    for key, title_, png, why in plots:
        parts.append(f"<h2 id='{key}'>{_esc(title_)}</h2>")
        if png is None:
            parts.append(f"<p class='note'>Not shown: {_esc(why)}.</p>")
        else:
            data = base64.b64encode(png).decode("ascii")
            parts.append(f"<img alt='{_esc(title_)}' src='data:image/png;base64,{data}'>")
        if key == "bytes":
            parts.append(_artifact_table(inp))
        if key == "sizing":
            parts.append(_sizing_table(inp))
    run = _run_tables(inp)
    if run:
        parts += ["<h2>Run</h2>"] + run
    parts.append("<h2>Sources</h2>")
    parts.append(_table(["input", "file"], [[k, v] for k, v in inp.sources.items()]))
    parts += [f"<p class='note'>{_esc(n)}</p>" for n in inp.notes]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_html_report(build_dir: str, profiles: str | None = None, plan: str | None = None,
                      deployment: str | None = None, out_dir: str | None = None) -> str:
    """report.html + report-plots/*.png into out_dir (default: the build dir); returns report.html's path."""
    from ..artifacts import write_text_atomic
    from ..errors import ArtifactError

    inp = load_inputs(build_dir, profiles, plan, deployment)
    out_dir = os.path.abspath(out_dir or build_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ArtifactError(f"{out_dir}: --out must be a directory (report.html and report-plots/ go there)")
    plots = render_all(inp)
    try:
        os.makedirs(os.path.join(out_dir, PLOTS_DIR), exist_ok=True)
        for key, _, png, _ in plots:
            path = os.path.join(out_dir, PLOTS_DIR, f"{key}.png")
            if png is not None:
                with open(path, "wb") as f:
                    f.write(png)
            elif os.path.exists(path):  # a stale plot from an earlier run would contradict this report
                os.remove(path)
        path = os.path.join(out_dir, "report.html")
        write_text_atomic(path, render_html(inp, plots))
    except OSError as e:
        raise ArtifactError(f"{out_dir}: cannot write the report there ({e.strerror or e}); pass --out DIR "
                            "with a writable directory") from None
    return path
