"""The whole retraining at scale (:func:`train_at_scale`): compact, join, reward model, VW
policy; overview in :mod:`training.scale`."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from router.policy.vw import VWSquareCBPolicy
from training.scale.compact import compact_events
from training.scale.config import ScaleConfig, ScaleResult
from training.scale.join import join_at_scale
from training.scale.layout import locate_events
from training.scale.memory import PeakMemory
from training.scale.reward_fit import train_reward_model
from training.scale.vw_stream import learn_vw_stream


def train_at_scale(
    path: str | Path,
    config: ScaleConfig | None = None,
    client: Any = None,
    policy: VWSquareCBPolicy | None = None,
    models: Sequence[str] | None = None,
) -> ScaleResult:
    """Retrain the reward model and the VW policy from an event log of any size.

    Parameters
    ----------
    path : str or Path
        A Parquet-layout log or a file sink directory (:func:`locate_events`).
    config : ScaleConfig, optional
    client : distributed.Client, optional
        Default: a ``LocalCluster`` of ``config.n_workers`` single-threaded worker processes,
        closed at the end.
    policy : VWSquareCBPolicy, optional
        Continue training this policy (e.g. the champion bundle's); default a fresh one with
        the reward spec in force and ``config.seed``.
    models : list of str, optional
        The one-hot's model order; default: the chosen models found in the log, sorted.

    Raises
    ------
    DatasetError
        No events at ``path``, or malformed ones (named by file and column).
    """
    from distributed import Client, LocalCluster

    config = config or ScaleConfig()
    kind, source = locate_events(path)
    base = Path(config.workdir) if config.workdir else Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="polyroute-scale-", dir=base))
    timings: dict[str, float] = {}
    start = time.perf_counter()
    own = client is None
    cluster = None
    with PeakMemory() as memory:
        if own:
            cluster = LocalCluster(
                n_workers=config.n_workers,
                threads_per_worker=1,
                processes=True,
                memory_limit=config.worker_memory,
                dashboard_address=None,
            )
            client = Client(cluster)
            timings["cluster_start"] = time.perf_counter() - start
            memory.end_phase("cluster_start")
        try:
            with client.as_current():
                counts: dict[str, int] = {}
                root = source
                if kind == "jsonl":
                    tick = time.perf_counter()
                    root = run_dir / "parquet"
                    compacted = compact_events(source, root)
                    counts["torn_lines"] = compacted["torn_lines"]
                    timings["compact"] = time.perf_counter() - tick
                    memory.end_phase("compact")
                tick = time.perf_counter()
                join = join_at_scale(root, run_dir / "joined", config, models)
                counts.update(join.counts)
                timings["join"] = time.perf_counter() - tick
                memory.end_phase("join")
                tick = time.perf_counter()
                reward_model, metrics = train_reward_model(
                    join.path, join.feature_columns, config, client
                )
                timings["reward_model"] = time.perf_counter() - tick
                memory.end_phase("reward_model")
        finally:
            if own:
                client.close()
                if cluster is not None:
                    cluster.close()
        tick = time.perf_counter()
        policy = policy or VWSquareCBPolicy(
            reward=join.reward, seed=config.seed, learning_rate=config.vw_learning_rate
        )
        learn_vw_stream(join.vw_path, policy, config.vw_native_parser)
        counts["n_vw_learned"] = counts["n_vw"]
        timings["vw"] = time.perf_counter() - tick
        memory.end_phase("vw")
    timings["total"] = time.perf_counter() - start
    return ScaleResult(
        reward_model=reward_model,
        policy=policy,
        feature_columns=join.feature_columns,
        models=join.models,
        joined_path=join.path,
        timings_s=timings,
        counts=counts,
        metrics=metrics,
        memory_mb={
            "client_peak": memory.client_mb,
            "workers_peak": memory.workers_mb,
            "total_peak": memory.total_mb,
            **{f"{name}_peak": peak for name, peak in memory.phases.items()},
        },
    )


def remove_run(result: ScaleResult) -> None:
    """Delete the run's intermediate Parquet (compacted and joined), keeping the models."""
    shutil.rmtree(result.joined_path.parent.parent, ignore_errors=True)
