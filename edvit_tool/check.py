"""`edvit-tool check`: the CI gate on a build's exported artifacts.

Runs with numpy + onnxruntime + ai-edge-litert + edvit_tool only (no torch, no timm — a test proves it). Every
check is run and reported, even after failures: manifest schema; size + sha256 of every listed file; each
artifact's file, status, loading in its interpreter (declared tensors vs the real ones) and parity against the
PyTorch outputs in reference/ within the recorded tolerance; memory fit per device profile; optionally the fused
accuracy on an eval set vs the manifest's figure.

    results = run_checks("build/", profiles=["rpi4b"], eval_path="data.npz")
    write_junit(results, "check.xml")
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass

import numpy as np

from .errors import DataError, EdvitError
from .export import validate as V
from .runtime import manifest as mf

# Resident-memory estimate of one sub-model on a board: the interpreter process (Python + numpy + runtime) plus
# the model twice (the loaded file and the interpreter's weights/arena). Measured peaks belong to `profile`.
RUNTIME_OVERHEAD_MB = {"onnx": 60.0, "tflite": 35.0}
MODEL_MEMORY_FACTOR = 2.0
ACCURACY_TOLERANCE_PP = 0.5


@dataclass
class Result:
    name: str            # e.g. "artifact g0:onnx/int8-static parity"
    group: str           # manifest | files | artifacts | memory | accuracy
    ok: bool | None      # None = skipped (a prerequisite failed; that failure is reported on its own)
    message: str = ""
    seconds: float = 0.0


class _Run:
    def __init__(self):
        self.results: list[Result] = []

    def add(self, group: str, name: str, problems: list[str] | None, message: str = "", t0: float | None = None,
            skipped: str | None = None):
        secs = time.perf_counter() - t0 if t0 is not None else 0.0
        if skipped is not None:
            self.results.append(Result(name, group, None, skipped, secs))
        elif problems:
            self.results.append(Result(name, group, False, "; ".join(problems), secs))
        else:
            self.results.append(Result(name, group, True, message, secs))
        return not problems and skipped is None


# -- inputs --------------------------------------------------------------------------------------------------
def _profile_dirs() -> list[str]:
    from .config.device_profile import profiles_dir

    return [profiles_dir(), os.path.join(os.getcwd(), "device_profiles")]


def load_profile(ref: str) -> dict:
    """A device profile by path or name ({name, memory_budget_mb}); EdvitError (exit 2) naming the fix."""
    import yaml

    path = ref if os.path.isfile(ref) else None
    if path is None:
        for d in _profile_dirs():
            cand = os.path.join(d, ref if ref.endswith((".yaml", ".yml")) else ref + ".yaml")
            if os.path.isfile(cand):
                path = cand
                break
    if path is None:
        known = sorted({n[:-5] for d in _profile_dirs() if os.path.isdir(d) for n in os.listdir(d)
                        if n.endswith(".yaml")})
        raise EdvitError(f"--device-profile {ref}: no such file or profile name; known profiles: "
                         f"{', '.join(known) or 'none'} (or give a path to a YAML file)")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        raise EdvitError(f"{path}: cannot read it as YAML ({str(e).splitlines()[0]}); fix the file") from None
    if not isinstance(data, dict):
        raise EdvitError(f"{path}: must be a YAML mapping with name and memory_budget_mb")
    budget = data.get("memory_budget_mb")
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or budget <= 0:
        raise EdvitError(f"{path}: memory_budget_mb must be a positive number, got {budget!r}")
    return {"name": str(data.get("name") or os.path.splitext(os.path.basename(path))[0]),
            "memory_budget_mb": float(budget), "path": path}


def load_eval(path: str, manifest: dict | None) -> tuple[np.ndarray, np.ndarray]:
    """--eval: an .npz (x float32 preprocessed or raw uint8 images, or a build's reference `pixels`; y labels) or a
    folder of class sub-folders; raw images get the build's own preprocessing (runtime/preprocess.py with the
    manifest's input spec)."""
    from .images import load_image_folder, load_npz

    spec = (manifest or {}).get("input")
    if not isinstance(spec, dict) or not isinstance(spec.get("shape"), list):
        raise EdvitError(f"--eval {path}: the manifest has no valid input spec to preprocess it with; rebuild")
    if not os.path.exists(path):
        raise EdvitError(f"--eval {path}: not found; give an .npz with x (float32 [M,C,H,W] normalised, or uint8 "
                         "images) and y [M] int, or a folder of class sub-folders")
    try:
        if os.path.isdir(path):
            folder = load_image_folder(path, spec, (manifest or {}).get("classes") or [])
            return folder.x, folder.y
        x, y = load_npz(path, spec)
    except DataError as e:
        raise EdvitError(f"--eval {e}") from None
    if y is None or len(x) == 0:
        raise EdvitError(f"--eval {path}: x {list(x.shape)} has no labels y (or no rows); store y [M] int labels")
    return x.astype(np.float32), y.astype(np.int64)


def _safe_rel(root: str, rel: str) -> str | None:
    """Absolute path of a build-relative path, or None if it escapes the build dir (a tampered manifest)."""
    if not isinstance(rel, str) or not rel or os.path.isabs(rel):
        return None
    full = os.path.normpath(os.path.join(root, rel))
    return full if full.startswith(os.path.normpath(root) + os.sep) else None


# -- the checks ----------------------------------------------------------------------------------------------
def _check_file(root: str, rel: str, want_bytes, want_sha, label: str) -> list[str]:
    full = _safe_rel(root, rel)
    if full is None:
        return [f"{label}: path {rel!r} is not inside the build dir; the manifest was edited: rebuild it"]
    if not os.path.isfile(full):
        return [f"{rel}: missing; restore it from the original build or re-export (edvit-tool export BUILD_DIR)"]
    p = []
    size = os.path.getsize(full)
    if size != want_bytes:
        p.append(f"{rel}: {size} bytes, the manifest says {want_bytes}")
    sha = mf.sha256_file(full)
    if sha != want_sha:
        p.append(f"{rel}: sha256 {sha[:12]}… does not match the manifest's {str(want_sha)[:12]}…; the file changed "
                 "after the build (corrupt copy?) or the manifest was edited: re-copy the build or re-export")
    return p


def _io_problems(art: dict, runner) -> list[str]:
    """The manifest's declared tensors vs what the interpreter really has."""
    p = []
    for kind, declared, real in (("input", art.get("inputs"), runner.inputs), ("output", art.get("outputs"),
                                                                                runner.outputs)):
        real_by = {t["name"]: t for t in real}
        decl_by = {t.get("name"): t for t in declared or [] if isinstance(t, dict)}
        if sorted(real_by) != sorted(decl_by):
            p.append(f"{kind}s are {sorted(real_by)} in the file, the manifest says {sorted(map(str, decl_by))}")
            continue
        for n, d in decl_by.items():
            r = real_by[n]
            if list(d.get("shape", [])) != list(r["shape"]):
                p.append(f"{kind} {n}: shape {r['shape']} in the file, the manifest says {d.get('shape')}")
            if d.get("dtype") != r["dtype"]:
                p.append(f"{kind} {n}: dtype {r['dtype']} in the file, the manifest says {d.get('dtype')}")
    return p


def run_checks(build_dir: str, profiles: list | tuple = (), eval_path: str | None = None,
               threads: int = 1) -> list[Result]:
    """Every check on `build_dir`; profiles are names or paths. Raises EdvitError only for bad arguments."""
    if not os.path.isdir(build_dir):
        raise EdvitError(f"{build_dir}: not a directory; give a build dir made by `edvit-tool compile`")
    loaded_profiles = [load_profile(p) for p in profiles]
    run = _Run()
    root = os.path.abspath(build_dir)

    # manifest: unreadable JSON stops everything; schema problems are reported and the rest is checked best-effort
    t0 = time.perf_counter()
    path = os.path.join(root, mf.MANIFEST_NAME)
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except FileNotFoundError:
        run.add("manifest", "manifest", [f"{path}: not found; is this a build dir made by `edvit-tool compile`?"],
                t0=t0)
        return run.results
    except (OSError, ValueError) as e:
        run.add("manifest", "manifest", [f"{path}: not valid JSON ({e}); restore it or rebuild"], t0=t0)
        return run.results
    if not isinstance(manifest, dict):
        run.add("manifest", "manifest", [f"{path}: must be a JSON object; restore it or rebuild"], t0=t0)
        return run.results
    schema = mf.validate(manifest)
    run.add("manifest", "manifest schema", [f"{mf.MANIFEST_NAME}: {p}" for p in schema],
            f"schema_version {manifest.get('schema_version')}", t0)
    if eval_path:
        eval_data = load_eval(eval_path, manifest)

    files = manifest.get("files") if isinstance(manifest.get("files"), dict) else {}
    for rel, meta in files.items():
        t0 = time.perf_counter()
        meta = meta if isinstance(meta, dict) else {}
        run.add("files", f"file {rel}", _check_file(root, rel, meta.get("bytes"), meta.get("sha256"), f"files[{rel}]"),
                f"{meta.get('bytes')} bytes", t0)

    refs = None
    ref_path = os.path.join(root, mf.REFERENCE_INPUTS)
    try:
        refs = V.load_npz(ref_path)
    except ValueError as e:
        run.add("files", "reference inputs", [f"{e}; re-export to regenerate reference/"])

    artifacts = manifest.get("artifacts") if isinstance(manifest.get("artifacts"), list) else []
    runners = {}
    for i, art in enumerate(artifacts):
        if not isinstance(art, dict):
            continue
        key = mf.artifact_key(art) if all(k in art for k in ("name", "format", "quant")) else f"artifacts[{i}]"
        t0 = time.perf_counter()
        run.add("artifacts", f"artifact {key} file",
                          _check_file(root, art.get("file", ""), art.get("bytes"), art.get("sha256"),
                                      f"artifacts[{i}].file"), f"{art.get('file')}", t0)
        run.add("artifacts", f"artifact {key} status",
                [f"marked failed at export: {art.get('reason') or 'no reason recorded'}"]
                if art.get("status", "ok") != "ok" else [], "ok")
        full = _safe_rel(root, art.get("file", ""))
        t0 = time.perf_counter()
        if full is None or not os.path.isfile(full):
            run.add("artifacts", f"artifact {key} load", None, skipped="file missing (reported above)")
            run.add("artifacts", f"artifact {key} parity", None, skipped="file missing (reported above)")
            continue
        try:
            runner = V.Runner(full, art.get("format"), threads=threads)
        except V.RunnerError as e:
            run.add("artifacts", f"artifact {key} load", [str(e)], t0=t0)
            run.add("artifacts", f"artifact {key} parity", None, skipped="artifact did not load")
            continue
        io = _io_problems(art, runner)
        run.add("artifacts", f"artifact {key} load", [f"{art.get('file')}: {p}; the manifest was edited or the "
                                                       "file replaced: re-export" for p in io],
                f"{runner.format} {[t['shape'] for t in runner.inputs]}", t0)
        if not io and eval_path:  # kept for the accuracy checks only
            runners[id(art)] = runner
        t0 = time.perf_counter()
        if refs is None:
            run.add("artifacts", f"artifact {key} parity", None, skipped="reference inputs missing (reported above)")
        else:
            problems, msg = _parity(root, art, runner, refs)
            run.add("artifacts", f"artifact {key} parity", problems, msg, t0)

    for prof in loaded_profiles:
        for variant, arts in _variants(manifest, artifacts).items():
            problems, msg = _memory(prof, variant, arts)
            run.add("memory", f"memory {prof['name']} {variant}", problems, msg)

    if eval_path:
        x, y = eval_data
        exported = (manifest.get("accuracy") or {}).get("exported") or {}
        for variant, recorded in sorted(exported.items()):
            t0 = time.perf_counter()
            problems, msg = _accuracy(manifest, variant, recorded, runners, x, y, eval_path)
            run.add("accuracy", f"accuracy {variant}", problems, msg, t0)
    return run.results


def _parity(root: str, art: dict, runner, refs: dict) -> tuple[list[str], str]:
    rel = art.get("reference", "")
    full = _safe_rel(root, rel)
    if full is None or not os.path.isfile(full):
        return [f"{rel or 'reference'}: missing; re-export to regenerate reference/"], ""
    try:
        ref = V.load_npz(full)
    except ValueError as e:
        return [str(e)], ""
    feeds = {}
    for t in runner.inputs:
        if t["name"] not in refs:
            return [f"{mf.REFERENCE_INPUTS} has no {t['name']!r} array; re-export"], ""
        feeds[t["name"]] = refs[t["name"]]
    try:
        stats = V.compare(runner.run(feeds), ref)
    except V.RunnerError as e:
        return [f"{art.get('file')}: {e}"], ""
    tol = art.get("tolerance")
    if not isinstance(tol, (int, float)) or isinstance(tol, bool):
        return [f"{art.get('file')}: the manifest records no numeric tolerance; re-export"], ""
    p = V.parity_problems(art.get("quant", "fp32"), stats, float(tol))
    msg = f"max |Δ| {stats['max_abs_diff']:.3g} <= {tol:.3g}, top-1 agreement {stats['top1_agreement']:.3f}"
    return [f"{art.get('file')}: {x}" for x in p], msg


def _variants(manifest: dict, artifacts: list) -> dict:
    """{'onnx/int8-static': [sub-model artifacts]} for memory checks."""
    subs = {sm.get("name") for sm in manifest.get("submodels", []) if isinstance(sm, dict)}
    out: dict[str, list] = {}
    for a in artifacts:
        if isinstance(a, dict) and a.get("name") in subs:
            out.setdefault(f"{a.get('format')}/{a.get('quant')}", []).append(a)
    return dict(sorted(out.items()))


def _memory(prof: dict, variant: str, arts: list) -> tuple[list[str], str]:
    fmt = variant.split("/")[0]
    overhead = RUNTIME_OVERHEAD_MB.get(fmt, max(RUNTIME_OVERHEAD_MB.values()))

    def need(a):
        b = a.get("bytes") if isinstance(a.get("bytes"), int) else 0
        return overhead + MODEL_MEMORY_FACTOR * b / 2 ** 20
    budget = prof["memory_budget_mb"]
    p = [f"{a.get('name')} ({a.get('file')}) needs ~{need(a):.0f} MB (runtime {overhead:.0f} MB + "
         f"{MODEL_MEMORY_FACTOR:g}x {a.get('bytes', 0) / 2 ** 20:.1f} MB model), over {prof['name']}'s "
         f"memory_budget_mb {budget:g}; prune harder, quantise, or use a bigger board"
         for a in arts if need(a) > budget]
    total = overhead + sum(need(a) - overhead for a in arts)
    return p, (f"largest sub-model ~{max(need(a) for a in arts):.0f} MB of {budget:g} MB; all {len(arts)} on one "
               f"board ~{total:.0f} MB")


def _accuracy(manifest, variant, recorded, runners, x, y, eval_path) -> tuple[list[str], str]:
    fmt, _, quant = variant.partition("/")
    subs, fusion = V.variant_artifacts(manifest, fmt, quant)
    missing = [sm.get("name") for sm, a in zip(manifest.get("submodels", []), subs) if a is None]
    if missing or fusion is None:
        return [f"{variant}: no artifact for {missing + ([] if fusion else ['fusion'])}; re-export"], ""
    if any(id(a) not in runners for a in subs + [fusion]):
        return [f"{variant}: an artifact of this variant did not load or match its manifest entry (see above)"], ""
    acc = V.fused_accuracy([runners[id(a)] for a in subs], runners[id(fusion)],
                           manifest.get("fusion", {}).get("source", "features"), x, y)
    drop = (float(recorded) - acc) * 100
    msg = f"{acc:.4f} on {os.path.basename(eval_path)} vs {float(recorded):.4f} recorded"
    if drop > ACCURACY_TOLERANCE_PP + 1e-9:
        return [f"{variant}: fused accuracy {msg} ({drop:.2f} pp lower; tolerance {ACCURACY_TOLERANCE_PP} pp)"], msg
    return [], msg


# -- reporting -----------------------------------------------------------------------------------------------
def summary(results: list[Result]) -> dict:
    return {"ok": not any(r.ok is False for r in results),
            "passed": sum(r.ok is True for r in results), "failed": sum(r.ok is False for r in results),
            "skipped": sum(r.ok is None for r in results)}


def to_json(build_dir: str, results: list[Result]) -> dict:
    return {"build": os.path.abspath(build_dir), **summary(results), "checks": [asdict(r) for r in results]}


def write_junit(results: list[Result], path: str, suite: str = "edvit-tool check") -> None:
    """JUnit XML, one <testcase> per check (GitHub Actions / GitLab / Jenkins test reports read it)."""
    import xml.etree.ElementTree as ET

    s = summary(results)
    root = ET.Element("testsuites")
    ts = ET.SubElement(root, "testsuite", name=suite, tests=str(len(results)), failures=str(s["failed"]),
                       errors="0", skipped=str(s["skipped"]), time=f"{sum(r.seconds for r in results):.3f}")
    for r in results:
        tc = ET.SubElement(ts, "testcase", classname=f"edvit.check.{r.group}", name=r.name, time=f"{r.seconds:.3f}")
        if r.ok is False:
            ET.SubElement(tc, "failure", message=r.message[:500]).text = r.message
        elif r.ok is None:
            ET.SubElement(tc, "skipped", message=r.message)
        elif r.message:
            ET.SubElement(tc, "system-out").text = r.message
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
