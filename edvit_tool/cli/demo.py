"""`edvit-tool demo`: the whole story on scikit-learn's bundled digits, no downloads."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from ..config import recipe as recipe_mod


def _reusable_build(out_dir: str, recipe: "recipe_mod.Recipe", ckpt: str, peer: bool = False) -> str | None:
    """Why the build in out_dir can stand for this recipe (None: it cannot): complete, made from the same
    resolved recipe, and not older than the checkpoint."""
    from ..config import recipe as recipe_mod

    need = [os.path.join(out_dir, n) for n in ("manifest.json", "recipe.resolved.yaml", "report.json")]
    if not all(os.path.isfile(p) for p in need):
        return None
    with open(need[1], encoding="utf-8") as f:
        if f.read() != recipe_mod.dump(recipe):
            return None
    if os.path.getmtime(ckpt) > os.path.getmtime(need[0]):
        return None
    if peer:
        import json

        with open(need[2], encoding="utf-8") as f:
            if not json.load(f).get("peer"):
                return None
    return f"{out_dir} was built from this very recipe and checkpoint"


def _pct(v) -> str:
    return "—" if v is None else f"{100 * v:.2f} %"


def _ms(v) -> str:
    return "—" if v is None else f"{v:.2f} ms"


def _mb(b) -> str:
    return f"{b / 1e6:.3f} MB"


def _print_loop(res: dict) -> None:
    exp, got, seq, plan = res["expected"], res["measured"], res["sequential"], res["plan"]
    boards = res["deployment"]["boards"]
    click.echo("")
    click.echo(f"## The loop: {len(boards)} {'local boards (all this machine)' if res['transport'] == 'local' else 'SSH boards'}")
    for name, b in boards.items():
        click.echo(f"  {name:<10} {', '.join(b['models']):<12} {b['variant']:<28} {b['endpoint']}")
    click.echo(f"  fusion head on the coordinator: {res['fused']['fusion']}")
    click.echo("")
    n = got["images"]
    click.echo(f"Accuracy through the deployment ({n} held-out images): {_pct(got['accuracy'])}")
    click.echo(f"  same artifacts run here (expected):  {_pct(exp['accuracy'])}"
               + (f"   ({res['mismatched_predictions']} of {n} predictions differ)"
                  if res["mismatched_predictions"] else f"   (all {n} predictions identical)"))
    if exp["manifest_accuracy"] is not None:
        click.echo(f"  build's exported figure:             {_pct(exp['manifest_accuracy'])}   ({exp['manifest_note']})")
    else:
        click.echo(f"  build's exported figure: n/a — {exp['manifest_note']}")
    if exp["manifest_accuracy"] is not None and not exp["manifest_strict"] \
            and exp["manifest_accuracy"] != got["accuracy"]:
        click.secho("  (the build's figure differs only through the fusion head the deployment runs)", fg="yellow")
    mark = "EQUAL" if res["accuracy_ok"] else "DIFFERENT"
    click.secho(f"  → {mark}", fg="green" if res["accuracy_ok"] else "red", bold=True)
    click.echo(f"Latency per image (batch 1, end to end through the coordinator): p50 {_ms(got['latency_p50_ms'])}, "
               f"p99 {_ms(got['latency_p99_ms'])}")
    click.echo(f"Throughput (batches of {got['throughput_batch']}, {got['throughput_concurrency']} concurrent "
               f"callers): {got['throughput_images_per_s']:.0f} images/s; batched answers agree with batch-1 ones "
               f"on {got['batched_agree']}/{n}")
    if got["degraded"]:
        click.secho(f"{got['degraded']} answers were DEGRADED (a board missed its deadline or went down)", fg="red")
    o, f = res["original"], res["fused"]
    rows = [("", "original ViT (fp32, torch)", "ED-ViT distributed"),
            ("accuracy (held-out)", _pct(o["accuracy"]), f"{_pct(got['accuracy'])} through the boards"),
            ("parameters", f"{o['params']:,}", f"{f['params_total']:,} in {len(exp['variants'])} sub-models "
                                               f"(largest {f['params_largest']:,})"),
            ("size", f"{_mb(o['bytes'])} state dict", f"{_mb(f['artifact_bytes_total'])} artifacts, largest board "
                                                        f"{_mb(f['artifact_bytes_largest_board'])}"),
            ("latency p50, batch 1", f"{_ms(seq['p50_ms'])} all K sub-models in sequence on one board*",
             f"{_ms(got['makespan_p50_ms'])} slowest board (measured makespan), {_ms(got['latency_p50_ms'])} "
             "end to end"),
            ("latency p99, batch 1", f"{_ms(seq['p99_ms'])}", f"{_ms(got['makespan_p99_ms'])} / "
                                                               f"{_ms(got['latency_p99_ms'])}"),
            ("predicted makespan", "", f"{plan['makespan_ms']:.3f} ms exact, "
                                       + (f"{plan['greedy_makespan_ms']:.3f} ms greedy"
                                          if plan["greedy_makespan_ms"] is not None else "greedy: no placement"))]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    click.echo("")
    for r in rows:
        click.echo(f"  {r[0]:<{w0}}  {r[1]:<{w1}}  {r[2]}")
    click.echo("  * the deployed artifacts + fusion head run one after another in one process here (1 thread)")
    if res["transport"] == "local":
        click.echo("  Local boards share this machine's cores, so distributing cannot beat the sequential run "
                   "here; on real boards each sub-model gets its own CPU.")
    click.echo(f"Files: {res['profile']['path']}, {res['plan']['path']}, {res['deployment']['path']}, "
               f"{os.path.join(res['run_dir'], 'loop.json')}")


@click.command("demo")
@click.option("--recipe", "recipe_path", default="recipes/digits.yaml", show_default=True,
              type=click.Path(dir_okay=False), help="Demo recipe.")
@click.option("--out", "out_dir", default="runs/digits-build", show_default=True, help="Build directory.")
@click.option("--run-dir", "run_dir", default=None,
              help="Where profiles.json, plan.json, deployment.json go [default: the build's sibling, "
                   "runs/digits-run for runs/digits-build].")
@click.option("--retrain", is_flag=True, help="Retrain the demo checkpoint even if one is cached.")
@click.option("--rebuild", is_flag=True, help="Compile (and profile) again even if the build matches the recipe.")
@click.option("--train-steps", default=1500, show_default=True, help="Training steps for the demo checkpoint.")
@click.option("--seed", type=click.IntRange(0), default=None,
              help="Seed for the demo checkpoint's training and the compile [default: the recipe's]. A seed other "
                   "than the recipe's gets its own checkpoint and build dir (suffix -seedN).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None, help="Override device.")
@click.option("--no-boards", is_flag=True, help="Stop after compiling: no profile/assign/deploy/infer.")
@click.option("--ssh-boards", "ssh_boards", type=click.Path(dir_okay=False), default=None,
              help="boards.yaml: run the loop on these boards over SSH instead of local workers.")
@click.option("--local-boards", type=click.IntRange(1), default=None,
              help="Number of local boards [default: one per sub-model].")
@click.option("--known-hosts", "known_hosts", type=click.Path(dir_okay=False), default=None,
              help="--ssh-boards: known_hosts file [default: ~/.ssh/known_hosts].")
@click.option("--peer/--no-peer", default=True, show_default=True,
              help="Also build the class-agnostic peer (one pruned ViT at the per-board size, K sub-models' "
                   "compute) and report it beside the ensemble. It trains in a second process beside the "
                   "ensemble when the CPU has cores to spare (peer.parallel); --no-peer saves that work.")
@click.option("--runs", default=30, show_default=True, type=click.IntRange(1),
              help="Timed runs per artifact when profiling.")
def command(recipe_path, out_dir, run_dir, retrain, rebuild, train_steps, seed, device, no_boards, ssh_boards,
            local_boards, known_hosts, peer, runs):
    """Train a small timm ViT on digits (cached under runs/), compile it with the demo recipe (K=4), then run the
    whole loop: profile the artifacts on K local boards (or --ssh-boards), assign, deploy, send the whole
    held-out set through the deployment, compare with the build, stop the workers.

    \b
    Example:
      edvit-tool demo                 # or: make demo
      edvit-tool demo --ssh-boards boards.yaml
    \b
    A second run reuses the checkpoint, the build (same resolved recipe) and the profiles. Exit 1 if the
    accuracy through the deployment differs from the build's (or a gate failed), 2 on bad input.
    """
    import json

    from ..config import recipe as recipe_mod
    from ..demo_model import train_demo_model
    from ..progress import Bars
    from ..report import render_markdown

    recipe = recipe_mod.load(recipe_path, {"device": device})
    if seed is not None and seed != recipe.seed:
        recipe = recipe_mod.load(recipe_path, {"device": device, "seed": seed})
        stem, ext = os.path.splitext(recipe.model.checkpoint)
        recipe.model.checkpoint = f"{os.path.dirname(stem)}-seed{seed}/{os.path.basename(stem)}{ext}"
        out_dir = f"{out_dir.rstrip('/')}-seed{seed}"
    ckpt = recipe.model.checkpoint
    if "tflite" in recipe.export.formats:
        from ..logs import preimport_quietly

        preimport_quietly("litert_torch")  # before the progress bars: TensorFlow's load-time notices go to a log
    with Bars(enabled=True) as bars:
        trained = False
        if retrain or not os.path.isfile(ckpt):
            bars.log(f"training the demo ViT on digits → {ckpt} (cached for next time)")
            acc = train_demo_model(recipe, ckpt, steps=train_steps, bars=bars)
            bars.log(f"demo ViT test accuracy: {acc:.4f}")
            trained = True
        else:
            bars.log(f"using cached demo checkpoint {ckpt} (--retrain to rebuild)")
        why = None if (rebuild or trained) else _reusable_build(out_dir, recipe, ckpt, peer)
        if why:
            bars.log(f"reusing the build: {why} (--rebuild to compile again)")
            with open(os.path.join(out_dir, "report.json"), encoding="utf-8") as f:
                report = json.load(f)
            gate_failures = report.get("gate_failures") or []
        else:
            from ..compile.pipeline import compile_build

            result = compile_build(recipe, out_dir, bars=bars, peer=peer)
            report, gate_failures = result.report, result.gate_failures
    click.echo(render_markdown(report))
    click.echo(f"Build: {os.path.abspath(out_dir)}")
    if gate_failures:
        click.secho("accuracy gate failed (those artifacts are marked failed and not deployed): "
                    + "; ".join(gate_failures), fg="red", err=True)
    if no_boards:
        from ..report import write_html_report

        click.echo(f"Report: {write_html_report(out_dir)}")
        return 1 if gate_failures else 0

    from ..loop import run_dir_for, run_loop

    run_dir = run_dir or run_dir_for(out_dir)
    res = run_loop(out_dir, run_dir, boards_file=ssh_boards, local_boards=local_boards, runs=runs,
                   known_hosts=known_hosts, reprofile=rebuild,
                   log=lambda m: click.echo(m, err=True))
    _print_loop(res)
    from ..report import write_html_report

    html = write_html_report(out_dir, profiles=res["profile"]["path"], plan=res["plan"]["path"],
                             deployment=res["deployment"]["path"])
    click.echo(f"Report: {html}")
    if not res["accuracy_ok"]:
        click.secho("Error: the accuracy through the deployment differs from the one it must reproduce",
                    fg="red", bold=True, err=True)
    failed_stops = [r["name"] for r in res["stopped"] if r["error"]]
    if failed_stops:
        click.secho(f"worker(s) on {', '.join(failed_stops)} may still run: edvit-tool stop --deployment "
                    f"{res['deployment']['path']}", fg="red", err=True)
    return 0 if res["ok"] and not gate_failures else 1
