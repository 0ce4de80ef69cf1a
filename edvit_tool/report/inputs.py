"""What `edvit-tool report` draws from: the build (manifest.json, report.json) and, when given, the run's
profiles.json, plan.json and deployment.json (+ loop.json found beside the deployment or plan: the demo's
measured figures). Every optional file may be absent; a path that was given but cannot be read is an error."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..errors import ArtifactError


@dataclass
class ReportInputs:
    build_dir: str
    manifest: dict
    summary: dict | None = None      # report.json (compile's figures: peer, compile time)
    profiles: dict | None = None
    plan: dict | None = None
    deployment: dict | None = None
    loop: dict | None = None         # loop.json of the demo / run_loop
    sources: dict = field(default_factory=dict)   # what -> path actually read
    notes: list = field(default_factory=list)     # what is missing and which section it leaves out


def _read_json(path: str, what: str, fix: str) -> dict:
    from ..artifacts import read_json_object

    return read_json_object(path, what, fix)


def _check_plan(doc: dict, path: str) -> None:
    fix = "pass the plan.json written by `edvit-tool assign`"
    if not isinstance(doc.get("placements"), list) or not isinstance(doc.get("makespan_ms"), (int, float)):
        raise ArtifactError(f"{path}: not a plan (needs placements [] and makespan_ms); {fix}")
    for i, p in enumerate(doc["placements"]):
        if not isinstance(p, dict) or not isinstance(p.get("board"), str) or not isinstance(p.get("submodel"), str) \
                or not isinstance(p.get("predicted_ms"), (int, float)):
            raise ArtifactError(f"{path}: placements[{i}] needs board, submodel and predicted_ms; {fix}")


def _check_deployment(doc: dict, path: str) -> None:
    fix = "pass the deployment.json written by `edvit-tool deploy`"
    boards = doc.get("boards")
    if not isinstance(boards, list) or not boards:
        raise ArtifactError(f"{path}: not a deployment (needs a non-empty boards list); {fix}")
    for i, b in enumerate(boards):
        if not isinstance(b, dict) or not isinstance(b.get("name"), str) or not isinstance(b.get("models"), list):
            raise ArtifactError(f"{path}: boards[{i}] needs name and models; {fix}")


def _loop_beside(*paths) -> str | None:
    for p in paths:
        if p:
            cand = os.path.join(os.path.dirname(os.path.abspath(p)), "loop.json")
            if os.path.isfile(cand):
                return cand
    return None


def load_inputs(build_dir: str, profiles: str | None = None, plan: str | None = None,
                deployment: str | None = None) -> ReportInputs:
    from ..cluster.assign import validate_profiles
    from ..runtime import manifest as mf

    if not os.path.isdir(build_dir):
        raise ArtifactError(f"{build_dir}: not a directory; pass a build directory made by `edvit-tool compile`")
    try:
        manifest = mf.load(build_dir)
    except mf.ManifestError as e:
        raise ArtifactError(str(e)) from None
    inp = ReportInputs(build_dir=os.path.abspath(build_dir), manifest=manifest,
                       sources={"manifest": os.path.join(os.path.abspath(build_dir), mf.MANIFEST_NAME)})
    summary_path = os.path.join(build_dir, "report.json")
    if os.path.isfile(summary_path):
        inp.summary = _read_json(summary_path, "build report", "rerun `edvit-tool compile` (or delete it)")
        inp.sources["report.json"] = os.path.abspath(summary_path)
    else:
        inp.notes.append("no report.json in the build: compile time and the peer model are not shown")
    if profiles:
        doc = _read_json(profiles, "profiles file", "make one with `edvit-tool profile`")
        problems = validate_profiles(doc)
        if problems:
            raise ArtifactError(f"{profiles}: " + "; ".join(problems[:3]) + "; make one with `edvit-tool profile`")
        inp.profiles, inp.sources["profiles"] = doc, os.path.abspath(profiles)
    else:
        inp.notes.append("no --profiles: measured per-artifact latencies are not shown")
    if plan:
        doc = _read_json(plan, "plan file", "make one with `edvit-tool assign`")
        _check_plan(doc, plan)
        inp.plan, inp.sources["plan"] = doc, os.path.abspath(plan)
    else:
        inp.notes.append("no --plan: per-board latencies and the makespan are not shown")
    if deployment:
        doc = _read_json(deployment, "deployment file", "make one with `edvit-tool deploy`")
        _check_deployment(doc, deployment)
        inp.deployment, inp.sources["deployment"] = doc, os.path.abspath(deployment)
    else:
        inp.notes.append("no --deployment: which board runs what is taken from the plan, if any")
    loop = _loop_beside(deployment, plan)
    if loop:
        inp.loop, inp.sources["loop"] = _read_json(loop, "loop summary", "rerun `edvit-tool demo`"), loop
    return inp
