"""Profile build artifacts on boards: probe, upload (cached by sha256, checked on the board), bench, parity on the
board. One code path for SSH boards and for this machine (`--local`); only the transport differs.

    doc = profile_many([("pi-1", "pi@10.0.0.21"), ("pi-2", "pi@10.0.0.22:2222")], "build/", runs=50)
    doc = profile_local_many(4, "build/")       # boards local-1..local-4, ALL this machine, measured in turn
    write_profiles(doc, "profiles.json")        # merges: keyed by (board, artifact sha256)

Per board (boards run concurrently, one thread each; artifacts on one board run one after another so they do
not disturb each other's timings):
1. connect (cluster.transport), probe with one `python -c` script that prints JSON (arch, cores, memory,
   Python, numpy, which interpreters import) — before anything is uploaded, so a too-old Python is named;
2. stage (cluster.payload + transport): the runtime, manifest.json, reference/inputs.npz, each selected artifact
   and its reference outputs; over SSH into ~/.edvit/cache/<sha256>/, skipping what is there, every copy then
   hashed on the board (locally: the build's own files);
3. SSH boards: the link from this machine to the board's worker address (cluster/link.py: round trip and
   throughput, stored as boards.<name>.link; `assign` turns it into that board's input-transfer cost);
4. per artifact: `python -m edvit_tool.runtime.bench ART --runs N --warmup W --threads T --inputs ... --reference
   ... --manifest ...` from the shipped runtime; one JSON line back (parsed with json, never pickle). Parity is
   checked ON THE BOARD against the build's reference outputs, with the board's own interpreter: parity.ok
   false (or the board's copy having another sha256) makes the result `usable: false`, and `assign` never
   places an unusable artifact on that board.
An unreachable board is recorded (`reachable: false`, `error`) and the other boards finish.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import sys
import time

from .. import __version__
from ..errors import EdvitError, SshError
from .link import measure_link
from .payload import ArtifactJob, Payload, prepare  # noqa: F401 (prepare, Payload: this module's API too)
from .transport import LocalTransport, SshTransport, Transport

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MIN_PYTHON = (3, 9)
BENCH = "edvit_tool.runtime.bench"

# Runs on the board with whatever python3 it has: no f-strings, so even a too-old Python answers and we can say
# what to install instead of failing with a SyntaxError.
PROBE_SCRIPT = r"""
import json, os, platform, socket, sys
r = {"arch": os.uname()[4], "system": platform.system(), "kernel": os.uname()[2],
     "hostname": socket.gethostname(), "cores": os.cpu_count(),
     "python_version": platform.python_version(), "python_executable": sys.executable}
try:
    r["cores_usable"] = len(os.sched_getaffinity(0))
except (AttributeError, OSError):
    r["cores_usable"] = r["cores"]
mem = {}
try:
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":", 1)
            mem[k] = int(v.split()[0]) // 1024
except (OSError, ValueError):
    pass
r["memory_total_mb"] = mem.get("MemTotal")
r["memory_available_mb"] = mem.get("MemAvailable")
quota = None
try:
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, ctrls, path = line.strip().split(":", 2)
            if "cpu" in ctrls.split(","):
                for root in ("/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct"):
                    qf = root + path + "/cpu.cfs_quota_us"
                    if os.path.exists(qf):
                        q = int(open(qf).read())
                        p = int(open(root + path + "/cpu.cfs_period_us").read())
                        if q > 0:
                            quota = float(q) / p
                        break
            elif ctrls == "" and os.path.exists("/sys/fs/cgroup" + path + "/cpu.max"):
                q, p = open("/sys/fs/cgroup" + path + "/cpu.max").read().split()
                if q != "max":
                    quota = float(q) / int(p)
except (OSError, ValueError):
    pass
r["cpu_quota"] = quota
def version_of(mod, dist):
    v = getattr(mod, "__version__", None)
    if v:
        return str(v)
    try:
        from importlib import metadata
        return metadata.version(dist)
    except Exception:
        return None
