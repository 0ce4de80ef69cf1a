"""The report's figures as PNG bytes (matplotlib, Agg canvas: no display, no pyplot global state).

Each `*_plot(inp)` returns (png bytes, None) or (None, why it is left out) when its inputs are missing.
"""

from __future__ import annotations

import io

from .inputs import ReportInputs

SUBMODEL_COLOURS = ["#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#eeca3b", "#b279a2", "#ff9da6",
                    "#9d755d", "#bab0ac"]


def _figure(width: float = 7.5, height: float = 4.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _ok_artifacts(manifest: dict) -> list[dict]:
    return [a for a in manifest.get("artifacts") or [] if a.get("status", "ok") != "failed"]


def p50_by_artifact(inp: ReportInputs) -> dict[tuple[str, str], float]:
    """{(board, sha256): p50 ms} of the usable profile results of this build's artifacts."""
    if not inp.profiles:
        return {}
    shas = {a["sha256"] for a in inp.manifest.get("artifacts") or []}
    out = {}
    for r in inp.profiles.get("results") or []:
        lat = r.get("latency_ms") or {}
        if r.get("sha256") in shas and r.get("usable", True) and isinstance(lat.get("p50"), (int, float)):
            out[(r["board"], r["sha256"])] = float(lat["p50"])
    return out


def accuracy_plot(inp: ReportInputs):
    acc = inp.manifest.get("accuracy") or {}
    variants = []
    if isinstance(acc.get("fused"), (int, float)):
        variants.append(("torch (fp32)", acc["fused"]))
    variants += [(k, v) for k, v in sorted((acc.get("exported") or {}).items()) if isinstance(v, (int, float))]
    if not variants:
        return None, "the build records no fused accuracy (manifest accuracy.fused / accuracy.exported)"
    fig, ax = _figure(7.5, 4.2)
    xs = range(len(variants))
    ax.bar(xs, [100 * v for _, v in variants], color="#4c78a8", label="ED-ViT fused")
    for x, (_, v) in zip(xs, variants):
        ax.text(x, 100 * v, f"{100 * v:.1f}", ha="center", va="bottom", fontsize=8)
    lines = [("original ViT", acc.get("original"), "#222222", "-")]
    peer = (inp.summary or {}).get("peer") or {}
    lines.append(("peer: one pruned ViT", peer.get("accuracy"), "#e45756", "--"))
    for label, v, colour, style in lines:
        if isinstance(v, (int, float)):
            ax.axhline(100 * v, color=colour, linestyle=style, linewidth=1.5, label=f"{label} ({100 * v:.1f} %)")
    ax.set_xticks(list(xs), [n for n, _ in variants], rotation=25, ha="right", fontsize=8)
    ax.set_ylabel("top-1 accuracy on the held-out set (%)")
    ax.set_ylim(0, 105)
    ax.set_title("Accuracy: original vs fused ensemble per exported variant")
    ax.legend(loc="lower right", fontsize=8)
    return _png(fig), None


def bytes_plot(inp: ReportInputs):
    arts = _ok_artifacts(inp.manifest)
    if not arts:
        return None, "the build has no exported artifacts (run `edvit-tool export`)"
    names = list(dict.fromkeys([s["name"] for s in inp.manifest.get("submodels") or []] + [a["name"] for a in arts]))
    variants = list(dict.fromkeys(f"{a['format']}/{a['quant']}" for a in arts))
    size = {(a["name"], f"{a['format']}/{a['quant']}"): a["bytes"] for a in arts}
    fig, ax = _figure(9.0, 4.2)
    width = 0.8 / len(variants)
    for j, v in enumerate(variants):
        xs = [i + (j - (len(variants) - 1) / 2) * width for i in range(len(names))]
        ax.bar(xs, [size.get((n, v), 0) / 1e6 for n in names], width, label=v,
               color=SUBMODEL_COLOURS[j % len(SUBMODEL_COLOURS)])
    orig = (inp.manifest.get("model") or {}).get("bytes") or 0
    if orig > 0:
        ax.axhline(orig / 1e6, color="#222222", linestyle="--", linewidth=1.2,
                   label=f"original fp32 state dict ({orig / 1e6:.2f} MB)")
    ax.set_yscale("log")
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("artifact size (MB, log scale)")
    ax.set_title("Bytes per sub-model per format / quantisation")
    ax.legend(fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _png(fig), None


def board_latency_plot(inp: ReportInputs):
    if inp.plan:
        return _plan_bars(inp), None
    p50 = p50_by_artifact(inp)
    if not p50:
        return None, "needs --plan (per-board predicted latency and makespan) or --profiles (measured latencies)"
    arts = {a["sha256"]: a for a in inp.manifest.get("artifacts") or []}
    boards = list(dict.fromkeys(b for b, _ in p50))
    keys = list(dict.fromkeys(f"{arts[s]['name']}:{arts[s]['format']}/{arts[s]['quant']}" for _, s in p50))
    fig, ax = _figure(8.0, 4.2)
    width = 0.8 / len(keys)
    for j, key in enumerate(keys):
        vals = [next((v for (b, s), v in p50.items() if b == board and
                      f"{arts[s]['name']}:{arts[s]['format']}/{arts[s]['quant']}" == key), 0.0) for board in boards]
        xs = [i + (j - (len(keys) - 1) / 2) * width for i in range(len(boards))]
        ax.bar(xs, vals, width, label=key, color=SUBMODEL_COLOURS[j % len(SUBMODEL_COLOURS)])
    ax.set_xticks(range(len(boards)), boards)
    ax.set_ylabel("p50 latency, batch 1 (ms)")
    ax.set_title("Measured latency per artifact per board (no plan given: no makespan)")
    ax.legend(fontsize=7, ncol=2)
    return _png(fig), None


def _plan_bars(inp: ReportInputs) -> bytes:
    plan = inp.plan
    boards = sorted({p["board"] for p in plan["placements"]} | set(plan.get("boards") or {}))
    subs = list(dict.fromkeys(p["submodel"] for p in plan["placements"]))
    fig, ax = _figure(7.5, 4.2)
    bottom = [0.0] * len(boards)
    for j, s in enumerate(subs):
        vals = [sum(p["predicted_ms"] for p in plan["placements"] if p["board"] == b and p["submodel"] == s)
                for b in boards]
        ax.bar(range(len(boards)), vals, 0.6, bottom=bottom, label=s, color=SUBMODEL_COLOURS[j % len(SUBMODEL_COLOURS)])
        bottom = [a + v for a, v in zip(bottom, vals)]
    transfer = [float(((plan.get("boards") or {}).get(b) or {}).get("transfer_ms") or 0.0) for b in boards]
    if any(transfer):
        ax.bar(range(len(boards)), transfer, 0.6, bottom=bottom, label="input transfer", color="#bab0ac")
    ax.axhline(plan["makespan_ms"], color="#e45756", linewidth=1.8,
               label=f"makespan (exact) {plan['makespan_ms']:.2f} ms")
    greedy = plan.get("greedy_makespan_ms")
    if isinstance(greedy, (int, float)):
        ax.axhline(greedy, color="#222222", linestyle=":", linewidth=1.5, label=f"greedy makespan {greedy:.2f} ms")
    measured = ((inp.loop or {}).get("measured") or {}).get("makespan_p50_ms")
    if isinstance(measured, (int, float)):
        ax.axhline(measured, color="#54a24b", linestyle="--", linewidth=1.5,
                   label=f"measured makespan p50 {measured:.2f} ms")
    ax.set_xticks(range(len(boards)), boards)
    ax.set_ylabel("predicted time per image (ms)")
    ax.set_title("Per-board latency (plan) and the makespan")
    ax.legend(fontsize=7)
    return _png(fig)


def latency_comparison(inp: ReportInputs) -> list[tuple[str, float, str]]:
    """[(label, ms, how it was obtained)]: the original model vs the distributed ensemble."""
    rows = []
    m, p50 = inp.manifest, p50_by_artifact(inp)
    arts = {a["sha256"]: a for a in m.get("artifacts") or []}
    subs = {s["name"]: s for s in m.get("submodels") or []}
    orig_flops = (m.get("model") or {}).get("flops") or 0
    if p50 and orig_flops:
        # the original is not exported, so scale the largest sub-model's measured fp32 time by FLOPs
        cands = [(subs[arts[s]["name"]]["flops"], v, b, arts[s]) for (b, s), v in p50.items()
                 if arts[s]["name"] in subs and arts[s]["quant"] == "fp32" and subs[arts[s]["name"]].get("flops")]
        if cands:
            flops, v, board, art = max(cands, key=lambda c: (c[0], c[1]))
            rows.append(("original ViT (estimated)", v * orig_flops / flops,
                         f"{art['name']}:{art['format']}/fp32 on {board} × FLOPs ratio {orig_flops / flops:.2f}"))
    if inp.plan:
        chosen = {(p["board"], p["sha256"]) for p in inp.plan["placements"] if p.get("sha256")}
        by_board: dict = {}
        for (b, s), v in p50.items():
            by_board.setdefault(b, {})[s] = v
        want = {p["sha256"] for p in inp.plan["placements"] if p.get("sha256")}
        full = [b for b, d in by_board.items() if want <= set(d)]
        if full:
            b = full[0]
            rows.append(("all sub-models on one board", sum(by_board[b][s] for s in want),
                         f"sum of the planned artifacts' p50 measured on {b}"))
        elif chosen:
            rows.append(("all sub-models on one board", sum(p["predicted_ms"] for p in inp.plan["placements"]),
                         "sum of the plan's predicted times"))
        rows.append(("distributed (predicted makespan)", float(inp.plan["makespan_ms"]), "plan.json, exact solver"))
    loop = inp.loop or {}
    seq, got = loop.get("sequential") or {}, loop.get("measured") or {}
    for label, v, how in (("all sub-models + fusion, one process", seq.get("p50_ms"), "loop.json, measured p50"),
                          ("distributed (measured makespan)", got.get("makespan_p50_ms"), "loop.json, p50"),
                          ("distributed end to end", got.get("latency_p50_ms"), "loop.json, p50 via coordinator")):
        if isinstance(v, (int, float)):
            rows.append((label, float(v), how))
    return rows


def original_vs_distributed_plot(inp: ReportInputs):
    rows = latency_comparison(inp)
    if not rows:
        return None, "needs --profiles with --plan, or a loop.json beside the plan / deployment"
    fig, ax = _figure(7.5, 0.9 + 0.55 * len(rows))
    ys = list(range(len(rows)))[::-1]
    colours = ["#222222" if "original" in r[0] else "#f58518" if "one" in r[0] else "#4c78a8" for r in rows]
    ax.barh(ys, [r[1] for r in rows], color=colours)
    for y, r in zip(ys, rows):
        ax.text(r[1], y, f" {r[1]:.2f} ms", va="center", fontsize=8)
    ax.set_yticks(ys, [r[0] for r in rows], fontsize=8)
    ax.set_xlabel("latency per image, batch 1 (ms)")
    ax.set_xlim(0, 1.25 * max(r[1] for r in rows))
    ax.set_title("Original vs distributed latency")
    return _png(fig), None


PLOTS = [("accuracy", "Accuracy", accuracy_plot), ("bytes", "Size", bytes_plot),
         ("boards", "Per-board latency", board_latency_plot),
         ("latency", "Original vs distributed", original_vs_distributed_plot)]


def render_all(inp: ReportInputs) -> list[tuple[str, str, bytes | None, str | None]]:
    """[(key, title, png or None, why missing)] in report order."""
    out = []
    for key, title, fn in PLOTS:
        png, why = fn(inp)
        out.append((key, title, png, why))
    if inp.manifest.get("sizing"):  # only builds compiled with --boards have this section at all
        png, why = sizing_plot(inp)
        out.append(("sizing", "Sized for the boards", png, why))
    return out


def sizing_plot(inp: ReportInputs):
    """Capacity-aware sizing (compile --boards): predicted time per board for the sized sub-models beside each
    board running a sub-model of the uniform budget, with both makespans."""
    s = inp.manifest.get("sizing")
    if not s:
        return None, "the build was not sized for boards (compile --boards)"
    boards, sized, uniform = s["boards"], s["predicted_ms"], s["uniform_predicted_ms"]
    fig, ax = _figure(7.5, 4.0)
    xs = range(len(boards))
    ax.bar([x - 0.2 for x in xs], uniform, 0.4, label="uniform budget", color="#bab0ac")
    ax.bar([x + 0.2 for x in xs], sized, 0.4, label="sized for the board", color="#4c78a8")
    ax.axhline(max(uniform), color="#222222", linestyle=":", linewidth=1.5,
               label=f"uniform makespan {max(uniform):.3g} ms")
    ax.axhline(max(sized), color="#e45756", linewidth=1.8, label=f"sized makespan {max(sized):.3g} ms")
    ax.set_xticks(list(xs), [f"g{i}→{b}" for i, b in enumerate(boards)], fontsize=8)
    ax.set_ylabel(f"predicted {s.get('latency_stat', 'p50')} per image (ms)")
    ax.set_title("Sub-models sized to their boards (predicted by the per-board latency model)")
    ax.legend(fontsize=7)
    return _png(fig), None
