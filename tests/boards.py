"""Real SSH "boards" on loopback for end-to-end tests (DESIGN §8).

Each board is a real OpenSSH sshd on 127.0.0.1:<free port>, in a private mount namespace (so it can have its
own /run/sshd without touching the host), logging in as its own user (pi, pi1, pi2, ...) so every board has a
separate home and thus a separate ~/.edvit cache. Optionally a cgroup-v1 CPU quota makes one board slower; children
(the bench, workers) inherit it. The boards' Python is the slim venv made by scripts/make-board-venv.sh (numpy +
ai-edge-litert + onnxruntime, no torch).

Optionally a board sits behind a rate-limited link: its own network namespace joined to the host by a veth
pair shaped with tc tbf (tests/netns.py); its sshd and everything it starts (workers) then live at the
namespace's address, reached through the link.

Needs root (useradd, sshd, cgroups, netns), as CI runs. Used through the `boards` fixture in tests/conftest.py:

    def test_x(boards):
        b0, b1 = boards(2, cpu_quota=[None, 0.25], links=[100, 1000])   # Mbit/s; None = plain loopback
        SshSession(b0.target, identity=b0.identity, known_hosts=b0.known_hosts)
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SSHD = "/usr/sbin/sshd"
CGROUP_CPU = "/sys/fs/cgroup/cpu"
BOARD_VENV = os.environ.get("EDVIT_BOARD_VENV", os.path.join(REPO, ".venv-board"))
# the fallback interpreter's board: numpy<2 + tflite-runtime only (scripts/make-board-venv.sh --tflite-runtime)
TFLITE_VENV = os.environ.get("EDVIT_BOARD_TFLITE_VENV", os.path.join(REPO, ".venv-board-tflite"))
MAKE_VENV = os.path.join(REPO, "scripts", "make-board-venv.sh")
_LOCK = "/tmp/edvit-boards.lock"  # serialises useradd between concurrent test processes
_USER_LOCK = "/tmp/edvit-boards-user-{}.lock"  # held while a board runs as that user (any process)


class BoardSetupError(RuntimeError):
    """The machine cannot host loopback boards; the message says what to install or change."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_board_venv(kind: str = "default") -> str:
    """Path of a board venv's python, creating the venv (scripts/make-board-venv.sh) when missing.
    kind "default": numpy + ai-edge-litert + onnxruntime; "tflite-runtime": numpy<2 + tflite-runtime only."""
    venv, flags = {"default": (BOARD_VENV, []), "tflite-runtime": (TFLITE_VENV, ["--tflite-runtime"])}[kind]
    py = os.path.join(venv, "bin", "python")
    if not os.path.isfile(os.path.join(venv, ".edvit-board-venv")):
        r = subprocess.run(["bash", MAKE_VENV, *flags, venv], capture_output=True, text=True)
        if r.returncode != 0:
            raise BoardSetupError(f"{MAKE_VENV} failed ({r.returncode}): {r.stderr.strip()[-800:]}")
    return py


