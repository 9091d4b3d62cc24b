"""The rule for tests against real servers: skip when down, fail when CI requires them."""

from __future__ import annotations

import pytest
from loopback import free_port
from services import REQUIRE_ENV, require_tcp


def test_a_down_server_skips_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match=f"set {REQUIRE_ENV}=1"):
        require_tcp("Nothing", "127.0.0.1", free_port(), timeout_s=0.5)


@pytest.mark.parametrize("value", ["1", "true"])
def test_a_down_server_fails_when_services_are_required(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv(REQUIRE_ENV, value)
    with pytest.raises(pytest.fail.Exception, match="must test against it"):
        require_tcp("Nothing", "127.0.0.1", free_port(), timeout_s=0.5)


def test_a_listening_server_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    monkeypatch.setenv(REQUIRE_ENV, "1")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        require_tcp("Listener", "127.0.0.1", listener.getsockname()[1])
