"""`edvit-tool profile`: measure every artifact of a build on real boards over SSH."""

from __future__ import annotations

import sys

import click

from ..progress import BoardProgress

EPILOG = """\b
Examples:
  edvit-tool profile --host pi@10.0.0.21 --host pi@10.0.0.22:2222 --build build/
  edvit-tool profile --boards boards.yaml --build build/ --artifacts onnx/int8-static,tflite/fp32
  edvit-tool profile --host pi@raspberrypi.local --name pi-1 --build build/ --runs 100 --threads 4 \\
      --identity ~/.ssh/edvit --write-profile device_profiles/
  edvit-tool profile --local 4 --build build/      # no SSH: boards local-1..local-4, all THIS machine

\b
Each board gets the runtime, the selected artifacts and the build's reference data in ~/.edvit/cache/<sha256>/
(files already there are not uploaded again), then `python -m edvit_tool.runtime.bench` runs per artifact and
checks the outputs against the reference ON THE BOARD. Before the benches, the link from this machine to each
SSH board's worker address (boards.yaml `address`, else the SSH host) is measured: round trip and throughput of
plain TCP to a short-lived probe on the board (--no-link skips it); `assign` then uses each board's own figure for
its input-transfer cost. Results are merged into --out keyed by (board, artifact sha256). --local N measures this machine N times, one "board" after another, with the same bench as local
processes (the demo uses it; the figures describe this machine, not a board). Exit 1 if a board is unreachable or an artifact fails parity (the file is written first), 2 on a usage
error.
"""


def _split(values) -> list[str]:
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


@click.command("profile", epilog=EPILOG, context_settings={"max_content_width": 110})
@click.option("--host", "hosts", multiple=True, metavar="USER@HOST[:PORT]",
              help="A board to profile (repeatable). ~/.ssh/config host aliases work.")
@click.option("--name", "names", multiple=True, help="Board name for each --host, in order (default: the target).")
@click.option("--boards", "boards_file", type=click.Path(dir_okay=False),
              help="boards.yaml: profile every board in it (names, users, keys, python from the file).")
@click.option("--local", "local_n", type=click.IntRange(1), default=None, metavar="N",
              help="No SSH: N local boards named local-1..N, all this machine (--python is their interpreter).")
@click.option("--build", "build_dir", required=True, type=click.Path(file_okay=False),
              help="Build directory (made by `edvit-tool compile` / `export`).")
@click.option("--artifacts", "artifacts", multiple=True, metavar="SEL[,SEL]",
              help="Which artifacts: onnx/int8-static, tflite, g0, g0:onnx/fp32, ... (default: all that passed export).")
@click.option("--runs", default=50, show_default=True, type=click.IntRange(1), help="Timed runs per artifact.")
@click.option("--warmup", default=5, show_default=True, type=click.IntRange(0), help="Untimed runs first.")
@click.option("--threads", default=None, type=click.IntRange(1),
              help="Interpreter threads [default: the device profile's with --boards, else 1].")
@click.option("--identity", type=click.Path(dir_okay=False), help="SSH private key (default: ~/.ssh/config, agent, ~/.ssh/id_*).")
@click.option("--known-hosts", "known_hosts", type=click.Path(dir_okay=False),
              help="known_hosts file [default: ~/.ssh/known_hosts].")
@click.option("--host-key-policy", type=click.Choice(["accept-new", "strict"]), default="accept-new", show_default=True,
              help="Unknown host key: add it (accept-new) or refuse (strict). A changed key is always refused.")
@click.option("--python", "python", default=None, help="Python on the boards [default: python3, or boards.yaml's].")
@click.option("--out", "out", default="profiles.json", show_default=True, type=click.Path(dir_okay=False),
              help="Profiles file to create or update.")
@click.option("--json", "as_json", is_flag=True, help="Print this run's results as JSON instead of a table.")
@click.option("--write-profile", "profile_dir", type=click.Path(file_okay=False),
              help="Also write a measured device profile YAML per reachable board into this directory.")
@click.option("--connect-timeout", default=10.0, show_default=True, type=click.FloatRange(0.1), help="Seconds.")
@click.option("--bench-timeout", default=900.0, show_default=True, type=click.FloatRange(1), help="Seconds per artifact.")
@click.option("--link/--no-link", "link", default=True, show_default=True,
              help="Measure each SSH board's link (round trip, throughput) for `assign`.")
@click.option("--link-mb", default=32.0, show_default=True, type=click.FloatRange(1, 1024),
              help="Most data sent per board to measure its throughput.")
