"""The one error tree of polyroute, at the lowest layer so that every layer can raise from it.

::

    PolyrouteError
    ├── ConfigError (ValueError)        a setting or config key is invalid; names the key
    │   └── FaultError                  a replay fault setting is invalid; ``field`` names it
    ├── DatasetError (ValueError)       a routing dataset or event log is malformed; names
    │   │                               the file or column
    │   ├── InvalidEventError           an event being logged breaks the log's invariants;
    │   │                               names the field (the code that built it is at fault)
    │   └── MissingFrameError           a compact decision names a frame no earlier line of
    │                                   its file defines: corruption, never a torn write
    ├── FeaturizerError                 the request featurizer was misused (unfitted, altered)
    ├── NotFittedError                  a fitted model (reward model) used before ``fit()``
    ├── PolicyError                     a policy was used against its contract (bad actions)
    ├── PolicyCheckError                a policy failed a conformance check
    │   (AssertionError)                (``router.policy.checks``); names the check
    ├── UnknownKeyError (KeyError)      a lookup in polyroute's own state found nothing (a
    │                                   model's instance URL, an evaluated policy)
    ├── ServiceError (RuntimeError)     a local process or service the command needs failed
    │                                   (a server did not start, a subprocess exited non-zero)
    ├── EventLogError                   the event log cannot accept events (closed, failed)
    │   └── EventLogFullError           the bounded queue stayed full for ``put_timeout_s``
    ├── OverloadedError                 too many requests in flight; retry after a moment
    ├── TrafficStoreError               the shared limits and budgets store (Redis) failed
    ├── ThrottledError                  a tenant's limit refuses the request for now;
    │   │                               ``retry_after_s`` says when it may pass
    │   ├── RateLimitedError            over requests_per_minute or tokens_per_minute
    │   └── BudgetExceededError         over budget_usd_per_day (spent + reserved)
    ├── UpstreamError                   an upstream call failed (connection, timeout, 5xx)
    └── RequestError (ValueError)       a caller's request is invalid; ``param`` names the
        │                               field as a dotted path (``messages.0.content``)
        ├── AuthError                   missing or wrong API key
        ├── NotFoundError               unknown model, decision id or admin resource
        ├── BodyTooLargeError           the request body is over the size limit
        └── NoEligibleModelError        no model may serve the request
            └── ModelsUnavailableError  every allowed model's circuit is open; retry later

The classes carry no HTTP status: the gateway maps them to one at its edge, in a single table
(``router.http.errors.STATUS``). Some also subclass the builtin class a caller would catch
(:class:`ValueError`, :class:`KeyError`, :class:`RuntimeError`, :class:`AssertionError`, in
parentheses above), so that ``except ValueError`` and ``pytest.raises(KeyError)`` keep working.
Messages name the bad field and say what was expected.

Project code raises only these classes: never a bare builtin, except ``ValueError`` inside a
pydantic validator (pydantic turns it into a ``ValidationError`` naming the field).
``tests/test_error_tree.py`` checks this on the source.
"""

from __future__ import annotations


class PolyrouteError(Exception):
    """Base of every error polyroute raises on purpose."""


class ConfigError(PolyrouteError, ValueError):
    """A setting, argument or config key is invalid; the message names it."""


class FaultError(ConfigError):
    """A fault setting of the replay backend is invalid.

    Attributes
    ----------
    field : str
        The offending field, so an HTTP answer can name it in ``param``.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class DatasetError(PolyrouteError, ValueError):
    """A routing dataset, an event log or an array is malformed; names the file or column."""


class InvalidEventError(DatasetError):
    """An event about to be logged breaks the invariants of the event log; names the field.

    The gateway built the event, so the fault is its own (HTTP 500), not the caller's request's
    (the 422 of other dataset errors).
    """


class MissingFrameError(DatasetError):
    """A compact decision names a frame that no earlier line of its file defines.

    Corruption (a lost line), never a torn write: readers that skip a malformed last line of a
    file do not skip this one.
    """


class FeaturizerError(PolyrouteError):
    """The request featurizer was used against its contract: unfitted, or its saved state does
    not match its recorded version."""


class NotFittedError(PolyrouteError):
    """A fitted component (the reward model) was used before ``fit()`` or ``load()``."""


class PolicyError(PolyrouteError):
    """A policy was used against its contract (unfitted, bad actions, bad bundle)."""


class PolicyCheckError(PolyrouteError, AssertionError):
    """A policy failed one of the conformance checks of ``router.policy.checks``; the message
    names the check. An :class:`AssertionError`, so a test runner reports a failure."""


class UnknownKeyError(PolyrouteError, KeyError):
    """A lookup in polyroute's own state found nothing: a URL that is none of a model's
    instances, a policy or target an evaluation did not cover. A :class:`KeyError`, for callers
    that catch one; a caller's request naming something unknown is :class:`NotFoundError`."""

    def __str__(self) -> str:
        return Exception.__str__(self)  # the message itself, not KeyError's repr of it


