"""The gateway's state, built once per app: the decision engine(s), the canary, the hot
reloaders, the event sink, the metrics, and signed decision ids (feedback may reach any worker).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import OrderedDict
from dataclasses import replace
from typing import Protocol

from fastapi import Request

from features.errors import ConfigError
from router.breaker import STATE_CODE
from router.bundle import PolicyBundle
from router.canary import CanaryController
from router.config import RouterConfig, TenantConfig
from router.eligibility import RequestHints
from router.events.models import DecisionRecord, Emitted, RewardSpecRecord
from router.health import HealthBoard
from router.http.auth import require_admin, tenant_of
from router.pipeline import Decision, DecisionEngine
from router.policy.base import RewardSpec
from router.prometheus import GatewayMetrics
from router.reload import BundleSource, PolicyReloader
from router.traffic import build_store
from router.traffic.admission import Admission
from router.traffic.limits import Reservation, Traffic
from router.upstream import UpstreamClient

RECENT_DECISIONS = 100_000  # decisions kept in memory to validate feedback ids


class EventSink(Protocol):
    """``router.events`` sinks (file, PostgreSQL) satisfy it."""

    def emit(self, event: Emitted) -> None: ...


class Gateway:
    """Request handling state, built once in :func:`create_app`.

    Decision ids are signed (``<uuid hex><first 16 hex of HMAC-SHA256(key, uuid)>``) so that
    any worker sharing ``decision_key`` accepts feedback for a decision another worker served;
    the in-memory ``recent`` map then only counts the feedback this worker saw.
    """

    def __init__(
        self,
        config: RouterConfig,
        bundle: PolicyBundle,
        sink: EventSink,
        seed: int,
        decision_key: bytes | None = None,
    ) -> None:
        self.config = config
        self.decision_key = decision_key or secrets.token_bytes(32)
        self.seed = seed
        self._builds = 0
        self.engine = DecisionEngine(config, bundle, seed)  # swapped whole by hot reload
        self.sink = sink
        self.metrics = GatewayMetrics()
        self.metrics.policy_version.labels("champion", bundle.version).set(1)
        self.reloaders: dict[str, PolicyReloader] = {}
        canary = config.policy.canary if config.policy else None
        self.canary = (
            CanaryController(canary, self.metrics, lambda: self.engine.bundle.reward)
            if canary is not None
            else None
        )
        self.health = HealthBoard(config, seed=seed)  # breakers, live load, balancing
        self.health.on_transition = self._on_transition
        self.tenants = {t.api_key_sha256: t for t in config.tenants}
        self.versions = {m.name: m.version for m in config.models}
        self.recent: OrderedDict[str, float] = OrderedDict()  # decision id -> feedback seen
        self.admission = Admission(config.max_in_flight, config.admission, self.metrics)
        self.traffic = Traffic(config, build_store(config.traffic), self.metrics)
        self.reservations: dict[str, Reservation] = {}  # decision id -> budget reservation
        self.client: UpstreamClient | None = None
        self._specs: dict[RewardSpec, RewardSpecRecord] = {}  # validated once per spec

    def _on_transition(self, model: str, url: str, model_state: str) -> None:
        self.metrics.circuit_state.labels(model).set(STATE_CODE[model_state])
        self.metrics.circuit_transitions.labels(model, model_state).inc()

    def build_engine(self, bundle: PolicyBundle) -> DecisionEngine:
        """A decision engine for ``bundle`` under this gateway's config (a fresh seed each)."""
        self._builds += 1
        return DecisionEngine(self.config, bundle, self.seed + 7919 * self._builds)

    def install(
        self, engine: DecisionEngine, arm: str = "champion", source_version: str | None = None
    ) -> None:
        """Make ``engine`` serve ``arm``: one reference swap; requests in flight keep theirs."""
        old = self.serving(arm)
        if arm == "champion":
            self.engine = engine
            if self.canary is not None:
                self.canary.restart()  # the comparison was against the old champion
                self.canary.set_champion_version(engine.bundle.version)
        elif arm == "challenger" and self.canary is not None:
            self.canary.set_challenger(engine, source_version)
        else:
            raise ConfigError(f"unknown arm {arm!r} (or no canary configured)")
        if old is not None and old.bundle.version != engine.bundle.version:
            self.metrics.policy_version.labels(arm, old.bundle.version).set(0)
        serving = arm == "champion" or (self.canary is not None and self.canary.share > 0)
        self.metrics.policy_version.labels(arm, engine.bundle.version).set(int(serving))
        self.metrics.policy_reloads.labels(arm).inc()

    def serving(self, arm: str = "champion") -> DecisionEngine | None:
        if arm == "champion":
            return self.engine
        return self.canary.engine if self.canary is not None else None

    def add_reloader(self, source: BundleSource, poll_s: float, arm: str = "champion") -> None:
        self.reloaders[arm] = PolicyReloader(
            source,
            self.build_engine,
            lambda engine, version: self.install(engine, arm, version),
            lambda: self.serving(arm),
            self.metrics,
            poll_s,
            arm,
            retire=self.canary.clear if arm == "challenger" and self.canary is not None else None,
        )

    def admin(self, request: Request) -> None:
        """Refuse (:class:`~features.errors.AuthError`) a caller without the admin key."""
        require_admin(request, self.config.admin_api_key_sha256, bool(self.tenants))

    def tenant(self, request: Request) -> TenantConfig | None:
        """The caller's tenant (None without tenants); refuses an unknown key."""
        return tenant_of(request, self.tenants)

    def decision_event(
        self,
        engine: DecisionEngine,
        decision: Decision,
        tenant: TenantConfig | None,
        hints: RequestHints,
        override: str | None,
        text: str,
    ) -> DecisionRecord:
        """The decision's event: its own arrays (copied: the writer thread reads them later),
        no Python object per value; the sink serialises it off the request path."""
        bundle = engine.bundle  # the engine that decided: its version, its features
        pmf = decision.pmf.copy()
        if override:  # the policy did not choose: log the one-hot pmf actually used
            pmf[:] = 0.0
            pmf[decision.chosen_index] = 1.0
        spec = self._specs.get(decision.reward)
        if spec is None:
            spec = self._specs[decision.reward] = RewardSpecRecord(**decision.reward.__dict__)
        return DecisionRecord(
            event_id=decision.decision_id,
            tenant=tenant.name if tenant else "anonymous",
            profile=hints.profile,
            policy_version=engine.version,
            feature_version=bundle.featurizer.version_,
            reward_spec=spec,
            eligible_models=decision.eligible,
            action_features=decision.action_features.copy(),
            probabilities=pmf,
            chosen_index=decision.chosen_index,
            chosen_probability=float(pmf[decision.chosen_index]),
            override_reason=override,
            context_features=decision.context.copy(),
            prompt=text if self.config.events.log_prompts else None,
        )

    def _mac(self, raw_id: str) -> str:
        return hmac.new(self.decision_key, raw_id.encode(), hashlib.sha256).hexdigest()[:16]

    def signed(self, decision: Decision) -> Decision:
        """``decision`` with a decision id any worker with the same key recognises."""
        raw = decision.decision_id
        return replace(decision, decision_id=raw + self._mac(raw))

    def known(self, decision_id: str) -> bool:
        """Whether ``decision_id`` is one of ours (served by this worker or a sibling)."""
        if decision_id in self.recent:
            return True
        if len(decision_id) != 48 or not decision_id.isascii():
            return False
        raw, mac = decision_id[:-16], decision_id[-16:]
        return hmac.compare_digest(mac, self._mac(raw))

    def settle(self, decision_id: str, cost_usd: float) -> None:
        """The outcome of ``decision_id`` cost ``cost_usd``: settle its budget reservation (if
        it has one; 0 releases it)."""
        reservation = self.reservations.pop(decision_id, None)
        if reservation is not None:
            self.traffic.settle(reservation, cost_usd)

    def remember(self, decision_id: str) -> None:
        self.recent[decision_id] = 0
        if len(self.recent) > RECENT_DECISIONS:
            self.recent.popitem(last=False)
