"""`python -m edvit_tool.runtime {probe|bench|worker} ...` — one entry point for the board.

probe prints one JSON line describing this board: arch, cores, memory, Python, numpy, which interpreters import.
Board side: stdlib + numpy + one interpreter.
"""

from __future__ import annotations

import json
import os
import platform
import sys


def _meminfo_mb() -> dict:
    out = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("MemTotal", "MemAvailable"):
                    out[key] = round(int(rest.split()[0]) / 1024, 1)
    except OSError:
        pass  # not Linux: memory stays unknown (null), which the host reports
    return {"total_mb": out.get("MemTotal"), "available_mb": out.get("MemAvailable")}


def probe() -> dict:
    from .. import __version__

    try:
        import numpy
        np_version = numpy.__version__
    except ImportError:
        np_version = None
    found = {}
    if np_version:  # backends needs numpy; without it no interpreter is usable anyway
        from . import backends
        found = backends.available_backends()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"event": "probe", "runtime_version": __version__, "arch": platform.machine(),
            "system": platform.system(), "release": platform.release(), "cores": os.cpu_count(),
            "usable_cores": cpus, "memory": _meminfo_mb(), "python": platform.python_version(),
            "python_path": sys.executable, "numpy": np_version,
            "backends": found}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    usage = "usage: python -m edvit_tool.runtime {probe|bench|worker} [args...]"
    if not argv or argv[0] not in ("probe", "bench", "worker"):
        print(usage, file=sys.stderr)
        return 2
    if argv[0] == "probe":
        sys.stdout.write(json.dumps(probe()) + "\n")
        return 0
    if argv[0] == "bench":
        from .bench import main as bench_main
        return bench_main(argv[1:])
    from .worker import main as worker_main
    return worker_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
