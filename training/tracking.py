"""MLflow tracking: the embedded default is a SQLite store and a local artifact directory.

``tracking_uri`` resolution: explicit argument, else ``MLFLOW_TRACKING_URI`` (read when called,
never at import), else ``sqlite:///<home>/mlflow.db`` with artifacts in ``<home>/mlartifacts``,
where home is ``POLYROUTE_HOME`` or ``./.polyroute``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from router.registry_source import default_home, resolve_tracking_uri

__all__ = ["default_home", "log_benchmark", "resolve_tracking_uri", "use_experiment"]

EXPERIMENT = "polyroute-benchmark"


def use_experiment(name: str, tracking_uri: str | None = None) -> str:
    """Point MLflow (tracking and registry) at ``tracking_uri`` and make ``name`` the active
    experiment, creating it (artifacts beside the SQLite file for the embedded store).

    Returns the resolved tracking URI.
    """
    import mlflow  # imported here: mlflow's import costs ~2 s

    logging.getLogger("alembic").setLevel(logging.WARNING)
    uri = resolve_tracking_uri(tracking_uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if mlflow.get_experiment_by_name(name) is None:
        location = None
        if uri.startswith("sqlite:///"):
            location = (
                (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
            )
        elif not uri.startswith(("http:", "https:", "databricks")):
            location = (default_home() / "mlartifacts").as_uri()  # a database store: local files
        mlflow.create_experiment(name, artifact_location=location)
    mlflow.set_experiment(name)
    return uri


def _flatten(prefix: str, value: Any, out: dict[str, float]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), item, out)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        out[prefix.replace(":", "_")] = float(value)


def log_benchmark(
    summary: dict[str, Any], artifacts: list[Path], tracking_uri: str | None = None
) -> str:
    """Log one benchmark run (params, per-router metrics, JSON and plots); returns the run id."""
    import mlflow  # imported here: mlflow's import costs ~2 s, only the benchmark needs it

    use_experiment(EXPERIMENT, tracking_uri)
    with mlflow.start_run(run_name=f"benchmark-{summary['dataset']}") as run:
        params = {f"config.{k}": v for k, v in summary["config"].items() if k != "featurizer"}
        params.update({f"featurizer.{k}": v for k, v in summary["config"]["featurizer"].items()})
        params.update(
            {
                "dataset": summary["dataset"],
                "n_train": summary["n_train"],
                "n_test": summary["n_test"],
                "featurizer_version": summary["featurizer_version"],
            }
        )
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        metrics: dict[str, float] = {}
        for name, entry in summary["routers"].items():
            _flatten(name, {k: v for k, v in entry.items() if k != "curve"}, metrics)
        _flatten("oracle", {k: v for k, v in summary["oracle"].items() if k != "curve"}, metrics)
        metrics["zero_router.aiq"] = summary["zero_router_aiq"]
        mlflow.log_metrics(metrics)
        for path in artifacts:
            mlflow.log_artifact(str(path))
        return str(run.info.run_id)
