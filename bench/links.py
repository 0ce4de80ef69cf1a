"""Wire formats over rate-limited links (issue 12 numbers): end to end vs the physical limit, bytes on the wire.

    .venv/bin/python bench/links.py [--rates 100,1000] [--wires fp32,uint8,encoded] [--quota 0.25] [--n 30]

Models: the K = 4 ViT-Tiny/16-structured build of bench/distributed.py (random weights, 224x224x3, each
sub-model embed 96 / 2 heads / depth 12, exported to ONNX fp32; cached in bench/results/.cache).
Boards: 4 local worker processes (1 interpreter thread), each in its own cgroup-v1 CPU quota (--quota of one
core, all equal) AND its own network namespace, joined to the host by a veth pair shaped with tc tbf to the link
rate both ways (tests/netns.py; no netem here, so no added propagation delay). The coordinator runs here and
talks to the 4 workers over their 4 links at once — as with one switch port per board, not one shared uplink.
Input: JPEG photos-like files (500x375, quality 90) given as files, sent per --wire: fp32 (preprocessed here),
uint8 (resized + cropped here, normalised on the board) or encoded (the files; decoded on the board).

Per (link rate, wire format), sequential batch-1 requests through `Coordinator.run`:
  * e2e p50 / p99 (ms), including the host's preprocessing when the wire format asks for it;
  * physical limit = slowest board's compute p50 (worker /stats infer_p50_ms) + one request body at the link's
    MEASURED rate (the same probe `profile` runs) + one round trip; e2e p50 / limit (target <= 1.2);
  * the boards' preprocessing p50 once the body is in (uint8: normalise; encoded: the decoding the transfer did
    not hide — the worker decodes a one-file request as it arrives — then resize + crop + normalise) and the
    host's
    (`Coordinator.prepare`: fp32 decode + resize + crop + normalise; uint8 decode + resize + crop; encoded
    nothing) — neither is in the issue's limit, which counts only compute and transfer; e2e / (limit + both)
    is given beside it;
  * the same ratio per request (/req): that request's slowest board (the workers' /stats recent_ms, in arrival
    order) + transfer + round trip, p50 over requests of e2e / limit; under a CPU quota a board's time varies
    from request to request, so the slowest of four per request sits above the slowest board's p50;
  * the slowest board's round trip as the coordinator saw it (p50 over requests of the max over boards: send,
    board preprocessing + HTTP + compute under its quota, answer), to show where e2e - limit goes;
  * bytes on the wire per image per board (the request body), and e2e p50 of fp32 / the best format.
Triton reference (--triton, default on): the same requests (host preprocessing to fp32 included) through the
build's exported Triton ensemble (`export --triton-repo`: K sub-models + fusion as one model) on one UNTHROTTLED
local tritonserver over loopback, with stock tritonclient.http (tests/triton_server.py; its venv is
scripts/make-triton-venv.sh, $EDVIT_TRITON_VENV). The pip wheel's Triton has only the Python backend, so each
step is a Python-backend model running onnxruntime (export/triton_python_model.py).
The 1-minute load average before and after is recorded: the boards share this machine's cores with everything
else running on it, so compare figures taken at similar load. Prints a table, writes bench/results/links.json. ~3-5 min on 2 cores (+ ~1 min once for the build export,
+ ~1 min for the Triton server's start).
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]  # see bench/distributed.py
sys.path.insert(0, os.path.join(REPO, "tests", "e2e"))
sys.path.insert(0, os.path.join(REPO, "tests"))
sys.path.insert(0, REPO)

from netns import Link  # noqa: E402
from workers import start_local_workers  # noqa: E402

from edvit_tool.cluster.link import measure_link  # noqa: E402
from edvit_tool.cluster.transport import LocalTransport  # noqa: E402
from edvit_tool.runtime.protocol import OipClient  # noqa: E402
from edvit_tool.serve import wire as host_wire  # noqa: E402
from edvit_tool.serve.coordinator import Coordinator  # noqa: E402

RESULTS = os.path.join(HERE, "results")
K = 4


def _distributed():
    """bench/distributed.py as a module (its make_build and Quotas)."""
    spec = importlib.util.spec_from_file_location("bench_distributed", os.path.join(HERE, "distributed.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _photos(n: int, w: int = 500, h: int = 375) -> list:
    """JPEG files (bytes) of smooth gradients + texture: compress like ordinary photos, not like noise."""
    from PIL import Image

    out = []
    for i in range(n):
        rng = np.random.default_rng(i)
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([128 + 100 * np.sin(xx / (17 + i)), 128 + 100 * np.cos(yy / (23 + i)),
                         (xx + yy) * 255 / (w + h)], -1)
        img = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def _pct(v, q):
    return float(np.percentile(np.asarray(v, dtype=np.float64), q))


def _stats(workers, token, n: int) -> tuple:
    """(board -> (compute p50, board preprocessing p50), board -> the last `n` requests' [(compute, preprocessing)]
    in order) from the worker's /stats (one model per board here)."""
    out, recent = {}, {}
    for b, models in workers.assignment.items():
        with OipClient(workers.hosts[b], workers.ports[b], token=token) as c:
            st = [c.stats(m) for m in models]
        out[b] = (sum(s["infer_p50_ms"] for s in st), sum(s["preprocess_p50_ms"] or 0.0 for s in st))
        assert len(models) == 1 and len(st[0]["recent_ms"]) >= n, (b, models)
        recent[b] = [tuple(r) for r in st[0]["recent_ms"][-n:]]
    return out, recent