def command(hosts, names, boards_file, local_n, build_dir, artifacts, runs, warmup, threads, identity, known_hosts,
            host_key_policy, python, out, as_json, profile_dir, connect_timeout, bench_timeout, link, link_mb):
    """Measure latency, load time, memory and on-board parity of each artifact on each board over SSH."""
    from ..cluster import profile as prof
    from ..errors import EdvitError

    show = not as_json
    if local_n is not None:
        if hosts or boards_file:
            raise EdvitError("--local cannot be combined with --host/--boards; profile SSH boards and local "
                             "boards in two runs (both merge into --out)")
        if names:
            raise EdvitError("--name goes with --host; local boards are named local-1..N")
        py = python or sys.executable
        if show:
            click.echo(f"local-1..local-{local_n} are all THIS machine ({py}), measured one after another: the "
                       "figures describe this machine, not a board", err=True)
        with BoardProgress(enabled=show, plain_steps=False) as progress:
            doc = prof.profile_local_many(local_n, build_dir, artifacts=_split(artifacts), runs=runs,
                                          warmup=warmup, threads=threads or 1, python=py,
                                          progress=progress.update, bench_timeout=bench_timeout)
    else:
        targets = _targets(hosts, names, boards_file, identity, python, threads)
        with BoardProgress(enabled=show, plain_steps=False) as progress:
            doc = prof.profile_many(targets, build_dir, artifacts=_split(artifacts), runs=runs, warmup=warmup,
                                    threads=threads or 1, identity=identity, known_hosts=known_hosts,
                                    python=python or "python3", progress=progress.update,
                                    host_key_policy=host_key_policy, connect_timeout=connect_timeout,
                                    bench_timeout=bench_timeout, link=link, link_mb=link_mb)
    prof.write_profiles(doc, out)
    written = []
    if profile_dir:
        from ..config.device_profile import write_measured_profile

        for name, b in doc["boards"].items():
            if b["reachable"] and b["probe"]:
                try:
                    written.append(write_measured_profile(b["probe"], profile_dir, name=name))
                except EdvitError as e:  # one board without an interpreter must not hide the others' profiles
                    click.secho(f"{name}: no device profile written: {e}", fg="yellow", err=True)
    bad = prof.failures(doc)
    if as_json:
        import json

        click.echo(json.dumps(doc, indent=2, sort_keys=True))
    else:
        _print_table(doc)
        if local_n is not None:
            click.echo(f"(local-1..local-{local_n}: this machine, not boards)")
        for path in written:
            click.echo(f"device profile written: {path}")
        click.echo(f"profiles written: {out}")
    for line in bad:
        click.secho(line, fg="red", bold=True, err=True)
    return 1 if bad else 0


def _targets(hosts, names, boards_file, identity, python, threads) -> list[dict]:
    from ..errors import EdvitError

    if not hosts and not boards_file:
        raise EdvitError("no boards given; pass --host USER@HOST[:PORT] (repeatable), --boards boards.yaml or "
                         "--local N")
    if names and len(names) != len(hosts):
        raise EdvitError(f"{len(names)} --name for {len(hosts)} --host; give one --name per --host, in order, "
                         f"or none")
    targets = [{"name": n, "target": h} for h, n in zip(hosts, names or hosts)]
    if boards_file:
        from ..config.boards import boards_from_yaml

        for b in boards_from_yaml(boards_file):
            t = {"name": b.name, "target": b.target, "address": b.address}
            if b.identity and not identity:
                t["identity"] = b.identity
            if not python:
                t["python"] = b.python
            if b.threads and not threads:
                t["threads"] = b.threads
            targets.append(t)
    return targets


def _fmt(v, spec=".2f") -> str:
    return "—" if v is None else format(v, spec)


def _print_table(doc: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 140, highlight=False)
    t = Table(title="Board profiles", show_lines=False)
    for col, just in (("board", "left"), ("artifact", "left"), ("backend", "left"), ("p50 ms", "right"),
                      ("p99 ms", "right"), ("load ms", "right"), ("RSS MB", "right"), ("parity", "left")):
        t.add_column(col, justify=just, no_wrap=True)
    for r in doc["results"]:
        lat = r.get("latency_ms") or {}
        par = r.get("parity")
        if r.get("usable"):
            parity = "[green]ok[/]" + (f" Δ{par['max_abs_diff']:.1e}" if par and par.get("max_abs_diff") is not None
                                       else "" if par else " (no reference)")
            style = None
        else:
            style = "bold red"
            parity = (f"FAIL Δ{par['max_abs_diff']:.2g}" if par and par.get("max_abs_diff") is not None
                      else "FAIL" if par else "ERROR")
        backend = f"{r.get('backend') or '—'} {r.get('backend_version') or ''}".strip()
        t.add_row(r["board"], r["artifact"], backend, _fmt(lat.get("p50"), ".3f"), _fmt(lat.get("p99"), ".3f"),
                  _fmt(r.get("load_ms"), ".1f"), _fmt(r.get("peak_rss_mb"), ".1f"), parity, style=style)
    for name, b in doc["boards"].items():
        if not b["reachable"]:
            t.add_row(name, "[bold red]UNREACHABLE[/]", "", "", "", "", "", "", style="bold red")
        elif b.get("error"):
            t.add_row(name, "[bold red]FAILED[/]", "", "", "", "", "", "", style="bold red")
    console.print(t)
    for name, b in doc["boards"].items():
        ln = b.get("link") or {}
        if ln.get("mbps"):
            console.print(f"{name}: link to {ln['address']}: {ln['mbps']:.1f} Mbit/s, round trip {ln['rtt_ms']:.3f} ms",
                          highlight=False)
        elif ln.get("error"):
            console.print(f"[yellow]{name}: link not measured: {ln['error']}[/]", highlight=False)
        up = b.get("uploads")
        if up:
            console.print(f"{name}: {up['files']} file(s) uploaded ({up['bytes'] / 1e6:.2f} MB), {up['cached']} "
                          f"already cached; {b['seconds']:.1f} s", highlight=False)
