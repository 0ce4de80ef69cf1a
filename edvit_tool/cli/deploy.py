"""`edvit-tool deploy`: ship a plan's sub-models to the boards as a new release; write deployment.json."""

from __future__ import annotations

import sys

import click

from ..progress import BoardProgress


def print_boards(doc: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 140, highlight=False)
    t = Table(title=f"Release {doc['release']}")
    for col, just in (("board", "left"), ("endpoint", "left"), ("models", "left"), ("variant", "left"),
                      ("pid", "right"), ("uploaded", "right"), ("cached", "right"), ("seconds", "right")):
        t.add_column(col, justify=just, no_wrap=True)
    for b in doc["boards"]:
        up = b.get("uploads") or {}
        t.add_row(b["name"], b["endpoint"], ",".join(b["models"]), b["variant"], str(b["pid"]),
                  f"{up.get('files', 0)} ({up.get('bytes', 0) / 1e6:.2f} MB)", str(up.get("cached", 0)),
                  f"{b['seconds']:.2f}")
    console.print(t)


def _tls(cert, key, ca):
    if not (cert or key or ca):
        return None
    if not (cert and key):
        from ..errors import EdvitError

        raise EdvitError("--tls-cert and --tls-key go together: give both PEM files (and --tls-ca unless the "
                         "certificate is self-signed)")
    return {"cert": cert, "key": key, "ca": ca or cert}


@click.command("deploy", epilog="""\b
Examples:
  edvit-tool deploy --plan plan.json --boards boards.yaml
  edvit-tool deploy --plan plan.json --transport local --out run/deployment.json
  edvit-tool status --deployment deployment.json
  edvit-tool stop --deployment deployment.json
\b
Each board gets <root>/releases/<id>/ (root: ~/.edvit/boards/<name> or boards.yaml's `root`; runtime, its
artifacts, manifest, token), the old worker is stopped, <root>/current switched and the new worker started and
health-checked, all under the board's <root>/deploy.lock (a concurrent deploy waits). If any board fails, or
the deploy is interrupted, every board goes back to its previous release and the error says which board failed
and why. The bearer token is written to <out>.token (mode 0600) and never printed.

--wire: the image format on the wire to the boards. fp32: preprocessed float32 (588 KiB per 224x224x3 image
per board); uint8: pixels at the model's size, normalised on the board (147 KiB); encoded: the png/jpg files
as given, decoded and preprocessed on the board (typically 10-40 KiB); auto: the format with the lowest
predicted end-to-end time — the request bytes at each board's link rate from the plan (`profile`'s measurement,
else --bandwidth-mbps) plus the host's and the board's preprocessing of a probe JPEG in each format and how much
slower the board's model then runs, timed on the started workers (deployment.json `wire_choice` keeps the figures). Without link figures, auto stays the
smallest the caller's input allows (files -> encoded unless bigger than their pixels, pixels -> uint8).
A caller's float32 tensors always go as fp32, and pixels never as encoded.
""")
@click.option("--plan", "plan_path", required=True, metavar="FILE", help="plan.json from `edvit-tool assign`.")
@click.option("--boards", "boards_file", metavar="FILE",
              help="boards.yaml [default: the plan's boards_file]; with --transport local: worker ports.")
@click.option("--transport", type=click.Choice(["ssh", "local"]), default="ssh", show_default=True,
              help="ssh: the boards in boards.yaml; local: the same workers as processes on this machine.")
@click.option("--out", default="deployment.json", show_default=True, metavar="FILE",
              help="Where to write deployment.json (the token goes beside it, as <name>.token).")
@click.option("--deadline-ms", default=2000, show_default=True, type=click.IntRange(min=1),
              help="Per-request deadline the coordinator will use (recorded in deployment.json).")
@click.option("--wire", type=click.Choice(["auto", "fp32", "uint8", "encoded"]), default="auto", show_default=True,
              help="Image format sent to the boards (recorded in deployment.json); see below.")
@click.option("--timeout", "timeout_s", default=60.0, show_default=True, type=click.FloatRange(min=1),
              help="Seconds each worker may take to load its models and report ready.")
@click.option("--known-hosts", "known_hosts", type=click.Path(dir_okay=False),
              help="known_hosts file [default: ~/.ssh/known_hosts or ~/.ssh/config's].")
@click.option("--host-key-policy", type=click.Choice(["accept-new", "strict"]), default="accept-new",
              show_default=True, help="Unknown host key: add it (accept-new) or refuse (strict). A changed key "
                                      "is always refused.")
@click.option("--connect-timeout", default=10.0, show_default=True, type=click.FloatRange(min=0.1),
              help="SSH connect timeout, seconds.")
@click.option("--python", "python", default=None,
              help="--transport local: the workers' Python [default: the one running edvit-tool].")
@click.option("--tls-cert", type=click.Path(dir_okay=False), default=None,
              help="PEM certificate the workers serve HTTPS with (it must name every board's address); with "
                   "--tls-key and --tls-ca. Without it board traffic is plain HTTP on the LAN.")
@click.option("--tls-key", type=click.Path(dir_okay=False), default=None, help="PEM private key of --tls-cert.")
@click.option("--tls-ca", type=click.Path(dir_okay=False), default=None,
              help="CA file the coordinator verifies the boards against [default: --tls-cert, for a self-signed one].")
@click.option("--json", "as_json", is_flag=True, help="Print deployment.json instead of the table.")
def command(plan_path, boards_file, transport, out, deadline_ms, wire, timeout_s, known_hosts, host_key_policy,
            connect_timeout, python, tls_cert, tls_key, tls_ca, as_json):
    """Deploy a plan's sub-models to the boards as one release, all or nothing."""
    import json

    from ..cluster.deploy import deploy

    with BoardProgress(enabled=not as_json) as progress:
        doc = deploy(plan_path, boards_file, transport=transport, out=out, deadline_ms=deadline_ms,
                     timeout_s=timeout_s, known_hosts=known_hosts, host_key_policy=host_key_policy,
                     connect_timeout=connect_timeout, python=python, progress=progress.update, wire=wire,
                     tls=_tls(tls_cert, tls_key, tls_ca))
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return 0
    print_boards(doc)
    click.echo(f"release {doc['release']} serving on {len(doc['boards'])} board(s) after {doc['seconds']:.1f} s, "
               f"wire {doc['wire']}; "
               f"wrote {out} (token in {doc['token_file']}, not shown)")
    return 0
