"""`deploy --wire auto`: pick the wire format with the lowest predicted end-to-end time for this deployment.

Per format f (fp32 | uint8 | encoded), for one image:

    predicted(f) = host(f) + max over boards d of [ bytes(f) * 8 / mbps_d + rtt_d + board_d(f) ]

host(f): the coordinator's preprocessing (fp32: decode + resize + crop + normalise; uint8: decode + resize + crop;
encoded: nothing), timed here on the probe image. bytes(f): the probe's request body in that format. mbps_d /
rtt_d: board d's link as `profile` measured it (the plan's `boards.<d>.link`; `--bandwidth-mbps` where it was not
measured). board_d(f): what the board's worker spent preprocessing the probe in that format (uint8: normalise;
encoded: decode + resize + crop + normalise), plus how much slower its model ran after that than after fp32
input (on a board under a CPU quota the decoding eats the quota the model then waits for: +7 ms per image on a
quarter core in bench/links.py), from its /stats after a few real requests per format (a short probe of the
freshly started workers). The sub-models' own compute is otherwise the same for every format, so it is left
out. The probe is a photo-like JPEG, 4:3, its short side 1.5x the model's resize size
(what a camera frame scaled for the model looks like); another image may choose differently, which is why the
figures are recorded in deployment.json (`wire_choice`).

Without a link figure for some board (no profile and no --bandwidth-mbps) nothing can be predicted: the
deployment keeps `auto` (per batch, the smallest format the input allows).
"""

from __future__ import annotations

import concurrent.futures as cf
import io
import logging
import statistics
import time

import numpy as np

from ..runtime import preprocess as pp
from ..runtime import protocol as oip
from ..runtime.wire import WIRE_FORMATS

log = logging.getLogger("edvit.deploy")
PROBE_REQUESTS = 7


