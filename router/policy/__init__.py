"""Routing policies: the contract (base), the VW contextual bandit, the direct router, baselines."""

from router.policy.actions import ActionCatalogue
from router.policy.base import Action, Policy, RewardSpec
from router.policy.registry import POLICIES, get_policy_class

__all__ = ["POLICIES", "Action", "ActionCatalogue", "Policy", "RewardSpec", "get_policy_class"]
