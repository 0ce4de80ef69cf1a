"""deploy --wire auto's choice (cluster/wire_choice.py) from INJECTED figures: the host's and boards'
preprocessing and the request bytes are the ones bench/links.py measured (K = 4 ViT-Ti/16 boards at a quarter
core, 500x375 JPEGs, bench/results/links.json of 2026-11-30); only the link rate changes between cases. The
probe on real workers is covered by tests/e2e/test_deploy.py."""

from __future__ import annotations

import pytest

from edvit_tool.cluster import wire_choice as wc

HOST_MS = {"fp32": 3.32, "uint8": 2.43, "encoded": 0.03}
BYTES = {"fp32": 602295, "uint8": 150712, "encoded": 75208}
BOARD_MS = {"uint8": 0.78, "encoded": 8.81}


def _links(mbps, k=4, rtt_ms=0.02):
    return {f"board{i}": {"mbps": mbps, "rtt_ms": rtt_ms} for i in range(k)}


def _boards(k=4):
    return {f"board{i}": {"fp32": 0.0, **BOARD_MS} for i in range(k)}


@pytest.mark.parametrize("mbps,want", [(10, "encoded"), (100, "encoded"), (1000, "uint8"), (10000, "uint8")])
def test_slow_links_send_the_files_fast_links_the_pixels(mbps, want):
    predicted = wc.predict(HOST_MS, BYTES, _links(mbps), _boards())
    assert wc.choose(predicted) == want, predicted
    # the prediction is the formula: host + bytes at the link rate + round trip + the board's preprocessing
    assert predicted["fp32"] == pytest.approx(HOST_MS["fp32"] + BYTES["fp32"] * 8 / (mbps * 1e3) + 0.02)
    assert predicted["encoded"] == pytest.approx(0.03 + BYTES["encoded"] * 8 / (mbps * 1e3) + 0.02 + 8.81)


def test_a_board_slow_at_preprocessing_gets_host_preprocessed_tensors_on_a_fast_link():
    slow_board = {f"board{i}": {"fp32": 0.0, "uint8": 6.0, "encoded": 30.0} for i in range(4)}
    assert wc.choose(wc.predict(HOST_MS, BYTES, _links(10000), slow_board)) == "fp32"
    assert wc.choose(wc.predict(HOST_MS, BYTES, _links(10), slow_board)) == "encoded"


def test_the_slowest_board_decides():
    links = {**_links(1000, k=3), "far": {"mbps": 20, "rtt_ms": 2.0}}
    boards = {**_boards(3), "far": {"fp32": 0.0, **BOARD_MS}}
    assert wc.choose(wc.predict(HOST_MS, BYTES, links, boards)) == "encoded"


def test_ties_go_to_the_more_compact_format():
    assert wc.choose({"fp32": 1.0, "uint8": 1.0, "encoded": 1.0}) == "encoded"
    assert wc.choose({"fp32": 1.0, "uint8": 1.0, "encoded": 2.0}) == "uint8"


def test_plan_links_needs_a_figure_for_every_board():
    plan = {"boards": {"a": {"link": {"source": "measured", "mbps": 95.6, "rtt_ms": 0.3}},
                       "b": {"link": {"source": "--bandwidth-mbps", "mbps": 100, "rtt_ms": None}}}}
    assert wc.plan_links(plan, ["a", "b"]) == {"a": {"mbps": 95.6, "rtt_ms": 0.3, "source": "measured"},
                                               "b": {"mbps": 100.0, "rtt_ms": 0.0, "source": "--bandwidth-mbps"}}
    plan["boards"]["b"]["link"] = {"source": "ignored", "mbps": None, "rtt_ms": None}
    assert wc.plan_links(plan, ["a", "b"]) is None
    assert wc.plan_links({"boards": {"a": {}}}, ["a"]) is None


def test_probe_image_is_a_photo_sized_for_the_model():
    from edvit_tool.runtime import preprocess as pp

    spec = {"shape": [3, 224, 224], "mean": [0.5] * 3, "std": [0.5] * 3, "crop_pct": 0.875}
    data = wc.probe_image(spec)
    assert data[:2] == b"\xff\xd8" and pp.image_size(data) == (512, 384)  # short side 1.5 x 256 (224 / 0.875)
    assert wc.probe_image(spec) == data  # deterministic


def test_board_cost_adds_how_much_slower_the_model_ran_after_the_boards_preprocessing():
    """bench/links.py at a quarter core: the model ran ~7 ms slower after decoding a JPEG than after fp32 input;
    that counts against encoded (a faster run is noise, never a credit)."""
    cost = wc.board_cost({"fp32": 0.0, "uint8": 0.4, "encoded": 1.8}, {"fp32": 41.0, "uint8": 40.5, "encoded": 47.8})
    assert cost == pytest.approx({"fp32": 0.0, "uint8": 0.4, "encoded": 1.8 + 6.8})
    assert wc.board_cost({"uint8": 0.4}, {}) == {"fp32": 0.0, "uint8": 0.4, "encoded": 0.0}
    # at 1 Gbit/s the preprocessing alone (1.8 ms) would favour the files; with the slowdown the pixels win
    host = {"fp32": 2.87, "uint8": 2.30, "encoded": 0.03}
    prep_only = {f"board{i}": {"fp32": 0.0, "uint8": 0.4, "encoded": 1.8} for i in range(4)}
    assert wc.choose(wc.predict(host, BYTES, _links(1000), prep_only)) == "encoded"
    assert wc.choose(wc.predict(host, BYTES, _links(1000), {f"board{i}": cost for i in range(4)})) == "uint8"
    assert wc.choose(wc.predict(host, BYTES, _links(10), {f"board{i}": cost for i in range(4)})) == "encoded"
