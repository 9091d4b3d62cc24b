"""The one error tree of polyroute, at the lowest layer so that every layer can raise from it.

::

    PolyrouteError
    ├── ConfigError (ValueError)        a setting or config key is invalid; names the key
    │   └── FaultError                  a replay fault setting is invalid; ``field`` names it
    ├── DatasetError (ValueError)       a routing dataset or event log is malformed; names
    │                                   the file or column
    ├── FeaturizerError                 the request featurizer was misused (unfitted, altered)
    ├── NotFittedError                  a fitted model (reward model) used before ``fit()``
    ├── PolicyError                     a policy was used against its contract (bad actions)
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

The classes carry no HTTP status: the gateway maps them to one at its edge, in a single table
(``router.http.errors.STATUS``). Some also subclass :class:`ValueError` so that callers that
validate arguments with ``except ValueError`` keep working. Messages name the bad field and say
what was expected.
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


class FeaturizerError(PolyrouteError):
    """The request featurizer was used against its contract: unfitted, or its saved state does
    not match its recorded version."""


class NotFittedError(PolyrouteError):
    """A fitted component (the reward model) was used before ``fit()`` or ``load()``."""


class PolicyError(PolyrouteError):
    """A policy was used against its contract (unfitted, bad actions, bad bundle)."""


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
    "ModelsUnavailableError",
    "NoEligibleModelError",
    "NotFittedError",
    "NotFoundError",
    "OverloadedError",
    "PolicyError",
    "PolyrouteError",
    "RateLimitedError",
    "RequestError",
    "ThrottledError",
    "TrafficStoreError",
    "UpstreamError",
]
