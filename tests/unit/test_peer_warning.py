"""compile warns when the peer beats the fused ensemble on the validation split (and only then)."""

from edvit_tool.cli.compile import _warn_if_peer_wins


def _report(fused_val, peer_val):
    return {"fused_validation_accuracy": fused_val, "fused": {"accuracy": 0.8},
            "peer": {"validation_accuracy": peer_val, "accuracy": 0.81}}


def test_a_peer_ahead_on_validation_is_a_warning_on_stderr(capsys):
    _warn_if_peer_wins(_report(0.70, 0.72))
    err = capsys.readouterr().err
    assert err.startswith("Warning:") and "72.00 %" in err and "70.00 %" in err


def test_no_warning_when_the_ensemble_leads_or_there_is_no_peer(capsys):
    _warn_if_peer_wins(_report(0.75, 0.72))
    _warn_if_peer_wins({"fused_validation_accuracy": 0.7, "fused": {"accuracy": 0.7}})
    assert capsys.readouterr().err == ""
