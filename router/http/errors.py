"""The HTTP edge of the error tree: one table from error class to status, and the error body.

Domain errors (:mod:`features.errors`) carry no HTTP status; this table is the only place that
gives them one. The most specific class wins (the first class of the error's MRO in the table).
"""

from __future__ import annotations

import math

from fastapi.responses import JSONResponse

from features.errors import (
    AuthError,
    BodyTooLargeError,
    BudgetExceededError,
    ConfigError,
    DatasetError,
    EventLogError,
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
    NoEligibleModelError: 422,  # no model may serve the request
    AuthError: 401,
    NotFoundError: 404,
    BodyTooLargeError: 413,
    RequestError: 400,
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


def status_of(exc: PolyrouteError) -> int:
    """The HTTP status the gateway answers ``exc`` with."""
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def error_response(status: int, message: str, kind: str, param: str | None = None) -> JSONResponse:
    """An OpenAI-style error body."""
    body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
    return JSONResponse(body, status_code=status)


def error_of(exc: PolyrouteError) -> JSONResponse:
    """The response to ``exc``: its status, its message, its class name as the type."""
    response = error_response(status_of(exc), str(exc), type(exc).__name__)
    if isinstance(exc, OverloadedError | TrafficStoreError):
        response.headers["retry-after"] = "1"  # the OpenAI SDKs back off and retry
    elif isinstance(exc, ThrottledError):
        # whole seconds in Retry-After (RFC 9110); the OpenAI SDKs read retry-after-ms first
        response.headers["retry-after"] = str(max(1, math.ceil(exc.retry_after_s)))
        response.headers["retry-after-ms"] = str(max(1, math.ceil(exc.retry_after_s * 1000)))
    return response
