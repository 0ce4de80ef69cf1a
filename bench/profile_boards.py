"""What SSH to a board costs (DESIGN §7, issue 4 targets), on real loopback sshd boards (tests/boards.py).

    .venv/bin/python bench/profile_boards.py [--n 200] [--mb 64]        (root: it starts sshd boards)

Measures with edvit_tool.cluster.ssh.SshSession (paramiko, TCP_NODELAY):
  * connect: TCP + SSH handshake + key auth (median of 10);
  * exec round trip: `true` on the board, one new channel each (target <= 5 ms p50), with the board user's
    login shell bash (as on a Pi) and sh (dash): sshd runs every command through the login shell;
  * SFTP stat round trip (how fast "is it cached?" is answered);
  * upload throughput: put of a --mb MB random file (MB/s), and download throughput (get_bytes);
  * `edvit-tool profile` of a tiny build on 2 boards: cold (uploads everything) vs warm (all cached), seconds.
Prints a table and writes bench/results/profile.json. ~30 s. Worker request overhead is bench/worker_overhead.py.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests"))
sys.path.insert(0, REPO)

import boards as test_boards  # noqa: E402

from edvit_tool.cluster import profile as prof  # noqa: E402
from edvit_tool.cluster.ssh import SshSession  # noqa: E402

RESULTS = os.path.join(HERE, "results")


def _pct(ms: list, q: float) -> float:
    s = sorted(ms)
    return s[max(0, min(len(s) - 1, int(round(q / 100 * len(s) + 0.5)) - 1))]


def _summary(ms: list) -> dict:
    return {"p50": round(statistics.median(ms), 3), "p90": round(_pct(ms, 90), 3), "p99": round(_pct(ms, 99), 3),
            "min": round(min(ms), 3), "n": len(ms)}


def bench_ssh(b, n: int, mb: int, tmp: str) -> dict:
    kw = dict(identity=b.identity, known_hosts=b.known_hosts, host_key_policy="strict")
    connect = []
    for _ in range(10):
        t0 = time.perf_counter()
        with SshSession(b.target, **kw):
            connect.append((time.perf_counter() - t0) * 1000)
    out = {"connect_ms": _summary(connect)}
    with SshSession(b.target, **kw) as s:
        for _ in range(5):  # warm up: first channels pay for lazy setup on both ends
            s.exec(["true"], timeout=10)
        rt = []
        for _ in range(n):
            t0 = time.perf_counter()
            s.exec(["true"], timeout=10)
            rt.append((time.perf_counter() - t0) * 1000)
        out["exec_round_trip_ms"] = _summary(rt)
        s.sftp.stat(".")
        st = []
        for _ in range(n):
            t0 = time.perf_counter()
            s.exists(".edvit")
            st.append((time.perf_counter() - t0) * 1000)
        out["sftp_stat_ms"] = _summary(st)
        blob = os.path.join(tmp, "blob.bin")
        with open(blob, "wb") as f:
            f.write(os.urandom(mb << 20))
        up, down = [], []
        for i in range(3):
            t0 = time.perf_counter()
            s.put(blob, f".edvit/bench/blob{i}.bin")
            up.append(mb / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            data = s.get_bytes(f".edvit/bench/blob{i}.bin")
            down.append(mb / (time.perf_counter() - t0))
            assert len(data) == mb << 20
        sha = hashlib.sha256(open(blob, "rb").read()).hexdigest()
        s.upload_cached(blob, sha)
        hit = []
        for _ in range(20):
            t0 = time.perf_counter()
            _, uploaded = s.upload_cached(blob, sha)
            hit.append((time.perf_counter() - t0) * 1000)
            assert not uploaded
        out["upload_MBps"] = round(statistics.median(up), 1)
        out["download_MBps"] = round(statistics.median(down), 1)
        out["upload_mb"] = mb
        out["cache_hit_ms"] = _summary(hit)
        s.exec(["rm", "-rf", ".edvit/bench"], timeout=30)
    return out


def bench_profile(bs, tmp: str) -> dict:
    build = test_boards.make_tiny_build(os.path.join(tmp, "build"))
    targets = [(b.name, b.target) for b in bs]
    kw = dict(runs=20, warmup=3, identity=bs[0].identity, known_hosts=bs[0].known_hosts, python=bs[0].python)
    out = {}
    for phase in ("cold", "warm"):
        t0 = time.perf_counter()
        doc = prof.profile_many(targets, build, **kw)
        out[f"{phase}_s"] = round(time.perf_counter() - t0, 2)
        out[f"{phase}_uploaded_files"] = sum(b["uploads"]["files"] for b in doc["boards"].values())
        assert not prof.failures(doc), prof.failures(doc)
    out["artifacts_per_board"] = len(doc["results"]) // len(bs)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="round trips per measurement")
    ap.add_argument("--mb", type=int, default=64, help="size of the upload test file")
    a = ap.parse_args()
    farm = test_boards.BoardFarm()
    tmp = tempfile.mkdtemp(prefix="edvit-bench-profile-")
    try:
        bs = farm.start(2)
        ssh = bench_ssh(bs[0], a.n, a.mb, tmp)
        # sshd runs each command through the login shell: a Pi's is bash; dash shows what the shell costs
        dash, = farm.start(1, shell="/bin/sh")
        ssh["exec_round_trip_ms_login_shell_sh"] = bench_ssh(dash, a.n, 1, tmp)["exec_round_trip_ms"]
        profile = bench_profile(bs, tmp)
    finally:
        farm.close()
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    result = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                          "loadavg_1m": round(os.getloadavg()[0], 2)},
              "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "ssh": ssh, "profile": profile,
              "targets": {"exec_round_trip_p50_ms": 5.0}}
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, "profile.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")

    from rich.console import Console
    from rich.table import Table

    t = Table(title="SSH to a loopback board (paramiko, TCP_NODELAY)")
    for c in ("measure", "p50", "p90", "p99", "target"):
        t.add_column(c, justify="left" if c == "measure" else "right")
    rt = ssh["exec_round_trip_ms"]
    ok = "[green]ok[/]" if rt["p50"] <= 5.0 else "[red]MISSED[/]"
    for name, key, target in (("connect + auth (ms)", "connect_ms", ""),
                              ("exec `true` round trip, bash login (ms)", "exec_round_trip_ms", f"<= 5 {ok}"),
                              ("exec `true` round trip, sh login (ms)", "exec_round_trip_ms_login_shell_sh", ""),
                              ("SFTP stat (ms)", "sftp_stat_ms", ""), ("upload_cached hit (ms)", "cache_hit_ms", "")):
        v = ssh[key]
        t.add_row(name, f"{v['p50']:.2f}", f"{v['p90']:.2f}", f"{v['p99']:.2f}", target)
    t.add_row(f"upload {ssh['upload_mb']} MB (MB/s)", f"{ssh['upload_MBps']:.0f}", "", "", "")
    t.add_row(f"download {ssh['upload_mb']} MB (MB/s)", f"{ssh['download_MBps']:.0f}", "", "", "")
    t.add_row(f"profile 2 boards × {profile['artifacts_per_board']} artifacts, cold (s)", f"{profile['cold_s']:.1f}",
              "", "", f"{profile['cold_uploaded_files']} files up")
    t.add_row("profile, warm: all cached (s)", f"{profile['warm_s']:.1f}", "", "",
              f"{profile['warm_uploaded_files']} files up")
    Console(width=120).print(t)
    print(f"load average (1 min) during the run: {result['machine']['loadavg_1m']} on {os.cpu_count()} CPUs")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
