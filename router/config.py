"""The router configuration: one YAML file, validated at startup with errors that name the key.

The YAML is only input: it becomes a :class:`RouterConfig` (pydantic). Secrets never live in the
file: a provider names the environment variable holding its API key (``api_key_env``), read by
:meth:`ProviderConfig.api_key` when the service starts, never at import.

See ``experiments/configs/router.example.yaml`` for a documented example.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from features.errors import ConfigError

PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]


class _Strict(BaseModel):
    # unknown keys are errors: a typo in an operator's config must not be silently ignored
    model_config = ConfigDict(extra="forbid", frozen=True)


class InstanceConfig(_Strict):
    """One serving instance of a model (load is balanced across instances by weight)."""

    base_url: str
    weight: PositiveFloat = 1.0

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"must start with http:// or https://, got {value!r}")
        return value.rstrip("/")


class ProviderConfig(_Strict):
    """An OpenAI-compatible endpoint; the API key comes from the environment."""

    base_url: str
    api_key_env: str | None = None
    upstream_model: str | None = None  # the provider's name for the model, if it differs

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        return InstanceConfig._url(value)

    def api_key(self) -> str | None:
        """The API key from the environment (None when the provider needs none)."""
        if self.api_key_env is None:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise ConfigError(f"environment variable {self.api_key_env} (api_key_env) is not set")
        return key


class ModelConfig(_Strict):
    name: str = Field(min_length=1)
    provider: ProviderConfig
    instances: list[InstanceConfig] = Field(default_factory=list)
    usd_per_mtok_in: NonNegativeFloat
    usd_per_mtok_out: NonNegativeFloat
    # the decision's latency prediction, ttft_ms + output tokens / tokens_per_s; unset: the
    # policy bundle's figures for the model (from its training data's models.csv)
    ttft_ms: NonNegativeFloat | None = None
    tokens_per_s: PositiveFloat | None = None
    context_tokens: Annotated[int, Field(gt=0)] = 8192
    tags: frozenset[str] = frozenset()
    version: str = "1"  # sent back in x-polyroute-model-version and listed by /v1/models

    def endpoints(self) -> list[InstanceConfig]:
        """The instances, or the provider's URL as the single instance."""
        return self.instances or [InstanceConfig(base_url=self.provider.base_url)]


class ProfileConfig(_Strict):
    """A routing profile: reward weights and the models it may use (all when empty).

    ``w_cost`` / ``w_latency`` apply at decision time (policies that score quality, cost and
    latency separately: ``squarecb_quality``, ``direct``); unset, the serving bundle's own reward
    spec applies. A policy that bakes its weights in (VW) refuses a profile that sets others.
    """

    w_cost: NonNegativeFloat | None = None
    w_latency: NonNegativeFloat | None = None
    models: list[str] = Field(default_factory=list)


class TenantConfig(_Strict):
    """A caller, by API key, and its limits (``router.traffic``; None: no limit)."""

    name: str = Field(min_length=1)
    api_key_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    # spend per UTC day; each request reserves its maximum cost until its outcome settles it
    budget_usd_per_day: NonNegativeFloat | None = None
    requests_per_minute: Annotated[int, Field(gt=0)] | None = None
    # estimated input tokens + max output tokens of each request, counted at admission
    tokens_per_minute: Annotated[int, Field(gt=0)] | None = None
    # 0 (shed first) to 9 (shed last) when a worker is saturated; requests may only lower it
    priority: Annotated[int, Field(ge=0, le=9)] = 5
    data_classes: frozenset[str] = frozenset()
    default_profile: str = "default"


class DataClassConfig(_Strict):
    """Requests of this data class may only go to models carrying every required tag."""

    required_tags: frozenset[str] = frozenset()


class TrafficConfig(_Strict):
    """Where rate limits and budgets are kept: ``memory`` (one process; each worker and replica
    counts on its own) or ``redis`` (shared by every worker and replica)."""

    store: Literal["memory", "redis"] = "memory"
    redis_url_env: str = Field(default="POLYROUTE_REDIS_URL", min_length=1)
    key_prefix: str = Field(default="polyroute", min_length=1)
    # a Redis call slower than this fails (rate limits then admit, budgets refuse)
    timeout_ms: PositiveFloat = 250.0

    def redis_url(self) -> str:
        """The Redis URL from the environment variable ``redis_url_env``."""
        url = os.environ.get(self.redis_url_env)
        if not url:
            raise ConfigError(
                f"traffic.redis_url_env: environment variable {self.redis_url_env} is not set "
                "(traffic.store is redis)"
            )
        return url