class ServiceError(PolyrouteError, RuntimeError):
    """A local process or service the command needs failed: a server that did not start or
    exited, a gateway that did not reload, a subprocess that exited non-zero, an MLflow run that
    is not active, a distributed task that got another task's rows."""


class EventLogError(PolyrouteError):
    """The event log cannot accept the event; the caller must not serve an unlogged decision."""


class EventLogFullError(EventLogError):
    """The writer fell behind: the queue stayed full for longer than ``put_timeout_s``."""


class OverloadedError(PolyrouteError):
    """Too many requests in flight; the caller should retry after a moment."""


class TrafficStoreError(PolyrouteError):
    """The store of rate limits and budgets (Redis) failed or timed out. Rate limits then admit
    the request (fail open) and budgets refuse it (fail closed), see ``router.traffic``."""


class ThrottledError(PolyrouteError):
    """A tenant's limit refuses the request for now.

    Attributes
    ----------
    retry_after_s : float
        Seconds until the request could pass (the gateway's ``Retry-After``).
    """

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RateLimitedError(ThrottledError):
    """The tenant is over its ``requests_per_minute`` or ``tokens_per_minute``."""


class BudgetExceededError(ThrottledError):
    """The tenant's daily budget cannot cover the request's maximum cost."""


class UpstreamError(PolyrouteError):
    """An upstream call failed: connection, timeout or a 5xx answer (worth a fallback)."""

    def __init__(
        self, model: str, kind: str, detail: str, retry_after_s: float | None = None
    ) -> None:
        super().__init__(f"{model}: {kind}: {detail}")
        self.model = model
        self.kind = kind
        self.retry_after_s = retry_after_s  # the upstream's Retry-After, when it sent one


class RequestError(PolyrouteError, ValueError):
    """A caller's request is invalid; the message names the field and says what was expected.

    Attributes
    ----------
    param : str or None
        Where the fault is, for OpenAI's ``error.param``: the dotted path of the body field
        (``messages.0.content``, ``metadata.max_cost``, ``max_tokens``), the header name
        (``x-polyroute-max-cost``), or None when no one field is at fault (a malformed body,
        a missing API key).
    """

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class AuthError(RequestError):
    """Missing, unknown or wrong API key."""


class NotFoundError(RequestError):
    """The request names something that does not exist (model, decision id, admin resource)."""


class BodyTooLargeError(RequestError):
    """The request body is over the gateway's size limit."""


class NoEligibleModelError(RequestError):
    """No model may serve the request under its rules."""


class ModelsUnavailableError(NoEligibleModelError):
    """Every model the request may use has its circuit open: not the caller's fault; retry
    after ``retry_after_s``."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


__all__ = [
    "AuthError",
    "BodyTooLargeError",
    "BudgetExceededError",
    "ConfigError",
    "DatasetError",
    "EventLogError",
    "EventLogFullError",
    "FaultError",
    "FeaturizerError",
    "InvalidEventError",
    "MissingFrameError",
    "ModelsUnavailableError",
    "NoEligibleModelError",
    "NotFittedError",
    "NotFoundError",
    "OverloadedError",
    "PolicyCheckError",
    "PolicyError",
    "PolyrouteError",
    "RateLimitedError",
    "RequestError",
    "ServiceError",
    "ThrottledError",
    "TrafficStoreError",
    "UnknownKeyError",
    "UpstreamError",
]