r["interpreters"] = {}
for mod, sub, dist in (("ai_edge_litert", "ai_edge_litert.interpreter", "ai-edge-litert"),
                       ("tflite_runtime", "tflite_runtime.interpreter", "tflite-runtime"),
                       ("onnxruntime", "onnxruntime", "onnxruntime")):
    try:
        __import__(sub)
        r["interpreters"][mod] = {"ok": True, "version": version_of(sys.modules[mod], dist), "error": None}
    except Exception as e:  # ImportError, or a broken wheel (OSError, RuntimeError): report, do not crash
        r["interpreters"][mod] = {"ok": False, "version": None, "error": type(e).__name__ + ": " + str(e)[:200]}
try:
    import numpy
    r["numpy"] = numpy.__version__
except Exception as e:
    r["numpy"] = None
    r["numpy_error"] = type(e).__name__ + ": " + str(e)[:200]
print(json.dumps(r))
"""

def probe(tr: Transport, timeout: float = 60.0) -> dict:
    """Facts about the board from one `python -c` (JSON out, parsed with json)."""
    where, python = _where(tr), tr.python
    rc, out, err = tr.exec([python, "-c", PROBE_SCRIPT], timeout=timeout)
    if rc == 127 or (rc != 0 and "not found" in err):
        raise SshError(f"{where}: {python!r} not found on the board; install Python >= 3.9 or pass "
                       f"--python /path/to/python3")
    if rc == 124:
        raise EdvitError(f"{where}: probe did not finish within {timeout:g}s")
    if rc != 0:
        tail = " | ".join(err.strip().splitlines()[-3:]) or "no output"
        raise SshError(f"{where}: probe with {python} failed (exit {rc}): {tail}")
    try:
        facts = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise SshError(f"{where}: probe printed no JSON (got {out[:200]!r}); is {python} a Python "
                       f"interpreter?") from None
    if not isinstance(facts, dict):
        raise SshError(f"{where}: probe printed {type(facts).__name__}, expected a JSON object")
    facts["time"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    facts["target"] = tr.target
    return facts


def probe_local(python: str = sys.executable, timeout: float = 60.0) -> dict:
    """The same probe, run by a local interpreter (same JSON keys, so assign and --write-profile read it alike)."""
    return probe(LocalTransport("local", python), timeout)


def _where(tr: Transport) -> str:
    return tr.where if tr.kind == "ssh" else f"local ({tr.python})"


def _check_probe(probe: dict, where: str, python: str) -> None:
    try:
        ver = tuple(int(x) for x in str(probe.get("python_version", "0")).split(".")[:2])
    except ValueError:
        ver = (0, 0)
    if ver < MIN_PYTHON:
        raise SshError(f"{where}: {python} is Python {probe.get('python_version')}; the board runtime needs >= "
                       f"{'.'.join(map(str, MIN_PYTHON))} — install a newer one and pass --python PATH")
    if not probe.get("numpy"):
        raise SshError(f"{where}: numpy does not import with {python} ({probe.get('numpy_error')}); "
                       f"pip install numpy on the board")
    interp = probe.get("interpreters") or {}
    if not any((v or {}).get("ok") for v in interp.values()):
        raise SshError(f"{where}: no interpreter imports with {python} (ai_edge_litert, tflite_runtime, "
                       f"onnxruntime); pip install ai-edge-litert (or onnxruntime) on the board")
    # an artifact whose interpreter is missing fails alone, with the bench's own "pip install X" message


def _bench_result(board: str, job: ArtifactJob, runs: int, warmup: int, threads: int) -> dict:
    a = job.entry
    return {"board": board, "artifact": job.key, "name": a["name"], "format": a["format"], "quant": a["quant"],
            "sha256": job.sha256, "bytes": a["bytes"], "load_ms": None, "import_ms": None, "latency_ms": None,
            "peak_rss_mb": None, "backend": None, "backend_version": None, "threads": threads, "runs": runs,
            "warmup": warmup, "batch": 1, "parity": None, "usable": False, "error": None,
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def run_bench(tr: Transport, board: str, job: ArtifactJob, at: dict, runs: int, warmup: int, threads: int,
              timeout: float) -> dict:
    """One artifact on one board -> a results[] entry (usable only if it ran and parity held there).
    at: local path -> path on the board (from `stage`); its "manifest" and "inputs" entries name those files."""
    res = _bench_result(board, job, runs, warmup, threads)
    args = [at[job.path], "--runs", runs, "--warmup", warmup, "--threads", threads, "--manifest", at["manifest"]]
    if job.reference:
        args += ["--inputs", at["inputs"], "--reference", at[job.reference]]
    if job.entry.get("tolerance") is not None:
        args += ["--tolerance", repr(float(job.entry["tolerance"]))]
    rc, out, err = tr.run_module(BENCH, args, timeout)
    if tr.kind == "ssh":
        return _parse_bench(res, job, rc, out, err, timeout, "on the board",
                            "remove ~/.edvit/cache on the board and profile again")
    return _parse_bench(res, job, rc, out, err, timeout, "locally", "the build changed while profiling; rerun")


def _parse_bench(res: dict, job: ArtifactJob, rc: int, out: str, err: str, timeout: float, where: str,
                 stale_fix: str) -> dict:
    """Fill a results[] entry from one bench run's exit code and output (shared by the SSH and local paths)."""
    if rc == 124:
        res["error"] = f"bench did not finish within {timeout:g}s {where}; raise --bench-timeout or lower --runs"
        return res
    if rc != 0:
        tail = " | ".join(err.strip().splitlines()[-3:]) or out.strip()[-300:] or "no output"
        res["error"] = f"bench exited with {rc}: {tail}"
        return res
    try:
        b = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        res["error"] = f"bench printed no JSON line (stdout {out[-200:]!r})"
        return res
    for k in ("load_ms", "import_ms", "latency_ms", "peak_rss_mb", "backend", "backend_version", "threads",
              "runs", "warmup", "batch", "parity"):
        if k in b:
            res[k] = b[k]
    if b.get("sha256") != job.sha256:
        res["error"] = (f"the copy {where} has sha256 {str(b.get('sha256'))[:12]}…, expected {job.sha256[:12]}…; "
                        f"{stale_fix}")
        return res
    lat = res["latency_ms"]
    if not isinstance(lat, dict) or not isinstance(lat.get("p50"), (int, float)):
        res["error"] = "bench output has no latency_ms.p50"
        return res
    par = res["parity"]
    if job.reference and not (isinstance(par, dict) and par.get("ok") is True):
        if isinstance(par, dict):
            res["error"] = (f"PARITY FAILED {where}: max |diff| {par.get('max_abs_diff')} > tolerance "
                            f"{par.get('tolerance')}, top-1 agreement {par.get('top1_agreement')}")
        else:
            res["error"] = "bench did not report parity although a reference was given"
        return res
    res["usable"] = True
    return res


