"""Synthetic-from-real event logs: many logged decisions built from a real routing dataset.

Each synthetic request is a real prompt of a routing dataset (default: the bundled MMLU-Pro
sample, 3,000 prompts x 29 models), featurized once with a fitted featurizer. For each request:

- **eligible set**: ``min_eligible``..``max_eligible`` models drawn at random among those
  with a known outcome on the prompt, in catalogue order;
- **logging pmf**: epsilon-greedy around a cheap predictor (a ridge regression of quality on
  the request features, minus the reward's cost term at each model's mean cost): ``1 - eps``
  on its best eligible model plus ``eps / K`` everywhere. A share ``override_share`` of
  requests is pinned by a rule (``override_reason = "pinned"``, probability 1, not learnable);
- **outcome**: the chosen model's real cost, latency and tokens from the dataset (a share
  ``missing_outcome_share`` gets none, as when the upstream call is lost);
- **feedback**: the real score as quality, for a share ``feedback_share`` of requests (the
  rest get the join's default quality); ``correction_share`` first get a wrong rating
  (``1 - score``) corrected by a later one, and ``late_feedback_share`` arrive after the join
  window (so they are ignored and the quality imputed).

Decisions are ``1 / decisions_per_s`` seconds apart; an outcome follows after the call's
latency, feedback after an exponential delay. Events are written in timestamp order, so an
outcome or feedback may land in a later file than its decision, as with the real sink.

On-disk layouts (one file per ``chunk_decisions`` decisions; nothing holds all events in memory)
------------------------------------------------------------------------------------------------
``jsonl/events-<stamp>-<seq>.jsonl``
    The file sink's format (:mod:`router.events.file_sink`): one record
    ``{"kind": ..., **fields}`` per line, exactly as :func:`router.events.event_to_record`
    writes them; :func:`router.events.read_events` reads them back.
``parquet/{decisions,outcomes,feedback}/part-<seq>.parquet``
    The same records, columnar (:data:`training.scale.DECISION_SCHEMA` etc.): the reward
    spec flattened to ``w_cost, w_latency, cost_scale, latency_scale``, list fields as Parquet
    lists, plus ``seq``, each event's position in the JSON-lines log (the join's tie-break).
    This is what :func:`training.scale.compact_events` makes of any JSON-lines log, and what
    :func:`training.scale.train_at_scale` reads with Dask.

Modules: this one (configuration, source, the chunk loop), :mod:`training.synth_chunk` (one
chunk of events, vectorised), :mod:`training.synth_write` (the JSON-lines and Parquet writers).

"One decision" = one routed request = one decision event plus (usually) an outcome and zero to
two feedback events; sizes are given in decisions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.linear_model import Ridge

from features.errors import ConfigError, DatasetError
from features.featurizer import RequestFeaturizer
from router.policy.actions import ActionCatalogue
from router.policy.base import RewardSpec
from training.datasets import RoutingDataset, load_dataset
from training.scale import PARQUET_KINDS
from training.synth_chunk import Followers, make_chunk, ordered
from training.synth_write import describe, sample_records, write_jsonl, write_parquet

FORMATS = ("jsonl", "parquet")


@dataclass(frozen=True)
class SynthConfig:
    """What to generate; shares are fractions of decisions.

    Parameters
    ----------
    n_decisions : int
        Logged requests to generate (each: a decision, usually an outcome, 0-2 feedback).
    chunk_decisions : int
        Decisions per file (one JSON-lines file and one Parquet file per kind per chunk).
    epsilon : float
        Exploration of the epsilon-greedy logging policy, in (0, 1].
    join_window_s : float
        The window late feedback is placed beyond.
    """

    n_decisions: int = 100_000
    chunk_decisions: int = 50_000
    min_eligible: int = 3
    max_eligible: int = 8
    epsilon: float = 0.3
    override_share: float = 0.02
    missing_outcome_share: float = 0.005
    feedback_share: float = 0.85
    correction_share: float = 0.05
    late_feedback_share: float = 0.02
    mean_feedback_delay_s: float = 300.0
    join_window_s: float = 3600.0
    decisions_per_s: float = 20.0
    start_time: float = 1_790_000_000.0
    w_cost: float = 0.2
    w_latency: float = 0.05
    formats: tuple[str, ...] = FORMATS
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_decisions < 1:
            raise ConfigError(f"n_decisions must be >= 1, got {self.n_decisions}")
        if self.chunk_decisions < 1:
            raise ConfigError(f"chunk_decisions must be >= 1, got {self.chunk_decisions}")
        if not 1 <= self.min_eligible <= self.max_eligible:
            raise ConfigError(
                f"need 1 <= min_eligible <= max_eligible, got {self.min_eligible}, "
                f"{self.max_eligible}"
            )
        if not 0.0 < self.epsilon <= 1.0:
            raise ConfigError(f"epsilon must be in (0, 1], got {self.epsilon}")
        for name in (
            "override_share",
            "missing_outcome_share",
            "feedback_share",
            "correction_share",
            "late_feedback_share",
        ):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.decisions_per_s <= 0 or self.join_window_s < 0:
            raise ConfigError("decisions_per_s must be > 0 and join_window_s >= 0")
        unknown = [f for f in self.formats if f not in FORMATS]
        if unknown or not self.formats:
            raise ConfigError(
                f"formats must be a non-empty subset of {FORMATS}, got {self.formats}"
            )


@dataclass
class SynthSource:
    """The real data requests are drawn from, prepared once.

    Attributes
    ----------
    contexts : ndarray, shape (n_prompts, n_features)
        Featurized prompts.
    quality, cost, latency, input_tokens, output_tokens, available : ndarray, (n_prompts, n_models)
    predicted_reward : ndarray, shape (n_prompts, n_models)
        The logging policy's cheap reward predictor.
    action_features : ndarray, shape (n_models, n_action_features)
    """

    models: list[str]
    contexts: np.ndarray
    quality: np.ndarray
    cost: np.ndarray
    latency: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    available: np.ndarray
    predicted_reward: np.ndarray
    action_features: np.ndarray
    reward: RewardSpec
    feature_version: str
    policy_version: str = "synthetic-eps-greedy"
    _json_cache: dict[str, list[str]] = field(default_factory=dict, repr=False)

    def true_reward(self) -> np.ndarray:
        """Reward of every (prompt, model) under :attr:`reward`, NaN where unknown."""
        return np.asarray(self.reward.reward(self.quality, self.cost, self.latency), dtype=float)


def prepare_source(
    dataset: str | Path | RoutingDataset = "bundled",
    featurizer: RequestFeaturizer | None = None,
    catalogue: ActionCatalogue | None = None,
    w_cost: float = 0.2,
    w_latency: float = 0.05,
) -> SynthSource:
    """Featurize a routing dataset's prompts once and fit the logging policy's predictor.

    Parameters
    ----------
    dataset : path, ``"bundled"`` or RoutingDataset
    featurizer, catalogue : fitted, optional
        A policy bundle's; by default fitted on the dataset's train split.
    w_cost, w_latency : float
        Reward weights logged with every decision; the cost scale is the mean cost of the most
        expensive model on the train split (as :func:`training.bundle_train.train_bundle`).
    """
    data = dataset if isinstance(dataset, RoutingDataset) else load_dataset(dataset)
    train = data.split("train")
    if featurizer is None:
        featurizer = RequestFeaturizer().fit(train.prompts["prompt"].tolist())
    contexts = featurizer.transform(data.prompts["prompt"].tolist())
    if catalogue is None:
        catalogue = ActionCatalogue(data.models).fit(
            featurizer.transform(train.prompts["prompt"].tolist()),
            train.output_tokens,
            train.available,
        )
    missing = [m for m in data.model_names if m not in catalogue.index]
    if missing:
        raise DatasetError(f"models {missing} of the dataset are not in the action catalogue")
    columns = [catalogue.index[m] for m in data.model_names]
    mean_cost = np.nanmean(np.where(train.available, train.cost, np.nan), axis=0)
    mean_latency = np.nanmean(np.where(train.available, train.latency, np.nan), axis=0)
    spec = RewardSpec(w_cost=w_cost, w_latency=w_latency, cost_scale=float(np.nanmax(mean_cost)))
    train_x = contexts[(data.prompts["split"] == "train").to_numpy()]
    target = np.where(train.available, train.quality, np.nanmean(train.quality, axis=0))
    quality_hat = Ridge(alpha=1.0).fit(train_x, target).predict(contexts)
    predicted = np.asarray(spec.reward(quality_hat, mean_cost, mean_latency), dtype=float)
    return SynthSource(
        models=data.model_names,
        contexts=contexts,
        quality=data.quality,
        cost=data.cost,
        latency=data.latency,
        input_tokens=data.input_tokens,
        output_tokens=data.output_tokens,
        available=data.available,
        predicted_reward=predicted,
        action_features=catalogue.static_features[columns],
        reward=spec,
        feature_version=featurizer.version_,
    )


@dataclass(frozen=True)
class SynthStats:
    """What :func:`write_synthetic_events` wrote."""

    n_decisions: int
    n_outcomes: int
    n_feedback: int
    n_files: int
    seconds: float
    jsonl_dir: str | None
    parquet_dir: str | None

    @property
    def n_events(self) -> int:
        return self.n_decisions + self.n_outcomes + self.n_feedback


def write_synthetic_events(
    out: str | Path, config: SynthConfig | None = None, source: SynthSource | None = None
) -> SynthStats:
    """Generate ``config.n_decisions`` logged requests into ``out`` (module docstring).

    Raises
    ------
    DatasetError
        When ``out`` already holds event files (a log is never appended to).
    """
    config = config or SynthConfig()
    source = source or prepare_source(w_cost=config.w_cost, w_latency=config.w_latency)
    root = Path(out)
    jsonl_dir = root / "jsonl" if "jsonl" in config.formats else None
    parquet_dir = root / "parquet" if "parquet" in config.formats else None
    for directory in (jsonl_dir, parquet_dir):
        if directory is not None and directory.exists() and any(directory.rglob("*.*")):
            raise DatasetError(f"{directory} already holds files: write to a fresh directory")
    if jsonl_dir is not None:
        jsonl_dir.mkdir(parents=True, exist_ok=True)
    if parquet_dir is not None:
        for kind in PARQUET_KINDS:
            (parquet_dir / kind).mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(config.start_time))
    carry = Followers.empty()
    counts = {"decision": 0, "outcome": 0, "feedback": 0}
    seq = 0
    n_files = 0
    first = 0
    while first < config.n_decisions or len(carry):
        n = min(config.chunk_decisions, config.n_decisions - first)
        decisions, followers = make_chunk(source, config, rng, first, n)
        followers = carry.concat(followers)
        boundary = float(decisions["timestamp"][-1]) if n else np.inf
        followers, carry = followers.split(boundary)
        events = ordered(decisions, followers, seq)
        seq += len(events["kind"])
        n_files += 1
        if jsonl_dir is not None:
            path = jsonl_dir / f"events-{stamp}-{n_files:06d}.jsonl"
            write_jsonl(path, source, decisions, followers, events)
        if parquet_dir is not None:
            write_parquet(parquet_dir, n_files, source, decisions, followers, events)
        counts["decision"] += n
        counts["outcome"] += int(followers.is_outcome.sum())
        counts["feedback"] += int((~followers.is_outcome).sum())
        first += n
    return SynthStats(
        n_decisions=counts["decision"],
        n_outcomes=counts["outcome"],
        n_feedback=counts["feedback"],
        n_files=n_files,
        seconds=time.perf_counter() - start,
        jsonl_dir=None if jsonl_dir is None else str(jsonl_dir),
        parquet_dir=None if parquet_dir is None else str(parquet_dir),
    )


__all__ = [
    "FORMATS",
    "SynthConfig",
    "SynthSource",
    "SynthStats",
    "describe",
    "prepare_source",
    "sample_records",
    "write_synthetic_events",
]
