"""The OpenAI-compatible gateway: ``create_app`` builds everything; no import-time side effects.
``app_from_env`` builds it from the environment the command line sets (uvicorn workers). The
parts live in :mod:`router.http` (request parsing, auth, state, dispatch, routes, error table).

Routes: ``POST /v1/chat/completions`` (``model: "auto"`` or a profile routes, a configured model
name passes through), ``GET /v1/models``, ``POST /v1/feedback``, ``GET /healthz``, ``GET /readyz``,
``GET /metrics``. Every routed request produces a decision event before its response and an
outcome event after; feedback joins on the decision id.

Streamed answers: the upstream is always asked for ``stream_options.include_usage`` (merged into
the caller's options); its final usage-only chunk gives the outcome's tokens and cost and is
relayed only when the caller asked for it. An upstream that sends no usage gets an estimate
(prompt ~ 4 characters per token, completion: the relayed text the same way); the outcome event
has no field to flag it (``router.events.models.OutcomeEvent`` forbids extra keys), so estimated
outcomes are counted per model in ``polyroute_usage_estimated_total``. When the caller goes
away mid-stream the upstream response is closed (shielded from the cancellation) and the outcome
is still logged, with ``error_class="client_disconnected"``.
"""

from __future__ import annotations

import gc
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import anyio
from fastapi import FastAPI

from features.errors import ConfigError, PolyrouteError
from router.bundle import PolicyBundle
from router.config import RouterConfig, load_config
from router.eligibility import RequestHints
from router.events.file_sink import FileEventSink
from router.events.writer import BackgroundEventWriter
from router.http.gateway import EventSink, Gateway
from router.http.routes import add_routes
from router.reload import BundleSource
from router.traffic.shared_health import SharedBreakers
from router.upstream import UpstreamClient

__all__ = ["FROM_CONFIG", "EventSink", "Gateway", "app_from_env", "create_app"]


class _FromConfig:
    """Default of :func:`create_app`'s sources: the registry named by the config."""


FROM_CONFIG = _FromConfig()


def create_app(
    config: RouterConfig,
    bundle: PolicyBundle,
    sink: EventSink,
    seed: int = 0,
    transport: Any = None,
    decision_key: bytes | None = None,
    owns_sink: bool = False,
    source: BundleSource | _FromConfig | None = FROM_CONFIG,
    challenger_source: BundleSource | _FromConfig | None = FROM_CONFIG,
    freeze_gc: bool = False,
    source_version: str | None = None,
) -> FastAPI:
    """Build the gateway.

    Parameters
    ----------
    transport : httpx transport, optional
        For tests (default: the network).
    decision_key : bytes, optional
        HMAC key of the decision ids; workers serving the same traffic share it (default: a
        random key of this app).
    owns_sink : bool
        Close (drain) ``sink`` when the app shuts down: the app's builder made it for this app.
    source : BundleSource or None
        Hot reload: the champion policy follows this source (``router.reload``), polled every
        ``config.policy.poll_s`` seconds; ``bundle`` serves until the first successful load.
        Default: the MLflow registry alias of ``config.policy`` (no reloading without that
        section); None: no reloading.
    challenger_source : BundleSource or None
        The canary's challenger (``router.canary``; needs ``config.policy.canary``). Default:
        the registry alias of ``config.policy.canary``.
    source_version : str, optional
        The ``source`` version ``bundle`` was loaded from, when it was (the reloader's first
        poll then does not download and load the same version again).
    freeze_gc : bool
        At startup, after the warm-up decision, move every object alive (imports, config,
        policy, featurizer: a large number of objects) out of the garbage collector's reach
        (``gc.freeze``): a full collection over them is a stall every request in flight would
        wait for (it was the p99 of the overhead benchmark, experiments/results/overhead.md).
        Process-wide, so only for a process that serves this one app (``app_from_env`` sets
        it).
    """
    if isinstance(source, _FromConfig):
        source = registry_source(config)
    if isinstance(challenger_source, _FromConfig):
        challenger_source = registry_source(config, challenger=True)
    gateway = Gateway(config, bundle, sink, seed, decision_key)
    poll_s = config.policy.poll_s if config.policy else 10.0
    if source is not None:
        gateway.add_reloader(source, poll_s, "champion")
        gateway.reloaders["champion"].source_version = source_version
    if challenger_source is not None:
        if gateway.canary is None:
            raise ConfigError("policy.canary: a challenger source needs a canary config section")
        gateway.add_reloader(challenger_source, poll_s, "challenger")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        gateway.client = UpstreamClient(config.timeouts, transport)
        await gateway.traffic.start()
        shared = None
        if config.traffic.store == "redis":  # breakers shared by workers and replicas
            shared = SharedBreakers(
                gateway.health,
                gateway.traffic.store,
                config.traffic.key_prefix,
                config.resilience.share_interval_s,
                gateway.metrics,
            )
            shared.start()
        with suppress(PolyrouteError):  # lazy set-up of the first decision: not on a caller
            gateway.engine.decide("warm-up", 1, 4, 16, RequestHints())
        if freeze_gc:
            gc.collect()
            gc.freeze()
        for reloader in gateway.reloaders.values():
            reloader.start()
        try:
            yield
        finally:
            for reloader in gateway.reloaders.values():
                await anyio.to_thread.run_sync(reloader.stop)
            await gateway.client.aclose()
            if shared is not None:
                await shared.stop()
            await gateway.traffic.aclose()
            close = getattr(sink, "close", None)
            if owns_sink and close is not None:
                close()  # drain: nothing accepted is lost on shutdown

    app = FastAPI(title="polyroute", lifespan=lifespan)
    app.state.gateway = gateway
    add_routes(app, gateway)
    return app


