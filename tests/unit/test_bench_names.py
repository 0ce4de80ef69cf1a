"""A script's folder is first on sys.path: a bench/ file named like a standard-library module (profile.py) is
imported instead of it by anything the bench imports (torch._dynamo imports cProfile → profile)."""

import os
import sys

BENCH = os.path.join(os.path.dirname(__file__), "..", "..", "bench")


def test_no_bench_script_shadows_a_standard_library_module():
    names = {f[:-3] for f in os.listdir(BENCH) if f.endswith(".py")}
    assert names, "bench/ has no scripts"
    assert not names & set(sys.stdlib_module_names), sorted(names & set(sys.stdlib_module_names))
