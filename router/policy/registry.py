"""Registry of policies (name -> class): what config and the CLI choose from.

A policy's module is imported when its class is first asked for (``get_policy_class``,
``POLICIES[name]``), not with the registry: serving the default policy never imports
Vowpal Wabbit, MABWiser (pandas) or scikit-learn, which other policies need.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, MutableMapping

from features.errors import ConfigError
from router.policy.base import Policy

# name -> "module:class"; the module is imported on first use
_WHERE = {
    "squarecb_quality": "router.policy.quality:QualitySquareCBPolicy",
    "vw_squarecb": "router.policy.vw:VWSquareCBPolicy",
    "direct": "router.policy.direct:DirectPolicy",
    "knn": "router.policy.baselines:KNNPolicy",
    "random": "router.policy.baselines:RandomPolicy",
    "fixed": "router.policy.baselines:FixedPolicy",
    "cheapest": "router.policy.baselines:CheapestPolicy",
    "best_single": "router.policy.baselines:BestSinglePolicy",
    "linucb": "router.policy.mab:LinUCBPolicy",
    "epsilon_greedy": "router.policy.mab:EpsilonGreedyPolicy",
}


class PolicyRegistry(MutableMapping[str, type[Policy]]):
    """Policy name -> class, importing a registered class's module on first access. Setting a
    name registers a class directly (tests register broken policies this way)."""

    def __init__(self, where: dict[str, str]) -> None:
        self._entries: dict[str, type[Policy] | str] = dict(where)

    def __getitem__(self, name: str) -> type[Policy]:
        entry = self._entries[name]
        if isinstance(entry, str):
            module, _, attribute = entry.partition(":")
            cls = getattr(importlib.import_module(module), attribute)
            if not (isinstance(cls, type) and issubclass(cls, Policy)) or cls.name != name:
                raise ConfigError(f"policy registry: {entry} is not the policy {name!r}")
            self._entries[name] = entry = cls
        return entry

    def __setitem__(self, name: str, cls: type[Policy]) -> None:
        self._entries[name] = cls

    def __delitem__(self, name: str) -> None:
        del self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


POLICIES = PolicyRegistry(_WHERE)


# What a bundle serves unless asked otherwise: it starts at the full-information router and
# learns from bandit feedback (router/policy/quality.py; measured in experiments/results).
DEFAULT_POLICY = "squarecb_quality"


def get_policy_class(name: str) -> type[Policy]:
    try:
        return POLICIES[name]
    except KeyError:
        raise ConfigError(f"unknown policy {name!r}; registered: {sorted(POLICIES)}") from None
