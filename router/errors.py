"""Compatibility re-export of :mod:`features.errors`, where the one error tree lives.

New code imports from ``features.errors``; this module stays only so that modules not yet
migrated (and branches written before the move) keep importing.
"""

from features.errors import (
    AuthError,
    BodyTooLargeError,
    ConfigError,
    DatasetError,
    EventLogError,
    EventLogFullError,
    FaultError,
    FeaturizerError,
    NoEligibleModelError,
    NotFittedError,
    NotFoundError,
    OverloadedError,
    PolicyError,
    PolyrouteError,
    RequestError,
    UpstreamError,
)

__all__ = [
    "AuthError",
    "BodyTooLargeError",
    "ConfigError",
    "DatasetError",
    "EventLogError",
    "EventLogFullError",
    "FaultError",
    "FeaturizerError",
    "NoEligibleModelError",
    "NotFittedError",
    "NotFoundError",
    "OverloadedError",
    "PolicyError",
    "PolyrouteError",
    "RequestError",
    "UpstreamError",
]
