"""`edvit-tool export BUILD_DIR`: (re-)export an existing build's sub-models and/or write a Triton repository."""

from __future__ import annotations

import json
import os

import click

from ..export import DEFAULT_CALIBRATION, DEFAULT_GATE  # torch-free import

DEFAULT_EXPORT = {"formats": ["onnx", "tflite"], "quant": ["fp32", "int8-static"], "opset": 17,
                  "simplify": "onnxslim", "calibration_samples": 64, "reference_samples": 16,
                  "calibration_method": DEFAULT_CALIBRATION, "int8_ops": "weights",
                  "int8_fallback": "weights"}


def _csv(value):
    return [v.strip() for v in value.split(",") if v.strip()] if value is not None else None


def _recipe_sections(build_dir: str) -> tuple[dict, dict]:
    """The build's own export/gate settings (recipe.resolved.yaml), else the defaults."""
    import yaml

    from ..errors import ArtifactError

    path = os.path.join(build_dir, "recipe.resolved.yaml")
    if not os.path.isfile(path):
        return dict(DEFAULT_EXPORT), dict(DEFAULT_GATE)
    try:
        with open(path, encoding="utf-8") as f:
            recipe = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ArtifactError(f"{path}: unreadable ({str(e).splitlines()[0]}); restore it or rebuild") from None
    export = {**DEFAULT_EXPORT, **(recipe.get("export") or {})}
    gate = {**DEFAULT_GATE, **(recipe.get("gate") or {})}
    return export, gate


@click.command("export")
@click.argument("build_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--formats", default=None, help="Comma list of onnx,tflite [default: the build's recipe].")
@click.option("--quant", default=None, help="Comma list of fp32,fp16,int8-dynamic,int8-static [default: the build's "
                                            "recipe].")
@click.option("--opset", type=int, default=None, help="ONNX opset (>= 17).")
@click.option("--triton-repo", "triton_repo", type=click.Path(file_okay=False), default=None,
              help="Also write a Triton model repository here (one model per artifact).")
@click.option("--json", "as_json", is_flag=True, help="Print the exported artifacts and accuracies as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
def command(build_dir, formats, quant, opset, triton_repo, as_json, quiet):
    """Re-export a build's sub-models and fusion head (atomically: the build is replaced only when the export
    finished), validating every artifact against PyTorch and gating the fused accuracy; and/or write a Triton
    model repository from its artifacts. With only --triton-repo, the existing artifacts are used as they are.

    \b
    Examples:
      edvit-tool export build/digits --formats onnx,tflite --quant fp32,int8-static
      edvit-tool export build/digits --triton-repo triton_models/
    """
    from ..artifacts import load_manifest, staged_dir, write_manifest
    from ..report import refresh_reports
    from ..errors import EdvitError

    manifest = load_manifest(build_dir)
    failures: list[str] = []
    reexport = formats is not None or quant is not None or opset is not None or not triton_repo
    if reexport:
        from ..compile.build import load_build_models
        from ..export import export_build
        from ..progress import Bars

        cfg, gate = _recipe_sections(build_dir)
        if formats is not None:
            cfg["formats"] = _csv(formats)
        if quant is not None:
            cfg["quant"] = _csv(quant)
        if opset is not None:
            cfg["opset"] = opset
        if not cfg.get("formats"):
            raise EdvitError(f"{build_dir}: nothing to export (its recipe has export.formats: []); pass "
                             "--formats onnx,tflite")
        if "tflite" in cfg["formats"]:
            from ..logs import preimport_quietly

            preimport_quietly("litert_torch")  # before the progress bars: TensorFlow's load-time notices go to a log
        with staged_dir(build_dir, copy_from=build_dir) as stage:
            _drop_old_artifacts(stage, manifest)
            models = load_build_models(stage, manifest)
            with Bars(enabled=not (quiet or as_json)) as bars:
                failures = export_build(stage, manifest, models, cfg, gate, progress=bars)
            refresh_reports(stage, manifest, failures)
            write_manifest(stage, manifest)
    names = []
    if triton_repo:
        from ..export.triton import write_triton_repo

        names = write_triton_repo(build_dir, manifest, triton_repo)
    if as_json:
        click.echo(json.dumps({"build": os.path.abspath(build_dir), "failures": failures,
                               "exported_accuracy": manifest.get("accuracy", {}).get("exported", {}),
                               "artifacts": [{k: a.get(k) for k in ("file", "format", "quant", "bytes", "sha256",
                                                                    "max_abs_diff", "top1_agreement", "status")}
                                             for a in manifest.get("artifacts", [])],
                               "triton_models": names}, indent=2))
    else:
        _print_table(manifest)
        if names:
            click.echo(f"Triton repository: {len(names)} models in {triton_repo}")
    if failures:
        click.echo("Error: export gate failed (artifacts marked failed in the manifest, not shippable): "
                   + "; ".join(failures), err=True)
        return 1
    return 0


def _drop_old_artifacts(stage: str, manifest: dict) -> None:
    """Remove the previous export's files from the staged copy, so a dropped format/quant leaves nothing behind."""
    rels = {"reference/inputs.npz"}
    for a in manifest.get("artifacts", []):
        rels.update({a.get("file"), a.get("reference")})
    for rel in rels:
        if rel and os.path.isfile(os.path.join(stage, rel)):
            os.remove(os.path.join(stage, rel))


def _print_table(manifest: dict) -> None:
    exported = manifest.get("accuracy", {}).get("exported", {})
    click.echo(f"{'artifact':32s} {'bytes':>10s} {'max|Δ|':>9s} {'top-1':>6s}  status")
    for a in manifest.get("artifacts", []):
        click.echo(f"{a['file']:32s} {a['bytes']:>10d} {a['max_abs_diff']:>9.2e} {a['top1_agreement']:>6.3f}  "
                   f"{a['status']}" + (f" (float: {', '.join(a['float_layers'])})" if a.get("float_layers") else "")
                   + (f" (float weights: {', '.join(a['float_weights'])})"
                      if a.get("float_weights") and a["float_weights"] != a.get("float_layers") else ""))
    if exported:
        click.echo("fused accuracy through the artifacts: " + ", ".join(f"{k} {v:.4f}" for k, v in exported.items())
                   + f" (PyTorch {manifest.get('accuracy', {}).get('fused', float('nan')):.4f})")
