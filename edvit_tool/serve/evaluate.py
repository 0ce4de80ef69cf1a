"""What a deployment should answer, what it does answer, and how fast.

    dep = deployed_artifacts("run/deployment.json")          # which artifact serves each sub-model + fusion head
    exp = expected_accuracy(dep, x, y)                        # those very artifacts, run right here, batch 1
    with Coordinator("run/deployment.json") as coord:
        got = measure(coord, x, y)                            # the same images through the boards
    assert got["accuracy"] == exp["accuracy"]                 # same interpreter, same inputs: exactly equal

`expected_accuracy` also gives the build's own figure, manifest["accuracy"]["exported"][variant], when every
sub-model runs the same variant; it is strictly these artifacts' figure (`manifest_strict`) only when the
deployment's fusion head is also the one export measured that variant with (`export.validate.variant_artifacts`).
Otherwise (a plan that mixes variants per board, another fusion head) the local run is the reference. Host side: numpy + runtime.backends + coordinator; no torch.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import time

import numpy as np

from ..errors import ArtifactError
from ..runtime import backends
from ..runtime import manifest as mf


def _pct(values, q: float) -> float | None:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else None


def _variant(art: dict) -> str:
    return f"{art['format']}/{art['quant']}"


def deployed_artifacts(deployment_path: str) -> dict:
    """{build_dir, manifest, submodels: {name: artifact entry} in group order, fusion: artifact entry, source,
    boards: {sub-model: board}} for what `deployment_path` serves. With replicas, the first replica (the one the
    coordinator prefers) counts."""
    from ..cluster.deployment import load as load_deployment

    doc, manifest, build_dir, _token, replicas = load_deployment(deployment_path)
    boards = {b["name"]: b for b in doc["boards"]}
    subs, where = {}, {}
    for sm in mf.ordered_submodels(manifest):
        m = sm["name"]
        b = boards[replicas[m][0]]
        art = None
        sha = ((b.get("artifacts") or {}).get(m) or {}).get("sha256")
        if sha:
            art = mf.artifact_by_sha256(manifest, sha)
        elif (b.get("variants") or {}).get(m):
            fmt, _, quant = b["variants"][m].partition("/")
            art = mf.artifact(manifest, m, fmt, quant)
        if art is None:
            raise ArtifactError(f"{deployment_path}: board {b['name']} serves {m} with an artifact that is not in "
                                f"{build_dir}/manifest.json; redeploy from a plan for this build")
        subs[m], where[m] = art, b["name"]
    rel = (doc.get("fusion") or {}).get("artifact")
    if rel:
        fusion = next((a for a in manifest.get("artifacts", []) if a.get("name") == "fusion" and a["file"] == rel),
                      None)
        if fusion is None:
            raise ArtifactError(f"{deployment_path}: fusion artifact {rel} is not in {build_dir}/manifest.json")
    else:  # what the coordinator falls back to
        fusion, _ = mf.select_artifact(manifest, "fusion", "onnx/fp32")
    return {"build_dir": build_dir, "manifest": manifest, "submodels": subs, "fusion": fusion,
            "source": manifest["fusion"].get("source", "features"), "boards": where}


def _load(build_dir: str, art: dict, threads: int = 1):
    path = os.path.join(build_dir, art["file"])
    try:
        return backends.load_model(path, threads=threads, inputs=art.get("inputs"), outputs=art.get("outputs"))
    except backends.BackendError as e:
        raise ArtifactError(f"{mf.artifact_key(art)}: {e}") from None


class LocalEnsemble:
    """The deployed artifacts loaded here with the workers' own loader (runtime.backends, 1 thread), run one
    after another: what one board holding every sub-model would do, and the reference for the boards' answers."""

    def __init__(self, dep: dict, threads: int = 1):
        self.dep = dep
        self.source = dep["source"]
        self.subs = [(m, _load(dep["build_dir"], a, threads)) for m, a in dep["submodels"].items()]
        self.fusion = _load(dep["build_dir"], dep["fusion"], threads)
        self._in = self.fusion.inputs[0]["name"]
        outs = [t["name"] for t in self.fusion.outputs]
        self._out = "logits" if "logits" in outs else outs[0]

    def logits(self, x: np.ndarray) -> np.ndarray:
        feats = [np.asarray(model.run({model.inputs[0]["name"]: x})[self.source], dtype=np.float32)
                 for _, model in self.subs]
        return np.asarray(self.fusion.run({self._in: np.concatenate(feats, axis=1)})[self._out], dtype=np.float32)

    def predict(self, x: np.ndarray, batch: int = 1) -> np.ndarray:
        """Top-1 class per image, decided as the coordinator decides (softmax in float64 -> float32, first max)."""
        from .coordinator import softmax

        preds = []
        for i in range(0, len(x), batch):
            probs = softmax(self.logits(x[i:i + batch]).astype(np.float64)).astype(np.float32)
            preds.append(np.argmax(probs, axis=1))
        return np.concatenate(preds) if preds else np.zeros(0, dtype=np.int64)


