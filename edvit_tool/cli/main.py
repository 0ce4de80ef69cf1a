"""`edvit-tool` entry point: a lazy Click group. Each verb lives in edvit_tool/cli/<verb>.py as `command`
and is imported only when used, so `edvit-tool check` never pays for (or needs) torch."""

from __future__ import annotations

import importlib
import importlib.util
import sys

import click

from .. import __version__
from ..errors import EdvitError

# verb -> module under edvit_tool.cli (module defines `command`)
VERBS = {
    "demo": "demo",
    "compile": "compile",
    "export": "export",
    "check": "check",
    "profile": "profile",
    "assign": "assign",
    "deploy": "deploy",
    "status": "deploy_status",
    "stop": "deploy_stop",
    "infer": "infer",
    "serve": "serve",
    "report": "report",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return [v for v in VERBS if importlib.util.find_spec(f"edvit_tool.cli.{VERBS[v]}") is not None]

    def get_command(self, ctx, name):
        if name not in VERBS or importlib.util.find_spec(f"edvit_tool.cli.{VERBS[name]}") is None:
            return None
        return importlib.import_module(f"edvit_tool.cli.{VERBS[name]}").command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edvit-tool")
@click.option("-v", "--verbose", count=True,
              help="Debug logging, including third-party libraries' own logs (TensorFlow, torch.export, ...).")
def cli(verbose):
    """ED-ViT toolchain: split a timm ViT into class-wise pruned sub-models and run them across edge boards.

    \b
    Typical flow:
      edvit-tool compile --recipe recipes/digits.yaml --out build/
      edvit-tool check build/
      edvit-tool profile --host pi@10.0.0.21 --build build/
      edvit-tool assign / deploy / infer / serve
    """
    from ..logs import configure

    configure(verbose)


def main(argv=None) -> int:
    try:
        rv = cli.main(args=argv, prog_name="edvit-tool", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except EdvitError as e:
        click.echo(f"Error: {e}", err=True)
        return e.exit_code
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        return 130
    except click.ClickException as e:
        e.show()
        return 2
    except click.exceptions.Exit as e:
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())


def run() -> None:
    """Console-script entry: exit with main()'s code."""
    sys.exit(main())
