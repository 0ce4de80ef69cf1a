"""Regenerate README.md's "Results" block from bench/results/*.json (never typed by hand).

    python scripts/results_section.py [--readme README.md] [--results bench/results]

Rewrites what lies between `<!-- results:start -->` and `<!-- results:end -->`: the date, this machine (nproc, CPU
model), one table per benchmark result found, and the command that reproduces it. Benchmarks without a result
file are listed as not run. Exit 2 with one `Error:` line when the markers are missing or a result is unreadable.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START, END = "<!-- results:start -->", "<!-- results:end -->"

# result file -> (title, command that writes it)
BENCHES = {
    "paper.json": ("Paper-scale sizes and latency (ViT-S/B/L, K sub-models)", "make install board-venv && "
                   ".venv/bin/python bench/paper.py"),
    "compile.json": ("Accuracy: original vs fused ensemble vs class-agnostic peer", ".venv/bin/python bench/compile.py"),
    "export.json": ("Exported artifacts of the demo build", "make demo && .venv/bin/python bench/export.py"),
    "distributed.json": ("Distributed end-to-end latency (loopback boards, CPU quotas)",
                         ".venv/bin/python bench/distributed.py"),
    "worker_overhead.json": ("Worker request overhead", ".venv/bin/python bench/worker_overhead.py"),
    "profile.json": ("SSH and profiling costs", ".venv/bin/python bench/profile_boards.py"),
    "scale.json": ("Compile memory and throughput at scale", ".venv/bin/python bench/scale.py"),
    "accuracy.json": ("Accuracy suite: fused ensemble vs the strong class-agnostic peer (generated tasks)",
                      ".venv/bin/python bench/accuracy.py"),
    "ablate.json": ("Method ablations: fused (fusion kind picked on the validation split) vs the peer, test %",
                    ".venv/bin/python bench/ablate.py TASK K RATIO LABEL [--set ...] [--peer]"),
    "links.json": ("Wire formats over shaped links (K = 4 boards, tc tbf)", ".venv/bin/python bench/links.py"),
    "int8_gate.json": ("int8 through the gated export (float fallback on), per export setting, accuracy-suite builds",
                       ".venv/bin/python bench/int8_gate.py BUILD_DIR ... [--set export.KEY=VALUE ...]"),
    "hetero.json": ("Heterogeneous boards: capacity-aware vs uniform sizing (100 / 50 / 25 % of a core)",
                    ".venv/bin/python bench/hetero.py"),
}


class ResultsError(Exception):
    pass


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what `platform` knows (also used by bench/paper.py)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    except OSError:  # no /proc (not Linux): fall back below
        names = []
    return names[0] if names else (platform.processor() or platform.machine())


def _table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    return out + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]


def _f(v, fmt: str = ".2f", suffix: str = "") -> str:
    return "—" if not isinstance(v, (int, float)) else f"{v:{fmt}}{suffix}"


def render_paper(d: dict) -> list[str]:
    rows = []
    for r in d["rows"]:
        b = r["bytes"]
        rows.append([r["model"], r["k"], _f(100 * r["budget_ratio"], ".1f", " %"), f"{r['params']:,}",
                     _f(r["flops"] / 1e9), _f(b["tflite/fp32"] / 1e6, ".1f"), _f(b["tflite/int8-dynamic"] / 1e6, ".1f"),
                     _f(b["onnx/fp32"] / 1e6, ".1f"), _f(r["size_ratio"]["tflite/fp32"], ".1f", "×"),
                     _f(r["latency_ms"]["tflite/fp32"], ".1f"), _f(r["latency_ratio"]["tflite/fp32"], ".1f", "×"),
                     _f(r["latency_ratio"]["onnx/fp32"], ".1f", "×")])
    best_size = max(d["rows"], key=lambda r: r["size_ratio"]["tflite/fp32"])
    best_lat = max(d["rows"], key=lambda r: r["latency_ratio"]["tflite/fp32"])
    paper = d.get("paper") or {}
    lines = _table(["model", "K", "budget", "params (largest sub-model)", "GFLOPs", "TFLite fp32 MB", "TFLite int8 MB",
                    "ONNX fp32 MB", "size ×", "TFLite ms", "latency × TFLite", "latency × ONNX"], rows)
    lines += ["", f"Paper (ED-ViT, up to): {paper.get('size_ratio')}× smaller, {paper.get('latency_ratio')}× faster. "
                  f"Ours: {best_size['size_ratio']['tflite/fp32']:.1f}× smaller ({best_size['model']}, "
                  f"K={best_size['k']}), {best_lat['latency_ratio']['tflite/fp32']:.1f}× faster "
                  f"({best_lat['model']}, K={best_lat['k']}).",
              "", f"Random weights (structure only: sizes and latency, no accuracy). Budget: {d.get('budget')}. "
                  f"int8 = {d.get('int8')}. Ratios are original ÷ largest sub-model; latency: single image, "
                  f"{d.get('threads')} thread, {d.get('cpu_limit')}, separate processes, median of {_rounds(d)} "
                  f"rounds of per-process p50s. End to end: {_e2e_summary(d.get('end_to_end'))}"]
    e2e = d.get("end_to_end")
    if isinstance(e2e, dict) and e2e.get("rows"):
        lines += ["", f"End to end through the deployed cluster, {e2e['model']} ({e2e.get('variant')}): "
                      f"`.venv/bin/python {e2e['command'].removeprefix('python ')}`", ""]
        lines += _table(["K", "quota per board", "original p50 ms", "ED-ViT e2e p50 ms", "slowest board compute ms",
                         "original ÷ ED-ViT"],
                        [[r["k"], _f(r["quota_per_board"], ".2f", " core"), _f(r["original_p50_ms"], ".1f"),
                          _f(r["edvit_e2e_p50_ms"], ".1f"), _f(r["slowest_board_compute_p50_ms"], ".1f"),
                          _f(r["e2e_ratio"], ".2f", "×")] for r in e2e["rows"]])
        lines += ["", f"{e2e.get('note', '')}; 1-min load average {e2e.get('load_avg_1min')}."]
    return lines


def _e2e_summary(e2e) -> str:
    if isinstance(e2e, dict):
        return "see the next table."
    return f"{e2e}."


def _rounds(d: dict) -> str:
    r = d.get("rounds")
    if not isinstance(r, dict):
        return str(r)
    return ", ".join(f"{v} ({k})" for k, v in r.items())


def render_hetero(d: dict) -> list[str]:
    names = list(d["quotas"])
    rows = []
    for kind, r in d["rows"].items():
        cells = []
        for b in names:
            subs = [s for s, ds in r["assignment"].items() if b in ds]
            what = ", ".join(f"{s} {r['params'][s] / 1000:.0f}k / {r['classes'][s]} cl." for s in subs) or "idle"
            cells.append(f"{what}: {r['per_board_ms'][b]:.3f} ms")
        rows.append([kind, *cells, _f(r["makespan_ms"], ".3f"), f"{r['total_params']:,}",
                     _f(100 * r["fused_accuracy"], ".2f", " %")])
    lm = d["latency_model"]
    held = ", ".join(f"{b} {100 * e['mean_abs_rel_error']:.1f} %" for b, e in lm["held_out"].items())
    return _table(["sizing, placement", *[f"{b} ({d['quotas'][b]:g} core)" for b in names], "makespan ms", "total params",
                   "fused accuracy"], rows) + [
        "", "Makespan uniform ÷ sized: " + ", ".join(f"{k} {v:.2f}×" for k, v in
                                                      d["makespan_ratio_uniform_over_sized"].items())
            + f" (target ≥ 1.5×); fused accuracy uniform − sized: {d['accuracy_gap_pp']:+.2f} pp (target within "
            f"1 pp); the sized boards' measured times differ by {100 * d['sized_measured_spread']:.1f} %. Latency "
            f"model, mean |relative error| on held-out ladder structures: {held}; on the compiled sub-models: "
            f"{100 * lm['compiled_mean_abs_rel_error']:.1f} %. Times: median of {d.get('repeats', 1)} profiling "
            f"rounds of the {d['statistic']} over {d['runs']} back-to-back runs (ONNX fp32, 1 thread, loopback SSH "
            f"boards under cgroup-v1 quotas, on a machine shared with other jobs)."]


def render_compile(d: dict) -> list[str]:
    rows = [[r["variant"], r["k"], _f(100 * r["original_accuracy"], ".2f", " %"),
             _f(100 * r["fused_accuracy"], ".2f", " %"), r.get("fusion_kind", "—"),
             _f(100 * r["peer_accuracy"], ".2f", " %") if r.get("peer_accuracy") is not None else "—",
             _f(100 * r["max_params_ratio"], ".1f", " %"), _f(r["size_ratio"], ".2f", "×")] for r in d["rows"]]
    return _table(["data", "K", "original", "fused", "fusion", "peer", "largest sub-model params", "size ×"], rows)


def render_export(d: dict) -> list[str]:
    rows = [[v["variant"], f"{v['submodel_bytes']:,}", _f(v.get("ratio_vs_fp32"), ".3f"),
             _f(100 * v["fused_accuracy"], ".2f", " %"), _f(v.get("latency_ms_submodel_median"), ".3f"),
             v.get("status", "—")] for v in d["variants"]]
    return _table(["variant", "sub-model bytes", "÷ fp32", "fused accuracy", "sub-model ms (p50)", "status"], rows)


def render_distributed(d: dict) -> list[str]:
    rows = [[r["config"], _f(r.get("slowest_compute_p50_ms")), _f(r.get("e2e_p50_ms")), _f(r.get("e2e_p99_ms")),
             _f(r.get("throughput_rps"), ".1f"), _f(r.get("speedup_vs_original_p50", 1.0), ".2f", "×")]
            for r in d["rows"]]
    return _table(["config", "slowest board compute ms", "e2e p50 ms", "e2e p99 ms", "images/s", "speedup"], rows) \
        + ["", str(d.get("note", ""))]


def render_worker_overhead(d: dict) -> list[str]:
    rows = [[c["case"], c.get("backend", "—"), _f(c.get("direct_p50_ms"), ".3f"), _f(c.get("worker_p50_ms"), ".3f"),
             _f(c.get("overhead_p50_ms"), ".3f"), _f(c.get("worker_rss_mb"), ".1f")] for c in d["cases"]]
    return _table(["case", "backend", "direct p50 ms", "through the worker p50 ms", "overhead ms", "worker RSS MB"],
                  rows)


def render_profile(d: dict) -> list[str]:
    rows = [[k, _f(v.get("p50"), ".3f"), _f(v.get("p99"), ".3f")] for k, v in (d.get("ssh") or {}).items()
            if isinstance(v, dict) and "p50" in v]
    return _table(["SSH measure", "p50 ms", "p99 ms"], rows)


def render_scale(d: dict) -> list[str]:
    rows = [[r["images"], _f(r["peak_rss_bytes"] / 2 ** 30, ".2f", " GiB"), r.get("seconds", "—")]
            for r in d.get("compile") or []]
    tp = d.get("throughput") or {}
    out = _table(["images", "peak RSS", "compile s"], rows) + [
        "", f"Fine-tune throughput, ours ÷ a plain timm loop: {_f(tp.get('ratio'), '.3f')}. {d.get('model', '')}."]
    jobs = [(name, j) for name, j in (d.get("jobs_seconds") or {}).items() if isinstance(j, dict)]
    if jobs:
        stage = [[name, j.get("method", "—"), *(j[k]["prune_finetune_seconds"] for k in
                                                ("jobs1_threads1", "jobs2_threads2", "jobs1_threads2")),
                  _f(j["stage_ratio_jobs2_vs_jobs1_1thread"]), _f(j["stage_ratio_jobs2_vs_jobs1_2threads"])]
                 for name, j in jobs]
        out += ["", "Prune+fine-tune stage seconds with `compile --jobs` (target: --jobs 2 ÷ --jobs 1 ≤ 0.6, and "
                "≤ 1 against one process with 2 threads):", ""]
        out += _table(["recipe", "method", "jobs 1 (1 thread)", "jobs 2 (1 each)", "jobs 1 (2 threads)",
                       "÷ jobs 1", "÷ 2 threads"], stage)
    return out


def _pp(v) -> str:
    return "—" if v is None else f"{100 * v:.2f}"


def render_accuracy(d: dict) -> list[str]:
    lines = []
    for label, run in reversed(list((d.get("runs") or {}).items())):  # newest run first
        srt = sorted(run.get("rows") or [], key=lambda r: (r["k"], r["params_ratio"], r["task"]))
        views = any(r.get("peer_views") is not None for r in srt)  # the reference: the peer run once per view
        rows = [[r["task"], r["k"], f"{100 * r['params_ratio']:.1f} %", _pp(r["original"]), _pp(r["fused"]),
                 _pp(r.get("fused_onnx_fp32")), _pp(r.get("fused_onnx_int8")), _pp(r.get("peer")),
                 *([_pp(r.get("peer_views"))] if views else []),
                 _f(None if r.get("peer") is None else 100 * (r["fused"] - r["peer"]), "+.2f"),
                 _f(100 * (r["fused"] - r["original"]), "+.2f"),
                 _f(r.get("ensemble_seconds"), ".0f"), _f(r.get("peer_seconds"), ".0f")]
                for r in srt]
        head = ["task", "K", "params", "original", "fused", "onnx fp32", "onnx int8", "peer",
                *(["peer × K views (K× its latency)"] if views else []),
                "fused − peer (pp)", "fused − original (pp)", "ensemble s", "peer s"]
        lines += [f"Run `{label}`" + (f" (overrides {run['overrides']})" if run.get("overrides") else "") + ":", ""]
        lines += _table(head, rows) + [""]
    return lines


def render_ablate(d: dict) -> list[str]:
    runs = d.get("runs") or []
    kinds = ("logits", "ensemble", "mlp", "joint")

    def data_key(r):
        return "ff0" if any(str(x).startswith("data.fusion_fraction=0") for x in r.get("set") or []) else "base"

    # a variant's own peer run if there is one (e.g. a learning rate the peer shares), else the plain peer on
    # the same data split (variant "base" or "ff0")
    own = {(r["task"], r["k"], r["ratio"], r["variant"]): r["peer_test"] for r in runs if "peer_test" in r}
    peers = {(r["task"], r["k"], r["ratio"], data_key(r)): r["peer_test"] for r in runs
             if "peer_test" in r and r["variant"] in ("base", "ff0")}
    rows = []
    for r in runs:
        if "peer_test" in r:
            continue
        pick = max((k for k in kinds if f"{k}_val" in r), key=lambda k: r[f"{k}_val"])
        peer = r.get("peer_test_ref", own.get((r["task"], r["k"], r["ratio"], r["variant"]),
                                              peers.get((r["task"], r["k"], r["ratio"], data_key(r)))))
        rows.append([r["task"], r["k"], f"{100 * r['ratio']:.1f} %", r.get("labels") or r["variant"], pick,
                     _pp(r[f"{pick}_test"]), _pp(peer), _f(None if peer is None else 100 * (r[f"{pick}_test"] - peer),
                                                         "+.2f"), _pp(r.get("orig_test"))])
    return _table(["task", "K", "params", "variant", "fusion (val)", "fused", "peer", "fused − peer (pp)",
                   "original"], rows) + ["", d.get("about", "")]


def render_links(d: dict) -> list[str]:
    rows = [[f"{r['rate_mbit']:.0f} Mbit/s", r["wire"], f"{r['bytes_per_image_per_board']:,.0f}",
             _f(r["e2e_p50_ms"], ".1f"), _f(r["physical_limit_ms"], ".1f"), _f(r["e2e_over_limit"], ".2f"),
             _f(r.get("e2e_over_limit_per_request_p50"), ".2f"),
             _f(r.get("e2e_over_limit_per_request_with_preprocessing_p50"), ".2f"),
             _f(r.get("fp32_over_best_p50"), ".2f")] for r in d.get("rows") or []]
    tr = d.get("triton_reference")
    if tr:  # the same requests through the exported ensemble on one unthrottled local Triton server
        rows.append(["Triton, loopback", tr.get("wire", "fp32"), f"{tr['bytes_per_image']:,.0f}",
                     _f(tr["e2e_p50_ms"], ".1f"), "—", "—", "—", "—", "—"])
    note = str(d.get("note", "")).rstrip()
    notes = [note + ("" if not note or note.endswith(".") else ".")]
    if tr:
        notes.append(f"Triton row: {d.get('triton_reference_note', '')} ({tr.get('server', 'tritonserver')}; "
                     f"host preprocessing {_f(tr.get('host_preprocess_p50_ms'), '.1f')} ms of it).")
    elif d.get("triton_reference_note"):
        notes.append(f"Triton reference: {d['triton_reference_note']}.")
    if any("e2e_over_limit_per_request_p50" in r for r in d.get("rows") or []):
        notes.append("Per request: p50 over requests of e2e ÷ (that request's slowest board's compute + transfer + "
                     "round trip), and the same with that board's and the host's preprocessing in the limit.")
    return _table(["link", "wire", "bytes / image / board", "e2e p50 ms", "physical limit ms", "e2e ÷ limit",
                   "per request", "per request, with preprocessing", "fp32 ÷ best"], rows) + [""] + [" ".join(notes)]


def render_int8_gate(d: dict) -> list[str]:
    """One table per run: validation and held-out int8 − fp32 (fused; ONNX unless the run names its format),
    bytes, float groups, per build."""
    out = []
    for label, run in d["runs"].items():
        rows = []
        for r in run["rows"]:
            ok = r["val_int8"] is not None
            rows.append([r["build"], r["setting"] or "the build's own",
                         _f(100 * (r["val_int8"] - r["val_fp32"]), "+.2f") if ok else "failed",
                         _f(100 * (r["test_int8"] - r["test_fp32"]), "+.2f") if ok else "failed",
                         _f(r["int8_bytes_ratio"], ".2f"), sum(len(v) for v in r["float_layers"].values()),
                         _f(r["seconds"], ".0f")])
        fmt = run.get("format", "onnx")
        out += [f"Run `{label}` ({fmt}):", ""] + _table(["build", "setting", "validation int8 − fp32 (pp)",
                                                  "test int8 − fp32 (pp)", "int8 bytes ÷ fp32",
                                                  "float groups kept", "export s"], rows) + [""]
    return out


RENDERERS = {"int8_gate.json": render_int8_gate, "ablate.json": render_ablate, "accuracy.json": render_accuracy, "links.json": render_links, "hetero.json": render_hetero, "paper.json": render_paper, "compile.json": render_compile, "export.json": render_export,
             "distributed.json": render_distributed, "worker_overhead.json": render_worker_overhead,
             "profile.json": render_profile, "scale.json": render_scale}


def section(results_dir: str) -> str:
    lines = [START, "",
             f"Generated {time.strftime('%Y-%m-%d')} by `python scripts/results_section.py` from `bench/results/*.json`"
             f" on {os.cpu_count()} × {cpu_model()} ({platform.system()} {platform.machine()}). Timings "
             "depend on the machine and its load. Rerun a benchmark, then the script, to refresh this block.", ""]
    missing = []
    for name, (title, command) in BENCHES.items():
        path = os.path.join(results_dir, name)
        if not os.path.isfile(path):
            missing.append(f"`{command}`")
            continue
        try:
            with open(path, encoding="utf-8") as f:
                doc = json.load(f)
            body = RENDERERS[name](doc)
        except (OSError, ValueError) as e:
            raise ResultsError(f"{path}: not readable JSON ({e}); rerun `{command}`") from None
        except (KeyError, TypeError) as e:
            raise ResultsError(f"{path}: lacks {e} (written by an older benchmark?); rerun `{command}`") from None
        written = time.strftime("%Y-%m-%d %H:%M", time.localtime(os.path.getmtime(path)))
        lines += [f"#### {title}", "", f"`{command}` (result written {written})", ""] + body + [""]
    if missing:
        lines += ["Not run for this snapshot: " + ", ".join(missing) + ".", ""]
    lines.append(END)
    return "\n".join(lines)


def rewrite(readme: str, results_dir: str) -> str:
    try:
        with open(readme, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ResultsError(f"{readme}: cannot read ({e.strerror})") from None
    i, j = text.find(START), text.find(END)
    if i < 0 or j < i:
        raise ResultsError(f"{readme}: no `{START}` ... `{END}` block; add both markers where the results go")
    new = text[:i] + section(results_dir) + text[j + len(END):]
    with open(readme, "w", encoding="utf-8") as f:
        f.write(new)
    return new


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--readme", default=os.path.join(REPO, "README.md"))
    ap.add_argument("--results", default=os.path.join(REPO, "bench", "results"))
    args = ap.parse_args(argv)
    try:
        rewrite(args.readme, args.results)
    except ResultsError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 2
    print(f"rewrote the results block of {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
