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


def configure(verbose: int) -> None:
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
