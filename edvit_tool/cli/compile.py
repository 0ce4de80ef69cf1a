"""`edvit-tool compile`: recipe → build dir (sub-models, fusion head, manifest, reports, artifacts)."""

from __future__ import annotations

import json
import os

import click


def _csv(value):
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


@click.command("compile")
@click.option("--recipe", "recipe_path", required=True, type=click.Path(dir_okay=False),
              help="YAML compile recipe (see recipes/digits.yaml).")
@click.option("--out", "out_dir", default=None, help="Build directory to write [default: build/<recipe name>].")
@click.option("--checkpoint", default=None, help="Override model.checkpoint.")
@click.option("--groups", "-k", type=int, default=None, help="Override split.groups (K sub-models).")
@click.option("--strategy", type=click.Choice(["balanced", "similarity"]), default=None, help="Override split.strategy.")
@click.option("--criterion", type=click.Choice(["taylor", "magnitude"]), default=None, help="Override prune.criterion.")
@click.option("--params-ratio", type=float, default=None, help="Override prune.target.params_ratio (0, 1].")
@click.option("--formats", default=None, help="Override export.formats, e.g. onnx,tflite ('' = none).")
@click.option("--quant", default=None, help="Override export.quant, e.g. fp32,int8-static.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None, help="Override device.")
@click.option("--seed", type=int, default=None, help="Override seed (same seed + same inputs = same build).")
@click.option("--peer", is_flag=True, help="Also build the class-agnostic peer (one pruned ViT at the per-board "
                                           "size, K sub-models' compute) and report its accuracy beside the "
                                           "ensemble; it trains in a second process beside the ensemble when the "
                                           "CPU has cores to spare (recipe peer.parallel).")
@click.option("--resume", is_flag=True, help="Continue an interrupted compile of the same recipe into the same --out: "
                                             "sub-models finished before the crash or Ctrl-C (kept in OUT.partial/) "
                                             "are loaded, not trained again.")
@click.option("--jobs", type=click.IntRange(1), default=1, show_default=True,
              help="Train the groups' sub-models in this many worker processes (CPU threads are split between "
                   "them; one GPU each when several are visible). The build is the same as with --jobs 1.")
@click.option("--boards", "boards_file", default=None, type=click.Path(dir_okay=False),
              help="Override split.boards: boards.yaml with one board per group; each group's sub-model and class "
                   "count are sized for its board (equal predicted latency, same total parameters).")
@click.option("--profiles", "profiles_path", default=None, type=click.Path(dir_okay=False),
              help="Override split.profiles: profiles.json of a --ladder build on those boards (without it, the "
                   "device profiles' `speed` factors size the sub-models).")
@click.option("--ladder", "ladder_dir", default=None, type=click.Path(file_okay=False),
              help="Only write a latency ladder (the recipe's ViT pruned to several widths, random weights) into "
                   "this dir, for `profile --build DIR`; then exit.")
@click.option("--json", "as_json", is_flag=True, help="Print report.json instead of the table.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
def command(recipe_path, out_dir, checkpoint, groups, strategy, criterion, params_ratio, formats, quant, device,
            seed, peer, resume, jobs, boards_file, profiles_path, ladder_dir, as_json, quiet):
    """Compile a fine-tuned timm ViT into K class-wise pruned sub-models + a fusion head.

    \b
    Example:
      edvit-tool compile --recipe recipes/digits.yaml --out build/digits -k 4 --params-ratio 0.25
    Boards of different speeds (one sub-model per board, sized to it):
      edvit-tool compile --recipe R --ladder ladder/
      edvit-tool profile --build ladder/ --boards boards.yaml --out ladder-profiles.json
      edvit-tool compile --recipe R -k 3 --boards boards.yaml --profiles ladder-profiles.json
    """
    from ..config import recipe as recipe_mod
    from ..compile.pipeline import compile_build
    from ..progress import Bars
    from ..report import render_markdown

    overrides = {"model.checkpoint": checkpoint, "split.groups": groups, "split.strategy": strategy,
                 "prune.criterion": criterion, "prune.target.params_ratio": params_ratio,
                 "export.formats": _csv(formats) if formats is not None else None,
                 "export.quant": _csv(quant), "device": device, "seed": seed, "split.boards": boards_file,
                 "split.profiles": profiles_path}
    if formats == "":
        overrides["export.formats"] = []
    recipe = recipe_mod.load(recipe_path, overrides)
    if ladder_dir:
        from ..compile.ladder import write_ladder

        path = write_ladder(recipe, ladder_dir, log=None if quiet else click.echo)
        click.echo(f"Ladder written to {path}; next: edvit-tool profile --build {path} --boards boards.yaml")
        return 0
    if recipe.split.boards:  # a bad boards file fails now, not after the data and teacher passes
        from ..config.boards import boards_from_yaml

        n = len(boards_from_yaml(recipe.split.boards))
        if n != recipe.split.groups:
            from ..errors import RecipeError

            raise RecipeError(f"split.boards: {recipe.split.boards} has {n} boards but split.groups is "
                              f"{recipe.split.groups}; one sub-model per board: pass -k {n}")
    out_dir = out_dir or os.path.join("build", recipe.name)
    if "tflite" in recipe.export.formats:
        from ..logs import preimport_quietly

        preimport_quietly("litert_torch")  # before the progress bars: TensorFlow's load-time notices go to a log
    with Bars(enabled=not (quiet or as_json)) as bars:
        result = compile_build(recipe, out_dir, bars=bars, peer=peer, resume=resume, jobs=jobs)
    if as_json:
        click.echo(json.dumps(result.report, indent=2))
    else:
        click.echo(render_markdown(result.report))
        click.echo(f"Build written to {result.out_dir}")
    _warn_if_peer_wins(result.report)
    from ..report import write_html_report

    html = write_html_report(result.out_dir)
    if not as_json:
        click.echo(f"Report: {html}")
    if result.gate_failures:
        click.echo("Error: accuracy gate failed (artifacts marked failed in the manifest, not shippable): "
                   + "; ".join(result.gate_failures), err=True)
        return 1
    return 0


def _warn_if_peer_wins(report: dict) -> None:
    """The ensemble is only worth its K boards where it beats the one pruned ViT: say so when, on the validation
    split, it does not (the test figures are shown, not used)."""
    peer = report.get("peer") or {}
    fused_val, peer_val = report.get("fused_validation_accuracy"), peer.get("validation_accuracy")
    if not isinstance(fused_val, (int, float)) or not isinstance(peer_val, (int, float)) or fused_val > peer_val:
        return
    click.echo(f"Warning: on the validation split the peer (one class-agnostic pruned ViT of the same size, same "
               f"compute) scores {100 * peer_val:.2f} % vs the fused ensemble's {100 * fused_val:.2f} % "
               f"(test: {100 * peer.get('accuracy', float('nan')):.2f} % vs {100 * report['fused']['accuracy']:.2f} %); "
               "with this task and budget one pruned ViT per board is the better deployment. More compile steps "
               "(finetune.steps) or fewer groups (-k) usually help the ensemble.", err=True)

