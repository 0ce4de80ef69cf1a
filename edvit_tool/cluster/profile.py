"""Profile build artifacts on real boards over SSH: probe, upload (cached by sha256), bench, parity on the board.

    doc = profile_many([("pi-1", "pi@10.0.0.21"), ("pi-2", "pi@10.0.0.22:2222")], "build/", runs=50)
    write_profiles(doc, "profiles.json")        # merges: keyed by (board, artifact sha256)

Per board (boards run concurrently, one thread each; artifacts on one board run one after another so they do
not disturb each other's timings):
1. connect (edvit_tool.cluster.ssh), probe with one `python -c` script that prints JSON (arch, cores, memory,
   Python, numpy, which interpreters import);
2. upload into ~/.edvit/cache/<sha256>/: the runtime (edvit_tool/runtime + a version-only edvit_tool/__init__.py),
   manifest.json, reference/inputs.npz, each selected artifact and its reference outputs — skipping what is there;
3. per artifact: `python -m edvit_tool.runtime.bench ART --runs N --warmup W --threads T --inputs ... --reference
   ... --manifest ...` with PYTHONPATH = the uploaded runtime; one JSON line back (parsed with json, never
   pickle). Parity is checked ON THE BOARD against the build's reference outputs: parity.ok false (or the board's
   copy having another sha256) makes the result `usable: false`.
An unreachable board is recorded (`reachable: false`, `error`) and the other boards finish.

Local transport (no SSH; the demo, or trying the flow on one machine):

    doc = profile_local_many(4, "build/")        # boards local-1..local-4, ALL this machine, measured in turn

runs the same probe script and the same `python -m edvit_tool.runtime.bench` as local subprocesses on the build's
own files; the results have the same format (target "local", no uploads).
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import shlex
import signal
import sys
import time
from dataclasses import dataclass, field

from .. import __version__
from ..errors import ArtifactError, EdvitError, SshError
from .ssh import SshSession, dir_files, quote_argv, tree_digest
from ..runtime import manifest as mf

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MIN_PYTHON = (3, 9)
RUNTIME_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "runtime")

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

RUNTIME_SHIM = (f'"""edvit-tool board runtime, shipped by edvit-tool (the host package is not installed here)."""\n'
                f'__version__ = "{__version__}"\n').encode()


def runtime_tree() -> dict:
    """{relpath: local path | bytes} of what a board needs to `python -m edvit_tool.runtime.*` with
    PYTHONPATH=<that dir>: the runtime package and an edvit_tool/__init__.py that states only the version."""
    files = dir_files(RUNTIME_DIR, prefix="edvit_tool/runtime")
    if "edvit_tool/runtime/bench.py" not in files:
        raise ArtifactError(f"{RUNTIME_DIR}/bench.py is missing; reinstall edvit-tool")
    files["edvit_tool/__init__.py"] = RUNTIME_SHIM
    return files


@dataclass
class ArtifactJob:
    key: str                  # 'g0:onnx/fp32'
    entry: dict               # the manifest's artifact entry
    path: str                 # local file
    sha256: str
    reference: str | None     # local reference outputs npz
    reference_sha256: str | None


@dataclass
class Payload:
    """Everything uploaded to every board, hashed once."""
    build_dir: str
    manifest_sha256: str
    manifest_path: str
    inputs: str | None
    inputs_sha256: str | None
    runtime: dict
    runtime_digest: str
    jobs: list[ArtifactJob] = field(default_factory=list)


def _matches(selector: str, art: dict) -> bool:
    """'g0:onnx/fp32' | 'onnx/fp32' | 'onnx' | 'g0' | 'fusion' selects artifacts."""
    if ":" in selector:
        return mf.artifact_key(art) == selector
    if "/" in selector:
        return f"{art['format']}/{art['quant']}" == selector
    return selector in (art["format"], art["name"])


def prepare(build_dir: str, artifacts=None) -> Payload:
    """Check the build, select artifacts and hash every file that will travel (once for all boards)."""
    from ..artifacts import load_manifest

    manifest = load_manifest(build_dir)
    arts = manifest.get("artifacts") or []
    if not arts:
        raise ArtifactError(f"{build_dir}/manifest.json lists no artifacts; run `edvit-tool export` first")
    selectors = [s.strip() for s in (artifacts or []) if s.strip()]
    if selectors:
        chosen = [a for a in arts if any(_matches(s, a) for s in selectors)]
        unmatched = [s for s in selectors if not any(_matches(s, a) for a in arts)]
        if unmatched:
            raise ArtifactError(f"--artifacts {', '.join(unmatched)}: no such artifact in {build_dir}/manifest.json; "
                                f"available: {', '.join(mf.artifact_key(a) for a in arts)}")
        failed = [mf.artifact_key(a) for a in chosen if a.get("status", "ok") == "failed"]
        if failed:
            raise ArtifactError(f"{', '.join(failed)} failed in the build (status failed); drop them from "
                                f"--artifacts or re-run `edvit-tool export`")
    else:
        chosen = [a for a in arts if a.get("status", "ok") != "failed"]
        if not chosen:
            raise ArtifactError(f"every artifact in {build_dir}/manifest.json failed its checks; re-run export")
    inputs = os.path.join(build_dir, mf.REFERENCE_INPUTS)
    has_inputs = os.path.isfile(inputs)
    jobs = []
    for a in chosen:
        path = os.path.join(build_dir, a["file"])
        if not os.path.isfile(path):
            raise ArtifactError(f"{path}: missing (listed in manifest.json as {mf.artifact_key(a)}); "
                                f"re-run `edvit-tool export`")
        sha = mf.sha256_file(path)
        if sha != a["sha256"]:
            raise ArtifactError(f"{path}: sha256 {sha[:12]}… differs from manifest.json ({a['sha256'][:12]}…); "
                                f"the build was modified after export — re-run `edvit-tool export`")
        ref = os.path.join(build_dir, a["reference"]) if a.get("reference") else None
        if ref and not os.path.isfile(ref):
            raise ArtifactError(f"{ref}: reference outputs of {mf.artifact_key(a)} missing; re-run export")
        if ref and not has_inputs:
            raise ArtifactError(f"{inputs}: missing, but {mf.artifact_key(a)} has reference outputs; re-run export")
        jobs.append(ArtifactJob(mf.artifact_key(a), a, path, sha, ref, mf.sha256_file(ref) if ref else None))
    manifest_path = os.path.join(build_dir, mf.MANIFEST_NAME)
    runtime = runtime_tree()
    return Payload(os.path.abspath(build_dir), mf.sha256_file(manifest_path), manifest_path,
                   inputs if has_inputs else None, mf.sha256_file(inputs) if has_inputs else None,
                   runtime, tree_digest(runtime), jobs)


def probe_board(session: SshSession, python: str = "python3", timeout: float = 60.0) -> dict:
    """Facts about the board from one remote `python -c` (JSON out, parsed with json)."""
    rc, out, err = session.exec([python, "-c", PROBE_SCRIPT], timeout=timeout, check=False)
    if rc == 127 or (rc != 0 and "not found" in err):
        raise SshError(f"{session.where}: {python!r} not found on the board; install Python >= 3.9 or pass "
                       f"--python /path/to/python3")
    if rc != 0:
        tail = " | ".join(err.strip().splitlines()[-3:])
        raise SshError(f"{session.where}: probe with {python} failed (exit {rc}): {tail}")
    try:
        probe = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise SshError(f"{session.where}: probe printed no JSON (got {out[:200]!r}); is {python} a Python "
                       f"interpreter?") from None
    if not isinstance(probe, dict):
        raise SshError(f"{session.where}: probe printed {type(probe).__name__}, expected a JSON object")
    probe["time"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    probe["target"] = session.target
    return probe


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


class Uploads:
    """Counts what an SSH session uploaded into the board's sha256 cache (and what was already there)."""

    def __init__(self, session: SshSession):
        self.s = session
        self.files = 0
        self.bytes = 0
        self.cached = 0

    def file(self, path: str, sha: str) -> str:
        remote, uploaded = self.s.upload_cached(path, sha)
        if uploaded:
            self.files += 1
            self.bytes += os.path.getsize(path)
        else:
            self.cached += 1
        return remote

    def tree(self, files: dict, digest: str) -> str:
        remote, uploaded = self.s.upload_tree(files, digest)
        if uploaded:
            self.files += len(files)
            self.bytes += sum(len(v) if isinstance(v, bytes) else os.path.getsize(v) for v in files.values())
        else:
            self.cached += len(files)
        return remote