def probe_image(spec: dict) -> bytes:
    """A deterministic photo-like JPEG (smooth gradients + noise, quality 90), 4:3, short side 1.5x resize."""
    from PIL import Image

    t = pp.transform_of(spec)
    h = max(16, int(round(1.5 * min(t.resize_size))))
    w = h * 4 // 3
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([128 + 100 * np.sin(xx / 17), 128 + 100 * np.cos(yy / 23), (xx + yy) * 255 / (w + h)], -1)
    img = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    if t.channels == 1:
        img = img.mean(-1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def predict(host_ms: dict, body_bytes: dict, links: dict, board_ms: dict) -> dict:
    """{format: predicted ms} from the figures above. links: {board: {"mbps", "rtt_ms"}}; board_ms:
    {board: {format: ms}} (missing = 0)."""
    out = {}
    for f in WIRE_FORMATS:
        worst = 0.0
        for d, link in links.items():
            ms = body_bytes[f] * 8 / (float(link["mbps"]) * 1e6) * 1e3 + float(link.get("rtt_ms") or 0.0)
            worst = max(worst, ms + float((board_ms.get(d) or {}).get(f) or 0.0))
        out[f] = float(host_ms[f]) + worst
    return out


def choose(predicted: dict) -> str:
    """The format with the lowest predicted time (ties: the more compact one, i.e. later in WIRE_FORMATS)."""
    return min(reversed(WIRE_FORMATS), key=lambda f: predicted[f])


def plan_links(plan: dict, boards: list) -> dict | None:
    """{board: {"mbps", "rtt_ms", "source"}} from plan.json's per-board link basis; None when a board has none."""
    out = {}
    for name in boards:
        link = ((plan.get("boards") or {}).get(name) or {}).get("link") or {}
        mbps = link.get("mbps")
        if not isinstance(mbps, (int, float)) or isinstance(mbps, bool) or mbps <= 0:
            return None
        out[name] = {"mbps": float(mbps), "rtt_ms": float(link.get("rtt_ms") or 0.0),
                     "source": link.get("source", "measured")}
    return out


def _host_costs(probe: bytes, spec: dict, n: int) -> tuple:
    """({format: host preprocessing ms}, {format: request body bytes}) for the probe image."""
    from ..serve import wire as host_wire

    name = spec.get("name", "pixel_values")
    host, body = {}, {}
    for f in WIRE_FORMATS:
        times = []
        for _ in range(n + 1):
            t0 = time.perf_counter()
            payload = host_wire.prepare([probe], f, spec)
            times.append((time.perf_counter() - t0) * 1000)
        host[f] = statistics.median(times[1:])  # the first call pays imports and caches
        body[f] = len(oip.encode_request({name: payload.array}, None)[0])
    return host, body


def _board_costs(board: dict, token: str, spec: dict, probe: bytes, n: int, ssl_context) -> tuple:
    """({format: the board's preprocessing p50 ms}, {format: its model's p50 ms}) after n real requests per
    format to its first model."""
    from ..serve import wire as host_wire

    name = spec.get("name", "pixel_values")
    model = board["models"][0]
    with oip.OipClient(board["address"], board["port"], token=token, timeout=60.0, ssl_context=ssl_context) as c:
        for _ in range(n):  # interleaved, so a slow spell on the board hits every format alike
            for f in WIRE_FORMATS:
                c.infer(model, {name: host_wire.prepare([probe], f, spec).array})
        st = c.stats(model)
    prep, infer = st.get("preprocess_p50_ms_by_wire") or {}, st.get("infer_p50_ms_by_wire") or {}
    return ({"fp32": 0.0, **{f: float(prep[f]) for f in ("uint8", "encoded") if prep.get(f) is not None}},
            {f: float(infer[f]) for f in WIRE_FORMATS if infer.get(f) is not None})


def board_cost(prep: dict, infer: dict) -> dict:
    """{format: ms the board adds for that format}: its preprocessing + how much slower its model ran than with
    fp32 input (never negative: a faster run is noise, not a gain)."""
    base = infer.get("fp32")
    return {f: float(prep.get(f) or 0.0) + (max(0.0, infer[f] - base) if base is not None and f in infer else 0.0)
            for f in WIRE_FORMATS}


def decide(plan: dict, manifest: dict, boards: list, token: str, ssl_context=None,
           n: int = PROBE_REQUESTS) -> tuple:
    """(wire format to record, wire_choice record). boards: [{"name", "address", "port", "models"}] of the
    running workers. Probes the boards only when every one has a link figure."""
    spec = manifest["input"]
    links = plan_links(plan, [b["name"] for b in boards])
    if links is None:
        return "auto", {"chosen": "auto", "why": "no link figure for every board (run `edvit-tool profile`, or "
                                                 "assign with --bandwidth-mbps): the smallest format per batch"}
    probe = probe_image(spec)
    host, body = _host_costs(probe, spec, n)
    with cf.ThreadPoolExecutor(max_workers=max(1, len(boards))) as pool:
        futs = {b["name"]: pool.submit(_board_costs, b, token, spec, probe, n, ssl_context) for b in boards}
        measured = {name: f.result() for name, f in futs.items()}
    board_ms = {name: board_cost(prep, infer) for name, (prep, infer) in measured.items()}
    predicted = predict(host, body, links, board_ms)
    chosen = choose(predicted)
    log.info("wire auto: %s (predicted ms %s)", chosen, ", ".join(f"{f} {v:.2f}" for f, v in predicted.items()))
    w, h = pp.image_size(probe)
    return chosen, {"chosen": chosen, "predicted_ms": {f: round(v, 3) for f, v in predicted.items()},
                    "host_preprocess_ms": {f: round(v, 3) for f, v in host.items()}, "request_bytes": body,
                    "board_ms": {d: {f: round(v, 3) for f, v in c.items()} for d, c in board_ms.items()},
                    "board_preprocess_ms": {d: {f: round(v, 3) for f, v in p.items()} for d, (p, _) in measured.items()},
                    "board_infer_ms": {d: {f: round(v, 3) for f, v in i.items()} for d, (_, i) in measured.items()},
                    "links": links, "probe": f"JPEG {w}x{h}, {len(probe)} bytes"}
