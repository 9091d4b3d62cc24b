"""Policy bundles in the MLflow model registry: log, alias, load, promote history, roll back.

A bundle is logged as an MLflow **pyfunc** model (``training/pyfunc_model.py``, logged as code,
not pickled) whose only artifact is the bundle directory
(:class:`router.bundle.PolicyBundle`), registered under one model name (default
``polyroute-policy``). Which version serves is said by registry aliases:

- ``@champion``: the version the service loads (and hot-reloads when the alias moves);
- ``@challenger``: the last candidate that did not pass the promotion gate, or the one being
  canaried.

Every alias move is recorded twice: as a model-version tag (``promotion.*``) and in the
registered model's ``champion_history`` tag (a JSON list of versions, oldest first), which is
what :func:`rollback` walks back. The evidence (the evaluation report, the gate's numbers) is
in the MLflow run that made the move (see ``training.promote``).

Reading the registry (the version an alias points at, a version's bundle, the gateway's
:class:`MlflowBundleSource`) is serving code, in ``router.registry_source``; it is re-exported
here.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from features.errors import PolicyError
from router.bundle import PolicyBundle
from router.registry_source import (
    CHALLENGER,
    CHAMPION,
    MODEL_NAME,
    MlflowBundleSource,
    alias_version,
    load_bundle,
    quiet_mlflow,
)
from router.registry_source import is_missing as _missing
from router.registry_source import mlflow_client as _client
from training.tracking import use_experiment

logger = logging.getLogger(__name__)

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "MODEL_NAME",
    "MlflowBundleSource",
    "alias_version",
    "champion_history",
    "delete_alias",
    "load_bundle",
    "log_bundle",
    "quiet_mlflow",
    "register_champion",
    "rollback",
    "set_alias",
    "start_training_run",
]

TRAINING_EXPERIMENT = "polyroute-training"
_HISTORY_TAG = "champion_history"


def _requirements() -> list[str]:
    # explicit pins: MLflow's requirement inference would load the model in a subprocess
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for package in ("vowpalwabbit", "scikit-learn", "numpy", "pandas", "scipy", "mlflow"):
        try:
            pins.append(f"{package}=={version(package)}")
        except PackageNotFoundError:  # pragma: no cover
            continue
    return pins


def log_bundle(
    bundle: PolicyBundle,
    model_name: str = MODEL_NAME,
    tags: dict[str, str] | None = None,
) -> str:
    """Log ``bundle`` as a pyfunc model in the active MLflow run and register it.

    Returns the registered model version (a string, as MLflow keys versions).
    """
    import mlflow

    if mlflow.active_run() is None:
        raise PolicyError("log_bundle: needs an active MLflow run (mlflow.start_run())")
    quiet_mlflow()
    with tempfile.TemporaryDirectory() as tmp:
        path = bundle.save(Path(tmp) / "bundle")
        info = mlflow.pyfunc.log_model(
            name="policy",
            python_model=str(Path(__file__).with_name("pyfunc_model.py")),  # models from code
            artifacts={"bundle": str(path)},
            pip_requirements=_requirements(),
            registered_model_name=model_name,
            await_registration_for=60,
        )
    version = str(info.registered_model_version)
    client = _client(mlflow.get_tracking_uri())
    all_tags = {"bundle_version": bundle.version, "feature_version": bundle.featurizer.version_}
    all_tags.update(tags or {})
    for key, value in all_tags.items():
        client.set_model_version_tag(model_name, version, key, str(value))
    logger.info("registered %s version %s (%s)", model_name, version, bundle.version)
    return version


def delete_alias(alias: str, model_name: str = MODEL_NAME, tracking_uri: str | None = None) -> bool:
    """Remove ``alias`` if it exists; returns whether it did."""
    from mlflow.exceptions import MlflowException

    try:
        _client(tracking_uri).delete_registered_model_alias(model_name, alias)
    except MlflowException as exc:
        if _missing(exc):
            return False
        raise
    logger.info("%s@%s removed", model_name, alias)
    return True


def champion_history(model_name: str = MODEL_NAME, tracking_uri: str | None = None) -> list[str]:
    """Versions that have been ``@champion``, oldest first (the current one last)."""
    from mlflow.exceptions import MlflowException

    try:
        model = _client(tracking_uri).get_registered_model(model_name)
    except MlflowException as exc:
        if _missing(exc):
            return []
        raise
    return list(json.loads(model.tags.get(_HISTORY_TAG, "[]")))


def set_alias(
    alias: str,
    version: str,
    reason: str,
    model_name: str = MODEL_NAME,
    tracking_uri: str | None = None,
) -> None:
    """Point ``alias`` at ``version``, recording why on the version; champion moves extend the
    champion history."""
    client = _client(tracking_uri)
    client.get_model_version(model_name, version)  # raises naming the version if absent
    client.set_registered_model_alias(model_name, alias, version)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    client.set_model_version_tag(model_name, version, f"{alias}.reason", reason[:4000])
    client.set_model_version_tag(model_name, version, f"{alias}.since", stamp)
    if alias == CHAMPION:
        history = champion_history(model_name, tracking_uri)
        if not history or history[-1] != version:
            history.append(version)
        client.set_registered_model_tag(model_name, _HISTORY_TAG, json.dumps(history))
    logger.info("%s@%s -> version %s: %s", model_name, alias, version, reason)


def rollback(
    model_name: str = MODEL_NAME, tracking_uri: str | None = None, reason: str = "rollback"
) -> tuple[str, str]:
    """Move ``@champion`` back to the version before the current one.

    Returns ``(from_version, to_version)``. The rolled-back version leaves the history (so a
    second rollback goes one further back) and is tagged ``rolled_back``.
    """
    client = _client(tracking_uri)
    history = champion_history(model_name, tracking_uri)
    current = alias_version(CHAMPION, model_name, tracking_uri)
    if current is None:
        raise PolicyError(f"{model_name}: no @{CHAMPION} to roll back")
    if current in history:
        history = history[: len(history) - 1 - history[::-1].index(current)]  # its last entry
    if not history:
        raise PolicyError(
            f"{model_name}: @{CHAMPION} is version {current} and no earlier champion is recorded"
        )
    previous = history[-1]
    client.set_registered_model_alias(model_name, CHAMPION, previous)
    client.set_registered_model_tag(model_name, _HISTORY_TAG, json.dumps(history))
    client.set_model_version_tag(model_name, current, "rolled_back", reason[:4000])
    client.set_model_version_tag(model_name, previous, f"{CHAMPION}.reason", f"{reason} (restored)")
    if alias_version(CHALLENGER, model_name, tracking_uri) == current:
        delete_alias(CHALLENGER, model_name, tracking_uri)  # do not canary what was rolled back
    logger.info("%s@%s rolled back %s -> %s: %s", model_name, CHAMPION, current, previous, reason)
    return current, previous


def register_champion(
    bundle: PolicyBundle,
    reason: str,
    model_name: str = MODEL_NAME,
    tracking_uri: str | None = None,
    tags: dict[str, str] | None = None,
) -> str:
    """Register ``bundle`` (in a run of its own) and make it ``@champion``; returns the version.

    How a registry gets its first champion: the bundle that served the logs (``polyroute
    train --base``) or the demo's cold start.
    """
    with start_training_run(tracking_uri, "initial-champion"):
        version = log_bundle(bundle, model_name, tags)
        set_alias(CHAMPION, version, reason, model_name, tracking_uri)
    return version


def start_training_run(tracking_uri: str | None = None, run_name: str | None = None) -> Any:
    """Start an MLflow run in the training experiment (context manager, as mlflow.start_run)."""
    import mlflow

    use_experiment(TRAINING_EXPERIMENT, tracking_uri)
    return mlflow.start_run(run_name=run_name)
