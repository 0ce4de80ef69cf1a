"""Reading a user's YAML file: one message shape for every syntax or read error."""

from __future__ import annotations

from ..errors import RecipeError


def read_yaml(path: str, shown: str | None = None):
    """yaml.safe_load of `path`; RecipeError "<shown>: not valid YAML at line N: <problem>; fix the syntax"."""
    import yaml

    shown = shown or path
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise RecipeError(f"{shown}: not valid YAML{where}: {problem}; fix the syntax") from None
    except OSError as e:
        raise RecipeError(f"{shown}: cannot read ({e.strerror})") from None