def _bench_result(board: str, job: ArtifactJob, runs: int, warmup: int, threads: int) -> dict:
    a = job.entry
    return {"board": board, "artifact": job.key, "name": a["name"], "format": a["format"], "quant": a["quant"],
            "sha256": job.sha256, "bytes": a["bytes"], "load_ms": None, "import_ms": None, "latency_ms": None,
            "peak_rss_mb": None, "backend": None, "backend_version": None, "threads": threads, "runs": runs,
            "warmup": warmup, "batch": 1, "parity": None, "usable": False, "error": None,
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def run_bench(session: SshSession, board: str, job: ArtifactJob, remote: dict, runtime_dir: str, python: str,
              runs: int, warmup: int, threads: int, timeout: float) -> dict:
    """One artifact on one board -> a results[] entry (usable only if it ran and parity held)."""
    res = _bench_result(board, job, runs, warmup, threads)
    argv = ["env", f"PYTHONPATH={runtime_dir}", python, "-m", "edvit_tool.runtime.bench", remote[job.sha256],
            "--runs", str(runs), "--warmup", str(warmup), "--threads", str(threads),
            "--manifest", remote["manifest"]]
    if job.reference:
        argv += ["--inputs", remote["inputs"], "--reference", remote[job.reference_sha256]]
    if job.entry.get("tolerance") is not None:
        argv += ["--tolerance", repr(float(job.entry["tolerance"]))]
    # cwd = the runtime dir: `python -m` puts cwd first on sys.path, so nothing in $HOME can shadow the runtime.
    # The board's own `timeout` ends a hung bench; closing our channel alone would leave it running there and
    # skew every later measurement on that board.
    cmd = quote_argv(argv)
    limit = f"{max(1, int(timeout))}"
    script = (f"cd {shlex.quote(runtime_dir)} && if command -v timeout >/dev/null 2>&1; "
              f"then exec timeout -k 5 {limit} {cmd}; else exec {cmd}; fi")
    log.debug("%s: %s", session.where, script)
    rc, out, err = session.exec_shell(script, timeout=timeout + 15, check=False)
    return _parse_bench(res, job, rc, out, err, timeout, "on the board", "remove ~/.edvit/cache on the board and "
                        "profile again")


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


def profile_board(target: str, build_dir: str | None = None, artifacts=None, runs: int = 50, warmup: int = 5,
                  threads: int = 1, identity: str | None = None, known_hosts: str | None = None,
                  python: str = "python3", name: str | None = None, *, payload: Payload | None = None,
                  host_key_policy: str = "accept-new", connect_timeout: float = 10.0,
                  bench_timeout: float = 900.0, progress=None) -> dict:
    """Profile one board. Never raises for board trouble: returns
    {"name", "target", "reachable", "error", "probe", "results", "uploads": {files, bytes, cached}, "seconds"}.

    progress(board, message, done, total) is called as work advances (total = artifacts + 2).
    """
    payload = payload or prepare(build_dir, artifacts)
    name = name or target
    total = len(payload.jobs) + 2
    step = progress or (lambda *a: None)
    out = {"name": name, "target": target, "reachable": False, "error": None, "probe": None, "results": [],
           "uploads": None, "seconds": None}
    t0 = time.monotonic()
    session = SshSession(target, identity=identity, known_hosts=known_hosts, host_key_policy=host_key_policy,
                         connect_timeout=connect_timeout)
    try:
        step(name, "connecting", 0, total)
        session.connect()
        out["reachable"] = True
        step(name, "probing", 0, total)
        probe = probe_board(session, python)
        probe["board"] = name
        out["probe"] = probe
        _check_probe(probe, session.where, python)
        step(name, "uploading", 1, total)
        up = Uploads(session)
        remote = {"runtime": up.tree(payload.runtime, payload.runtime_digest),
                  "manifest": up.file(payload.manifest_path, payload.manifest_sha256)}
        if payload.inputs:
            remote["inputs"] = up.file(payload.inputs, payload.inputs_sha256)
        for job in payload.jobs:
            remote[job.sha256] = up.file(job.path, job.sha256)
            if job.reference:
                remote[job.reference_sha256] = up.file(job.reference, job.reference_sha256)
        out["uploads"] = {"files": up.files, "bytes": up.bytes, "cached": up.cached}
        log.debug("%s: uploaded %d files (%d bytes), %d cached", name, up.files, up.bytes, up.cached)
        for i, job in enumerate(payload.jobs):
            step(name, f"bench {job.key}", 2 + i, total)
            out["results"].append(run_bench(session, name, job, remote, remote["runtime"], python,
                                            runs, warmup, threads, bench_timeout))
        step(name, "done", total, total)
    except EdvitError as e:
        out["error"] = str(e)
        step(name, "failed", total, total)
    finally:
        session.close()
        out["seconds"] = round(time.monotonic() - t0, 3)
    return out


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
        specs.append({"identity": identity, "python": python, "threads": threads, **t})
    names = [s["name"] for s in specs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise EdvitError(f"board name(s) {', '.join(dup)} given more than once; give each --host its own --name")
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(specs))) as pool:
        futs = [pool.submit(profile_board, s["target"], artifacts=artifacts, runs=runs, warmup=warmup,
                            threads=s["threads"], identity=s["identity"], known_hosts=known_hosts,
                            python=s["python"], name=s["name"], payload=payload, progress=progress, **kw)
                for s in specs]
        boards = [f.result() for f in futs]  # a bug (non-EdvitError) in one board's thread surfaces here
    doc = new_document(payload)
    for b in boards:
        doc["boards"][b["name"]] = {"target": b["target"], "reachable": b["reachable"], "error": b["error"],
                                    "probe": b["probe"], "uploads": b["uploads"], "seconds": b["seconds"]}
        doc["results"] += b["results"]
    return doc


