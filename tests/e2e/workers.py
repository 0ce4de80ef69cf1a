"""Local board workers and a tiny real build for coordinator / serve tests (no SSH).

    build = make_coord_build(dir)                         # 3 sub-models + fusion, ONNX fp32, reference/eval.npz
    dep, workers = start_local_workers(build, {"b0": ["g0"], "b1": ["g1", "g2"]}, "onnx/fp32")
    ...                                                   # Coordinator(dep)
    workers.kill("b0"); workers.restart("b0"); workers.close()

Workers are real `python -m edvit_tool.runtime.worker` subprocesses on 127.0.0.1 (port 0, the ready line tells
the port; a restart reuses it so deployment.json stays valid). deployment.json is written as `deploy` writes it.
Teardown kills by pid and waits.
"""

from __future__ import annotations

import json
import os
import secrets
import select
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GROUPS = [[0, 1], [2, 3], [4, 5]]
CLASSES = ["zero", "one", "two", "three", "four", "five"]
FEAT = 8
SHAPE = (1, 16, 16)
N_EVAL = 64
BUILD_CACHE = "edvit-coord-build-v1"  # pytest cache dir of the build; bump when make_coord_build changes


def _modules(n_out: int, seed: int):
    import torch

    class Sub(torch.nn.Module):
        """pixel_values [B,1,16,16] -> features [B,8] (layer-normed), logits [B,|g|+1]."""

        def __init__(self):
            super().__init__()
            torch.manual_seed(seed)
            self.embed = torch.nn.Conv2d(1, 8, 4, 4)
            self.fc = torch.nn.Linear(8, FEAT)
            self.norm = torch.nn.LayerNorm(FEAT)
            self.head = torch.nn.Linear(FEAT, n_out)

        def forward(self, pixel_values):
            t = self.embed(pixel_values).flatten(2).transpose(1, 2)
            f = self.norm(torch.nn.functional.gelu(self.fc(t)).mean(1))
            return f, self.head(f)

    return Sub().eval()


