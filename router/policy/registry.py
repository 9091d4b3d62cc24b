"""Registry of policies (name -> class): what config and the CLI choose from."""

from __future__ import annotations

from features.errors import ConfigError
from router.policy.base import Policy
from router.policy.baselines import (
    BestSinglePolicy,
    CheapestPolicy,
    FixedPolicy,
    KNNPolicy,
    RandomPolicy,
)
from router.policy.direct import DirectPolicy
from router.policy.mab import EpsilonGreedyPolicy, LinUCBPolicy
from router.policy.quality import QualitySquareCBPolicy
from router.policy.vw import VWSquareCBPolicy

POLICIES: dict[str, type[Policy]] = {
    cls.name: cls
    for cls in (
        QualitySquareCBPolicy,
        VWSquareCBPolicy,
        DirectPolicy,
        KNNPolicy,
        RandomPolicy,
        FixedPolicy,
        CheapestPolicy,
        BestSinglePolicy,
        LinUCBPolicy,
        EpsilonGreedyPolicy,
    )
}


# What a bundle serves unless asked otherwise: it starts at the full-information router and
# learns from bandit feedback (router/policy/quality.py; measured in experiments/results).
DEFAULT_POLICY = QualitySquareCBPolicy.name


def get_policy_class(name: str) -> type[Policy]:
    try:
        return POLICIES[name]
    except KeyError:
        raise ConfigError(f"unknown policy {name!r}; registered: {sorted(POLICIES)}") from None
