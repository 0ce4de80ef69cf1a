"""serve/server.py without a deployment: who may listen where without a token. ~1 s."""

from __future__ import annotations

import pytest

from edvit_tool.errors import EdvitError
from edvit_tool.serve import server


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.8.9.10", True), ("::1", True),
                                            ("localhost", True), ("0.0.0.0", False), ("::", False),
                                            ("10.0.0.21", False), ("myhost.lan", False)])
def test_is_loopback(host, loopback):
    assert server.is_loopback(host) is loopback


def test_a_non_loopback_bind_needs_a_token_or_insecure(caplog):
    server.check_exposure("127.0.0.1", None, insecure=False, tls=False)  # loopback: anything goes
    with pytest.raises(EdvitError, match=r"--host 0\.0\.0\.0: .*--token-file.*--insecure"):
        server.check_exposure("0.0.0.0", None, insecure=False, tls=False)
    with caplog.at_level("WARNING", logger="edvit.serve"):
        server.check_exposure("0.0.0.0", None, insecure=True, tls=False)
        server.check_exposure("10.0.0.2", "token", insecure=False, tls=False)
    assert sum("plain HTTP" in r.message for r in caplog.records) == 2  # said, not refused
    caplog.clear()
    with caplog.at_level("WARNING", logger="edvit.serve"):
        server.check_exposure("10.0.0.2", "token", insecure=False, tls=True)
    assert not caplog.records
