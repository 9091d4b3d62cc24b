"""Canary of a challenger policy, stopped automatically by an always-valid sequential test.

Assignment
----------
While the canary runs, each routed request goes to the challenger with probability ``share``
and to the champion otherwise, by a coin from a seeded generator drawn before the request is
looked at. The chosen arm's engine decides and its decision event carries that engine's
``policy_version`` and its own pmf and probability.

Why off-policy evaluation stays valid: the coin is independent of the context (and of the
potential rewards), so the records of each arm are an ordinary log of that arm's policy with
its exact propensities, and the pooled log is a log from several loggers in which every record
carries the propensity of the policy that drew its action. IPS with each record's own
propensity is then unbiased for any target policy (for each arm, E[w r | arm] is the target's
value; average over the coin). The "balanced" weights with the mixture propensity
``(1 - share) pi_champion + share pi_challenger`` have lower variance (Agarwal, Basu, Schnabel &
Joachims 2017, "Effective Evaluation Using Logged Bandit Feedback from Multiple Loggers",
KDD) but need both pmfs of every request; they can be recomputed offline from the two bundles.

Stopping
--------
The test and its confidence sequences are in :mod:`router.canary.sequence`.

Stop when both arms have ``min_requests`` observations of the quantity and

- reward: ``upper(challenger) < lower(champion) - max_reward_drop``, or
- errors: ``lower(challenger) > upper(champion) + max_error_rate_increase``.

Then the share drops to 0, ``polyroute_canary_stops_total{reason}`` counts it, a log line says
why, and ``GET /admin/canary`` reports it. A new challenger version starts a new canary; the
stopped version stays stopped. With several workers each runs its own canary on its own
traffic (feedback reaching another worker than the decision's is not counted).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from router.canary.sequence import ArmStats
from router.config import CanaryConfig
from router.pipeline import DecisionEngine
from router.policy.base import RewardSpec
from router.prometheus import GatewayMetrics

logger = logging.getLogger(__name__)

Arm = Literal["champion", "challenger"]
ARMS: tuple[Arm, Arm] = ("champion", "challenger")
PENDING_MAX = 100_000  # decisions awaiting their outcome or feedback


@dataclass
class _Pending:
    arm: Arm
    penalty: float | None = None  # cost and latency part of the reward, from the outcome
    quality: float | None = None


class CanaryController:
    """Splits routed traffic between champion and challenger and stops a worse challenger.

    Parameters
    ----------
    config : CanaryConfig
    metrics : GatewayMetrics, optional
    reward_spec : callable, optional
        ``() -> RewardSpec`` of the reward both arms are judged on (the gateway passes the
        champion's; default: quality only).

    Thread-safety: the reloader thread installs challengers while requests report on the event
    loop; one lock guards the state (uncontended: cheap).
    """

    def __init__(
        self,
        config: CanaryConfig,
        metrics: GatewayMetrics | None = None,
        reward_spec: Callable[[], RewardSpec] | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.reward_spec = reward_spec or RewardSpec
        self.engine: DecisionEngine | None = None
        self.challenger_version: str | None = None  # the source's version (e.g. registry)
        self.champion_version: str | None = None  # bundle version of the serving champion
        self.state: Literal["waiting", "running", "stopped"] = "waiting"
        self.reason: str | None = None
        self.share = 0.0
        self.started_at: float | None = None
        self.stopped_at: float | None = None
        self.arms: dict[Arm, ArmStats] = {arm: ArmStats() for arm in ARMS}
        self._rng = np.random.default_rng(config.seed)
        self._pending: OrderedDict[str, _Pending] = OrderedDict()
        self._stopped_bundles: set[str] = set()
        self._lock = threading.Lock()

    # ---- challenger lifecycle -----------------------------------------------------------------
    def set_challenger(self, engine: DecisionEngine, source_version: str | None = None) -> None:
        """Start a canary of ``engine`` (a new challenger resets the statistics); a bundle
        version stopped before stays stopped."""
        with self._lock:
            self.engine = engine
            self.challenger_version = source_version
            self._reset()
            if engine.bundle.version in self._stopped_bundles:
                self.state, self.share = "stopped", 0.0
                self.reason = f"bundle {engine.bundle.version} was stopped before"
            elif engine.bundle.version == self.champion_version:
                self.state, self.share = "waiting", 0.0
                self.reason = f"challenger bundle {engine.bundle.version} is the champion"
            else:
                self.state, self.share, self.reason = "running", self.config.share, None
                self.started_at = time.time()
            self._publish_share()

    def clear(self) -> None:
        """The challenger left the registry (alias deleted): stop serving it, keep nothing."""
        with self._lock:
            if self.engine is not None and self.metrics is not None:
                self.metrics.policy_version.labels("challenger", self.engine.bundle.version).set(0)
            self.engine, self.challenger_version = None, None
            self._reset()
            self.state, self.share, self.reason = "waiting", 0.0, "no challenger in the registry"
            self._publish_share()

    def set_champion_version(self, bundle_version: str) -> None:
        """The champion changed: a challenger that *is* the champion now (it was promoted, or
        the champion was rolled back onto it) has nothing to be compared with."""
        with self._lock:
            self.champion_version = bundle_version
            if self.engine is not None and self.engine.bundle.version == bundle_version:
                self.state, self.share = "waiting", 0.0
                self.reason = f"challenger bundle {bundle_version} is the champion now"
                self._publish_share()

    def restart(self) -> None:
        """New statistics for the same challenger (the champion changed under it)."""
        with self._lock:
            self._reset()

    def _reset(self) -> None:
        self.arms = {arm: ArmStats() for arm in ARMS}
        self._pending.clear()
        if self.state != "stopped":
            self.stopped_at = None

    def _publish_share(self) -> None:
        if self.metrics is not None:
            self.metrics.canary_share.set(self.share)

    # ---- the request path ---------------------------------------------------------------------
    def choose(self) -> Arm:
        """The arm of the next routed request: a seeded coin, independent of the request."""
        if self.state != "running" or self.engine is None or self.share <= 0:
            return "champion"
        return "challenger" if self._rng.random() < self.share else "champion"

    def on_decision(self, decision_id: str, arm: Arm) -> None:
        """A routed decision made while the canary runs, by ``arm``'s engine."""
        with self._lock:
            if self.state != "running":
                return
            self.arms[arm].requests += 1
            self._pending[decision_id] = _Pending(arm)
            if len(self._pending) > PENDING_MAX:
                self._pending.popitem(last=False)
        if self.metrics is not None:
            self.metrics.canary_requests.labels(arm).inc()

    def on_outcome(
        self, decision_id: str, error: str | None, cost_usd: float, latency_ms: float
    ) -> None:
        with self._lock:
            pending = self._pending.get(decision_id)
            if pending is None or pending.penalty is not None:
                return
            stats = self.arms[pending.arm]
            stats.outcomes += 1
            stats.errors += error is not None and error != "client_disconnected"
            spec = self.reward_spec()
            pending.penalty = -float(spec.reward(0.0, cost_usd, latency_ms))
            self._observe(decision_id, pending)

    def on_feedback(self, decision_id: str, quality: float) -> None:
        with self._lock:
            pending = self._pending.get(decision_id)
            if pending is None:
                return
            pending.quality = quality  # the latest feedback wins (as at the join)
            self._observe(decision_id, pending)

    def _observe(self, decision_id: str, pending: _Pending) -> None:
        if pending.penalty is not None and pending.quality is not None:
            self.arms[pending.arm].reward.add(pending.quality - pending.penalty)
            del self._pending[decision_id]  # one reward per decision: later feedback is ignored
        self._test()

    # ---- the sequential test ------------------------------------------------------------------
    def _test(self) -> None:
        if self.state != "running":
            return
        cfg = self.config
        a, n_star = cfg.alpha / 4, float(cfg.min_requests)
        champion, challenger = self.arms["champion"], self.arms["challenger"]
        if min(champion.reward.n, challenger.reward.n) >= cfg.min_requests:
            lo_h, _ = champion.reward_interval(a, n_star)
            lo_c, hi_c = challenger.reward_interval(a, n_star)
            if hi_c < lo_h - cfg.max_reward_drop:
                self._stop(
                    "reward",
                    f"challenger mean reward {challenger.reward.mean:.4f} (upper bound "
                    f"{hi_c:.4f}, n={challenger.reward.n}) is below the champion's "
                    f"{champion.reward.mean:.4f} (lower bound {lo_h:.4f}, n={champion.reward.n})"
                    f" by more than {cfg.max_reward_drop} (alpha {cfg.alpha})",
                )
                return
        if min(champion.outcomes, challenger.outcomes) >= cfg.min_requests:
            _, hi_h = champion.error_interval(a, n_star)
            lo_c, _ = challenger.error_interval(a, n_star)
            if lo_c > hi_h + cfg.max_error_rate_increase:
                self._stop(
                    "error_rate",
                    f"challenger error rate {challenger.errors}/{challenger.outcomes} (lower "
                    f"bound {lo_c:.4f}) is above the champion's "
                    f"{champion.errors}/{champion.outcomes} (upper bound {hi_h:.4f}) by more "
                    f"than {cfg.max_error_rate_increase} (alpha {cfg.alpha})",
                )

    def _stop(self, reason: str, detail: str) -> None:
        self.state, self.share, self.reason = "stopped", 0.0, f"{reason}: {detail}"
        self.stopped_at = time.time()
        if self.engine is not None:
            self._stopped_bundles.add(self.engine.bundle.version)
        self._publish_share()
        if self.metrics is not None:
            self.metrics.canary_stops.labels(reason).inc()
            if self.engine is not None:
                self.metrics.policy_version.labels("challenger", self.engine.bundle.version).set(0)
        logger.warning(
            "canary of challenger %s (bundle %s) stopped: %s",
            self.challenger_version,
            self.engine.bundle.version if self.engine else None,
            self.reason,
        )

    # ---- reporting ----------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """What ``GET /admin/canary`` shows."""
        with self._lock:
            a, n_star = self.config.alpha / 4, float(self.config.min_requests)
            arms = {}
            for arm, stats in self.arms.items():
                reward_lo, reward_hi = stats.reward_interval(a, n_star)
                error_lo, error_hi = stats.error_interval(a, n_star)
                arms[arm] = {
                    "requests": stats.requests,
                    "outcomes": stats.outcomes,
                    "errors": stats.errors,
                    "error_rate": stats.errors / stats.outcomes if stats.outcomes else None,
                    "error_rate_interval": [error_lo, error_hi] if stats.outcomes else None,
                    "rewards": stats.reward.n,
                    "mean_reward": stats.reward.mean if stats.reward.n else None,
                    "reward_interval": (
                        [reward_lo, reward_hi] if math.isfinite(reward_hi - reward_lo) else None
                    ),
                }
            return {
                "state": self.state,
                "share": self.share,
                "configured_share": self.config.share,
                "challenger_source_version": self.challenger_version,
                "challenger_policy_version": self.engine.bundle.version if self.engine else None,
                "reason": self.reason,
                "started_at": self.started_at,
                "stopped_at": self.stopped_at,
                "min_requests": self.config.min_requests,
                "alpha": self.config.alpha,
                "arms": arms,
            }
