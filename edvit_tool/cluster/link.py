"""Measure a board's network link from the host: round trip and throughput (host -> board, the direction the
inputs travel), between this machine and the address the board's worker will listen on.

    link = measure_link(transport, "10.0.0.21")
    -> {"address", "rtt_ms", "mbps", "bytes", "seconds", "method": "tcp", "measured_at"}

The board runs `python -m edvit_tool.runtime.linktest` (started over SSH with a one-time key on its stdin) and
serves one TCP connection from us: `pings` one-byte round trips (the median is rtt_ms), then blocks of data sunk
on the board, growing 4x from 1 MiB until one takes >= `min_seconds` or reaches `max_mb`; throughput = that
block's bits / (its time - one round trip). Plain TCP like the worker's traffic (no SSH encryption in the
way), so a firewall that lets the worker's port through may still block the ephemeral one used here: then
`error` says so and `assign` falls back to --bandwidth-mbps for that board.
"""

from __future__ import annotations

import json
import secrets
import socket
import statistics
import threading
import time

from ..errors import EdvitError

LINKTEST = "edvit_tool.runtime.linktest"
_ONE_AT_A_TIME = threading.Lock()  # boards profile concurrently; links measured together would share our uplink


def measure_link(tr, address: str, max_mb: float = 32.0, min_seconds: float = 0.2, pings: int = 20,
                 timeout: float = 20.0) -> dict:
    """Round trip and host -> board throughput to `address` (see the module docstring). EdvitError on failure."""
    with _ONE_AT_A_TIME:
        # the growing blocks sum to < 4/3 max_mb: the probe's own cap leaves room for them
        proc = tr.open_module(LINKTEST, ["--host", address, "--max-mb", f"{2 * max_mb + 1:g}",
                                         "--timeout", f"{timeout:g}"])
        try:
            key = secrets.token_hex(16)
            proc.send((key + "\n").encode())
            event = _event(proc.readline(timeout), address)
            return _measure(address, int(event["port"]), key.encode(), max_mb, min_seconds, pings, timeout)
        finally:
            proc.close()


def _event(line: str, address: str) -> dict:
    try:
        event = json.loads(line)
    except ValueError:
        raise EdvitError(f"link probe printed {line[:200]!r}, expected a JSON line") from None
    if event.get("event") != "ready":
        raise EdvitError(f"link probe could not listen on {address}: {event.get('message')}; is {address} this "
                         "board's address (boards.yaml `address`)?")
    return event


def _measure(address: str, port: int, key: bytes, max_mb: float, min_seconds: float, pings: int,
             timeout: float) -> dict:
    try:
        sock = socket.create_connection((address, port), timeout=timeout)
    except OSError as e:
        raise EdvitError(f"cannot reach {address}:{port} from this machine ({e.strerror or e}); a firewall on the "
                         "board may block it, or `address` in boards.yaml is not reachable from here") from None
    with sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.sendall(key)
            rtts = []
            for _ in range(pings):
                t0 = time.perf_counter()
                sock.sendall(b"p" + (0).to_bytes(8, "little"))
                if sock.recv(1) != b"p":
                    raise EdvitError("link probe answered a ping wrongly")
                rtts.append(time.perf_counter() - t0)
            rtt = statistics.median(rtts)
            _sink(sock, 256 << 10)  # past TCP slow start
            n, cap = 1 << 20, int(max_mb * (1 << 20))
            while True:
                seconds = _sink(sock, n)
                if seconds >= min_seconds or n >= cap:
                    break
                n = min(cap, n * 4)
        except OSError as e:
            raise EdvitError(f"link probe to {address}:{port} failed ({e.strerror or e})") from None
    mbps = n * 8 / max(seconds - rtt, 1e-6) / 1e6
    return {"address": address, "rtt_ms": round(rtt * 1000, 4), "mbps": round(mbps, 2), "bytes": n,
            "seconds": round(seconds, 4), "method": "tcp", "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


_ZEROS = bytes(1 << 20)


def _sink(sock: socket.socket, n: int) -> float:
    """Send n bytes for the board to discard; seconds until it confirmed all of them."""
    t0 = time.perf_counter()
    sock.sendall(b"s" + n.to_bytes(8, "little"))
    left = n
    while left:
        k = min(left, len(_ZEROS))
        sock.sendall(memoryview(_ZEROS)[:k])
        left -= k
    ack = b""
    while len(ack) < 8:
        part = sock.recv(8 - len(ack))
        if not part:
            raise OSError("link probe closed the connection")
        ack += part
    if int.from_bytes(ack, "little") != n:
        raise OSError("link probe confirmed a different byte count")
    return time.perf_counter() - t0