def plan_variant(dep: dict) -> str | None:
    """The variant every sub-model runs ('onnx/fp32'), or None when they differ."""
    variants = {_variant(a) for a in dep["submodels"].values()}
    return variants.pop() if len(variants) == 1 else None


def manifest_figure(dep: dict) -> tuple:
    """(the build's exported accuracy for the variant every sub-model runs, or None; whether it is strictly the
    figure of these artifacts, i.e. export measured that variant with the fusion head the deployment runs; a
    note saying which)."""
    from ..export.validate import variant_artifacts

    v = plan_variant(dep)
    if v is None:
        mixed = ", ".join(f"{m}={_variant(a)}" for m, a in dep["submodels"].items())
        return None, False, f"the plan mixes variants ({mixed}); the same artifacts run here are the reference"
    exported = (dep["manifest"].get("accuracy") or {}).get("exported") or {}
    if v not in exported:
        return None, False, f"the build records no exported accuracy for {v}"
    fmt, _, quant = v.partition("/")
    _, fusion = variant_artifacts(dep["manifest"], fmt, quant)
    if fusion is None or fusion["file"] != dep["fusion"]["file"]:
        return float(exported[v]), False, (f"accuracy.exported[{v}], measured with fusion head "
                                           f"{fusion and fusion['file']}; the deployment's coordinator runs "
                                           f"{dep['fusion']['file']}, so the same artifacts run here are the "
                                           "reference")
    return float(exported[v]), True, f"accuracy.exported[{v}]: every sub-model and the fusion head as exported"


def expected_accuracy(dep: dict, x: np.ndarray, y: np.ndarray, batch: int = 1) -> dict:
    """The accuracy the deployment must reproduce: its artifacts run here (same interpreter code, same inputs,
    same batching) -> {accuracy, predictions, variant, manifest_accuracy, manifest_note}."""
    ens = LocalEnsemble(dep)
    pred = ens.predict(x, batch)
    figure, strict, note = manifest_figure(dep)
    return {"accuracy": float(np.mean(pred == y)), "predictions": pred, "variant": plan_variant(dep),
            "variants": {m: _variant(a) for m, a in dep["submodels"].items()},
            "fusion": dep["fusion"]["file"], "manifest_accuracy": figure, "manifest_strict": strict,
            "manifest_note": note}


def sequential_latency(dep: dict, x: np.ndarray, n: int = 200, warmup: int = 10) -> dict:
    """One board running all K sub-models in sequence + the fusion head, batch 1 (measured here, 1 thread)."""
    ens = LocalEnsemble(dep)
    for i in range(min(warmup, len(x))):
        ens.logits(x[i:i + 1])
    ms = []
    for i in range(min(n, len(x))):
        t0 = time.perf_counter()
        ens.logits(x[i:i + 1])
        ms.append((time.perf_counter() - t0) * 1000)
    return {"p50_ms": _pct(ms, 50), "p99_ms": _pct(ms, 99), "n": len(ms)}


def measure(coord, x: np.ndarray, y: np.ndarray, batch: int = 32, concurrency: int = 2,
            seconds: float = 3.0) -> dict:
    """Every image through the deployment one at a time (accuracy, latency p50/p99 per image, the slowest
    board's round trip per request = the measured makespan), then batched requests from `concurrency` callers
    for about `seconds` (throughput, images/s; their answers must agree with the batch-1 ones)."""
    pred, e2e, slowest, degraded = [], [], [], 0
    for i in range(len(x)):
        res = coord.run(x[i:i + 1])
        pred.append(int(np.argmax(res.probabilities[0])))
        e2e.append(res.latency_ms)
        rt = [v for v in res.board_ms.values() if v is not None]
        if rt:
            slowest.append(max(rt))
        degraded += res.degraded
    pred = np.asarray(pred, dtype=np.int64)
    chunks = [(i, x[i:i + batch]) for i in range(0, len(x), batch)]
    batched = np.full(len(x), -1, dtype=np.int64)
    images, t0 = 0, time.perf_counter()
    with cf.ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        first = True
        while first or time.perf_counter() - t0 < seconds:
            for (i, _), res in zip(chunks, pool.map(lambda c: coord.run(c[1]), chunks)):
                if first:
                    batched[i:i + len(res.probabilities)] = np.argmax(res.probabilities, axis=1)
                images += len(res.probabilities)
                degraded += res.degraded
            first = False
    elapsed = time.perf_counter() - t0
    return {"images": len(x), "accuracy": float(np.mean(pred == y)), "predictions": pred,
            "latency_p50_ms": _pct(e2e, 50), "latency_p99_ms": _pct(e2e, 99),
            "makespan_p50_ms": _pct(slowest, 50), "makespan_p99_ms": _pct(slowest, 99),
            "throughput_images_per_s": images / elapsed, "throughput_batch": batch,
            "throughput_concurrency": concurrency, "batched_agree": int(np.sum(batched == pred)),
            "degraded": int(degraded)}
