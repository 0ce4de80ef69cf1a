"""`edvit-tool check BUILD_DIR`: the CI gate on exported artifacts (no torch needed)."""

from __future__ import annotations

import json

import click


@click.command("check")
@click.argument("build_dir", type=click.Path(file_okay=False))
@click.option("--device-profile", "profiles", multiple=True, metavar="P",
              help="Device profile name (device_profiles/P.yaml) or YAML path; repeatable. Every sub-model "
                   "artifact must fit its memory_budget_mb.")
@click.option("--eval", "eval_path", type=click.Path(), metavar="DATA.npz|DIR",
              help="Held-out set: .npz with y [M] and x (float32 [M,C,H,W] normalised, or raw uint8 images) or "
                   "pixels (a build's reference/eval.npz), or a folder of class sub-folders; raw images get the "
                   "build's preprocessing. Fused accuracy through "
                   "the artifacts must be within 0.5 pp of the manifest's figure.")
@click.option("--junit", "junit", type=click.Path(dir_okay=False), metavar="OUT.xml",
              help="Write a JUnit XML report (one testcase per check) for CI systems.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable results.")
@click.option("--threads", type=click.IntRange(1, 256), default=1, show_default=True,
              help="Interpreter threads.")
@click.option("--all", "-a", "show_all", is_flag=True, help="List passing and skipped checks too.")
def command(build_dir, profiles, eval_path, junit, as_json, threads, show_all):
    """Verify a build's artifacts: manifest schema, sha256 + size of every file, each artifact loads in its
    interpreter and matches the PyTorch reference outputs within the recorded tolerance, memory fit per device
    profile, and optionally the exported fused accuracy on an eval set. Every failure is listed; exit 1 if any.

    \b
    Example:
      edvit-tool check build/ --device-profile rpi4b --eval reference/eval.npz --junit check.xml
    """
    from ..check import run_checks, summary, to_json, write_junit

    results = run_checks(build_dir, profiles, eval_path, threads=threads)
    if junit:
        write_junit(results, junit)
    s = summary(results)
    if as_json:
        click.echo(json.dumps(to_json(build_dir, results), indent=2))
    else:
        for r in results:
            if r.ok is False:
                click.echo(f"FAIL  {r.name}: {r.message}")
            elif show_all:
                click.echo(f"{'ok  ' if r.ok else 'skip'}  {r.name}" + (f": {r.message}" if r.message else ""))
        click.echo(f"{'PASSED' if s['ok'] else 'FAILED'}: {s['passed']} passed, {s['failed']} failed, "
                   f"{s['skipped']} skipped ({build_dir})")
    return 0 if s["ok"] else 1
