"""Triton Python-backend model for one ED-ViT artifact (a sub-model or the fusion head); copied into the Triton
repository as <model>/1/model.py by export/triton.py, beside `edvit_backends.py` (a copy of runtime/backends.py,
the loader the boards use: onnxruntime or LiteRT, TFLite batch handling, quantised IO) and `edvit_model.json`.

It stands in for Triton's ONNX Runtime / TFLite backends where the server has only the Python backend (the
`nvidia-pytriton` wheel's tritonserver). Needs numpy and onnxruntime (or ai-edge-litert) importable by the Python
backend's interpreter.

edvit_model.json: {"file": "model.onnx", "role": "submodel"|"fusion", "inputs": [...], "outputs": [...]
(the manifest artifact's declared tensors), "fusion_inputs": [names, in group order] (fusion only), "threads": 1}.
A sub-model maps `pixel_values` to `features` and `logits`; the fusion model concatenates its `fusion_inputs`
(each sub-model's fusion source) into the head's `features` and returns `logits` and `probabilities`.
"""

from __future__ import annotations

import json
import os

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


class TritonPythonModel:
    def initialize(self, args):
        from edvit_backends import load_model  # the copy beside this file (the version dir is on sys.path)

        here = os.path.join(args["model_repository"], args["model_version"])
        with open(os.path.join(here, "edvit_model.json"), encoding="utf-8") as f:
            self.spec = json.load(f)
        self.model = load_model(os.path.join(here, self.spec["file"]), threads=int(self.spec.get("threads", 1)),
                                inputs=self.spec["inputs"], outputs=self.spec["outputs"])
        self.output_names = [t["name"] for t in self.spec["outputs"]]

    def _run(self, request, pb_utils) -> list:
        if self.spec["role"] == "fusion":
            parts = [pb_utils.get_input_tensor_by_name(request, n).as_numpy() for n in self.spec["fusion_inputs"]]
            logits = self.model.run({"features": np.concatenate(parts, axis=1).astype(np.float32)})["logits"]
            return [pb_utils.Tensor("logits", logits.astype(np.float32)),
                    pb_utils.Tensor("probabilities", softmax(logits))]
        x = pb_utils.get_input_tensor_by_name(request, "pixel_values").as_numpy().astype(np.float32)
        out = self.model.run({"pixel_values": x})
        return [pb_utils.Tensor(n, np.ascontiguousarray(out[n], dtype=np.float32)) for n in self.output_names]

    def execute(self, requests):
        import triton_python_backend_utils as pb_utils

        responses = []
        for request in requests:
            try:
                responses.append(pb_utils.InferenceResponse(output_tensors=self._run(request, pb_utils)))
            except Exception as e:  # one bad request answers with its error; the model keeps serving
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{type(e).__name__}: {e}")))
        return responses
