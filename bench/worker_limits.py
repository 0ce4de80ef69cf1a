"""What a client on the network can cost a board worker (issue 11, items 7, 8, 10): loopback probes.

    .venv/bin/python bench/worker_limits.py [--runtime-from /path/to/other/checkout]

  * threads: 200 idle, half-sent requests held open -> the worker's thread count (/proc/PID/status Threads)
    and how many of them were answered 503;
  * memory: six concurrent ~15 MB JSON infer bodies (a 224x224x3 fp32 model, random floats) -> the worker's
    peak RSS (VmHWM) before and after, and the answers' status codes; then the same with --max-json-mb 16 so
    the bodies are let in and only the per-model in-flight cap bounds the memory;
  * the malformed-request corpus (tests/unit/test_runtime_httpd.py) -> the status each case gets.
--runtime-from runs the worker from another checkout's edvit_tool/runtime (e.g. main before the fix), for
the "before" figures. Prints a table, writes bench/results/worker_limits[-LABEL].json. ~1 min.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import shutil
import socket
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
# bench/profile.py would shadow the stdlib `profile` module (torch imports cProfile): bench/ off the path
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]
sys.path.insert(0, os.path.join(REPO, "tests"))
sys.path.insert(0, os.path.join(REPO, "tests", "e2e"))
sys.path.insert(0, REPO)

from tiny_build import make_import_shim  # noqa: E402


def _load_worker_overhead():
    import importlib.util

    spec = importlib.util.spec_from_file_location("worker_overhead", os.path.join(HERE, "worker_overhead.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


wo = _load_worker_overhead()
RESULTS, TOKEN, Worker = wo.RESULTS, wo.TOKEN, wo.Worker


def _empty224() -> str:
    path = os.path.join(RESULTS, ".cache", "empty224_build")
    if not os.path.exists(os.path.join(path, "manifest.json")):
        wo._empty224_build(path)
    return path


def _board_from(checkout: str, root: str) -> str:
    pkg = os.path.join(root, "edvit_tool")
    os.makedirs(os.path.join(pkg, "runtime"), exist_ok=True)
    shutil.copy(os.path.join(checkout, "edvit_tool", "__init__.py"), pkg)
    src = os.path.join(checkout, "edvit_tool", "runtime")
    for n in os.listdir(src):
        if n.endswith(".py"):
            shutil.copy(os.path.join(src, n), os.path.join(pkg, "runtime", n))
    return root


def _status(pid: int, key: str) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k == key:
                return float(v.split()[0])
    raise KeyError(key)


def threads_probe(w: Worker, n: int = 200) -> dict:
    before = int(_status(w.proc.pid, "Threads"))
    socks, peak = [], before
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", w.port), timeout=5)
        s.sendall(b"POST /v2/models/empty224/infer HTTP/1.1\r\nHost: x\r\nContent-Le")
        socks.append(s)
    time.sleep(1.0)  # let the worker accept them all
    peak = max(peak, int(_status(w.proc.pid, "Threads")))
    got503 = held = 0
    for s in socks:
        s.settimeout(0.05)
        try:
            got503 += s.recv(64).startswith(b"HTTP/1.1 503")
        except OSError:
            held += 1  # no answer yet: the worker holds this one open (a thread waits for its headers)
    for s in socks:
        s.close()
    return {"connections": n, "threads_idle": before, "threads_with_connections": peak, "answered_503": got503,
            "held_open": held}


def _json_body(images: int, seed: int) -> bytes:
    x = np.random.default_rng(seed).standard_normal((images, 3, 224, 224)).astype(np.float32)
    return json.dumps({"inputs": [{"name": "pixel_values", "shape": list(x.shape), "datatype": "FP32",
                                   "data": x.ravel().tolist()}]}).encode()


def _post(port: int, body: bytes) -> int:
    import http.client

    c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        c.request("POST", "/v2/models/empty224/infer", body=body,
                  headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
        r = c.getresponse()
        r.read()
        return r.status
    except (OSError, http.client.HTTPException):
        return 0  # the worker dropped the connection mid-upload (a refusal before reading the body)
    finally:
        c.close()


def memory_probe(w: Worker, bodies: list) -> dict:
    rss0 = _status(w.proc.pid, "VmHWM") / 1024
    with cf.ThreadPoolExecutor(len(bodies)) as pool:
        statuses = list(pool.map(lambda b: _post(w.port, b), bodies))
    return {"bodies": len(bodies), "body_mb": round(len(bodies[0]) / 2 ** 20, 1), "statuses": statuses,
            "peak_rss_before_mb": round(rss0, 1), "peak_rss_after_mb": round(_status(w.proc.pid, "VmHWM") / 1024, 1)}


def corpus_probe(w: Worker) -> list:
    from http_corpus import corpus

    out = []
    for label, raw, _, _ in corpus("/v2/models/empty224/infer", TOKEN):
        try:
            with socket.create_connection(("127.0.0.1", w.port), timeout=10) as s:
                s.sendall(raw)
                s.shutdown(socket.SHUT_WR)
                data = b""
                while True:
                    b = s.recv(65536)
                    if not b:
                        break
                    data += b
        except OSError as e:
            data = repr(e).encode()
        first = data.split(b"\r\n", 1)[0]
        body = data.partition(b"\r\n\r\n")[2]
        try:
            says = str(json.loads(body)["error"])[:70]
        except (ValueError, KeyError, TypeError):
            says = "(no JSON error: " + body[:30].decode("latin-1").replace("\n", " ") + ")"
        out.append({"case": label, "status_line": first[:40].decode("latin-1"), "error": says})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runtime-from", default=REPO, help="checkout whose edvit_tool/runtime the worker runs")
    ap.add_argument("--label", default=None, help="suffix of the results file (default: after / before)")
    a = ap.parse_args(argv)
    label = a.label or ("after" if os.path.samefile(a.runtime_from, REPO) else "before")
    build = _empty224()
    tmp = tempfile.mkdtemp(prefix="edvit-limits-")
    board = _board_from(a.runtime_from, os.path.join(tmp, "board"))
    shim = make_import_shim(os.path.join(tmp, "shim"))
    manifest = os.path.join(build, "manifest.json")
    res = {"label": label, "runtime_from": os.path.abspath(a.runtime_from)}
    bodies = [_json_body(5, seed) for seed in range(6)]  # ~15 MB each
    small = [_json_body(1, seed) for seed in range(6)]   # ~3 MB each: under the 4 MiB default JSON cap

    w = Worker(board, shim, manifest, "empty224")
    try:
        res["threads"] = threads_probe(w)
        time.sleep(0.5)
        res["memory_default_caps"] = memory_probe(w, bodies)
        res["corpus"] = corpus_probe(w)
    finally:
        w.stop()
    w = Worker(board, shim, manifest, "empty224")  # a fresh process: VmHWM only grows
    try:
        res["memory_3mb_bodies"] = memory_probe(w, small)
    finally:
        w.stop()
    if label == "after":  # the JSON cap let up to 16 MiB: only the in-flight cap (2 per model) bounds memory
        w = Worker(board, shim, manifest, "empty224", extra=["--max-json-mb", "16"])
        try:
            res["memory_json_cap_16mb"] = memory_probe(w, bodies)
        finally:
            w.stop()
    shutil.rmtree(tmp, ignore_errors=True)

    t = res["threads"]
    print(f"\nworker limits ({label}: runtime from {res['runtime_from']})")
    print(f"  threads: idle {t['threads_idle']}, with {t['connections']} idle half-sent connections "
          f"{t['threads_with_connections']}; {t['answered_503']} answered 503, {t['held_open']} held open")
    for key in ("memory_default_caps", "memory_3mb_bodies", "memory_json_cap_16mb"):
        if key in res:
            m = res[key]
            print(f"  {key}: {m['bodies']} x {m['body_mb']} MB JSON at once -> peak RSS {m['peak_rss_before_mb']} -> "
                  f"{m['peak_rss_after_mb']} MB, statuses {m['statuses']}")
    print("  malformed corpus:")
    for c in res["corpus"]:
        print(f"    {c['case']:<48} {c['status_line'][:34]!r:<38} {c['error']}")
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"worker_limits-{label}.json")
    with open(path, "w") as f:
        json.dump(res, f, indent=2)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
