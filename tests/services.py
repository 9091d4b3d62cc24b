"""Tests against real servers (PostgreSQL, Redis): skip when the server is down, unless the
environment says the servers must be there (CI: ``POLYROUTE_REQUIRE_SERVICES=1``, set by .ci/run),
in which case the test fails, so that a CI run cannot pass without testing against them."""

from __future__ import annotations

import os
import socket
from typing import NoReturn

import pytest

REQUIRE_ENV = "POLYROUTE_REQUIRE_SERVICES"
REDIS = ("127.0.0.1", 6379)  # the development machines' and CI's Redis


def services_required() -> bool:
    return os.environ.get(REQUIRE_ENV, "").strip().lower() in {"1", "true", "yes"}


def unavailable(service: str, reason: object) -> NoReturn:
    """Skip the test (or fail it when services are required): ``service`` cannot be reached."""
    message = f"{service} not reachable: {reason}"
    if services_required():
        pytest.fail(f"{message} ({REQUIRE_ENV}=1: this run must test against it)", pytrace=False)
    pytest.skip(f"{message} (set {REQUIRE_ENV}=1 to fail instead of skipping)")


def require_tcp(service: str, host: str, port: int, timeout_s: float = 2.0) -> None:
    """Skip or fail (see :func:`unavailable`) unless something listens on ``host:port``."""
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as exc:
        unavailable(f"{service} at {host}:{port}", exc)
