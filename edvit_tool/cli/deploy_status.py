"""`edvit-tool status`: is each board of a deployment up, on which release, how fast lately."""

from __future__ import annotations

import sys

import click


def _ms(v) -> str:
    return "—" if v is None else f"{v:.2f}"


@click.command("status", epilog="""\b
Examples:
  edvit-tool status --deployment deployment.json
  edvit-tool status --deployment deployment.json --json
\b
Exit code 0 when every board is up, 1 when any is down.
""")
@click.option("--deployment", "deployment", default="deployment.json", show_default=True, metavar="FILE",
              help="deployment.json from `edvit-tool deploy`.")
@click.option("--timeout", "http_timeout", default=2.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds to wait for each worker's answer.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list (one object per board).")
def command(deployment, http_timeout, as_json):
    """Per board: up/down (health over HTTP), release on the board, models, p50 of recent requests, pid."""
    import json

    from ..cluster.deploy import status

    rows = status(deployment, http_timeout=http_timeout)
    down = [r["name"] for r in rows if not r["up"]]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return 1 if down else 0
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 160, highlight=False)
    t = Table(title=f"Deployment {deployment}")
    for col, just in (("board", "left"), ("state", "left"), ("release", "left"), ("models", "left"),
                      ("p50 ms", "right"), ("requests", "right"), ("pid", "right"), ("endpoint", "left")):
        t.add_column(col, justify=just, no_wrap=True)
    for r in rows:
        state = "[green]UP[/]" if r["up"] else "[bold red]DOWN[/]"
        rel = r["release"] or "?"
        if r["release"] and r["release"] != r["deployed_release"]:
            rel += f" [yellow](deployment.json: {r['deployed_release']})[/]"
        p50 = " ".join(f"{m}={_ms(r['p50_ms'].get(m))}" for m in r["models"]) if r["p50_ms"] else "—"
        req = str(sum(v or 0 for v in r["requests"].values())) if r["requests"] else "—"
        t.add_row(r["name"], state, rel, ",".join(r["models"]), p50, req, str(r["pid"] or "—"),
                  r["endpoint"] or "")
    console.print(t)
    for r in rows:
        if r["error"]:
            click.secho(f"{r['name']}: {r['error']}", fg="red" if not r["up"] else "yellow", err=True)
    if down:
        click.secho(f"{len(down)} of {len(rows)} board(s) down: {', '.join(down)}", fg="red", bold=True, err=True)
    return 1 if down else 0
