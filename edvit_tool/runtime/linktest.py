"""Link probe, board side: `profile` measures the round trip and throughput between the host and the board's
worker address with it (cluster/profile.py `measure_link`).

    python -m edvit_tool.runtime.linktest --host 10.0.0.21 [--max-mb 64] [--timeout 30]

Reads a one-line key from stdin (sent over the SSH channel, so it never shows on a command line), listens on
--host with an ephemeral port, prints `{"event": "ready", "port": P}` and serves ONE TCP connection, which
must send the key first. Then, per 9-byte command (op, 8-byte little-endian n): `p` -> answers one byte
(round trip); `s` -> reads n bytes and discards them, answers the 8-byte count (throughput, host -> board).
At most --max-mb in all; exits when the connection closes, on a bad command, or after --timeout seconds.
Board side: stdlib only.
"""

from __future__ import annotations

import argparse
import hmac
import json
import socket
import sys

CHUNK = 1 << 20


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        part = conn.recv(n - len(buf))
        if not part:
            raise ConnectionError("peer closed")
        buf += part
    return bytes(buf)


def serve(host: str, key: bytes, max_bytes: int, timeout: float) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as srv:
        srv.bind((host, 0))
        srv.listen(1)
        srv.settimeout(timeout)
        print(json.dumps({"event": "ready", "port": srv.getsockname()[1]}), flush=True)
        conn, _ = srv.accept()
    with conn:
        conn.settimeout(timeout)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if not hmac.compare_digest(_recv_exact(conn, len(key)), key):
            return 1
        left = max_bytes
        buf = bytearray(CHUNK)
        while True:
            try:
                head = _recv_exact(conn, 9)
            except ConnectionError:
                return 0
            op, n = head[:1], int.from_bytes(head[1:], "little")
            if op == b"p":
                conn.sendall(b"p")
            elif op == b"s" and n <= left:
                left -= n
                got = 0
                view = memoryview(buf)
                while got < n:
                    k = conn.recv_into(view, min(CHUNK, n - got))
                    if not k:
                        return 1
                    got += k
                conn.sendall(got.to_bytes(8, "little"))
            else:
                return 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m edvit_tool.runtime.linktest")
    p.add_argument("--host", required=True, help="address to listen on (the board's worker address)")
    p.add_argument("--max-mb", type=float, default=64.0, help="most data accepted in all")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the host at each step")
    a = p.parse_args(argv)
    key = sys.stdin.buffer.readline().strip()
    if not key:
        print(json.dumps({"event": "error", "message": "no key on stdin"}), flush=True)
        return 2
    try:
        return serve(a.host, key, int(a.max_mb * (1 << 20)), a.timeout)
    except OSError as e:  # cannot bind, or the host never came / went silent
        print(json.dumps({"event": "error", "message": f"{type(e).__name__}: {e}"}), flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