def _profile(tr: Transport, name: str, payload: Payload, runs: int, warmup: int, threads: int,
             bench_timeout: float, progress, facts: dict | None = None, link_address: str | None = None,
             link_mb: float = 32.0) -> dict:
    """Profile one board through its transport. Never raises for board trouble: returns
    {"name", "target", "reachable", "error", "probe", "results", "uploads", "seconds", "link"}; link: the
    measured link to `link_address` (None when not asked, {"address", "error"} when it failed)."""
    total = len(payload.jobs) + 2
    step = progress or (lambda *a: None)
    out = {"name": name, "target": tr.target, "reachable": False, "error": None, "probe": None, "results": [],
           "uploads": None, "seconds": None, "link": None}
    t0 = time.monotonic()
    try:
        step(name, "connecting", 0, total)
        tr.connect()
        out["reachable"] = True
        step(name, "probing", 0, total)
        facts = dict(facts) if facts else probe(tr)
        facts["board"] = name
        out["probe"] = facts
        _check_probe(facts, _where(tr), tr.python)
        step(name, "uploading", 1, total)
        files = [(payload.manifest_path, payload.manifest_sha256)]
        if payload.inputs:
            files.append((payload.inputs, payload.inputs_sha256))
        for job in payload.jobs:
            files.append((job.path, job.sha256))
            if job.reference:
                files.append((job.reference, job.reference_sha256))
        staged = tr.stage(files, payload.runtime, payload.runtime_digest, payload.runtime_table)
        at = dict(staged.paths, manifest=staged.paths[payload.manifest_path])
        if payload.inputs:
            at["inputs"] = staged.paths[payload.inputs]
        if tr.kind == "ssh":
            out["uploads"] = staged.counts()
            log.debug("%s: uploaded %d files (%d bytes), %d cached", name, staged.files, staged.bytes,
                      staged.cached)
        if link_address:  # before the benches: an idle board, nothing else on its link
            step(name, "measuring link", 2, total)
            try:
                out["link"] = measure_link(tr, link_address, max_mb=link_mb)
            except EdvitError as e:  # the board is still profiled; assign falls back to --bandwidth-mbps
                out["link"] = {"address": link_address, "error": str(e)}
                log.warning("%s: link not measured: %s", name, e)
        for i, job in enumerate(payload.jobs):
            step(name, f"bench {job.key}", 2 + i, total)
            out["results"].append(run_bench(tr, name, job, at, runs, warmup, threads, bench_timeout))
        step(name, "done", total, total)
    except EdvitError as e:
        out["error"] = str(e)
        step(name, "failed", total, total)
    finally:
        tr.close()
        out["seconds"] = round(time.monotonic() - t0, 3)
    return out


