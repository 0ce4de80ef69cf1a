"""Keep the terminal ours: third-party chatter (TensorFlow/absl C++ lines from the TFLite converter, oneDNN
notices, torch's pytree deprecation warnings) is shown only with `-v`.

Must run before TensorFlow's C++ runtime loads (it reads TF_CPP_MIN_LOG_LEVEL once, at import), so the CLI calls
it first thing; subprocesses (workers, benches) inherit the environment.
"""

from __future__ import annotations

import logging
import os
import warnings

NOISY_LOGGERS = ("torch.utils._pytree", "torch._dynamo", "torch._export", "torch.export", "absl", "tensorflow",
                 "jax", "onnxscript", "onnx_ir", "ai_edge_quantizer", "litert_torch")


VERBOSE = 0  # set by configure(): the CLI's -v count


def configure(verbose: int) -> None:
    global VERBOSE
    VERBOSE = verbose
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if verbose:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")   # TF/absl C++: errors only
    os.environ.setdefault("GLOG_minloglevel", "2")
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"(torch|onnxscript|onnx_ir|litert_torch|ai_edge_quantizer|tensorflow)\.")
    warnings.filterwarnings("ignore", category=FutureWarning)


def preimport_quietly(*modules: str) -> None:
    """Import heavy native libraries before any progress display starts, with the process's C-level stderr sent to
    a log file: TensorFlow (under litert-torch) prints oneDNN/absl notices straight to fd 2 when it loads, where
    no Python logging setting reaches. With -v nothing is redirected."""
    import contextlib
    import importlib
    import sys
    import tempfile

    if VERBOSE:
        for m in modules:
            with contextlib.suppress(ImportError):  # a missing optional converter is reported where it is used
                importlib.import_module(m)
        return
    sys.stderr.flush()
    saved = os.dup(2)
    path = os.path.join(tempfile.gettempdir(), "edvit-tool-native.log")
    try:
        with open(path, "ab") as log:
            os.dup2(log.fileno(), 2)
            for m in modules:
                with contextlib.suppress(ImportError):
                    importlib.import_module(m)
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
