"""Rate-limited links for loopback boards: a network namespace joined to the host by a veth pair, shaped with
`tc tbf` on both ends (DESIGN §8). Needs root, iproute2 (`ip`, `tc`) and nsenter.

    link = Link(100)                     # 100 Mbit/s both ways
    link.up()
    subprocess.Popen(link.prefix() + ["python", "-m", "http.server", "--bind", link.board_ip])
    ...                                  # the host reaches it at link.board_ip
    link.close()                         # deletes the veth pair and the namespace

Addresses are /30 pairs in 10.213.X.0/24, which exist only while the namespace does (X is picked per test
process so concurrent runs do not collide); traffic goes only to them. Delay: `tc netem` is not available on
this kernel, so no propagation delay is added — a link is its rate (tbf) plus a bounded queue (tbf `latency`);
the round trip is the veth's own (~0.05 ms).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess

NET_PREFIX = "10.213"
_LOCK = "/tmp/edvit-netns.lock"


class LinkError(RuntimeError):
    """The machine cannot make the namespace / veth / qdisc; the message quotes the failing command."""


def _run(argv: list) -> str:
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        raise LinkError(f"`{' '.join(argv)}` failed ({r.returncode}): {r.stderr.strip() or r.stdout.strip()}")
    return r.stdout


def _used_subnets() -> set:
    out = _run(["ip", "-o", "-4", "addr", "show"])
    used = set()
    for line in out.splitlines():
        for word in line.split():
            if word.startswith(NET_PREFIX + "."):
                used.add(int(word.split(".")[2]))
    for ns in _run(["ip", "netns", "list"]).split():
        if ns.startswith("edvit-"):
            with contextlib.suppress(ValueError, IndexError):
                used.add(int(ns.split("-")[2]))
    return used


def tbf_args(rate_mbit: float, burst_kb: float | None = None, latency_ms: float = 50.0) -> list:
    """`tc qdisc ... tbf` arguments. The bucket must hold at least one timer tick of traffic to reach the rate;
    a bigger one lets a whole image through at wire speed, so it is kept to ~1 ms of traffic (>= 16 KB)."""
    burst = burst_kb if burst_kb else max(16.0, rate_mbit * 1e6 / 8 / 1000 / 1024)
    return ["tbf", "rate", f"{rate_mbit:g}mbit", "burst", f"{burst:g}kb", "latency", f"{latency_ms:g}ms"]


class Link:
    """One namespace + veth pair; `index` numbers the links of one test (0..63)."""

    def __init__(self, rate_mbit: float | None, index: int = 0, subnet: int | None = None,
                 burst_kb: float | None = None, latency_ms: float = 50.0):
        if not 0 <= index < 64:
            raise ValueError(f"link index must be in 0..63, got {index}")
        self.rate_mbit, self.index, self.subnet = rate_mbit, index, subnet
        self.burst_kb, self.latency_ms = burst_kb, latency_ms
        tag = f"{os.getpid() % 100000}"
        self.host_dev, self.board_dev = f"ev{tag}h{index}", f"ev{tag}b{index}"
        self.ns = None
        self._made = []

    @property
    def host_ip(self) -> str:
        return f"{NET_PREFIX}.{self.subnet}.{4 * self.index + 1}"

    @property
    def board_ip(self) -> str:
        return f"{NET_PREFIX}.{self.subnet}.{4 * self.index + 2}"

    def prefix(self) -> list:
        """argv prefix that runs a command inside the namespace (network only; mounts untouched)."""
        return ["nsenter", f"--net=/run/netns/{self.ns}"]

    def up(self) -> "Link":
        if os.geteuid() != 0:
            raise LinkError("network namespaces need root; run the tests as root, as CI does")
        with open(_LOCK, "w") as lock:  # subnet choice + creation, atomically against other test processes
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self.subnet is None:
                used = _used_subnets()
                start = os.getpid() % 250
                self.subnet = next((s % 250 + 1 for s in range(start, start + 250) if s % 250 + 1 not in used), None)
                if self.subnet is None:
                    raise LinkError(f"every {NET_PREFIX}.X.0/24 subnet is in use; remove stale edvit-* namespaces")
            self.ns = f"edvit-{os.getpid()}-{self.subnet}-{self.index}"
            try:
                self._create()
            except BaseException:
                self.close()
                raise
        return self

    def _create(self) -> None:
        ns = ["ip", "netns", "exec", self.ns]
        _run(["ip", "netns", "add", self.ns])
        self._made.append("ns")
        _run(["ip", "link", "add", self.host_dev, "type", "veth", "peer", "name", self.board_dev])
        self._made.append("veth")
        _run(["ip", "link", "set", self.board_dev, "netns", self.ns])
        _run(["ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_dev])
        _run(["ip", "link", "set", self.host_dev, "up"])
        _run(ns + ["ip", "addr", "add", f"{self.board_ip}/30", "dev", self.board_dev])
        _run(ns + ["ip", "link", "set", self.board_dev, "up"])
        _run(ns + ["ip", "link", "set", "lo", "up"])
        if self.rate_mbit:
            tbf = tbf_args(self.rate_mbit, self.burst_kb, self.latency_ms)
            _run(["tc", "qdisc", "add", "dev", self.host_dev, "root", *tbf])          # host -> board
            _run(ns + ["tc", "qdisc", "add", "dev", self.board_dev, "root", *tbf])    # board -> host

    def set_rate(self, rate_mbit: float) -> None:
        """Reshape both ends of the running link to rate_mbit."""
        tbf = tbf_args(rate_mbit, self.burst_kb, self.latency_ms)
        verb = "replace" if self.rate_mbit else "add"
        _run(["tc", "qdisc", verb, "dev", self.host_dev, "root", *tbf])
        _run(["ip", "netns", "exec", self.ns, "tc", "qdisc", verb, "dev", self.board_dev, "root", *tbf])
        self.rate_mbit = rate_mbit

    def close(self) -> None:
        """Remove the veth pair (both ends) and the namespace; safe to call twice."""
        if "veth" in self._made:
            with contextlib.suppress(LinkError):
                _run(["ip", "link", "del", self.host_dev])
        if "ns" in self._made:
            _run(["ip", "netns", "del", self.ns])
        self._made = []

    def __enter__(self):
        return self.up()

    def __exit__(self, *exc):
        self.close()
