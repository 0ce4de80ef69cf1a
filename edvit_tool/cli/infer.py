"""`edvit-tool infer`: classify images through a deployment (all boards in parallel + the fusion head)."""

from __future__ import annotations

import json

import click

EPILOG = """\b
Examples:
  edvit-tool infer --deployment deployment.json cat.png dog.jpg
  edvit-tool infer --deployment deployment.json build/reference/eval.npz --summary
  edvit-tool infer --deployment deployment.json photo.jpg --top-k 3 --json

\b
Images (png/jpg/...) get the build's own preprocessing (the checkpoint's timm eval transform recorded in the
manifest: resize by crop_pct, centre crop, mean/std; RGB, or gray for a 1-channel model). An .npz holds `x` (raw
uint8 images [N,H,W(,C)], or float32 [N,C,H,W] already preprocessed) or `pixels` (a build's reference/eval.npz:
uint8 at the model's size, only normalised) and optionally `y` (labels); a folder
holds one sub-folder of images per class (named as the build's classes): then accuracy is printed too. A board that is down or misses the
deadline is replaced by its replica if it has one; otherwise the answer comes from the other sub-models and is
marked DEGRADED with the missing groups. Exit 2 when no board answers at all (see `edvit-tool status`).
"""


@click.command("infer", epilog=EPILOG, context_settings={"max_content_width": 110})
@click.option("--deployment", "deployment", required=True, type=click.Path(dir_okay=False),
              help="deployment.json written by `edvit-tool deploy`.")
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--top-k", default=5, show_default=True, type=click.IntRange(1), help="Classes shown per image.")
@click.option("--batch", default=32, show_default=True, type=click.IntRange(1), help="Images per request.")
@click.option("--deadline-ms", type=click.FloatRange(min=1), default=None,
              help="Per-request deadline [default: deployment.json's deadline_ms, else 2000].")
@click.option("--summary", is_flag=True, help="Only the summary, not one line per image.")
@click.option("--json", "as_json", is_flag=True, help="Print answers and summary as one JSON document.")
def command(deployment, images, top_k, batch, deadline_ms, summary, as_json):
    """Classify IMAGE... (files, .npz or class folders) with the deployed ED-ViT ensemble."""
    import numpy as np

    from ..serve.coordinator import Coordinator
    from ..images import load_wire_inputs
    from ..progress import Bars

    with Coordinator(deployment, deadline_ms=deadline_ms) as coord:
        # files stay files and raw pixels stay pixels: the deployment's --wire decides what the boards get
        inputs = load_wire_inputs(images, coord.input_spec, coord.manifest["classes"])
        answers, request_ms = [], []
        with Bars(enabled=not as_json) as bars:
            advance = bars.task("infer", total=len(inputs.x))
            for i in range(0, len(inputs.x), batch):
                chunk = coord.infer(inputs.x[i:i + batch], top_k=top_k)
                answers += chunk
                request_ms.append(chunk[0].latency_ms)
                if advance:
                    advance(len(chunk))
        stats = coord.stats()
        wires = sorted({a.wire for a in answers})

    degraded = [a for a in answers if a.degraded]
    missing = sorted({m for a in degraded for m in a.missing})
    lat = np.asarray(request_ms)
    doc = {"images": len(answers), "requests": len(request_ms), "batch": batch, "wire": ",".join(wires),
           "degraded": len(degraded), "missing_groups": missing,
           "latency_ms": {"p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99))},
           "boards": {n: {"up": b["up"], "p50_ms": b["p50_ms"], "failures": b["failures"]}
                      for n, b in stats["boards"].items()}}
    if inputs.y is not None:
        pred = np.asarray([a.top[0][0] for a in answers])
        doc["accuracy"] = float((pred == inputs.y).mean())
    if as_json:
        doc_answers = [dict(input=n, **a.to_json()) for n, a in zip(inputs.names, answers)]
        click.echo(json.dumps({"answers": doc_answers, "summary": doc}, indent=1))
        return 0
    if not summary:
        for name, a in zip(inputs.names, answers):
            tops = ", ".join(f"{cname} {p:.3f}" for _, cname, p in a.top)
            mark = f"  DEGRADED (missing {', '.join(a.missing)})" if a.degraded else ""
            click.echo(f"{name}: {tops}{mark}")
    line = (f"{doc['images']} images in {doc['requests']} requests (batch {batch}, wire {doc['wire']}): latency p50 "
            f"{doc['latency_ms']['p50']:.2f} ms, p99 {doc['latency_ms']['p99']:.2f} ms per request")
    if "accuracy" in doc:
        line = f"accuracy {doc['accuracy'] * 100:.2f} % on " + line
    click.echo(line)
    if degraded:
        click.secho(f"{len(degraded)} of {len(answers)} answers DEGRADED (missing {', '.join(missing)}); "
                    "run `edvit-tool status` to see which boards are down", fg="yellow", err=True)
    return 0