# ---- building the app from the environment (uvicorn workers) ------------------------------------
ENV_CONFIG = "POLYROUTE_CONFIG"
ENV_BUNDLE = "POLYROUTE_BUNDLE"
ENV_EVENTS_DIR = "POLYROUTE_EVENTS_DIR"
ENV_SEED = "POLYROUTE_SEED"
ENV_DECISION_KEY = "POLYROUTE_DECISION_KEY"
ENV_WORKERS = "POLYROUTE_WORKERS"


def build_sink(config: RouterConfig) -> BackgroundEventWriter:
    """The event sink the config names (file by default, or PostgreSQL)."""
    if config.events.sink == "postgres":
        from router.events.postgres_sink import PostgresEventSink

        env = config.events.postgres_dsn_env
        dsn = os.environ.get(env or "")
        if not dsn:
            raise ConfigError(f"events.postgres_dsn_env: environment variable {env!r} is not set")
        return PostgresEventSink(dsn, put_timeout_s=0.0)
    # put_timeout 0: emit runs on the event loop, so a full queue refuses (503) at once instead
    # of stalling every request in flight. Several workers may share the directory: a file sink
    # only ever writes files it created itself (opened "xb"), so no two processes interleave
    # lines in one file, and readers order events by timestamp at the join.
    return FileEventSink(
        config.events.directory,
        put_timeout_s=0.0,
        compress=config.events.compress,
        zstd_level=config.events.zstd_level,
    )


def registry_source(config: RouterConfig, challenger: bool = False) -> BundleSource | None:
    """The MLflow registry source of the config's ``policy`` section (None without one): the
    champion's alias, or with ``challenger`` the canary's (None without a canary)."""
    if config.policy is None or (challenger and config.policy.canary is None):
        return None
    from router.registry_source import MlflowBundleSource  # imports mlflow when used

    registry = config.policy.registry
    alias = config.policy.canary.alias if challenger and config.policy.canary else registry.alias
    source: BundleSource = MlflowBundleSource(registry.tracking_uri, registry.model_name, alias)
    return source


def initial_bundle(source: BundleSource) -> tuple[str, PolicyBundle]:
    """The version ``source`` points at now and its bundle, for a service started without a
    bundle directory."""
    version = source.current_version()
    if version is None:
        raise ConfigError(f"policy.registry: {source!r} has no version to serve yet")
    return version, source.load(version)


def app_from_env() -> FastAPI:
    """App factory for ``uvicorn --factory`` (``polyroute serve --workers N``): each worker
    builds its own app, event sink and upstream pool from what the CLI put in the environment.

    ``POLYROUTE_CONFIG`` (router YAML) is required; ``POLYROUTE_BUNDLE`` (bundle directory) is
    the startup policy, required unless the config has a ``policy`` section (then the registry
    alias's current version serves from the start, and hot reload follows the alias);
    ``POLYROUTE_EVENTS_DIR`` overrides ``events.directory``; ``POLYROUTE_SEED``
    (default 0) seeds sampling, offset by the process id when ``POLYROUTE_WORKERS`` > 1 so
    that workers do not draw the same numbers; ``POLYROUTE_DECISION_KEY`` (hex) is the shared
    key of the decision ids (feedback may reach any worker).
    """
    if not os.environ.get(ENV_CONFIG):
        raise ConfigError(f"environment variable {ENV_CONFIG} must be set (polyroute serve does)")
    config = load_config(os.environ[ENV_CONFIG])
    events_dir = os.environ.get(ENV_EVENTS_DIR)
    if events_dir:
        events = config.events.model_copy(update={"directory": events_dir})
        config = config.model_copy(update={"events": events})
    source = registry_source(config)
    version = None
    if os.environ.get(ENV_BUNDLE):
        bundle = PolicyBundle.load(os.environ[ENV_BUNDLE])
    elif source is not None:
        version, bundle = initial_bundle(source)
    else:
        raise ConfigError(
            f"no policy: set {ENV_BUNDLE} (polyroute serve --bundle) or a 'policy' config section"
        )
    seed = int(os.environ.get(ENV_SEED) or 0)
    if int(os.environ.get(ENV_WORKERS) or 1) > 1:
        seed += os.getpid()
    key = os.environ.get(ENV_DECISION_KEY)
    sink = build_sink(config)
    try:
        return create_app(
            config,
            bundle,
            sink,
            seed=seed,
            decision_key=bytes.fromhex(key) if key else None,
            owns_sink=True,
            source=source,
            freeze_gc=True,
            source_version=version,
        )
    except BaseException:
        sink.close()
        raise
