"""The HTTP edge of the error tree: one table from error class to status, the OpenAI error type
of each status, and the error body.

Domain errors (:mod:`features.errors`) carry no HTTP status; this table is the only place that
gives them one. The most specific class wins (the first class of the error's MRO in the table).

Every error the gateway answers has OpenAI's shape::

    {"error": {"message": "max_tokens: expected a positive integer, got 0",
               "type": "invalid_request_error", "param": "max_tokens", "code": "request_error"}}

``type`` follows the status (:data:`TYPES`), ``param`` is the dotted path of the field at
fault (``messages.0.content``), the header name (``x-polyroute-max-cost``) or null, and
``code`` is the error class in snake case (``no_eligible_model_error``), the finer reason a
client can branch on.
"""

from __future__ import annotations

import json
import math
import re

from fastapi.responses import Response

from features.errors import (
    AuthError,
    BodyTooLargeError,
    BudgetExceededError,
    ConfigError,
    DatasetError,
    EventLogError,
    InvalidEventError,
    ModelsUnavailableError,
    NoEligibleModelError,
    NotFoundError,
    OverloadedError,
    PolicyError,
    PolyrouteError,
    RateLimitedError,
    RequestError,
    ThrottledError,
    TrafficStoreError,
    UpstreamError,
)

STATUS: dict[type[PolyrouteError], int] = {
    # most specific first (lookup follows the MRO, so the order is for the reader)
    ModelsUnavailableError: 503,  # every allowed model's circuit is open; with Retry-After
    NoEligibleModelError: 422,  # no model may serve the request
    AuthError: 401,
    NotFoundError: 404,
    BodyTooLargeError: 413,
    RequestError: 400,
    InvalidEventError: 500,  # the gateway built an event the log refuses: its own bug
    DatasetError: 422,
    RateLimitedError: 429,  # with Retry-After from the limiter
    BudgetExceededError: 429,  # with Retry-After: the next UTC midnight
    ThrottledError: 429,
    OverloadedError: 503,  # with Retry-After
    TrafficStoreError: 503,  # a budget cannot be checked: refused (fail closed), Retry-After
    EventLogError: 503,  # the service refuses a request it could not log
    UpstreamError: 502,
    ConfigError: 500,
    PolicyError: 500,
    PolyrouteError: 500,
}

# OpenAI's error ``type`` of each status; any other 4xx is an invalid request, any other 5xx
# a server error
TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "upstream_error",  # every upstream failed (also the in-band error of a broken stream)
    503: "server_error",
}


def status_of(exc: PolyrouteError) -> int:
    """The HTTP status the gateway answers ``exc`` with."""
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def type_of(status: int) -> str:
    """OpenAI's error ``type`` for an HTTP status."""
    return TYPES.get(status) or ("server_error" if status >= 500 else "invalid_request_error")


def code_of(cls: type[Exception]) -> str:
    """The error ``code`` of an exception class: its name in snake case."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__).lower()


def error_response(
    status: int,
    message: str,
    kind: str | None = None,
    param: str | None = None,
    code: str | None = None,
) -> Response:
    """An OpenAI-style error body; ``kind`` (the ``type``) defaults to the status's.

    Serialised ASCII-only: a message quoting what the caller sent can never fail to encode.
    """
    error = {"message": message, "type": kind or type_of(status), "param": param, "code": code}
    return Response(
        json.dumps({"error": error}).encode(), status_code=status, media_type="application/json"
    )


def error_of(exc: PolyrouteError) -> Response:
    """The response to ``exc``: its status, its message, the field at fault, its class."""
    status = status_of(exc)
    param = exc.param if isinstance(exc, RequestError) else None
    response = error_response(status, str(exc), param=param, code=code_of(type(exc)))
    if isinstance(exc, OverloadedError | TrafficStoreError):
        response.headers["retry-after"] = "1"  # the OpenAI SDKs back off and retry
    elif isinstance(exc, ThrottledError | ModelsUnavailableError):
        # whole seconds in Retry-After (RFC 9110); the OpenAI SDKs read retry-after-ms first
        response.headers["retry-after"] = str(max(1, math.ceil(exc.retry_after_s)))
        if isinstance(exc, ThrottledError):  # the limiter knows to the millisecond
            response.headers["retry-after-ms"] = str(max(1, math.ceil(exc.retry_after_s * 1000)))
    return response
