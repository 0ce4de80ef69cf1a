"""`edvit-tool stop`: stop every worker of a deployment."""

from __future__ import annotations

import click


@click.command("stop", epilog="""\b
Example:
  edvit-tool stop --deployment deployment.json
\b
Each worker gets SIGTERM (it finishes in-flight requests), then SIGKILL after 10 s. The release stays on the
board; `edvit-tool deploy` starts workers again. Exit code 1 if a board could not be reached.
""")
@click.option("--deployment", "deployment", default="deployment.json", show_default=True, metavar="FILE",
              help="deployment.json from `edvit-tool deploy`.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list (one object per board).")
def command(deployment, as_json):
    """Stop the workers of every board in a deployment."""
    import json

    from ..cluster.deploy import stop

    rows = stop(deployment)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        for r in rows:
            if r["error"]:
                click.secho(f"{r['name']}: NOT STOPPED: {r['error']}", fg="red", bold=True, err=True)
            elif r["stopped"]:
                how = ", ".join(f"pid {p} ({'SIGKILL' if r['signals'].get(str(p)) == 'KILL' else 'SIGTERM'})"
                                for p in r["stopped"])
                click.echo(f"{r['name']}: stopped {how}")
            else:
                click.echo(f"{r['name']}: no worker was running")
    return 1 if any(r["error"] for r in rows) else 0
