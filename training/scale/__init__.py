"""Retraining on event logs larger than memory, with Dask.

Pipeline (:func:`train_at_scale`), each step partition by partition; nothing ``.compute()``\\ s
the log into one pandas frame:

1. **Compact** (JSON-lines logs only): each ``events-*.jsonl`` file of the file sink becomes one
   Parquet file per kind (:func:`compact_events`; layout below), one Dask task per file.
2. **Join** (:func:`join_at_scale`) with the rules of :mod:`router.events.join`: the *light*
   columns (event id, timestamps, outcome fields, quality) of decisions and followers
   (outcomes + feedback) are shuffled into the same hash buckets of the event id
   (``set_index`` on the bucket with fixed divisions, so bucket b is partition b of both),
   joined bucket by bucket in pandas (window, first outcome, latest quality, default quality,
   late and orphan counts), shuffled back to the decision file they came from and
   assembled there with the *heavy* columns (context and action features), which never move.
   The reward is recomputed from the raw components (``quality - w_cost * cost / cost_scale -
   w_latency * latency / latency_scale``) with given weights, or each decision's logged spec.
   Output per decision file: a Parquet file of model-ready columns (context features ``c_*``,
   the chosen model one-hot ``m_*``, its action features ``a_*``, the reward) and a text file
   of the learnable rows' VW examples, formatted by vectorised Arrow kernels on the workers.
3. **Reward model**: :class:`lightgbm.dask.DaskLGBMRegressor` on ``c_* + m_* + a_*`` against the
   reward, on the Dask cluster (data-parallel; each worker holds only its share of the rows),
   scored on a held-out share of decisions (by hash of the event id).
4. **VW policy**: the example files are streamed in decision order (constant memory) into the
   :class:`~router.policy.vw.VWSquareCBPolicy`'s workspace, by VW's own parser through a
   named pipe (:func:`learn_vw_stream`); the examples are the ones ``learn_one`` builds (label
   ``0:-reward:probability`` on the chosen action, so VW weights by the inverse of the logged
   probability; tests check the text and the learned model against ``learn_one``). Rows whose
   ``override_reason`` is set (not learnable) or without an outcome are skipped. One pass,
   single-threaded: VW learns sequentially.

Memory: the client holds one decision file's worth at most (the VW pass holds only VW);
workers hold the light columns being shuffled, one decision file's heavy columns while they
assemble it, and, during the reward model, their share of the training matrix (LightGBM
trains data-parallel in memory, so that share is what bounds the rows per worker).
"""

from __future__ import annotations

from training.scale.compact import compact_events
from training.scale.config import ScaleConfig, ScaleResult
from training.scale.join import JoinSummary, join_at_scale
from training.scale.layout import (
    DECISION_SCHEMA,
    FEEDBACK_SCHEMA,
    OUTCOME_SCHEMA,
    PARQUET_KINDS,
    locate_events,
    part_name,
)
from training.scale.memory import PeakMemory
from training.scale.pipeline import remove_run, train_at_scale
from training.scale.reward_fit import train_reward_model
from training.scale.vw_stream import iter_vw_examples, learn_vw_stream

__all__ = [
    "DECISION_SCHEMA",
    "FEEDBACK_SCHEMA",
    "OUTCOME_SCHEMA",
    "PARQUET_KINDS",
    "JoinSummary",
    "PeakMemory",
    "ScaleConfig",
    "ScaleResult",
    "compact_events",
    "iter_vw_examples",
    "join_at_scale",
    "learn_vw_stream",
    "locate_events",
    "part_name",
    "remove_run",
    "train_at_scale",
    "train_reward_model",
]
