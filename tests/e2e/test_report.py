"""`edvit-tool report`: report.html from a real exported build (tests/export_tiny.py: trained tiny ViTs, ONNX +
TFLite x 4 quantisations) with real local profiles, the real assign plan and a real local deployment. The HTML
must parse, every embedded image must decode and not be blank, missing optional inputs leave their section out,
and bad paths are one `Error:` line with exit 2."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from html.parser import HTMLParser

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import export_tiny  # noqa: E402

from edvit_tool.cli.main import main  # noqa: E402

EDVIT = [sys.executable, "-m", "edvit_tool.cli.main"]


class _Page(HTMLParser):
    """Collects <img src>, <h2> texts and table count; fails on unbalanced tags."""

    VOID = {"img", "meta", "br", "hr", "link", "input"}

    def __init__(self):
        super().__init__()
        self.images, self.h2, self.tables, self.stack, self._in_h2 = [], [], 0, [], False

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs))
        if tag == "table":
            self.tables += 1
        if tag == "h2":
            self._in_h2 = True
            self.h2.append("")
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"unbalanced </{tag}> (open: {self.stack[-3:]})"
        self.stack.pop()
        if tag == "h2":
            self._in_h2 = False

    def handle_data(self, data):
        if self._in_h2:
            self.h2[-1] += data


def _parse(path: str) -> _Page:
    page = _Page()
    with open(path, encoding="utf-8") as f:
        page.feed(f.read())
    page.close()
    assert page.stack == [], f"unclosed tags {page.stack}"
    return page


def _decoded(img: dict):
    from PIL import Image

    prefix = "data:image/png;base64,"
    assert img["src"].startswith(prefix), "images must be embedded, not linked"
    im = Image.open(io.BytesIO(base64.b64decode(img["src"][len(prefix):], validate=True)))
    im.load()
    return np.asarray(im.convert("RGB"), dtype=np.float32)


def _assert_real_images(page: _Page, n: int) -> None:
    assert len(page.images) == n
    for img in page.images:
        px = _decoded(img)
        assert px.shape[0] > 100 and px.shape[1] > 100
        assert px.std() > 0, f"blank image: {img.get('alt')}"


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    return export_tiny.exported(tmp_path_factory)


@pytest.fixture(scope="module")
def run_files(build, tmp_path_factory):
    """profiles.json (2 local boards, onnx/fp32 only, few runs), plan.json (assign), deployment.json (local
    workers, stopped again at once: the report only reads the file)."""
    from edvit_tool.cluster import deploy as dp
    from edvit_tool.cluster import profile as prof
    from edvit_tool.loop import assign_plan, write_local_boards

    run = str(tmp_path_factory.mktemp("report-run"))
    doc = prof.profile_local_many(2, build, artifacts=["onnx/fp32"], runs=3, warmup=1)
    profiles = os.path.join(run, "profiles.json")
    prof.write_profiles(doc, profiles)
    boards = write_local_boards(run, 2, prof.probe_local())
    plan = os.path.join(run, "plan.json")
    assign_plan(build, profiles, boards, plan, bandwidth_mbps=0.0)
    deployment = os.path.join(run, "deployment.json")
    try:
        dp.deploy(plan, transport="local", out=deployment)
    finally:
        if os.path.exists(deployment):
            dp.stop(deployment)
    return {"profiles": profiles, "plan": plan, "deployment": deployment}


@pytest.mark.slow
def test_full_report_embeds_four_real_plots_and_the_run_tables(build, run_files, tmp_path, capsys):
    out = tmp_path / "rep"
    rc = main(["report", build, "--profiles", run_files["profiles"], "--plan", run_files["plan"],
               "--deployment", run_files["deployment"], "--out", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0
    path = str(out / "report.html")
    assert path in printed
    page = _parse(path)
    _assert_real_images(page, 4)
    assert {"Accuracy", "Size", "Per-board latency", "Original vs distributed", "Run"} <= set(page.h2)
    assert sorted(os.listdir(out / "report-plots")) == ["accuracy.png", "boards.png", "bytes.png", "latency.png"]
    text = (out / "report.html").read_text()
    with open(run_files["plan"]) as f:
        plan = json.load(f)
    assert f"{plan['makespan_ms']:.3f}" in text
    with open(run_files["deployment"]) as f:
        for b in json.load(f)["boards"]:
            assert b["name"] in text and b["endpoint"] in text
    assert "Not shown" not in text
    assert not os.path.exists(os.path.join(build, "report.html")), "--out must keep the build untouched"


@pytest.mark.slow
def test_build_only_report_leaves_the_run_plots_out_and_says_why(build, tmp_path):
    from edvit_tool.report import write_html_report

    path = write_html_report(build, out_dir=str(tmp_path))
    page = _parse(path)
    _assert_real_images(page, 2)  # accuracy and bytes need only the build
    text = open(path, encoding="utf-8").read()
    assert "needs --plan" in text and "no --profiles" in text
    assert not os.path.exists(tmp_path / "report-plots" / "boards.png")


def test_a_build_without_accuracies_still_reports_its_sizes(tiny_build, tmp_path):
    from edvit_tool.report import write_html_report

    path = write_html_report(tiny_build, out_dir=str(tmp_path))
    page = _parse(path)
    _assert_real_images(page, 1)
    assert "records no fused accuracy" in open(path, encoding="utf-8").read()


def test_the_summary_functions_stay_importable_from_edvit_tool_report():
    from edvit_tool import report

    for name in ("write_reports", "build_report", "render_markdown", "refresh_reports", "write_html_report"):
        assert callable(getattr(report, name))


def _bad_json(tmp_path, text: str) -> str:
    p = tmp_path / "bad.json"
    p.write_text(text)
    return str(p)


@pytest.mark.parametrize("case", ["no-build", "not-a-build", "missing-plan", "plan-not-json", "plan-wrong-shape",
                                  "profiles-wrong-shape", "deployment-empty", "out-is-a-file"])
def test_bad_paths_are_one_error_line_and_exit_2(case, tiny_build, tmp_path):
    args = {
        "no-build": [str(tmp_path / "nope")],
        "not-a-build": [str(tmp_path)],
        "missing-plan": [tiny_build, "--plan", str(tmp_path / "plan.json")],
        "plan-not-json": [tiny_build, "--plan", _bad_json(tmp_path, "{not json")],
        "plan-wrong-shape": [tiny_build, "--plan", _bad_json(tmp_path, '{"placements": 3}')],
        "profiles-wrong-shape": [tiny_build, "--profiles", _bad_json(tmp_path, '{"schema_version": 1}')],
        "deployment-empty": [tiny_build, "--deployment", _bad_json(tmp_path, '{"boards": []}')],
        "out-is-a-file": [tiny_build],
    }[case]
    out = tmp_path / "out"
    if case == "out-is-a-file":
        out.write_text("a file, not a directory")
    p = subprocess.run(EDVIT + ["report", *args, "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), p.stderr
    assert not os.path.exists(out / "report.html")
