"""Time one artifact in this board's interpreter and check its outputs against the build's reference.

    python -m edvit_tool.runtime.bench build/submodels/g0.fp32.tflite --runs 100 --warmup 10 --threads 1 \\
        --inputs build/reference/inputs.npz --reference build/reference/outputs-g0.fp32.tflite.npz

Prints ONE JSON line on stdout:
    {"artifact", "sha256", "bytes", "backend", "backend_version", "threads", "runs", "warmup", "batch",
     "import_ms", "load_ms", "latency_ms": {"p50", "p90", "p99", "mean", "min", "max"}, "peak_rss_mb",
     "parity": null | {"max_abs_diff", "top1_agreement" (on `logits`, null without it), "tolerance", "ok",
                       "compared": [output names], "samples"}}
Timing input: the first sample of --inputs (key = the model's input name; a single input falls back to the one
array of matching shape), else random data of the declared shape. Parity: every reference input through the
model, every output present in the reference npz compared (max |diff| <= tolerance -> ok).
peak_rss_mb is taken after the timed runs, before parity (which loads the whole reference set).

Exit 0 whenever the numbers were measured, even if parity fails (the caller decides). Exit 2 with one line on
stderr for bad arguments or a missing file; exit 3 when the artifact cannot be loaded or run here.
Board side: stdlib + numpy + one interpreter.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import numpy as np

from . import backends
from . import manifest as mf


class BenchError(Exception):
    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


def _percentile(sorted_ms: list, q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    k = max(0, min(len(sorted_ms) - 1, int(np.ceil(q / 100.0 * len(sorted_ms))) - 1))
    return sorted_ms[k]


def latency_summary(ms: list) -> dict:
    s = sorted(ms)
    return {"p50": round(float(np.median(s)), 4), "p90": round(_percentile(s, 90), 4),
            "p99": round(_percentile(s, 99), 4), "mean": round(float(np.mean(s)), 4),
            "min": round(s[0], 4), "max": round(s[-1], 4)}


def peak_rss_mb() -> float:
    # VmHWM is this process's own peak; ru_maxrss survives execve, so a bench started from a big parent
    # (a torch process) would report the parent's memory.
    if os.path.exists("/proc/self/status"):  # no procfs (macOS): getrusage below
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 2)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(rss / (1 << 20) if sys.platform == "darwin" else rss / 1024, 2)  # bytes on macOS, KiB on Linux


def _load_npz(path: str, what: str) -> dict:
    if not os.path.isfile(path):
        raise BenchError(f"{what} {path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as z:  # never unpickle: these files travel to boards
            return {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise BenchError(f"{what} {path}: not a readable .npz ({e})") from None


def _pick_input(spec: dict, arrays: dict, where: str):
    """The array in `arrays` that feeds model input `spec`: by name, else the only one of matching shape."""
    if spec["name"] in arrays:
        return arrays[spec["name"]]
    fits = [a for a in arrays.values() if a.ndim == len(spec["shape"]) and backends._compatible(a.shape, spec["shape"])]
    if len(fits) == 1:
        return fits[0]
    raise BenchError(f"{where}: no array for input {spec['name']!r} {spec['shape']} (has {sorted(arrays)})")


def _random_input(spec: dict, batch: int, rng) -> np.ndarray:
    shape = [batch] + [d if d > 0 else 1 for d in spec["shape"][1:]]
    if np.dtype(spec["dtype"]).kind == "f":
        return rng.standard_normal(shape).astype(spec["dtype"])
    return np.zeros(shape, dtype=spec["dtype"])


def parity(model: backends.Model, inputs: dict, reference: dict, tolerance: float, batch: int) -> dict:
    """Run every reference sample through `model`; compare each output present in `reference`."""
    feeds = {t["name"]: _pick_input(t, inputs, "--inputs") for t in model.inputs}
    n = min(len(a) for a in feeds.values())
    out_names = [t["name"] for t in model.outputs]
    compared = [k for k in reference if k in out_names]
    missing = [k for k in reference if k not in out_names]
    got: dict = {k: [] for k in compared}
    step = max(1, batch)
    for i in range(0, n, step):
        res = model.run({k: v[i:i + step] for k, v in feeds.items()})
        for k in compared:
            got[k].append(res[k])
    max_diff, ok = 0.0, not missing and bool(compared)
    for k in compared:
        g, r = np.concatenate(got[k]), reference[k]
        if g.shape != r.shape:
            ok = False
            max_diff = float("inf")
            continue
        d = float(np.max(np.abs(g.astype(np.float64) - r.astype(np.float64)))) if g.size else 0.0
        max_diff = max(max_diff, d if np.isfinite(d) else float("inf"))
    top1 = None
    if "logits" in compared and np.concatenate(got["logits"]).shape == reference["logits"].shape:
        g = np.concatenate(got["logits"])
        top1 = round(float(np.mean(g.argmax(-1) == reference["logits"].argmax(-1))), 6)
    ok = ok and max_diff <= tolerance
    return {"max_abs_diff": max_diff if np.isfinite(max_diff) else None, "top1_agreement": top1,
            "tolerance": tolerance, "ok": bool(ok), "compared": compared, "missing": missing, "samples": n}


def run_bench(artifact: str, runs: int = 50, warmup: int = 5, threads: int = 1, backend: str | None = None,
              inputs: str | None = None, reference: str | None = None, tolerance: float | None = None,
              batch: int = 1, manifest: str | None = None) -> dict:
    """Measure one artifact; returns the dict that main() prints (see module docstring)."""
    if not os.path.isfile(artifact):
        raise BenchError(f"{artifact}: no such file")
    if runs < 1 or warmup < 0 or threads < 1 or batch < 1:
        raise BenchError("--runs, --threads and --batch must be >= 1, --warmup >= 0")
    sha = mf.sha256_file(artifact)
    declared = None
    if manifest:
        try:
            man, _ = mf.load_path(manifest)
        except mf.ManifestError as e:
            raise BenchError(str(e)) from None
        declared = mf.artifact_by_sha256(man, sha)
        if declared is None:
            raise BenchError(f"{artifact}: its sha256 {sha[:12]}… is not in {manifest}; wrong build?")
        if tolerance is None:
            tolerance = declared.get("tolerance")
    tolerance = 1e-4 if tolerance is None else float(tolerance)
    inputs_npz = _load_npz(inputs, "--inputs") if inputs else None
    reference_npz = _load_npz(reference, "--reference") if reference else None
    if reference_npz is not None and inputs_npz is None:
        raise BenchError("--reference needs --inputs (the samples the reference outputs came from)")

    t0 = time.perf_counter()
    try:
        backends._import_interpreter(backend or ("onnxruntime" if artifact.lower().endswith(".onnx") else
                                                 next((b for b in ("litert", "tflite-runtime")
                                                       if backends._importable(b)), "litert")))
    except backends.BackendError as e:
        raise BenchError(str(e), 3) from None
    import_ms = (time.perf_counter() - t0) * 1000
    t0 = time.perf_counter()
    try:
        model = backends.load_model(artifact, backend=backend, threads=threads,
                                    inputs=declared and declared.get("inputs"),
                                    outputs=declared and declared.get("outputs"))
        load_ms = (time.perf_counter() - t0) * 1000
    except backends.BackendError as e:
        raise BenchError(str(e), 3) from None
    if declared is None and reference_npz is not None:  # name outputs after the reference arrays
        try:
            model.bind(None, [{"name": k, "shape": [-1] + list(v.shape[1:])} for k, v in reference_npz.items()])
        except backends.BackendError:
            pass  # unmatched reference outputs are reported by parity as missing (ok: false)
    if declared is None and inputs_npz is not None and len(model.inputs) == 1:
        spec = model.inputs[0]
        try:  # name the input after its array in inputs.npz (litert-torch calls it args_0)
            key = next(k for k, v in inputs_npz.items() if _pick_input(spec, {k: v}, "") is v)
            model.bind([{"name": key, "shape": spec["shape"]}], None)
        except (StopIteration, BenchError, backends.BackendError):
            pass  # no match: _pick_input below says which input has no array

    rng = np.random.default_rng(0)
    feed = {}
    for t in model.inputs:
        if inputs_npz is not None:
            first = _pick_input(t, inputs_npz, f"--inputs {inputs}")[:1]
            feed[t["name"]] = np.repeat(first, batch, axis=0).astype(t["dtype"], copy=False)
        else:
            feed[t["name"]] = _random_input(t, batch, rng)
    try:
        for _ in range(warmup):
            model.run(feed)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            model.run(feed)
            times.append((time.perf_counter() - t0) * 1000)
    except (backends.BackendError, RuntimeError, ValueError) as e:
        raise BenchError(f"{artifact}: running it failed ({e})", 3) from None
    rss = peak_rss_mb()
    par = None
    if reference_npz is not None:
        try:
            par = parity(model, inputs_npz, reference_npz, tolerance, batch)
        except (backends.BackendError, RuntimeError, ValueError) as e:
            raise BenchError(f"{artifact}: running the reference inputs failed ({e})", 3) from None
    return {"artifact": artifact, "sha256": sha, "bytes": os.path.getsize(artifact),
            "backend": model.backend_name, "backend_version": model.backend_version, "threads": threads,
            "runs": runs, "warmup": warmup, "batch": batch, "import_ms": round(import_ms, 3),
            "load_ms": round(load_ms, 3), "latency_ms": latency_summary(times), "peak_rss_mb": rss,
            "inputs": model.inputs, "outputs": model.outputs, "parity": par}


class _ArgParser(argparse.ArgumentParser):
    def error(self, message):
        raise BenchError(f"{self.prog}: {message}")


def main(argv=None) -> int:
    p = _ArgParser(prog="python -m edvit_tool.runtime.bench",
                   description="Time one artifact and check it against the build's reference outputs.")
    p.add_argument("artifact")
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--backend", choices=backends.BACKENDS)
    p.add_argument("--inputs", help="reference/inputs.npz")
    p.add_argument("--reference", help="reference/outputs-<artifact>.npz")
    p.add_argument("--tolerance", type=float, help="max |diff| for parity (default: manifest's, else 1e-4)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--manifest", help="build manifest: names tensors and gives the tolerance for this artifact")
    try:
        a = p.parse_args(sys.argv[1:] if argv is None else argv)
        result = run_bench(a.artifact, a.runs, a.warmup, a.threads, a.backend, a.inputs, a.reference,
                           a.tolerance, a.batch, a.manifest)
    except BenchError as e:
        print("Error: " + " ".join(str(e).split()), file=sys.stderr)  # one line for the caller to show
        return e.code
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
