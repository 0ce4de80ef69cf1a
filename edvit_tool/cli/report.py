"""`edvit-tool report`: plots + a self-contained report.html for a build (and, optionally, its run)."""

from __future__ import annotations

import click


@click.command("report")
@click.argument("build_dir", metavar="BUILD")
@click.option("--profiles", "profiles", default=None, metavar="FILE",
              help="profiles.json from `edvit-tool profile`: measured latencies.")
@click.option("--plan", "plan", default=None, metavar="FILE",
              help="plan.json from `edvit-tool assign`: per-board latency and makespan (a loop.json beside it "
                   "adds the demo's measured figures).")
@click.option("--deployment", "deployment", default=None, metavar="FILE",
              help="deployment.json from `edvit-tool deploy`: which board runs what.")
@click.option("--out", "out_dir", default=None, metavar="DIR", help="Where report.html goes [default: BUILD].")
def command(build_dir, profiles, plan, deployment, out_dir):
    """Write BUILD/report.html (plots embedded, tables) and the plots as PNGs under report-plots/.

    \b
    Plots: accuracy of the original / fused / peer per exported variant; bytes per sub-model per quantisation;
    per-board latency with the makespan (--plan); original vs distributed latency (--profiles + --plan).
    Missing optional inputs leave their section out, saying why.
    \b
    Example:
      edvit-tool report runs/digits-build --profiles runs/digits-run/profiles.json \\
          --plan runs/digits-run/plan.json --deployment runs/digits-run/deployment.json
    """
    from ..report import write_html_report

    path = write_html_report(build_dir, profiles=profiles, plan=plan, deployment=deployment, out_dir=out_dir)
    click.echo(f"Report: {path}")
    return 0