# ---------------------------------------------------------------------------------------------------------
# local transport: "boards" that are this machine (the demo, trying the flow without SSH)

LOCAL_TARGET = "local"
PACKAGE_PARENT = os.path.dirname(os.path.dirname(RUNTIME_DIR))   # the dir that holds edvit_tool/


def _local_env() -> dict:
    # PYTHONPATH = this checkout's package: another interpreter (a board-like venv) runs the very same runtime
    env = dict(os.environ, PYTHONPATH=PACKAGE_PARENT, PYTHONNOUSERSITE="1")
    env.pop("PYTHONSTARTUP", None)
    return env


def probe_local(python: str = sys.executable, timeout: float = 60.0) -> dict:
    """The same probe as over SSH (same script, same JSON keys, so assign and --write-profile read it alike),
    run by a local interpreter."""
    import subprocess

    where = f"local ({python})"
    try:
        r = subprocess.run([python, "-c", PROBE_SCRIPT], capture_output=True, text=True, timeout=timeout,
                           env=_local_env(), cwd=PACKAGE_PARENT)
    except FileNotFoundError:
        raise EdvitError(f"{where}: interpreter not found; pass --python /path/to/python3") from None
    except subprocess.TimeoutExpired:
        raise EdvitError(f"{where}: probe did not finish within {timeout:g}s") from None
    if r.returncode != 0:
        tail = " | ".join(r.stderr.strip().splitlines()[-3:]) or "no output"
        raise EdvitError(f"{where}: probe failed (exit {r.returncode}): {tail}")
    try:
        probe = json.loads(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise EdvitError(f"{where}: probe printed no JSON (got {r.stdout[:200]!r})") from None
    probe["time"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    probe["target"] = LOCAL_TARGET
    return probe


def run_bench_local(board: str, job: ArtifactJob, payload: Payload, python: str, runs: int, warmup: int,
                    threads: int, timeout: float) -> dict:
    """One artifact on this machine: `python -m edvit_tool.runtime.bench` on the build's own files (nothing is
    copied), parity against the build's reference outputs -> a results[] entry like the SSH path's."""
    import subprocess

    res = _bench_result(board, job, runs, warmup, threads)
    argv = [python, "-m", "edvit_tool.runtime.bench", job.path, "--runs", str(runs), "--warmup", str(warmup),
            "--threads", str(threads), "--manifest", payload.manifest_path]
    if job.reference:
        argv += ["--inputs", payload.inputs, "--reference", job.reference]
    if job.entry.get("tolerance") is not None:
        argv += ["--tolerance", repr(float(job.entry["tolerance"]))]
    # Through `sh` (which forks the bench instead of exec'ing it): Linux carries a process's peak RSS across
    # execve, so a bench forked straight from a big host process (the demo holds torch, >1 GB) would report
    # that as its own ru_maxrss. cwd = the package's parent: `python -m` puts cwd first on sys.path.
    try:
        p = subprocess.Popen(["sh", "-c", '"$@"; exit $?', "sh", *argv], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=_local_env(), cwd=PACKAGE_PARENT,
                             start_new_session=True)
    except FileNotFoundError:
        rc, out, err = 127, "", "sh: not found"
    else:
        try:
            out, err = p.communicate(timeout=timeout)
            rc = p.returncode
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)  # the whole group: sh and the bench under it
            p.communicate()
            rc, out, err = 124, "", ""
        except BaseException:  # Ctrl-C: its own session does not get the SIGINT, so end it here
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            raise
    if rc == 127 and "not found" in err:
        err = f"{python}: interpreter not found (pass --python)"
    return _parse_bench(res, job, rc, out, err, timeout, "locally", "the build changed while profiling; rerun")


def profile_local(build_dir: str | None = None, artifacts=None, runs: int = 50, warmup: int = 5, threads: int = 1,
                  name: str = "local-1", python: str = sys.executable, *, payload: Payload | None = None,
                  bench_timeout: float = 900.0, probe: dict | None = None, progress=None) -> dict:
    """Profile THIS machine as one board named `name`, without SSH: same bench, same parity check, same result
    format as `profile_board` (target "local", uploads None). `probe`: reuse one probe for several names."""
    payload = payload or prepare(build_dir, artifacts)
    total = len(payload.jobs) + 2
    step = progress or (lambda *a: None)
    out = {"name": name, "target": LOCAL_TARGET, "reachable": True, "error": None, "probe": None, "results": [],
           "uploads": None, "seconds": None}
    t0 = time.monotonic()
    try:
        step(name, "probing", 0, total)
        p = dict(probe) if probe else probe_local(python)
        p["board"] = name
        out["probe"] = p
        _check_probe(p, f"local ({python})", python)
        for i, job in enumerate(payload.jobs):
            step(name, f"bench {job.key}", 2 + i, total)
            out["results"].append(run_bench_local(name, job, payload, python, runs, warmup, threads,
                                                  bench_timeout))
        step(name, "done", total, total)
    except EdvitError as e:
        out["error"] = str(e)
        step(name, "failed", total, total)
    finally:
        out["seconds"] = round(time.monotonic() - t0, 3)
    return out


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