def export_onnx(module, example, path, inp: str, outs: list) -> None:
    """One-input ONNX file (opset 17, dynamic batch on every tensor); torch's tracer warnings silenced."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), path, opset_version=17, dynamo=False, input_names=[inp],
                          output_names=outs, dynamic_axes={n: {0: "batch"} for n in [inp] + outs})


def io_spec(name: str, shape) -> dict:
    """A manifest tensor spec: float32, batch dim -1 before `shape`."""
    return {"name": name, "shape": [-1, *shape], "dtype": "float32"}


def make_coord_build(root: str) -> str:
    """Write (once: skipped when root/manifest.json exists) a real build: g0..g2 + fusion ONNX, eval.npz."""
    if os.path.isfile(os.path.join(root, "manifest.json")):
        return root
    import torch

    from edvit_tool.artifacts import staged_dir, write_manifest
    from edvit_tool.runtime.manifest import sha256_file

    rng = np.random.default_rng(0)
    x = rng.standard_normal((N_EVAL,) + SHAPE).astype(np.float32)
    with staged_dir(root) as d:
        for sub in ("submodels", "fusion", "reference"):
            os.makedirs(os.path.join(d, sub))
        arts, subs, feats = [], [], []
        for i, g in enumerate(GROUPS):
            m = _modules(len(g) + 1, seed=i)
            rel = f"submodels/g{i}.fp32.onnx"
            export_onnx(m, torch.from_numpy(x[:1]), os.path.join(d, rel), "pixel_values", ["features", "logits"])
            with torch.no_grad():
                feats.append(m(torch.from_numpy(x))[0])
            subs.append({"name": f"g{i}", "group": i, "classes": g, "arch": {}, "params": 0, "bytes": 0,
                         "flops": 0, "feature_dim": FEAT, "num_outputs": len(g) + 1})
            arts.append((f"g{i}", rel, [io_spec("pixel_values", SHAPE)],
                         [io_spec("features", [FEAT]), io_spec("logits", [len(g) + 1])]))
        torch.manual_seed(7)
        fusion = torch.nn.Sequential(torch.nn.Linear(FEAT * len(GROUPS), 16), torch.nn.GELU(),
                                     torch.nn.Linear(16, len(CLASSES))).eval()
        export_onnx(fusion, torch.cat(feats, 1)[:1], os.path.join(d, "fusion/fusion.fp32.onnx"), "features", ["logits"])
        arts.append(("fusion", "fusion/fusion.fp32.onnx", [io_spec("features", [FEAT * len(GROUPS)])],
                     [io_spec("logits", [len(CLASSES)])]))
        with torch.no_grad():
            pred = fusion(torch.cat(feats, 1)).argmax(1).numpy()
        # labels: the model's own prediction for 3/4 of the images, a shifted class for the rest (accuracy 0.75)
        y = np.where(np.arange(N_EVAL) % 4 == 3, (pred + 1) % len(CLASSES), pred).astype(np.int64)
        np.savez(os.path.join(d, "reference/eval.npz"), x=x, y=y)
        np.savez(os.path.join(d, "reference/inputs.npz"), pixel_values=x[:8])
        artifacts = []
        for name, rel, ins, outs in arts:
            p = os.path.join(d, rel)
            artifacts.append({"name": name, "file": rel, "format": "onnx", "quant": "fp32",
                              "bytes": os.path.getsize(p), "sha256": sha256_file(p), "inputs": ins,
                              "outputs": outs, "tolerance": 1e-4, "status": "ok"})
        write_manifest(d, {
            "schema_version": 1, "tool_version": "0.1.0", "created": "test",
            "model": {"name": "tiny-coord", "kwargs": {}, "params": 0, "bytes": 0, "flops": 0},
            "input": {"name": "pixel_values", "shape": list(SHAPE), "layout": "NCHW", "dtype": "float32",
                      "mean": [0.5], "std": [0.5], "interpolation": "bilinear"},
            "classes": CLASSES, "groups": GROUPS, "submodels": subs,
            "fusion": {"kind": "mlp", "source": "features", "input_dims": [FEAT] * len(GROUPS),
                       "num_classes": len(CLASSES)},
            "accuracy": {"exported": {"onnx/fp32": 0.75}}, "artifacts": artifacts})
    return root


def local_fused(build: str, x: np.ndarray, drop=()) -> np.ndarray:
    """The same ONNX artifacts run in this process (onnxruntime) -> fused logits; `drop`: groups zeroed."""
    import onnxruntime as ort

    from edvit_tool.runtime import manifest as mf

    m = mf.load(build)
    feats = []
    for s in m["submodels"]:
        sess = ort.InferenceSession(os.path.join(build, f"submodels/{s['name']}.fp32.onnx"),
                                    providers=["CPUExecutionProvider"])
        f = sess.run(["features"], {"pixel_values": x})[0]
        feats.append(np.zeros_like(f) if s["name"] in drop else f)
    fusion = ort.InferenceSession(os.path.join(build, "fusion/fusion.fp32.onnx"), providers=["CPUExecutionProvider"])
    return fusion.run(["logits"], {"features": np.concatenate(feats, 1)})[0]


class LocalWorkers:
    """Running workers by board name; `kill` (SIGKILL), `restart` (same port), `close` (kill all, wait)."""

    def __init__(self, build: str, assignment: dict, variant: str | None, workdir: str, token_file: str,
                 extra_args=(), env=None, prefix: dict | None = None, hosts: dict | None = None):
        self.build, self.assignment, self.variant = build, assignment, variant
        self.hosts = hosts or {}    # board -> address to bind (default 127.0.0.1), e.g. a namespace's
        self.workdir, self.token_file, self.extra_args = workdir, token_file, list(extra_args)
        self.env = env
        self.prefix = prefix or {}  # board -> argv prefix (e.g. a wrapper that joins a cgroup, or taskset)
        self.procs: dict = {}
        self.ports: dict = {}

    def _cmd(self, board: str, port: int) -> list:
        cmd = [sys.executable, "-m", "edvit_tool.runtime.worker", "--manifest", os.path.join(self.build,
               "manifest.json"), "--models", ",".join(self.assignment[board]), "--host",
               self.hosts.get(board, "127.0.0.1"),
               "--port", str(port), "--token-file", self.token_file, "--log-level", "warning", *self.extra_args]
        if self.variant:
            cmd += ["--variant", self.variant]
        return list(self.prefix.get(board, [])) + cmd

    def start(self, boards=None, timeout: float = 60.0) -> None:
        """Start `boards` (default all) at once, then wait for every ready line."""
        boards = list(boards or self.assignment)
        for b in boards:
            log = open(os.path.join(self.workdir, f"{b}.log"), "ab")
            try:
                self.procs[b] = subprocess.Popen(self._cmd(b, self.ports.get(b, 0)), stdout=subprocess.PIPE,
                                                 stderr=log, text=True, cwd=self.workdir, env=self.env)
            finally:
                log.close()
        t_end = time.monotonic() + timeout
        for b in boards:
            p = self.procs[b]
            ready, _, _ = select.select([p.stdout], [], [], max(0.1, t_end - time.monotonic()))
            line = p.stdout.readline() if ready else ""
            event = json.loads(line) if line.strip() else {}
            if event.get("event") != "ready":
                self.close()
                with open(os.path.join(self.workdir, f"{b}.log")) as f:
                    tail = f.read()[-2000:]
                raise RuntimeError(f"worker {b} did not start: {event or 'no ready line'}; log:\n{tail}")
            self.ports[b] = event["port"]

    def pid(self, board: str) -> int:
        return self.procs[board].pid

    def kill(self, board: str) -> None:
        p = self.procs[board]
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
        p.wait()

    def restart(self, board: str, timeout: float = 60.0) -> None:
        self.kill(board)
        self.start([board], timeout)

    def close(self) -> None:
        for b, p in self.procs.items():
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
            p.wait()
            if p.stdout:
                p.stdout.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def write_deployment(path: str, build: str, workers: LocalWorkers, replicas: dict | None = None,
                     deadline_ms: int = 2000, ports: dict | None = None, wire: str | None = None) -> str:
    """deployment.json as `deploy --transport local` writes it (ports: override endpoints, e.g. dead ones;
    wire: the deployment's input format, None = not recorded, as older deployments)."""
    from edvit_tool.runtime.manifest import sha256_file

    ports = ports or workers.ports
    boards = [{"name": b, "transport": "local", "endpoint": f"http://{workers.hosts.get(b, '127.0.0.1')}:{ports[b]}",
               "models": models,
               "variant": workers.variant or "onnx/fp32",
               "pid": workers.procs[b].pid if b in workers.procs else None}
              for b, models in workers.assignment.items()]
    if replicas is None:
        replicas = {}
        for b, models in workers.assignment.items():
            for m in models:
                replicas.setdefault(m, []).append(b)
    doc = {"schema_version": 1, "release": "test", "build": {"path": os.path.abspath(build),
           "manifest_sha256": sha256_file(os.path.join(build, "manifest.json"))},
           "token_file": workers.token_file, "fusion": {"artifact": "fusion/fusion.fp32.onnx"},
           "boards": boards, "replicas": replicas, "deadline_ms": deadline_ms}
    if wire is not None:
        doc["wire"] = wire
    with open(path, "w") as f:
        json.dump(doc, f, indent=2)
    return path


def start_local_workers(build_dir: str, assignment: dict, variant: str | None = "onnx/fp32", workdir: str | None = None,
                        deadline_ms: int = 2000, replicas: dict | None = None, extra_args=(),
                        prefix: dict | None = None, worker_build: str | None = None, hosts: dict | None = None,
                        wire: str | None = None) -> tuple:
    """Start one worker per board of `assignment` ({board: [models]}) -> (deployment.json path, LocalWorkers).

    extra_args: more worker flags (e.g. --threads 2); prefix: {board: argv prefix}; worker_build: the build the
    workers serve when it is not `build_dir` (e.g. one with broken sub-models; the deployment still names
    build_dir); hosts: {board: address to bind}; wire: the deployment's input format. The caller owns teardown:
    `workers.close()` (or use it as a context manager)."""
    workdir = workdir or tempfile.mkdtemp(prefix="edvit-workers-")
    os.makedirs(workdir, exist_ok=True)
    token_file = os.path.join(workdir, "token")
    if not os.path.exists(token_file):
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(24) + "\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    workers = LocalWorkers(worker_build or build_dir, assignment, variant, workdir, token_file, extra_args, env,
                           prefix, hosts)
    workers.start()
    path = write_deployment(os.path.join(workdir, "deployment.json"), build_dir, workers, replicas, deadline_ms,
                            wire=wire)
    return path, workers


