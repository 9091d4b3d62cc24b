"""Hot reload of the serving policy: poll a bundle source, swap the decision engine atomically.

A :class:`PolicyReloader` asks its :class:`BundleSource` for the current version every
``poll_s`` seconds on a background thread (never on the request path). When the version
changed it loads the bundle, builds a :class:`~router.pipeline.DecisionEngine` for it and warms
it up with one decision, all on that thread, then installs it with one reference assignment,
which requests in flight do not notice: each request reads the engine once and decides and logs
with that one (so every decision event carries the version that made it).

If anything fails (the source, the load, the engine build or its warm-up), the old policy keeps
serving, ``polyroute_policy_reload_failures_total{arm, stage}`` counts it and one log line names
the version and the error. A failed version is tried again at the next poll (a registry that
was briefly unreachable heals by itself; a broken bundle keeps counting until the alias moves).

The MLflow source is
``training.model_registry.MlflowBundleSource(tracking_uri, model_name, alias)``;
any object with the two methods of :class:`BundleSource` will do (tests use a dictionary).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from features.errors import ConfigError
from router.bundle import PolicyBundle
from router.eligibility import RequestHints
from router.pipeline import DecisionEngine
from router.prometheus import GatewayMetrics

logger = logging.getLogger(__name__)


class BundleSource(Protocol):
    """Where policy bundles come from (an MLflow registry alias, a directory, a test dict)."""

    def current_version(self) -> str | None:
        """The version the source points at now (None: nothing to serve yet)."""
        ...

    def load(self, version: str) -> PolicyBundle:
        """The bundle of ``version``."""
        ...


@dataclass(frozen=True)
class ReloadResult:
    """What one poll did. ``version`` is the source's version (None if it has none)."""

    version: str | None
    changed: bool
    error: str | None = None


class PolicyReloader:
    """Keeps the engine of one arm (``"champion"`` or ``"challenger"``) on the source's version.

    Parameters
    ----------
    source : BundleSource
    build : callable
        ``bundle -> DecisionEngine`` (the gateway's config and seed are bound in it).
    install : callable
        ``(engine, source_version) -> None``: makes the engine serve (one reference swap).
    serving : callable
        ``() -> DecisionEngine | None``: the engine serving now (its bundle version is compared
        with a newly loaded one, so that a source pointing at the bundle already serving causes
        no swap).
    metrics : GatewayMetrics
    poll_s : float
        Seconds between polls.
    arm : str
        Metric label and log prefix.
    retire : callable, optional
        Called when the source stops naming a version (its alias was deleted): the challenger
        arm stops its canary; the champion arm passes None and keeps serving what it has.
    """

    def __init__(
        self,
        source: BundleSource,
        build: Callable[[PolicyBundle], DecisionEngine],
        install: Callable[[DecisionEngine, str], None],
        serving: Callable[[], DecisionEngine | None],
        metrics: GatewayMetrics,
        poll_s: float = 10.0,
        arm: str = "champion",
        retire: Callable[[], None] | None = None,
    ) -> None:
        if poll_s <= 0:
            raise ConfigError(f"poll_s must be > 0, got {poll_s}")
        self.source = source
        self.build = build
        self.install = install
        self.serving = serving
        self.metrics = metrics
        self.poll_s = poll_s
        self.arm = arm
        self.retire = retire  # called when the source no longer has a version (None: keep)
        self.source_version: str | None = None  # the source version serving now
        self.last_error: str | None = None
        self._lock = threading.Lock()  # one poll at a time (thread and /admin/reload)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check_now(self) -> ReloadResult:
        """Poll once (blocking: call it off the event loop); never raises."""
        with self._lock:
            return self._check()

    def _check(self) -> ReloadResult:
        try:
            version = self.source.current_version()
        except Exception as exc:
            return self._failed("poll", None, exc)
        if version is None and self.source_version is not None and self.retire is not None:
            # the alias is gone (e.g. @challenger deleted after a promotion or rollback)
            self.retire()
            logger.info("%s policy: version %s left the source", self.arm, self.source_version)
            self.source_version = None
            return ReloadResult(None, changed=True)
        if version is None or version == self.source_version:
            return ReloadResult(version, changed=False)
        try:
            bundle = self.source.load(version)
        except Exception as exc:
            return self._failed("load", version, exc)
        current = self.serving()
        if current is not None and current.bundle.version == bundle.version:
            self.source_version = version  # the source points at what already serves
            self.last_error = None
            return ReloadResult(version, changed=False)
        try:
            engine = self.build(bundle)
            # the first decision of a fresh engine pays for lazy set-up: not a caller's request
            engine.decide("warm-up", 1, 4, 16, RequestHints())
        except Exception as exc:
            return self._failed("build", version, exc)
        if self._stop.is_set():
            return ReloadResult(version, changed=False)  # shutting down: install nothing
        try:
            self.install(engine, version)
        except Exception as exc:
            return self._failed("install", version, exc)
        self.source_version = version
        self.last_error = None
        logger.info(
            "%s policy: now serving version %s (bundle %s)", self.arm, version, bundle.version
        )
        return ReloadResult(version, changed=True)

    def _failed(self, stage: str, version: str | None, exc: Exception) -> ReloadResult:
        self.metrics.policy_reload_failures.labels(self.arm, stage).inc()
        self.last_error = f"{type(exc).__name__}: {exc}"
        logger.error(
            "%s policy reload failed at %s of version %s (still serving %s): %s",
            self.arm,
            stage,
            version if version is not None else "(unknown)",
            self.source_version or "the startup bundle",
            self.last_error,
        )
        return ReloadResult(version, changed=False, error=self.last_error)

    # ---- background thread -----------------------------------------------------------------
    def start(self) -> None:
        """Poll now and then every ``poll_s`` seconds on a daemon thread."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name=f"polyroute-reload-{self.arm}", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        self._poll_guarded()
        while not self._stop.wait(self.poll_s):
            self._poll_guarded()

    def _poll_guarded(self) -> None:
        # the polling thread must outlive any bug in a poll: otherwise hot reload stops for good
        try:
            self.check_now()
        except Exception as exc:  # pragma: no cover - _check already catches its stages
            self._failed("poll", None, exc)

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