class AdmissionConfig(_Strict):
    """How many routed requests a worker holds at once, and which it sheds first
    (``router.traffic.admission``).

    ``limiter``: ``gradient2`` (default) moves the limit with the latency the gateway itself adds
    (Netflix concurrency-limits' Gradient2), between ``min_limit`` and ``max_in_flight``,
    starting at ``initial_limit``, recomputed every ``window_ms``; the limit shrinks when that
    latency exceeds ``latency_tolerance`` times its long-term average, by at most
    ``smoothing / 2`` of itself a window; a request that would wait behind one already
    waiting ``queue_wait_ms / 2``, or that nothing could admit or queue, is refused at once.
    ``fixed``: the limit is ``max_in_flight`` and admission is as before the adaptive limit.

    Priority p is admitted while fewer than ``limit * share(p)`` requests are in flight,
    ``share(p) = lowest_priority_share + (1 - lowest_priority_share) * p / 9`` (priority 9 may
    use every slot); requests of priority ``queue_min_priority`` or more wait up to
    ``queue_wait_ms`` for a slot, highest first, then are refused (503 + Retry-After)."""

    limiter: Literal["gradient2", "fixed"] = "gradient2"
    initial_limit: Annotated[int, Field(ge=1)] = 20  # clamped to [min_limit, max_in_flight]
    min_limit: Annotated[int, Field(ge=1)] = 8  # clamped to max_in_flight
    smoothing: Annotated[float, Field(gt=0, le=1)] = 0.2
    latency_tolerance: Annotated[float, Field(ge=1)] = 1.5
    window_ms: PositiveFloat = 100.0
    lowest_priority_share: Annotated[float, Field(gt=0, le=1)] = 0.5
    queue_wait_ms: NonNegativeFloat = 20.0
    queue_min_priority: Annotated[int, Field(ge=0, le=9)] = 5


class TimeoutConfig(_Strict):
    """Per attempt: ``connect_s`` and ``read_s`` (between bytes); per request: ``total_s``, the
    deadline of all attempts together (retries and fallbacks included)."""

    connect_s: PositiveFloat = 2.0
    read_s: PositiveFloat = 60.0
    total_s: PositiveFloat = 120.0


class BreakerConfig(_Strict):
    """A circuit breaker (per model and per instance, ``router.health``)."""

    window_s: PositiveFloat = 10.0  # the error rate is counted over this sliding window
    min_requests: Annotated[int, Field(ge=1)] = 5  # calls in the window before the rate counts
    failure_rate: Annotated[float, Field(gt=0, le=1)] = 0.5
    consecutive_failures: Annotated[int, Field(ge=1)] = 5
    open_s: PositiveFloat = 5.0  # first open period; doubles on each failed probe
    max_open_s: PositiveFloat = 60.0
    half_open_probes: Annotated[int, Field(ge=1)] = 1  # calls at once while half-open


class ResilienceConfig(_Strict):
    """Retries, fallbacks, breakers, balancing and live latency (``router.health``)."""

    # calls per request over instances and models (1: no retry, no fallback)
    max_attempts: Annotated[int, Field(ge=1, le=10)] = 3
    retry_budget_ratio: Annotated[float, Field(ge=0, le=1)] = 0.2  # retries per request, at most
    retry_budget_min_per_s: NonNegativeFloat = 5.0  # retries always allowed per second
    balancing: Literal["p2c", "round_robin"] = "p2c"
    breaker: BreakerConfig = BreakerConfig()
    # a model whose observed/expected latency exceeds this multiple of its peers' is ejected
    # like a failing one (None: never; the latency term still moves traffic away)
    slow_ratio: Annotated[float, Field(gt=1)] | None = 5.0
    slow_min_calls: Annotated[int, Field(ge=1)] = 10  # calls before a model's latency counts
    ewma_alpha: Annotated[float, Field(gt=0, le=1)] = 0.2
    # with traffic.store redis: how often breaker states are exchanged with the other workers
    # and replicas (router.traffic.shared_health)
    share_interval_s: PositiveFloat = 0.5


class EventsConfig(_Strict):
    sink: Literal["file", "postgres"] = "file"
    directory: str = ".polyroute/events"
    postgres_dsn_env: str | None = None
    log_prompts: bool = False  # raw prompt text in decision events only when allowed
    # file sink: compress each finished (rotated) file to .jsonl.zst (router.events.file_sink)
    compress: Literal["none", "zstd"] = "none"
    zstd_level: Annotated[int, Field(ge=1, le=22)] = 3

    @model_validator(mode="after")
    def _compress_needs_files(self) -> EventsConfig:
        if self.sink != "file" and self.compress != "none":
            raise ValueError(
                f"events.compress: {self.compress!r} applies to the file sink only "
                f"(events.sink is {self.sink!r})"
            )
        return self