def _broken_onnx(path: str, kind: str, n_logits: int) -> None:
    """A sub-model that loads and runs but answers badly: kind 'nan' -> NaN features, 'float64' -> FP64 ones."""
    import onnx
    from onnx import TensorProto, helper

    def const(name, value, shape):
        return helper.make_node("Constant", [], [name], value=helper.make_tensor(name + "_v", TensorProto.FLOAT,
                                                                                shape, [value] * int(np.prod(shape))))

    nodes = [helper.make_node("ReduceMean", ["pixel_values"], ["m"], axes=[1, 2, 3], keepdims=1),
             helper.make_node("Constant", [], ["rs"], value=helper.make_tensor(
                 "rs_v", TensorProto.INT64, [2], [-1, 1])),
             helper.make_node("Reshape", ["m", "rs"], ["r"]),
             const("zf", 0.0, [1, FEAT]), const("one", 1.0, [1, FEAT]), const("zl", 0.0, [1, n_logits]),
             helper.make_node("Mul", ["r", "zf"], ["z"]), helper.make_node("Mul", ["r", "zl"], ["logits"])]
    if kind == "nan":
        nodes += [helper.make_node("Sub", ["z", "one"], ["neg"]), helper.make_node("Sqrt", ["neg"], ["features"])]
        ftype = TensorProto.FLOAT
    else:
        nodes += [helper.make_node("Add", ["z", "one"], ["ones"]),
                  helper.make_node("Cast", ["ones"], ["features"], to=TensorProto.DOUBLE)]
        ftype = TensorProto.DOUBLE
    graph = helper.make_graph(
        nodes, f"broken_{kind}", [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["b", *SHAPE])],
        [helper.make_tensor_value_info("features", ftype, ["b", FEAT]),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", n_logits])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by any onnxruntime we support
    onnx.save(model, path)


def make_broken_build(good: str, root: str, broken: dict) -> str:
    """A copy of the build `good` whose sub-models in `broken` ({name: 'nan' | 'float64'}) are replaced by ones
    that answer NaN features or FP64 features; manifest hashes updated, so workers serve them."""
    import shutil

    from edvit_tool.runtime.manifest import sha256_file

    shutil.copytree(good, root)
    with open(os.path.join(root, "manifest.json")) as f:
        manifest = json.load(f)
    for art in manifest["artifacts"]:
        if art["name"] in broken:
            path = os.path.join(root, art["file"])
            _broken_onnx(path, broken[art["name"]], art["outputs"][1]["shape"][1])
            art["sha256"], art["bytes"] = sha256_file(path), os.path.getsize(path)
            if broken[art["name"]] == "float64":  # declared so: the worker checks outputs against the manifest
                art["outputs"][0]["dtype"] = "float64"
    with open(os.path.join(root, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
    return root
