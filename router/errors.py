"""The one error tree of polyroute. Each class carries the HTTP status the service answers with.

::

    PolyrouteError (500)
    ├── ConfigError (500)           a setting or config key is invalid; names the key
    ├── DatasetError (422)          a routing dataset or event log is malformed; names file/column
    ├── PolicyError (500)           a policy was used against its contract (unfitted, bad actions)
    ├── OverloadedError (503)       too many requests in flight; retry after a moment
    └── RequestError (400)          a caller's request is invalid; names the field
        └── NoEligibleModelError (422)  no model may serve the request

Messages name the bad field and say what was expected.
"""

from __future__ import annotations


class PolyrouteError(Exception):
    """Base of every error polyroute raises on purpose."""

    status_code: int = 500


class ConfigError(PolyrouteError):
    status_code = 500


class DatasetError(PolyrouteError, ValueError):
    status_code = 422


class PolicyError(PolyrouteError):
    status_code = 500


class OverloadedError(PolyrouteError):
    status_code = 503


class RequestError(PolyrouteError, ValueError):
    status_code = 400


class NoEligibleModelError(RequestError):
    status_code = 422
