"""Errors of the event log. All are 503: the service refuses a request it could not log.

::

    PolyrouteError (router.errors)
    └── EventLogError (503)         the event log cannot accept events (closed, writer failed)
        └── EventLogFullError (503) the bounded queue stayed full for ``put_timeout_s``
"""

from __future__ import annotations

from router.errors import PolyrouteError


class EventLogError(PolyrouteError):
    """The event log cannot accept the event; the caller must not serve an unlogged decision."""

    status_code = 503


class EventLogFullError(EventLogError):
    """The writer fell behind: the queue stayed full for longer than ``put_timeout_s``."""

    status_code = 503
