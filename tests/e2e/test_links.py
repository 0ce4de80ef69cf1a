"""Boards behind real, rate-limited links: two loopback SSH boards, each in its own network namespace joined to
the host by a veth pair shaped with tc tbf (100 Mbit/s and 1 Gbit/s, tests/netns.py). `profile` measures each
board's link (round trip, throughput) within a sane factor of the shaping, and `assign` turns it into per-board
input-transfer costs that differ accordingly. ~20 s; needs root, iproute2 and openssh-server."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from edvit_tool.cluster.assign import input_bytes

pytestmark = pytest.mark.slow
EDVIT = os.path.join(os.path.dirname(sys.executable), "edvit-tool")
RATES = {"slow": 100, "fast": 1000}  # Mbit/s


def _cli(*args, timeout=300):
    return subprocess.run([EDVIT, *args], capture_output=True, text=True, timeout=timeout)


def test_profile_measures_each_boards_link_and_assign_uses_it(boards, tiny_build, tmp_path):
    farm = boards(2, links=list(RATES.values()))
    profile = tmp_path / "ns.yaml"
    profile.write_text("name: ns\narch: x86_64\ncores: 2\nmemory_mb: 4096\nmemory_budget_mb: 1024\n"
                       "preferred_backend: onnxruntime\nthreads: 1\npython: python3\n")
    lines = ["boards:"]
    for name, b in zip(RATES, farm):
        assert b.host.startswith("10.213.") and b.link.rate_mbit == RATES[name]
        lines.append(f"  - {{name: {name}, host: {b.host}, port: {b.port}, user: {b.user}, identity: {b.identity}, "
                     f"device_profile: {profile}, python: {b.python}, address: {b.host}}}")
    (tmp_path / "boards.yaml").write_text("\n".join(lines) + "\n")
    r = _cli("profile", "--boards", str(tmp_path / "boards.yaml"), "--build", tiny_build, "--runs", "3",
             "--warmup", "1", "--known-hosts", farm[0].known_hosts, "--out", str(tmp_path / "profiles.json"),
             "--link-mb", "16", "--artifacts", "onnx/fp32")
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads((tmp_path / "profiles.json").read_text())
    links = {n: doc["boards"][n]["link"] for n in RATES}
    for name, link in links.items():
        assert link["address"] == farm[list(RATES).index(name)].host
        # tbf shapes the rate; the measured figure must be near it (not loopback speed, not far below)
        assert 0.4 * RATES[name] <= link["mbps"] <= 1.3 * RATES[name], (name, link)
        assert link["rtt_ms"] > 0
    assert links["fast"]["mbps"] > 3 * links["slow"]["mbps"]
    assert f"{links['slow']['mbps']:.1f} Mbit/s" in r.stdout

    # replicas 2: both boards are used, so both transfer costs show in the plan
    r = _cli("assign", "--build", tiny_build, "--profiles", str(tmp_path / "profiles.json"), "--boards",
             str(tmp_path / "boards.yaml"), "--replicas", "2", "--bandwidth-mbps", "5", "--out",
             str(tmp_path / "plan.json"))
    assert r.returncode == 0, r.stdout + r.stderr
    plan = json.loads((tmp_path / "plan.json").read_text())
    manifest = json.load(open(os.path.join(tiny_build, "manifest.json")))
    n = input_bytes(manifest, "fp32")
    for name, link in links.items():
        info = plan["boards"][name]
        assert info["link"] == {"source": "measured", "mbps": link["mbps"], "rtt_ms": link["rtt_ms"]}
        assert info["transfer_ms"] == pytest.approx(n * 8 / (link["mbps"] * 1e6) * 1e3 + link["rtt_ms"], rel=1e-3)
    assert plan["boards"]["slow"]["transfer_ms"] > 3 * plan["boards"]["fast"]["transfer_ms"]
    assert "Mbit/s measured" in r.stdout


def test_link_namespaces_and_addresses_are_gone_after_the_test(boards):
    b, = boards(1, links=[50])
    ns, dev, ip = b.link.ns, b.link.host_dev, b.host
    assert ns in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    boards.__self__.close()  # the fixture is BoardFarm.start; its farm's close() is the teardown under test
    assert ns not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert ip not in subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout
    assert subprocess.run(["ip", "link", "show", dev], capture_output=True).returncode != 0