def profile_board(target: str, build_dir: str | None = None, artifacts=None, runs: int = 50, warmup: int = 5,
                  threads: int = 1, identity: str | None = None, known_hosts: str | None = None,
                  python: str = "python3", name: str | None = None, *, payload: Payload | None = None,
                  host_key_policy: str = "accept-new", connect_timeout: float = 10.0,
                  bench_timeout: float = 900.0, progress=None, address: str | None = None, link: bool = True,
                  link_mb: float = 32.0) -> dict:
    """Profile one SSH board (see `_profile`); progress(board, message, done, total), total = artifacts + 2.
    address: where its worker will listen (default: the SSH host), for the link measurement (link=False: skip)."""
    from .ssh import parse_target

    payload = payload or prepare(build_dir, artifacts)
    name = name or target
    tr = SshTransport(name, target, python, identity=identity, known_hosts=known_hosts,
                      host_key_policy=host_key_policy, connect_timeout=connect_timeout)
    link_address = (address or parse_target(target)[1]) if link else None
    return _profile(tr, name, payload, runs, warmup, threads, bench_timeout, progress,
                    link_address=link_address, link_mb=link_mb)


def profile_many(targets, build_dir: str, artifacts=None, runs: int = 50, warmup: int = 5, threads: int = 1,
                 identity: str | None = None, known_hosts: str | None = None, python: str = "python3",
                 progress=None, **kw) -> dict:
    """Profile boards concurrently. targets: ["pi@h:p", ...] or [(name, target), ...] or dicts with
    name/target and optional identity/python/threads overriding the shared values.
    Returns a profiles document (see `new_document`) for this run only; `write_profiles` merges it."""
    payload = prepare(build_dir, artifacts)
    specs = []
    for t in targets:
        if isinstance(t, str):
            t = {"name": t, "target": t}
        elif isinstance(t, (tuple, list)):
            t = {"name": t[0], "target": t[1]}
        specs.append({"identity": identity, "python": python, "threads": threads, "address": None, **t})
    names = [s["name"] for s in specs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise EdvitError(f"board name(s) {', '.join(dup)} given more than once; give each --host its own --name")
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(specs))) as pool:
        futs = [pool.submit(profile_board, s["target"], artifacts=artifacts, runs=runs, warmup=warmup,
                            threads=s["threads"], identity=s["identity"], known_hosts=known_hosts,
                            python=s["python"], name=s["name"], payload=payload, progress=progress,
                            address=s["address"], **kw)
                for s in specs]
        boards = [f.result() for f in futs]  # a bug (non-EdvitError) in one board's thread surfaces here
    doc = new_document(payload)
    for b in boards:
        doc["boards"][b["name"]] = {"target": b["target"], "reachable": b["reachable"], "error": b["error"],
                                    "probe": b["probe"], "uploads": b["uploads"], "seconds": b["seconds"],
                                    "link": b["link"]}
        doc["results"] += b["results"]
    return doc


# ---------------------------------------------------------------------------------------------------------
# local "boards": this machine (the demo, trying the flow without SSH)


def profile_local(build_dir: str | None = None, artifacts=None, runs: int = 50, warmup: int = 5, threads: int = 1,
                  name: str = "local-1", python: str = sys.executable, *, payload: Payload | None = None,
                  bench_timeout: float = 900.0, probe: dict | None = None, progress=None) -> dict:
    """Profile THIS machine as one board named `name`, without SSH: same bench, same parity check, same result
    format as `profile_board` (target "local", uploads None). `probe`: reuse one probe for several names."""
    payload = payload or prepare(build_dir, artifacts)
    return _profile(LocalTransport(name, python), name, payload, runs, warmup, threads, bench_timeout, progress,
                    facts=probe)


