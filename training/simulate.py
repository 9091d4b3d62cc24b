"""Bandit replay on a full-information routing dataset (partial feedback).

Prompts stream once in a seeded order. For each, the policy gets the request features and the
available models as actions (with predicted cost/latency), returns a pmf, one model is sampled,
and the policy learns only that model's reward (its true outcome in the dataset). We record the
reward and the regret against the per-prompt oracle under the same reward spec.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from router.policy.actions import ActionCatalogue
from router.policy.base import Action, Policy, RewardSpec
from training.datasets import RoutingDataset


@dataclass(frozen=True)
class ReplayTrace:
    """Per-step record of one replay. Arrays have shape (n_steps,)."""

    reward: np.ndarray
    oracle_reward: np.ndarray
    chosen_probability: np.ndarray

    @property
    def cumulative_regret(self) -> np.ndarray:
        return np.cumsum(self.oracle_reward - self.reward)

    def moving_average_reward(self, window: int = 200) -> np.ndarray:
        kernel = np.ones(min(window, len(self.reward))) / min(window, len(self.reward))
        return np.convolve(self.reward, kernel, mode="valid")


def true_rewards(data: RoutingDataset, spec: RewardSpec) -> np.ndarray:
    """Reward of every (prompt, model), shape (n, M); -inf where the outcome is unknown."""
    reward = spec.reward(data.quality, data.cost, data.latency)
    return np.where(data.available, reward, -np.inf)


def _eligible_actions(
    data: RoutingDataset,
    catalogue: ActionCatalogue,
    expected_cost: np.ndarray,
    expected_latency: np.ndarray,
    i: int,
) -> tuple[np.ndarray, list[Action]]:
    """Columns of the models known on prompt ``i`` and their actions (same order)."""
    eligible = np.flatnonzero(data.available[i])
    names = [catalogue.names[j] for j in eligible]
    return eligible, catalogue.actions_with_costs(expected_cost[i], expected_latency[i], names)


def replay(
    policy: Policy,
    data: RoutingDataset,
    contexts: np.ndarray,
    catalogue: ActionCatalogue,
    expected_cost: np.ndarray,
    expected_latency: np.ndarray,
    seed: int = 0,
    on_step: Callable[[], None] | None = None,
) -> ReplayTrace:
    """One pass of partial-feedback learning over ``data`` (the train split)."""
    rng = np.random.default_rng(seed)
    rewards = true_rewards(data, policy.reward)
    order = rng.permutation(data.n_prompts)
    got, best, prob = (np.empty(len(order)) for _ in range(3))
    for t, i in enumerate(order):
        eligible, actions = _eligible_actions(data, catalogue, expected_cost, expected_latency, i)
        pmf = policy.predict_one(contexts[i], actions)
        k = int(rng.choice(len(actions), p=pmf))
        reward = float(rewards[i, eligible[k]])
        policy.learn_one(contexts[i], actions, k, float(pmf[k]), reward)
        got[t], best[t], prob[t] = reward, rewards[i, eligible].max(), pmf[k]
        if on_step is not None:
            on_step()
    return ReplayTrace(reward=got, oracle_reward=best, chosen_probability=prob)


def expected_point(
    policy: Policy,
    data: RoutingDataset,
    contexts: np.ndarray,
    catalogue: ActionCatalogue,
    expected_cost: np.ndarray,
    expected_latency: np.ndarray,
) -> tuple[float, float]:
    """(mean cost, mean quality) of serving ``data`` with the policy's pmf (no learning)."""
    cost = quality = 0.0
    for i in range(data.n_prompts):
        eligible, actions = _eligible_actions(data, catalogue, expected_cost, expected_latency, i)
        pmf = policy.predict_one(contexts[i], actions)
        cost += float(pmf @ data.cost[i, eligible])
        quality += float(pmf @ data.quality[i, eligible])
    return cost / data.n_prompts, quality / data.n_prompts
