"""`edvit-tool demo`: the whole story on scikit-learn's bundled digits, no downloads."""

from __future__ import annotations

import os

import click


@click.command("demo")
@click.option("--recipe", "recipe_path", default="recipes/digits.yaml", show_default=True,
              type=click.Path(dir_okay=False), help="Demo recipe.")
@click.option("--out", "out_dir", default="runs/digits-build", show_default=True, help="Build directory.")
@click.option("--retrain", is_flag=True, help="Retrain the demo checkpoint even if one is cached.")
@click.option("--train-steps", default=1500, show_default=True, help="Training steps for the demo checkpoint.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None, help="Override device.")
def command(recipe_path, out_dir, retrain, train_steps, device):
    """Train a small timm ViT on digits (cached under runs/), compile it with the demo recipe (K=4) and print the
    report.

    \b
    Example:
      edvit-tool demo                 # or: make demo
    """
    from ..config import recipe as recipe_mod
    from ..demo_model import train_demo_model
    from ..pipeline import compile_build
    from ..progress import Bars
    from ..report import render_markdown

    recipe = recipe_mod.load(recipe_path, {"device": device})
    ckpt = recipe["model"]["checkpoint"]
    with Bars(enabled=True) as bars:
        if retrain or not os.path.isfile(ckpt):
            bars.log(f"training the demo ViT on digits → {ckpt} (cached for next time)")
            acc = train_demo_model(recipe, ckpt, steps=train_steps, bars=bars)
            bars.log(f"demo ViT test accuracy: {acc:.4f}")
        else:
            bars.log(f"using cached demo checkpoint {ckpt} (--retrain to rebuild)")
        result = compile_build(recipe, out_dir, bars=bars)
    click.echo(render_markdown(result.report))
    click.echo(f"Build written to {result.out_dir}")
    return 1 if result.gate_failures else 0