def local_names(n: int) -> list[str]:
    return [f"local-{i}" for i in range(1, n + 1)]


def profile_local_many(n: int, build_dir: str, artifacts=None, runs: int = 50, warmup: int = 5, threads: int = 1,
                       python: str = sys.executable, names=None, progress=None, bench_timeout: float = 900.0) -> dict:
    """N local "boards" (local-1..N), ALL this machine, each measured in turn (never at once: they would share
    the CPU and skew each other). A profiles document like `profile_many`'s; `write_profiles` merges it."""
    if n < 1:
        raise EdvitError(f"--local must be >= 1, got {n}")
    names = list(names or local_names(n))
    if len(names) != n or len(set(names)) != n:
        raise EdvitError(f"need {n} distinct local board names, got {names}")
    payload = prepare(build_dir, artifacts)
    probe = probe_local(python)
    doc = new_document(payload)
    for name in names:
        b = profile_local(runs=runs, warmup=warmup, threads=threads, name=name, python=python, payload=payload,
                          bench_timeout=bench_timeout, probe=probe, progress=progress)
        doc["boards"][name] = {"target": b["target"], "reachable": b["reachable"], "error": b["error"],
                               "probe": b["probe"], "uploads": b["uploads"], "seconds": b["seconds"]}
        doc["results"] += b["results"]
    return doc


def new_document(payload: Payload) -> dict:
    return {"schema_version": SCHEMA_VERSION, "tool_version": __version__,
            "build": {"path": payload.build_dir, "manifest_sha256": payload.manifest_sha256},
            "boards": {}, "results": []}


def load_profiles(path: str) -> dict | None:
    """An existing profiles.json (None if absent); EdvitError if it is not ours."""
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        raise EdvitError(f"{path}: not readable JSON ({e}); move it away or pass another --out") from None
    if not isinstance(doc, dict) or doc.get("schema_version") != SCHEMA_VERSION \
            or not isinstance(doc.get("boards"), dict) or not isinstance(doc.get("results"), list):
        raise EdvitError(f"{path}: not a schema_version {SCHEMA_VERSION} profiles file; move it away or pass "
                         f"another --out")
    return doc


def merge(old: dict | None, new: dict) -> dict:
    """new's boards and results over old's: results keyed by (board, sha256), so reruns update, not duplicate.
    A board unreachable now keeps its earlier results (they still describe it); its entry says it was not reached."""
    if old is None:
        return new
    fresh = {(r["board"], r["sha256"]) for r in new["results"]}
    results = [r for r in old["results"] if (r.get("board"), r.get("sha256")) not in fresh] + new["results"]
    results.sort(key=lambda r: (str(r.get("board")), str(r.get("artifact"))))
    boards = dict(old["boards"])
    for name, b in new["boards"].items():
        if not b["reachable"] and boards.get(name, {}).get("probe"):
            b = {**b, "probe": boards[name]["probe"]}  # keep the last known facts about it
        if not b.get("link") and (boards.get(name) or {}).get("link"):
            b = {**b, "link": boards[name]["link"]}    # not measured this time: the last measurement stands
        boards[name] = b
    return {**old, **{k: v for k, v in new.items() if k not in ("boards", "results")},
            "boards": boards, "results": results}


def write_profiles(doc: dict, path: str) -> dict:
    """Merge doc into `path` (atomically) and return what was written."""
    merged = merge(load_profiles(path), doc)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = os.path.join(d, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(merged, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)
    return merged


def failures(doc: dict, boards=None) -> list[str]:
    """One line per unreachable/failed board and per unusable result (restricted to `boards` if given)."""
    lines = []
    for name, b in doc["boards"].items():
        if boards is not None and name not in boards:
            continue
        if b.get("error"):
            state = "UNREACHABLE" if not b.get("reachable") else "FAILED"
            lines.append(f"{name}: {state}: {b['error']}")
    for r in doc["results"]:
        if (boards is None or r["board"] in boards) and not r.get("usable"):
            lines.append(f"{r['board']} {r['artifact']}: UNUSABLE: {r.get('error') or 'parity failed'}")
    return lines

