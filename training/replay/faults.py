"""Fault injection for the replay backend: seeded random errors, outages and slowdowns.

The state is mutable at run time (``POST /admin/faults``) so a test or a demo can break a model
while the router is serving, and watch it fall back.
"""

from __future__ import annotations

import math
import random
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from features.errors import FaultError

FAULT_FIELDS = ("error_rate", "slowdown_ms", "outage_models")


def check_number(field: str, value: Any, low: float, high: float = math.inf) -> float:
    """``value`` as a float in ``[low, high]``, else :class:`FaultError` naming ``field``."""
    # bool is an int subclass: ``true`` in JSON must not silently mean 1.0
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise FaultError(field, f"expected a number, got {value!r}")
    if not low <= value <= high:
        bounds = f"in [{low:g}, {high:g}]" if math.isfinite(high) else f">= {low:g}"
        raise FaultError(field, f"expected a number {bounds}, got {value!r}")
    return float(value)


def check_models(field: str, value: Any, known: Collection[str] | None = None) -> frozenset[str]:
    """``value`` as a set of model names (all in ``known`` when given)."""
    # a bare string is iterable too, and would become a set of characters
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise FaultError(field, f"expected a list of model names, got {value!r}")
    names = list(value)
    if not all(isinstance(n, str) for n in names):
        raise FaultError(field, f"expected a list of model names (strings), got {names!r}")
    if known is not None:
        unknown = sorted(set(names) - set(known))
        if unknown:
            raise FaultError(
                field, f"unknown model(s) {unknown}; expected names from {sorted(known)}"
            )
    return frozenset(names)


class FaultState:
    """Current faults and the seeded generator deciding which requests fail.

    Parameters
    ----------
    error_rate : float
        Probability in [0, 1] that a completion request answers HTTP 500.
    slowdown_ms : float
        Extra delay added to every completion answer (not scaled by ``time_scale``).
    outage_models : collection of str
        Models answering HTTP 503.
    seed : int
        Seed of the error draws: the same request sequence fails at the same places.
    known_models : collection of str
        Models the dataset has; outages naming others are rejected.
    """

    def __init__(
        self,
        error_rate: float,
        slowdown_ms: float,
        outage_models: Collection[str],
        seed: int,
        known_models: Collection[str],
    ) -> None:
        self._known = frozenset(known_models)
        self.error_rate = check_number("error_rate", error_rate, 0.0, 1.0)
        self.slowdown_ms = check_number("slowdown_ms", slowdown_ms, 0.0)
        self.outage_models = check_models("outage_models", outage_models, self._known)
        self._rng = random.Random(seed)

    def draw_error(self) -> bool:
        """Whether this request fails. One draw per request whatever the rate, so changing the
        rate at run time does not shift which later requests the seed picks."""
        return self._rng.random() < self.error_rate

    def update(self, changes: Mapping[str, Any]) -> None:
        """Apply a partial update; validates everything first, so a bad field changes nothing.

        Raises
        ------
        FaultError
            Naming the unknown or invalid field.
        """
        unknown = sorted(set(changes) - set(FAULT_FIELDS))
        if unknown:
            raise FaultError(unknown[0], f"unknown field; expected some of {list(FAULT_FIELDS)}")
        error_rate = self.error_rate
        slowdown_ms = self.slowdown_ms
        outage = self.outage_models
        if "error_rate" in changes:
            error_rate = check_number("error_rate", changes["error_rate"], 0.0, 1.0)
        if "slowdown_ms" in changes:
            slowdown_ms = check_number("slowdown_ms", changes["slowdown_ms"], 0.0)
        if "outage_models" in changes:
            outage = check_models("outage_models", changes["outage_models"], self._known)
        self.error_rate, self.slowdown_ms, self.outage_models = error_rate, slowdown_ms, outage

    def snapshot(self) -> dict[str, Any]:
        """The current faults as JSON-ready values."""
        return {
            "error_rate": self.error_rate,
            "slowdown_ms": self.slowdown_ms,
            "outage_models": sorted(self.outage_models),
        }
