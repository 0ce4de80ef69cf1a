"""A real tritonserver (2.51, bundled in the nvidia-pytriton wheel) on 127.0.0.1 serving an exported repository,
for tests/e2e/test_triton.py and bench/links.py.

    with TritonServer(repo, ["edvit_onnx_fp32"], workdir) as srv:
        client = srv.client()                    # tritonclient.http.InferenceServerClient

The server comes from its own venv (scripts/make-triton-venv.sh, made on first use like the board venv): the
wheel's Python backend needs numpy 1.x. Our ensemble's steps are Python-backend models, whose interpreter is the
system libpython3.11 and ignores PYTHONPATH; the backend directory made here holds the wheel's backend files plus
links to that venv's packages (numpy, onnxruntime, ai-edge-litert), as the backend directory is on its sys.path.
Failures raise TritonUnavailable with the script's or the server log's tail.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRITON_VENV = os.environ.get("EDVIT_TRITON_VENV", os.path.join(REPO, ".venv-triton"))


class TritonUnavailable(RuntimeError):
    """The Triton venv cannot be made, or the server did not become ready; the message says why."""


def triton_site(venv: str = TRITON_VENV) -> str:
    """site-packages of the Triton venv, creating it (scripts/make-triton-venv.sh) when missing."""
    r = subprocess.run(["bash", os.path.join(REPO, "scripts", "make-triton-venv.sh"), venv],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise TritonUnavailable(f"scripts/make-triton-venv.sh failed ({r.returncode}): {r.stderr.strip()[-1500:]}")
    return os.path.join(venv, "lib", "python3.11", "site-packages")


def backend_dir(root: str, site: str) -> str:
    """<root>/backends/python: the wheel's Python backend + the 3.11 stub + links to the venv's packages."""
    dist = os.path.join(site, "pytriton", "tritonserver")
    py = os.path.join(root, "backends", "python")
    os.makedirs(py)
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        os.symlink(os.path.join(dist, "backends", "python", name), os.path.join(py, name))
    os.symlink(os.path.join(dist, "python_backend_stubs", "3.11", "triton_python_backend_stub"),
               os.path.join(py, "triton_python_backend_stub"))
    for name in os.listdir(site):
        if not name.startswith(("_", "pip", "setuptools", "pytriton")) and not name.endswith((".pth", ".dist-info")):
            os.symlink(os.path.join(site, name), os.path.join(py, name))
    return os.path.dirname(py)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TritonServer:
    """tritonserver on 127.0.0.1 (HTTP only) with `models` of `repo` loaded; its process group is killed on close."""

    def __init__(self, repo: str, models: list, workdir: str, ready_timeout_s: float = 180.0):
        self.repo, self.models, self.workdir = repo, list(models), workdir
        self.ready_timeout_s = ready_timeout_s
        self.port = None
        self.log_path = os.path.join(workdir, "tritonserver.log")
        self._proc = None
        self._client = None

    def log_tail(self, n: int = 4000) -> str:
        with open(self.log_path) as f:
            return f.read()[-n:]

    def start(self) -> "TritonServer":
        import tritonclient.http as th

        site = triton_site()
        dist, libs = os.path.join(site, "pytriton", "tritonserver"), os.path.join(site, "nvidia_pytriton.libs")
        backends = backend_dir(self.workdir, site)
        self.port = _free_port()
        cmd = [os.path.join(dist, "bin", "tritonserver"), f"--model-repository={self.repo}",
               f"--backend-directory={backends}", "--http-address=127.0.0.1", f"--http-port={self.port}",
               "--allow-grpc=false", "--allow-metrics=false", "--model-control-mode=explicit",
               *[f"--load-model={m}" for m in self.models],
               "--backend-config=python,shm-default-byte-size=4194304",
               f"--backend-config=python,shm-region-prefix-name=edvit{os.getpid()}_"]
        env = {**os.environ, "LD_LIBRARY_PATH": libs, "PYTHONNOUSERSITE": "1"}
        with open(self.log_path, "w") as log:
            self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self._client = th.InferenceServerClient(f"127.0.0.1:{self.port}", network_timeout=120.0)
        deadline = time.monotonic() + self.ready_timeout_s
        last = None
        try:
            while True:
                if self._proc.poll() is not None:
                    raise TritonUnavailable(f"tritonserver exited ({self._proc.returncode}):\n{self.log_tail()}")
                try:
                    if self._client.is_server_ready():
                        return self
                except Exception as e:  # not listening yet: connection refused, in any of the client's forms
                    last = e
                if time.monotonic() > deadline:
                    raise TritonUnavailable(f"tritonserver not ready after {self.ready_timeout_s:.0f} s (last: "
                                            f"{last!r}):\n{self.log_tail()}")
                time.sleep(0.5)
        except BaseException:
            self.close()
            raise

    def client(self):
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._proc is not None and self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGTERM)  # the server and its Python-backend stubs
            try:
                self._proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait()
        self._proc = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()
