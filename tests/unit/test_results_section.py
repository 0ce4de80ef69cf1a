"""scripts/results_section.py rewrites only README's results block, from whatever bench/results/*.json exist."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest

_SPEC = importlib.util.spec_from_file_location(
    "results_section", os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "results_section.py"))
rs = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(rs)


def _paper_doc() -> dict:
    def row(model, k, params, tfl_ms):
        b = {"onnx/fp32": 4 * params, "onnx/int8-dynamic": params, "tflite/fp32": 4 * params,
             "tflite/int8-dynamic": params}
        return {"model": model, "k": k, "budget_ratio": 1 / k, "params": params, "flops": 2 * params * 197,
                "bytes": b, "size_ratio": {v: 1000 * 4 / b[v] for v in b},
                "latency_ms": {"tflite/fp32": tfl_ms, "onnx/fp32": tfl_ms},
                "latency_ratio": {"tflite/fp32": 100 / tfl_ms, "onnx/fp32": 100 / tfl_ms}}
    return {"paper": {"size_ratio": 28.9, "latency_ratio": 34.1}, "budget": "1/K", "int8": "int8-dynamic",
            "threads": 1, "cpu_limit": "taskset", "rounds": 3, "end_to_end": "not measured",
            "rows": [row("vit_a", 1, 1000, 100.0), row("vit_a", 4, 250, 30.0)]}


def _readme(tmp_path, body: str) -> str:
    p = tmp_path / "README.md"
    p.write_text(body)
    return str(p)


def test_block_is_rewritten_from_the_results_and_the_rest_is_kept(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    (results / "paper.json").write_text(json.dumps(_paper_doc()))
    readme = _readme(tmp_path, f"# T\n\nbefore\n\n{rs.START}\nstale text\n{rs.END}\n\nafter\n")
    assert rs.main(["--readme", readme, "--results", str(results)]) == 0
    text = open(readme).read()
    assert text.startswith("# T\n\nbefore\n\n") and text.endswith("\n\nafter\n")
    block = text[text.index(rs.START):text.index(rs.END)]
    assert "stale text" not in block
    assert "| vit_a | 4 |" in block and "4.0×" in block  # size ratio 1000 / 250
    assert "bench/paper.py" in block and f"{os.cpu_count()} ×" in block
    assert "`.venv/bin/python bench/compile.py`" in block  # not run: listed with its command
    assert rs.main(["--readme", readme, "--results", str(results)]) == 0
    assert open(readme).read().count(rs.START) == 1  # idempotent


@pytest.mark.parametrize("body,result", [("# no markers\n", None), (f"{rs.START}\n{rs.END}\n", "{broken")])
def test_missing_markers_or_a_broken_result_is_one_error_line(tmp_path, capsys, body, result):
    results = tmp_path / "results"
    results.mkdir()
    if result is not None:
        (results / "paper.json").write_text(result)
    readme = _readme(tmp_path, body)
    assert rs.main(["--readme", readme, "--results", str(results)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("Error: ")
    assert open(readme).read() == body


def test_links_table_carries_the_triton_reference_row_when_measured():
    row = {"rate_mbit": 100.0, "wire": "encoded", "bytes_per_image_per_board": 75208.0, "e2e_p50_ms": 70.5,
           "physical_limit_ms": 55.6, "e2e_over_limit": 1.27, "fp32_over_best_p50": 1.5}
    doc = {"note": "K=4 ...", "rows": [row], "triton_reference": {
        "wire": "fp32", "bytes_per_image": 602293, "e2e_p50_ms": 96.0, "host_preprocess_p50_ms": 3.2,
        "server": "tritonserver 2.51.0 (nvidia-pytriton)"}, "triton_reference_note": "one unthrottled server"}
    lines = rs.render_links(doc)
    assert any(line.startswith("| Triton, loopback | fp32 | 602,293 | 96.0 |") for line in lines), lines
    assert "tritonserver 2.51.0" in lines[-1] and "3.2 ms" in lines[-1]
    doc["triton_reference"], doc["triton_reference_note"] = None, "not run (--no-triton)"
    lines = rs.render_links(doc)
    assert not any("Triton, loopback" in line for line in lines) and "not run (--no-triton)" in lines[-1]