def run_config(build, rate, wire, quotas, links, photos, args, workdir) -> dict:
    assignment = {f"board{i}": [f"g{i}"] for i in range(K)}
    prefix = {b: links[i].prefix() + quotas.prefix(f"{rate}-{wire}-{b}") for i, b in enumerate(assignment)}
    hosts = {b: links[i].board_ip for i, b in enumerate(assignment)}
    wd = os.path.join(workdir, f"{rate}-{wire}")
    dep, workers = start_local_workers(build, assignment, "onnx/fp32", wd, deadline_ms=20000,
                                       extra_args=["--threads", "1"], prefix=prefix, hosts=hosts, wire=wire)
    token = open(workers.token_file).read().strip()
    try:
        with Coordinator(dep) as coord:
            for i in range(3):
                coord.run([photos[i % len(photos)]])
            host_prep = []
            for i in range(args.n):  # the host's share, alone (the requests below include it)
                t0 = time.perf_counter()
                coord.prepare([photos[i % len(photos)]])
                host_prep.append((time.perf_counter() - t0) * 1000)
            e2e, sizes, sent, slowest_rt = [], [], set(), []
            for i in range(args.n):
                t0 = time.perf_counter()
                res = coord.run([photos[i % len(photos)]])
                e2e.append((time.perf_counter() - t0) * 1000)
                assert not res.degraded, res.missing
                sizes.append(res.request_bytes)
                slowest_rt.append(max(res.board_ms.values()))
                sent.add(res.wire)
        stats, recent = _stats(workers, token, args.n)
    finally:
        workers.close()
    compute = max(c for c, _ in stats.values())
    prep = max(p for _, p in stats.values())
    body = float(np.median(sizes))
    # per request: the slowest board's compute for THAT image (a board's time under a CPU quota varies from
    # request to request, so the max over boards per request is above the max of the boards' p50s)
    per_req = [max(recent[b][i][0] for b in recent) for i in range(args.n)]
    per_req_prep = [max(recent[b][i][0] + recent[b][i][1] for b in recent) for i in range(args.n)]
    return {"rate_mbit": rate, "wire": wire, "sent_as": sorted(sent), "e2e_p50_ms": _pct(e2e, 50),
            "e2e_p99_ms": _pct(e2e, 99), "slowest_compute_p50_ms": compute, "board_preprocess_p50_ms": prep,
            "host_preprocess_p50_ms": _pct(host_prep, 50), "slowest_board_roundtrip_p50_ms": _pct(slowest_rt, 50),
            "compute_p50_ms": {b: c for b, (c, _) in stats.items()}, "bytes_per_image_per_board": body,
            "n": args.n, "e2e_ms": e2e, "slowest_compute_per_request_ms": per_req,
            "slowest_compute_and_preprocess_per_request_ms": per_req_prep, "host_preprocess_ms": host_prep}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rates", default="100,1000", help="link rates, Mbit/s")
    ap.add_argument("--wires", default="fp32,uint8,encoded")
    ap.add_argument("--quota", type=float, default=0.25, help="CPU quota per board, fraction of one core")
    ap.add_argument("--n", type=int, default=60, help="sequential requests per configuration")
    ap.add_argument("--triton", default=True, action=argparse.BooleanOptionalAction,
                    help="add the Triton ensemble reference row (default on)")
    args = ap.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    wires = [w.strip() for w in args.wires.split(",")]
    dist = _distributed()
    os.makedirs(dist.CACHE, exist_ok=True)
    build = dist.make_build(K)
    photos = _photos(8)
    quotas = dist.Quotas(args.quota or None)
    load_before = os.getloadavg()[0]
    links = [Link(rates[0], index=i) for i in range(K)]
    rows, link_rows = [], {}
    with tempfile.TemporaryDirectory(prefix="edvit-bench-links-") as workdir:
        try:
            for i, ln in enumerate(links):
                if i:
                    ln.subnet = links[0].subnet
                ln.up()
            for rate in rates:
                for ln in links:
                    ln.set_rate(rate)
                link_rows[rate] = _measure_links(links, rate)
                for wire in wires:
                    print(f"  {rate:g} Mbit/s, {wire} ...", file=sys.stderr)
                    rows.append(run_config(build, rate, wire, quotas, links, photos, args, workdir))
        finally:
            quotas.close()
            for ln in links:
                ln.close()
    for r in rows:
        lk = link_rows[r["rate_mbit"]]
        r["link_measured_mbps"] = lk["mbps"]
        r["link_rtt_ms"] = lk["rtt_ms"]
        r["transfer_ms"] = r["bytes_per_image_per_board"] * 8 / (lk["mbps"] * 1e6) * 1e3
        r["physical_limit_ms"] = r["slowest_compute_p50_ms"] + r["transfer_ms"] + lk["rtt_ms"]
        r["e2e_over_limit"] = r["e2e_p50_ms"] / r["physical_limit_ms"]
        r["e2e_over_limit_with_preprocessing"] = r["e2e_p50_ms"] / (
            r["physical_limit_ms"] + r["board_preprocess_p50_ms"] + r["host_preprocess_p50_ms"])
        # the same limit per request (that request's slowest board), then the p50 of e2e / limit over requests
        fixed = r["transfer_ms"] + lk["rtt_ms"]
        r["e2e_over_limit_per_request_p50"] = _pct(
            [e / (c + fixed) for e, c in zip(r["e2e_ms"], r["slowest_compute_per_request_ms"])], 50)
        r["e2e_over_limit_per_request_with_preprocessing_p50"] = _pct(
            [e / (c + fixed + r["host_preprocess_p50_ms"])
             for e, c in zip(r["e2e_ms"], r["slowest_compute_and_preprocess_per_request_ms"])], 50)
    for rate in rates:
        same = [r for r in rows if r["rate_mbit"] == rate]
        best = min(r["e2e_p50_ms"] for r in same)
        fp32 = next((r["e2e_p50_ms"] for r in same if r["wire"] == "fp32"), None)
        for r in same:
            r["fp32_over_best_p50"] = fp32 / best if fp32 else None
    triton, triton_note = None, "not run (--no-triton)"
    if args.triton:
        print("  Triton ensemble, unthrottled ...", file=sys.stderr)
        triton, triton_note = run_triton(build, photos, args)
    load = (load_before, os.getloadavg()[0])
    note = (f"K={K} random-weight ViT-Tiny/16-structured sub-models (embed 96) at 224x224x3, ONNX fp32; each board "
            + (f"a worker in a cgroup-v1 quota of {args.quota:g} core" if quotas.enabled else
               "an UNTHROTTLED worker (no writable cgroup v1)")
            + " in its own netns behind a tbf-shaped veth (no added delay: netem unavailable); input: 500x375 JPEG "
            f"files; 1-min load average {load[0]:.1f} before, {load[1]:.1f} after on {os.cpu_count()} CPUs")
    print(note)
    head = (f"{'link':>6} {'wire':<8} {'bytes/img':>9} {'e2e p50':>8} {'p99':>7} {'compute':>8} {'xfer':>6} "
            f"{'rtt':>5} {'limit':>7} {'e2e/lim':>7} {'h.prep':>6} {'b.prep':>6} {'/+prep':>6} {'/req':>5} "
            f"{'/req+p':>6} {'board':>6} {'fp32/best':>9}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['rate_mbit']:>6g} {r['wire']:<8} {r['bytes_per_image_per_board']:>9.0f} {r['e2e_p50_ms']:>8.2f} "
              f"{r['e2e_p99_ms']:>7.2f} {r['slowest_compute_p50_ms']:>8.2f} {r['transfer_ms']:>6.2f} "
              f"{r['link_rtt_ms']:>5.2f} {r['physical_limit_ms']:>7.2f} {r['e2e_over_limit']:>7.2f} "
              f"{r['host_preprocess_p50_ms']:>6.2f} {r['board_preprocess_p50_ms']:>6.2f} "
              f"{r['e2e_over_limit_with_preprocessing']:>6.2f} {r['e2e_over_limit_per_request_p50']:>5.2f} "
              f"{r['e2e_over_limit_per_request_with_preprocessing_p50']:>6.2f} "
              f"{r['slowest_board_roundtrip_p50_ms']:>6.2f} "
              + (f"{r['fp32_over_best_p50']:>9.2f}" if r["fp32_over_best_p50"] else f"{'-':>9}"))
    if triton:
        print(f"{'triton':>6} {'fp32':<8} {triton['bytes_per_image']:>9.0f} {triton['e2e_p50_ms']:>8.2f} "
              f"{triton['e2e_p99_ms']:>7.2f}   (one unthrottled local tritonserver, ensemble "
              f"{triton['model']}; host preprocessing {triton['host_preprocess_p50_ms']:.2f} ms included)")
    else:
        print(f"Triton reference: {triton_note}")
    print("link: tbf rate, Mbit/s (measured: " + ", ".join(f"{k:g} -> {v['mbps']:.1f} Mbit/s, rtt {v['rtt_ms']:.3f} ms"
                                                         for k, v in link_rows.items()) + "). bytes/img: request body "
          "per image per board. compute: slowest board's interpreter p50. xfer: bytes/img at the measured rate. "
          "limit = compute + xfer + rtt. h.prep / b.prep: the host's / slowest board's preprocessing p50 (not in "
          "the limit); /+prep: e2e p50 / (limit + h.prep + b.prep). /req: p50 over requests of e2e / (that request's "
          "slowest board compute + xfer + rtt); /req+p: the same with that board's preprocessing and h.prep. board: slowest board's round trip p50 (from the "
          "coordinator, incl. transfer). "
          "fp32/best: fp32's e2e p50 / the best format's at that link.")
    doc = {"host": platform.node(), "machine": platform.machine(), "cpus": os.cpu_count(),
           "python": platform.python_version(), "note": note, "quota": args.quota if quotas.enabled else None,
           "loadavg_before_after": load, "links": {str(k): v for k, v in link_rows.items()}, "rows": rows,
           "triton_reference": triton, "triton_reference_note": triton_note}
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "links.json"), "w") as f:
        json.dump(doc, f, indent=2)
    return 0