class RegistryConfig(_Strict):
    """Where the serving policy comes from: ``models:/<model_name>@<alias>`` in MLflow."""

    tracking_uri: str | None = None  # None: MLFLOW_TRACKING_URI or the embedded SQLite store
    model_name: str = Field(default="polyroute-policy", min_length=1)
    alias: str = Field(default="champion", min_length=1)


class CanaryConfig(_Strict):
    """Serve the policy under ``alias`` (the challenger) to ``share`` of the routed requests
    and stop it when a sequential test finds it worse than the champion (``router.canary``)."""

    alias: str = Field(default="challenger", min_length=1)
    share: Annotated[float, Field(ge=0, le=0.5)] = 0.1
    seed: int = 0
    min_requests: Annotated[int, Field(ge=1)] = 200  # per arm, before the test may stop it
    alpha: Annotated[float, Field(gt=0, lt=0.5)] = 0.05  # the test's error level, any stop time
    max_reward_drop: NonNegativeFloat = 0.0  # tolerated mean reward loss per request
    max_error_rate_increase: NonNegativeFloat = 0.0  # tolerated error rate increase


class PolicyConfig(_Strict):
    """Hot reload (``router.reload``) and canary (``router.canary``) of the serving policy."""

    registry: RegistryConfig = RegistryConfig()
    poll_s: PositiveFloat = 10.0
    canary: CanaryConfig | None = None

    @model_validator(mode="after")
    def _distinct_aliases(self) -> PolicyConfig:
        if self.canary is not None and self.canary.alias == self.registry.alias:
            raise ValueError(
                f"canary.alias: {self.canary.alias!r} is also registry.alias; a canary needs "
                "another alias (e.g. challenger)"
            )
        return self


class RouterConfig(_Strict):
    models: list[ModelConfig] = Field(min_length=1)
    profiles: dict[str, ProfileConfig] = Field(default_factory=lambda: {"default": ProfileConfig()})
    tenants: list[TenantConfig] = Field(default_factory=list)
    data_classes: dict[str, DataClassConfig] = Field(default_factory=dict)
    fallback: list[str] = Field(default_factory=list)
    timeouts: TimeoutConfig = TimeoutConfig()
    resilience: ResilienceConfig = ResilienceConfig()
    events: EventsConfig = EventsConfig()
    policy_bundle: str | None = None
    policy: PolicyConfig | None = None  # None: serve the given bundle, no reloading
    admin_api_key_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    # routed requests a worker holds at once at most (admission.limiter gradient2: the ceiling of
    # the adaptive limit; fixed: the limit); more are refused with 503 + Retry-After instead of
    # queueing until every request times out (overhead.md: past ~600 req/s per path a worker
    # without this cap collapsed into 10-s timeouts)
    max_in_flight: Annotated[int, Field(ge=1)] = 256
    admission: AdmissionConfig = AdmissionConfig()
    traffic: TrafficConfig = TrafficConfig()

    @model_validator(mode="after")
    def _references(self) -> RouterConfig:
        names = [m.name for m in self.models]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"models: duplicate model name(s) {duplicates}")
        known = set(names)
        for profile, cfg in self.profiles.items():
            unknown = sorted(set(cfg.models) - known)
            if unknown:
                raise ValueError(f"profiles.{profile}.models: unknown model(s) {unknown}")
        unknown = sorted(set(self.fallback) - known)
        if unknown:
            raise ValueError(f"fallback: unknown model(s) {unknown}")
        for i, tenant in enumerate(self.tenants):
            if tenant.default_profile not in self.profiles:
                raise ValueError(
                    f"tenants.{i}.default_profile: unknown profile {tenant.default_profile!r}"
                )
            missing = sorted(tenant.data_classes - set(self.data_classes))
            if missing:
                raise ValueError(f"tenants.{i}.data_classes: undeclared data class(es) {missing}")
        if "default" not in self.profiles:
            raise ValueError("profiles: a 'default' profile is required")
        return self

    def model(self, name: str) -> ModelConfig:
        for m in self.models:
            if m.name == name:
                return m
        raise ConfigError(f"unknown model {name!r}")


def load_config(path: str | Path) -> RouterConfig:
    """Read and validate a YAML router config.

    Raises
    ------
    ConfigError
        Naming the file and the offending key (``models.0.usd_per_mtok_in: ...``).
    """
    file = Path(path)
    try:
        raw = yaml.safe_load(file.read_text())
    except OSError as exc:
        raise ConfigError(f"{file}: cannot be read ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: not valid YAML ({exc})") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{file}: expected a mapping at the top level")
    try:
        return RouterConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"{file}: {problems}") from exc