def ensure_user(name: str, shell: str = "/bin/bash") -> pwd.struct_passwd:
    """Create board user `name` if missing, with login shell `shell` (a Pi's default is bash).
    usermod -p '*': a locked ('!') account cannot log in even with a key when PAM is off; '*' means "no
    password" but key logins work."""
    with open(_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            pw = pwd.getpwnam(name)
            cmds = [] if pw.pw_shell == shell else [["usermod", "-s", shell, name]]
        except KeyError:
            cmds = [["useradd", "-m", "-s", shell, name], ["usermod", "-p", "*", name]]
        for cmd in cmds:
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                raise BoardSetupError(f"`{' '.join(cmd)}` failed: {r.stderr.strip()}")
        return pwd.getpwnam(name)


def cgroup_v1_cpu_available() -> bool:
    return os.path.isfile(os.path.join(CGROUP_CPU, "cpu.cfs_quota_us")) and os.access(CGROUP_CPU, os.W_OK)


def quota_settings(ratio: float) -> tuple[int, int]:
    """(cfs_period_us, cfs_quota_us) for `ratio` of one CPU with a short period.

    A short period matters: with the default 100 ms a sub-millisecond inference almost always runs at full
    speed and the median does not move. The kernel rejects periods and quotas under 1000 us, so 25 % is
    period 4000 / quota 1000 (not 1000 / 250).
    """
    if not ratio > 0:
        raise ValueError(f"cpu quota must be > 0, got {ratio}")
    if ratio >= 1:
        return 1000, int(round(ratio * 1000))
    return int(round(1000 / ratio)), 1000


def _children_of(pid: int) -> list[int]:
    """All live descendants of pid (from /proc)."""
    parents = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    parents[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # exited while we looked
    out, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        out += kids
        frontier += kids
    return out


def _pids_of_uid(uid: int) -> list[int]:
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if os.stat(f"/proc/{d}").st_uid == uid:
                    pids.append(int(d))
            except OSError:
                continue
    return pids


def worker_pids(uids=None, marker: str = "") -> list[int]:
    """Live (not zombie) edvit workers, optionally only those owned by `uids` and/or whose command line
    mentions `marker` (e.g. a run dir in their pidfile path)."""
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            if uids is not None and os.stat(f"/proc/{d}").st_uid not in uids:
                continue
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read()
            with open(f"/proc/{d}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue  # the process ended while we looked
        if b"edvit_tool.runtime.worker" in cmd and marker.encode() in cmd and state != "Z":
            pids.append(int(d))
    return pids


def _kill_all(pids, grace: float = 2.0) -> None:
    """SIGTERM, wait up to `grace`, then SIGKILL what is left. Only pids we own (board processes)."""
    pids = [p for p in set(pids) if p != os.getpid()]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            pids = [p for p in pids if _alive(p)]
            if not pids:
                return
            time.sleep(0.02)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@dataclass
class Board:
    """One running sshd board. `target` is what the tool is pointed at."""

    name: str
    user: str
    port: int
    identity: str             # client private key (its .pub is in authorized_keys)
    known_hosts: str          # a known_hosts file with this board's key (pre-filled) or empty (accept-new)
    python: str               # board-side interpreter: the slim venv
    home: str
    dir: str                  # board config dir: host key, sshd_config, log
    cpu_quota: float | None = None
    cgroup: str | None = None
    proc: subprocess.Popen | None = field(default=None, repr=False)
    host: str = "127.0.0.1"
    link: object = None       # a netns.Link when the board is behind a rate-limited link

    @property
    def target(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"

    @property
    def host_key_pub(self) -> str:
        with open(os.path.join(self.dir, "ssh_host_ed25519_key.pub")) as f:
            return f.read().strip()

    def known_hosts_line(self) -> str:
        kind, b64 = self.host_key_pub.split()[:2]
        return f"[{self.host}]:{self.port} {kind} {b64}"

    @property
    def log(self) -> str:
        with open(os.path.join(self.dir, "sshd.log"), errors="replace") as f:
            return f.read()

    # -- lifecycle -------------------------------------------------------------------------------------------

    def write_config(self) -> None:
        d = self.dir
        os.makedirs(os.path.join(d, "run", "sshd"), exist_ok=True)
        conf = f"""\
ListenAddress {self.host}
Port {self.port}
HostKey {d}/ssh_host_ed25519_key
PidFile {d}/sshd.pid
AuthorizedKeysFile {d}/authorized_keys
AllowUsers {self.user}
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin no
StrictModes no
UseDNS no
PrintMotd no
X11Forwarding no
MaxStartups 64:30:128
MaxSessions 64
Subsystem sftp internal-sftp
"""
        with open(os.path.join(d, "sshd_config"), "w") as f:
            f.write(conf)

    def new_host_key(self) -> None:
        key = os.path.join(self.dir, "ssh_host_ed25519_key")
        for p in (key, key + ".pub"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(p)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", self.name, "-f", key],
                       check=True, capture_output=True)

    def start(self, timeout: float = 10.0) -> None:
        d = shlex.quote(self.dir)
        # sshd as root insists on /run/sshd; a private mount namespace gives it one without touching the host.
        script = f"mount --bind {d}/run /run && exec {SSHD} -D -e -f {d}/sshd_config"
        log = open(os.path.join(self.dir, "sshd.log"), "ab")
        netns = self.link.prefix() if self.link is not None else []  # nsenter execs: the pid stays sshd's
        self.proc = subprocess.Popen(netns + ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                                     stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        if self.cgroup:  # before any child exists: every session, bench and worker inherits the quota
            with open(os.path.join(self.cgroup, "cgroup.procs"), "w") as f:
                f.write(str(self.proc.pid))
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise BoardSetupError(f"sshd for board {self.name} exited with {self.proc.returncode}: "
                                      f"{self.log.strip()[-800:]}")
            with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), timeout=1) as s:
                s.settimeout(2)
                if s.recv(8).startswith(b"SSH-"):
                    return
            if time.monotonic() > deadline:
                self.stop()
                raise BoardSetupError(f"sshd for board {self.name} did not accept on port {self.port} within "
                                      f"{timeout:g}s: {self.log.strip()[-800:]}")
            time.sleep(0.01)

    def kill_user_processes(self) -> None:
        """Everything the board user runs (sessions, bench, detached workers): stopping sshd stops none."""
        _kill_all(_pids_of_uid(pwd.getpwnam(self.user).pw_uid))

    def stop(self) -> None:
        if self.proc is None:
            return
        kids = _children_of(self.proc.pid)  # per-connection sshd processes outlive the listener
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        _kill_all(kids)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def set_cpu_quota(self, ratio: float | None) -> None:
        """Change (or lift, with None) the CPU quota of a running board."""
        if self.cgroup is None:
            raise BoardSetupError(f"board {self.name} was started without a cgroup; pass cpu_quota to boards()")
        period, quota = quota_settings(ratio) if ratio else (100000, -1)
        _write(os.path.join(self.cgroup, "cpu.cfs_quota_us"), "-1")  # lift first: quota must fit the period
        _write(os.path.join(self.cgroup, "cpu.cfs_period_us"), str(period))
        _write(os.path.join(self.cgroup, "cpu.cfs_quota_us"), str(quota))
        self.cpu_quota = ratio


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


class BoardFarm:
    """Starts boards, owns their temp dirs, users' processes and cgroups; `close()` undoes everything."""

    def __init__(self, root: str | None = None):
        if os.geteuid() != 0:
            raise BoardSetupError("loopback boards need root (useradd, sshd, cgroups); run the tests as root, "
                                  "as CI does")
        if not os.path.isfile(SSHD):
            raise BoardSetupError(f"{SSHD} not found; install it: apt-get install -y openssh-server")
        self.root = root or tempfile.mkdtemp(prefix="edvit-boards-")
        os.chmod(self.root, 0o755)  # board users must traverse it to read their authorized_keys
        self.python = ensure_board_venv()
        self.identity = os.path.join(self.root, "client_ed25519")
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "edvit-tests", "-f", self.identity],
                       check=True, capture_output=True)
        self.boards: list[Board] = []
        self.links: list = []              # netns.Link per board behind a shaped link
        self._leases: dict[str, int] = {}  # user -> fd holding its flock

    def _user_name(self) -> str:
        """The first of pi, pi1, pi2, ... that no live board (in any test process) runs as: two boards never
        share a home, a cache or each other's teardown (which kills the user's processes)."""
        for i in range(64):
            name = "pi" if i == 0 else f"pi{i}"
            fd = os.open(_USER_LOCK.format(name), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self._leases[name] = fd
            return name
        raise BoardSetupError("64 board users are in use; stop other test runs")

    def start(self, n: int, cpu_quota=None, known_hosts: str = "prefilled", fresh_home: bool = True,
              shell: str = "/bin/bash", venv=None, links=None) -> list[Board]:
        """Start n boards. cpu_quota: None or a list (per board: None or a fraction of one CPU, e.g. 0.25).
        venv: None or a list (per board: "default" or "tflite-runtime", the board's Python environment).
        links: None or a list (per board: None = loopback, or the link rate in Mbit/s: the board gets its own
        network namespace behind a veth pair shaped to that rate both ways; its address is board.host).

        known_hosts: "prefilled" (a file holding these boards' keys) or "empty" (a fresh file: accept-new).
        fresh_home: wipe the user's ~/.edvit first so no cache is left from an earlier test.
        shell: the board user's login shell; sshd runs every command through it (bash costs ~1 ms more per
        command than dash).
        """
        quotas = list(cpu_quota) if cpu_quota is not None else [None] * n
        pythons = [ensure_board_venv(k or "default") for k in (venv if venv is not None else [None] * n)]
        if len(pythons) != n:
            raise ValueError(f"venv has {len(pythons)} entries for {n} boards")
        if len(quotas) != n:
            raise ValueError(f"cpu_quota has {len(quotas)} entries for {n} boards")
        rates = list(links) if links is not None else [None] * n
        if len(rates) != n:
            raise ValueError(f"links has {len(rates)} entries for {n} boards")
        if any(q is not None for q in quotas) and not cgroup_v1_cpu_available():
            import pytest

            pytest.skip(f"cgroup v1 cpu controller not writable at {CGROUP_CPU}: cannot slow a board down")
        kh = os.path.join(self.root, f"known_hosts-{len(self.boards)}")
        open(kh, "w").close()
        started = []
        for i in range(n):
            user = self._user_name()
            pw = ensure_user(user, shell)
            name = f"board{len(self.boards)}"
            d = os.path.join(self.root, name)
            os.makedirs(d)
            os.chmod(d, 0o755)
            shutil.copy(self.identity + ".pub", os.path.join(d, "authorized_keys"))
            os.chmod(os.path.join(d, "authorized_keys"), 0o644)
            b = Board(name=name, user=user, port=0, identity=self.identity, known_hosts=kh, python=pythons[i],
                      home=pw.pw_dir, dir=d, cpu_quota=quotas[i])
            self.boards.append(b)
            if rates[i] is not None:
                b.link = self._link(rates[i])
                b.host = b.link.board_ip
            b.kill_user_processes()  # leftovers of an earlier, crashed run would skew timings
            if fresh_home:
                shutil.rmtree(os.path.join(pw.pw_dir, ".edvit"), ignore_errors=True)
            b.new_host_key()
            if quotas[i] is not None:
                b.cgroup = os.path.join(CGROUP_CPU, f"edvit-{os.getpid()}-{name}")
                os.makedirs(b.cgroup, exist_ok=True)
                b.set_cpu_quota(quotas[i])
            self._start_on_free_port(b)
            started.append(b)
        if known_hosts == "prefilled":
            with open(kh, "w") as f:
                f.writelines(b.known_hosts_line() + "\n" for b in started)
        elif known_hosts != "empty":
            raise ValueError(f"known_hosts must be 'prefilled' or 'empty', got {known_hosts!r}")
        return started

    def _link(self, rate_mbit: float):
        from netns import Link, LinkError

        subnet = self.links[0].subnet if self.links else None  # one /24 per farm, a /30 per board
        link = Link(rate_mbit, index=len(self.links), subnet=subnet)
        try:
            link.up()
        except LinkError as e:
            raise BoardSetupError(f"cannot put a board behind a {rate_mbit:g} Mbit/s link: {e}") from None
        self.links.append(link)
        return link

    def _start_on_free_port(self, b: Board, tries: int = 5) -> None:
        for attempt in range(tries):
            b.port = free_port()
            b.write_config()
            try:
                b.start()
                return
            except BoardSetupError:
                # another process took the port between free_port() and sshd's bind: pick another
                if attempt == tries - 1 or "Address already in use" not in b.log:
                    raise

    def close(self) -> None:
        for b in self.boards:
            b.kill_user_processes()
            b.stop()
            b.kill_user_processes()
            if b.cgroup and os.path.isdir(b.cgroup):
                _remove_cgroup(b.cgroup)
            fd = self._leases.pop(b.user, None)
            if fd is not None:
                os.close(fd)  # releases the flock
        self.boards = []
        for link in self.links:  # after the boards: nothing may still run inside a namespace we delete
            link.close()
        self.links = []
        for fd in self._leases.values():  # users leased for a board that then failed to start
            os.close(fd)
        self._leases = {}
        shutil.rmtree(self.root, ignore_errors=True)


def _remove_cgroup(path: str) -> None:
    """rmdir a cgroup once its (just killed) processes have left it."""
    deadline = time.monotonic() + 5
    while True:
        try:
            with open(os.path.join(path, "cgroup.procs")) as f:
                left = [int(x) for x in f.read().split()]
            _kill_all(left)
            os.rmdir(path)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


# -- a tiny build for board tests ----------------------------------------------------------------------------

TINY_CLASSES = ["zero", "one", "two", "three"]
TINY_GROUPS = [[0, 1], [2, 3]]
TINY_SHAPE = [3, 32, 32]


def make_tiny_build(dest: str, width: int = 32, depth: int = 3, samples: int = 8) -> str:
    """Write a small but real build dir: two conv sub-models (pixel_values -> features, logits) and a fusion
    head, exported to ONNX, with reference inputs/outputs from PyTorch and a manifest per the schema.

    The convs run at full resolution so compute dominates a bench run (a few ms per image on one core at
    width 32, depth 3): CPU quotas then show in the latency. Needs torch (host venv).
    """
    import numpy as np
    import torch
    from torch import nn

    from edvit_tool.artifacts import staged_dir, write_manifest

    feat = 16

    class Sub(nn.Module):
        def __init__(self, n_out):
            super().__init__()
            layers, c = [], 3
            for _ in range(depth):
                layers += [nn.Conv2d(c, width, 3, padding=1), nn.GELU()]
                c = width
            self.body = nn.Sequential(*layers)
            self.proj = nn.Linear(width, feat)
            self.norm = nn.LayerNorm(feat)
            self.head = nn.Linear(feat, n_out)

        def forward(self, pixel_values):
            f = self.norm(self.proj(self.body(pixel_values).mean(dim=(2, 3))))
            return f, self.head(f)

    class Fusion(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(feat * len(TINY_GROUPS), len(TINY_CLASSES))

        def forward(self, features):
            return self.fc(features)

    def export(model, example, path, in_name, out_names):
        model.eval()
        torch.onnx.export(model, (example,), path, input_names=[in_name], output_names=out_names,
                          dynamic_axes={in_name: {0: "batch"}, **{o: {0: "batch"} for o in out_names}},
                          opset_version=17, dynamo=False)

    def spec(name, shape):
        return {"name": name, "shape": [-1] + list(shape), "dtype": "float32"}

    torch.manual_seed(0)
    x = torch.randn(samples, *TINY_SHAPE)
    with staged_dir(dest) as d:
        for sub in ("submodels", "fusion", "reference"):
            os.makedirs(os.path.join(d, sub))
        arts, subs, feats = [], [], []
        for g, classes in enumerate(TINY_GROUPS):
            m = Sub(len(classes) + 1)
            rel = f"submodels/g{g}.fp32.onnx"
            export(m, x[:1], os.path.join(d, rel), "pixel_values", ["features", "logits"])
            with torch.no_grad():
                f, lg = m(x)
            feats.append(f)
            ref = f"reference/outputs-g{g}.fp32.onnx.npz"
            np.savez(os.path.join(d, ref), features=f.numpy(), logits=lg.numpy())
            subs.append({"name": f"g{g}", "group": g, "classes": classes, "arch": {"width": width, "depth": depth},
                         "params": sum(p.numel() for p in m.parameters()), "bytes": 0, "flops": 0,
                         "feature_dim": feat, "num_outputs": len(classes) + 1})
            arts.append((f"g{g}", rel, ref, [spec("pixel_values", TINY_SHAPE)],
                         [spec("features", [feat]), spec("logits", [len(classes) + 1])]))
        fusion = Fusion()
        fx = torch.cat(feats, dim=1)
        export(fusion, fx[:1], os.path.join(d, "fusion/fusion.onnx"), "features", ["logits"])
        with torch.no_grad():
            np.savez(os.path.join(d, "reference/outputs-fusion.fp32.onnx.npz"), logits=fusion(fx).numpy())
        arts.append(("fusion", "fusion/fusion.onnx", "reference/outputs-fusion.fp32.onnx.npz",
                     [spec("features", [feat * len(TINY_GROUPS)])], [spec("logits", [len(TINY_CLASSES)])]))
        np.savez(os.path.join(d, "reference/inputs.npz"), pixel_values=x.numpy(), features=fx.numpy())
        from edvit_tool.runtime.manifest import sha256_file

        manifest = {
            "schema_version": 1, "tool_version": "0.1.0", "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "model": {"name": "tiny-conv", "kwargs": {}, "params": 0, "bytes": 0, "flops": 0},
            "input": {"name": "pixel_values", "shape": TINY_SHAPE, "layout": "NCHW", "dtype": "float32",
                      "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bilinear"},
            "classes": TINY_CLASSES, "groups": TINY_GROUPS, "submodels": subs,
            "fusion": {"kind": "mlp", "source": "features", "input_dims": [feat] * len(TINY_GROUPS),
                       "num_classes": len(TINY_CLASSES), "checkpoint": None},
            "artifacts": [{"name": n, "file": rel, "format": "onnx", "quant": "fp32",
                           "bytes": os.path.getsize(os.path.join(d, rel)), "sha256": sha256_file(os.path.join(d, rel)),
                           "inputs": ins, "outputs": outs, "reference": ref, "tolerance": 1e-3,
                           "max_abs_diff": 0.0, "top1_agreement": 1.0, "float_layers": [], "status": "ok",
                           "reason": ""} for n, rel, ref, ins, outs in arts],
            "accuracy": {},
        }
        write_manifest(d, manifest)
    return dest


def tamper_reference(build: str, artifact_name: str = "g0", delta: float = 0.5) -> str:
    """Shift one artifact's reference `logits` in place (and refresh the manifest's file table): any honest
    board now disagrees with the reference, as if its interpreter computed wrong outputs."""
    import json

    import numpy as np

    from edvit_tool.artifacts import write_manifest

    with open(os.path.join(build, "manifest.json")) as f:
        manifest = json.load(f)
    art = next(a for a in manifest["artifacts"] if a["name"] == artifact_name)
    path = os.path.join(build, art["reference"])
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["logits"] = arrays["logits"] + np.float32(delta)
    np.savez(path, **arrays)
    write_manifest(build, manifest)
    return path


def write_boards_yaml(path: str, names: list[str], boards, cores: int = 1) -> str:
    """A boards.yaml for loopback SSH boards (one per name), with a loopback device profile beside it."""
    prof = os.path.join(os.path.dirname(str(path)), "loopback.yaml")
    with open(prof, "w") as f:
        f.write(f"name: loopback\narch: x86_64\ncores: {cores}\nmemory_mb: 4096\nmemory_budget_mb: 1024\n"
                "preferred_backend: onnxruntime\nthreads: 1\npython: python3\n")
    lines = ["boards:"]
    for name, b in zip(names, boards):
        lines.append(f"  - {{name: {name}, host: 127.0.0.1, port: {b.port}, user: {b.user}, identity: {b.identity}, "
                     f"device_profile: {prof}, python: {b.python}, worker_port: {free_port()}}}")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return str(path)