def run_triton(build, photos, args) -> tuple:
    """(row or None, note): the requests through the exported ensemble on a local, unthrottled tritonserver."""
    import tritonclient.http as th
    from triton_server import TritonServer, TritonUnavailable

    from edvit_tool.export.triton import ensemble_name, write_triton_repo
    from edvit_tool.runtime import manifest as mf
    from edvit_tool.runtime import protocol as oip

    manifest = mf.load(build)
    spec = manifest["input"]
    name = ensemble_name("onnx", "fp32")
    with tempfile.TemporaryDirectory(prefix="edvit-bench-triton-") as root:
        repo = os.path.join(root, "repo")
        write_triton_repo(build, manifest, repo, max_batch_size=8)
        server = TritonServer(repo, [name], root)
        try:
            server.start()
        except TritonUnavailable as e:
            return None, f"not run: {str(e).splitlines()[0][:300]}"
        try:
            client = server.client()
            version = client.get_server_metadata().get("version")

            def call(photo):
                x = host_wire.prepare([photo], "fp32", spec).array
                inp = th.InferInput(spec.get("name", "pixel_values"), list(x.shape), "FP32")
                inp.set_data_from_numpy(x, binary_data=True)
                res = client.infer(name, [inp], outputs=[th.InferRequestedOutput("logits", binary_data=True)])
                return x, res.as_numpy("logits")

            for i in range(3):
                call(photos[i % len(photos)])
            e2e, prep = [], []
            for i in range(args.n):
                t0 = time.perf_counter()
                x, logits = call(photos[i % len(photos)])
                e2e.append((time.perf_counter() - t0) * 1000)
                assert logits.shape == (1, len(manifest["classes"])) and np.isfinite(logits).all()
            for i in range(args.n):
                t0 = time.perf_counter()
                host_wire.prepare([photos[i % len(photos)]], "fp32", spec)
                prep.append((time.perf_counter() - t0) * 1000)
        finally:
            server.close()
    body = len(oip.encode_request({spec.get("name", "pixel_values"): x}, ["logits"])[0])
    return ({"model": name, "server": f"tritonserver {version} (nvidia-pytriton)", "wire": "fp32",
             "e2e_p50_ms": _pct(e2e, 50), "e2e_p99_ms": _pct(e2e, 99), "host_preprocess_p50_ms": _pct(prep, 50),
             "bytes_per_image": body, "n": args.n, "loadavg_after": os.getloadavg()[0]},
            "one unthrottled tritonserver on loopback (all K sub-models and the fusion head in one ensemble; "
            "steps are Python-backend models running onnxruntime), same JPEG requests preprocessed here to fp32")


def _measure_links(links, rate) -> dict:
    """The links' measured rate and round trip (the probe `profile` uses), median over the K links."""
    got = []
    for ln in links:
        tr = LocalTransport(ln.ns, sys.executable)
        tr.open_module = lambda module, a, ln=ln: _NsProcess(ln, module, a)
        got.append(measure_link(tr, ln.board_ip, max_mb=8 if rate < 500 else 32))
    return {"mbps": float(np.median([g["mbps"] for g in got])), "rtt_ms": float(np.median([g["rtt_ms"] for g in got])),
            "per_link": got}


class _NsProcess:
    """The link probe run inside a link's namespace (what `profile` runs on a board over SSH)."""

    def __init__(self, link, module, args):
        from edvit_tool.cluster import transport

        self._p = transport._LocalProcess(link.prefix() + [sys.executable, "-m", module, *map(str, args)])

    def send(self, data):
        self._p.send(data)

    def readline(self, timeout):
        return self._p.readline(timeout)

    def close(self):
        self._p.close()


if __name__ == "__main__":
    sys.exit(main())
