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
    The same records, columnar (:data:`training.scale_io.DECISION_COLUMNS` etc.): the reward
    spec flattened to ``w_cost, w_latency, cost_scale, latency_scale``, list fields as Parquet
    lists, plus ``seq``, each event's position in the JSON-lines log (the join's tie-break).
    This is what :func:`training.scale_io.compact_events` makes of any JSON-lines log, and what
    :func:`training.scale.train_at_scale` reads with Dask.

"One decision" = one routed request = one decision event plus (usually) an outcome and zero to
two feedback events; sizes are given in decisions.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.linear_model import Ridge

from features.errors import ConfigError, DatasetError
from features.featurizer import RequestFeaturizer
from router.policy.actions import ActionCatalogue
from router.policy.base import RewardSpec
from training.datasets import RoutingDataset, load_dataset
from training.scale import (
    DECISION_SCHEMA,
    FEEDBACK_SCHEMA,
    OUTCOME_SCHEMA,
    PARQUET_KINDS,
    part_name,
)

FORMATS = ("jsonl", "parquet")
_PINNED = '"pinned"'


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
    carry = _Followers.empty()
    counts = {"decision": 0, "outcome": 0, "feedback": 0}
    seq = 0
    n_files = 0
    first = 0
    while first < config.n_decisions or len(carry):
        n = min(config.chunk_decisions, config.n_decisions - first)
        decisions, followers = _chunk(source, config, rng, first, n)
        followers = carry.concat(followers)
        boundary = float(decisions["timestamp"][-1]) if n else np.inf
        followers, carry = followers.split(boundary)
        events = _ordered(decisions, followers, seq)
        seq += len(events["kind"])
        n_files += 1
        if jsonl_dir is not None:
            path = jsonl_dir / f"events-{stamp}-{n_files:06d}.jsonl"
            _write_jsonl(path, source, decisions, followers, events)
        if parquet_dir is not None:
            _write_parquet(parquet_dir, n_files, source, decisions, followers, events)
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


# ---- one chunk, vectorised ---------------------------------------------------------------


@dataclass
class _Followers:
    """Outcome and feedback events of some decisions (column arrays, one entry per event)."""

    event_id: np.ndarray
    timestamp: np.ndarray
    is_outcome: np.ndarray
    quality: np.ndarray  # NaN for outcomes (quality comes as feedback here)
    cost_usd: np.ndarray
    latency_ms: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray

    @classmethod
    def empty(cls) -> _Followers:
        f = np.zeros(0)
        return cls(np.zeros(0, dtype=object), f, np.zeros(0, bool), f, f, f, f, f)

    def __len__(self) -> int:
        return len(self.timestamp)

    def _fields(self) -> dict[str, np.ndarray]:
        return dict(self.__dict__)

    def concat(self, other: _Followers) -> _Followers:
        a, b = self._fields(), other._fields()
        return _Followers(**{k: np.concatenate([a[k], b[k]]) for k in a})

    def take(self, index: np.ndarray) -> _Followers:
        return _Followers(**{k: v[index] for k, v in self._fields().items()})

    def split(self, boundary: float) -> tuple[_Followers, _Followers]:
        now = self.timestamp <= boundary
        return self.take(np.flatnonzero(now)), self.take(np.flatnonzero(~now))


def _chunk(
    source: SynthSource, config: SynthConfig, rng: np.random.Generator, first: int, n: int
) -> tuple[dict[str, Any], _Followers]:
    n_prompts, n_models = source.available.shape
    prompt = rng.integers(0, n_prompts, n)
    available = source.available[prompt]
    keys = np.where(available, rng.random((n, n_models)), 2.0)
    k = np.minimum(
        rng.integers(config.min_eligible, config.max_eligible + 1, n), available.sum(axis=1)
    )
    eligible = np.argsort(np.argsort(keys, axis=1), axis=1) < k[:, None]
    predicted = np.where(eligible, source.predicted_reward[prompt], -np.inf)
    greedy = predicted.argmax(axis=1)
    rows = np.arange(n)
    pmf = np.where(eligible, config.epsilon / k[:, None], 0.0)
    pmf[rows, greedy] += 1.0 - config.epsilon
    override = rng.random(n) < config.override_share
    pmf[override] = 0.0
    pmf[rows[override], greedy[override]] = 1.0
    cumulative = np.cumsum(pmf, axis=1)
    u = rng.random(n) * cumulative[:, -1]
    chosen = np.minimum((cumulative <= u[:, None]).sum(axis=1), n_models - 1)
    chosen = np.where(pmf[rows, chosen] > 0, chosen, greedy)  # float edge at the top end
    chosen_index = eligible.cumsum(axis=1)[rows, chosen] - 1
    timestamp = config.start_time + (first + rows) / config.decisions_per_s
    event_id = _event_ids(rng, n)
    decisions = {
        "event_id": event_id,
        "timestamp": timestamp,
        "prompt": prompt,
        "eligible": eligible,
        "pmf": pmf,
        "chosen": chosen,
        "chosen_index": chosen_index,
        "override": override,
    }

    served = rng.random(n) >= config.missing_outcome_share
    cost = source.cost[prompt, chosen]
    latency = source.latency[prompt, chosen]
    score = source.quality[prompt, chosen]
    outcomes = _Followers(
        event_id=event_id[served],
        timestamp=(timestamp + latency / 1000.0)[served],
        is_outcome=np.ones(int(served.sum()), bool),
        quality=np.full(int(served.sum()), np.nan),
        cost_usd=cost[served],
        latency_ms=latency[served],
        input_tokens=source.input_tokens[prompt, chosen][served],
        output_tokens=source.output_tokens[prompt, chosen][served],
    )
    rated = served & (rng.random(n) < config.feedback_share)
    delay = latency / 1000.0 + rng.exponential(config.mean_feedback_delay_s, n)
    late = rng.random(n) < config.late_feedback_share
    delay[late] = config.join_window_s + rng.uniform(1.0, 3600.0, int(late.sum()))
    corrected = rated & (rng.random(n) < config.correction_share)
    first_delay = np.where(corrected, delay * rng.uniform(0.2, 0.8, n), delay)
    # a wrong first rating, then the real one: the latest wins at the join
    ratings = [
        (rated, first_delay, np.where(corrected, 1.0 - score, score)),
        (corrected, delay, score),
    ]
    feedback = [
        _Followers(
            event_id=event_id[mask],
            timestamp=(timestamp + when)[mask],
            is_outcome=np.zeros(int(mask.sum()), bool),
            quality=quality[mask],
            cost_usd=np.full(int(mask.sum()), np.nan),
            latency_ms=np.full(int(mask.sum()), np.nan),
            input_tokens=np.full(int(mask.sum()), np.nan),
            output_tokens=np.full(int(mask.sum()), np.nan),
        )
        for mask, when, quality in ratings
    ]
    return decisions, outcomes.concat(feedback[0]).concat(feedback[1])


def _event_ids(rng: np.random.Generator, n: int) -> np.ndarray:
    raw = rng.bytes(16 * n)
    return np.array([raw[i : i + 16].hex() for i in range(0, 16 * n, 16)], dtype=object)


def _ordered(decisions: dict[str, Any], followers: _Followers, seq0: int) -> dict[str, np.ndarray]:
    """Write order of a chunk's events: by timestamp (decisions first on ties)."""
    n = len(decisions["timestamp"])
    timestamp = np.concatenate([decisions["timestamp"], followers.timestamp])
    kind = np.concatenate([np.zeros(n, np.int8), np.where(followers.is_outcome, 1, 2)])
    row = np.concatenate([np.arange(n), np.arange(len(followers))])
    order = np.lexsort((kind, timestamp))
    seq = np.empty(len(order), np.int64)
    seq[order] = seq0 + np.arange(len(order))
    return {"kind": kind, "row": row, "order": order, "seq": seq}


# ---- writers ---------------------------------------------------------------------------------


def _json_pieces(source: SynthSource) -> dict[str, list[str]]:
    if not source._json_cache:
        source._json_cache["context"] = [json.dumps(row) for row in source.contexts.tolist()]
        source._json_cache["action"] = [json.dumps(r) for r in source.action_features.tolist()]
        source._json_cache["model"] = [json.dumps(m) for m in source.models]
    return source._json_cache


def _write_jsonl(
    path: Path,
    source: SynthSource,
    decisions: dict[str, Any],
    followers: _Followers,
    events: dict[str, np.ndarray],
) -> None:
    pieces = _json_pieces(source)
    spec = json.dumps(source.reward.__dict__, separators=(",", ":"))
    head = (
        f'"tenant":"synthetic","profile":"default","policy_version":"{source.policy_version}",'
        f'"feature_version":"{source.feature_version}","reward_spec":{spec},'
        '"reward_spec_version":"1",'
    )
    eligible = decisions["eligible"]
    pmf = decisions["pmf"]
    # Python floats: repr() of numpy scalars is not JSON, and json.dumps uses repr
    d_id, d_ts = decisions["event_id"].tolist(), decisions["timestamp"].tolist()
    d_chosen, d_index = decisions["chosen"].tolist(), decisions["chosen_index"].tolist()
    d_prompt, d_pinned = decisions["prompt"].tolist(), decisions["override"].tolist()
    f_id, f_ts = followers.event_id.tolist(), followers.timestamp.tolist()
    f_cost, f_latency = followers.cost_usd.tolist(), followers.latency_ms.tolist()
    f_in, f_out = followers.input_tokens.tolist(), followers.output_tokens.tolist()
    f_quality = followers.quality.tolist()
    lines: list[str] = []
    kinds, rows = events["kind"].tolist(), events["row"].tolist()
    for position in events["order"].tolist():
        i = rows[position]
        kind = kinds[position]
        if kind == 0:
            cols = np.flatnonzero(eligible[i]).tolist()
            probabilities = pmf[i, cols].tolist()
            chosen = d_chosen[i]
            pinned = d_pinned[i]
            lines.append(
                f'{{"kind":"decision","event_id":"{d_id[i]}","timestamp":{d_ts[i]!r},{head}'
                f'"eligible_models":[{",".join(pieces["model"][c] for c in cols)}],'
                f'"action_features":[{",".join(pieces["action"][c] for c in cols)}],'
                f'"probabilities":{json.dumps(probabilities)},'
                f'"chosen_model":{pieces["model"][chosen]},'
                f'"chosen_index":{d_index[i]},'
                f'"chosen_probability":{float(pmf[i, chosen])!r},'
                f'"override_reason":{_PINNED if pinned else "null"},'
                f'"context_features":{pieces["context"][d_prompt[i]]},'
                f'"prompt":null,"learnable":{"false" if pinned else "true"}}}'
            )
        elif kind == 1:
            lines.append(
                f'{{"kind":"outcome","event_id":"{f_id[i]}","timestamp":{f_ts[i]!r},'
                f'"cost_usd":{f_cost[i]!r},"latency_ms":{f_latency[i]!r},'
                f'"input_tokens":{int(f_in[i])},"output_tokens":{int(f_out[i])},'
                '"error_class":null,"fallback_used":false,"quality":null}'
            )
        else:
            lines.append(
                f'{{"kind":"feedback","event_id":"{f_id[i]}","timestamp":{f_ts[i]!r},'
                f'"quality":{f_quality[i]!r}}}'
            )
    with open(path, "x", encoding="utf-8") as handle:
        handle.write("\n".join(lines))
        handle.write("\n")


def _write_parquet(
    root: Path,
    number: int,
    source: SynthSource,
    decisions: dict[str, Any],
    followers: _Followers,
    events: dict[str, np.ndarray],
) -> None:
    n = len(decisions["timestamp"])
    seq = events["seq"]
    eligible = decisions["eligible"]
    counts = eligible.sum(axis=1)
    offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
    rows, cols = np.nonzero(eligible)
    models = np.array(source.models, dtype=object)
    n_action = source.action_features.shape[1]
    action_rows = pa.FixedSizeListArray.from_arrays(
        pa.array(source.action_features[cols].ravel()), n_action
    )
    prompt = decisions["prompt"]
    n_features = source.contexts.shape[1]
    chosen = decisions["chosen"]
    pinned = decisions["override"]
    spec = source.reward
    table = pa.table(
        {
            "event_id": pa.array(decisions["event_id"], pa.string()),
            "timestamp": decisions["timestamp"],
            "seq": seq[:n],
            "tenant": pa.array(["synthetic"] * n, pa.string()),
            "profile": pa.array(["default"] * n, pa.string()),
            "policy_version": pa.array([source.policy_version] * n, pa.string()),
            "feature_version": pa.array([source.feature_version] * n, pa.string()),
            "reward_spec_version": pa.array(["1"] * n, pa.string()),
            "w_cost": np.full(n, spec.w_cost),
            "w_latency": np.full(n, spec.w_latency),
            "cost_scale": np.full(n, spec.cost_scale),
            "latency_scale": np.full(n, spec.latency_scale),
            "eligible_models": pa.ListArray.from_arrays(offsets, pa.array(models[cols])),
            "action_features": pa.ListArray.from_arrays(
                offsets, action_rows.cast(pa.list_(pa.float64()))
            ),
            "probabilities": pa.ListArray.from_arrays(
                offsets, pa.array(decisions["pmf"][rows, cols])
            ),
            "chosen_model": pa.array(models[chosen], pa.string()),
            "chosen_index": decisions["chosen_index"].astype(np.int64),
            "chosen_probability": decisions["pmf"][np.arange(n), chosen],
            "override_reason": pa.array(
                ["pinned" if p else None for p in pinned.tolist()], pa.string()
            ),
            "context_features": pa.FixedSizeListArray.from_arrays(
                pa.array(source.contexts[prompt].ravel()), n_features
            ).cast(pa.list_(pa.float64())),
            "prompt": pa.nulls(n, pa.string()),
        },
        schema=DECISION_SCHEMA,
    )
    pq.write_table(table, root / "decisions" / part_name(number))
    fseq = seq[n:]
    out = followers.is_outcome
    outcome_table = pa.table(
        {
            "event_id": pa.array(followers.event_id[out], pa.string()),
            "timestamp": followers.timestamp[out],
            "seq": fseq[out],
            "cost_usd": followers.cost_usd[out],
            "latency_ms": followers.latency_ms[out],
            "input_tokens": followers.input_tokens[out].astype(np.int64),
            "output_tokens": followers.output_tokens[out].astype(np.int64),
            "error_class": pa.nulls(int(out.sum()), pa.string()),
            "fallback_used": np.zeros(int(out.sum()), bool),
            "quality": pa.nulls(int(out.sum()), pa.float64()),
        },
        schema=OUTCOME_SCHEMA,
    )
    _write_sorted(outcome_table, root / "outcomes" / part_name(number))
    feedback_table = pa.table(
        {
            "event_id": pa.array(followers.event_id[~out], pa.string()),
            "timestamp": followers.timestamp[~out],
            "seq": fseq[~out],
            "quality": followers.quality[~out],
        },
        schema=FEEDBACK_SCHEMA,
    )
    _write_sorted(feedback_table, root / "feedback" / part_name(number))


def _write_sorted(table: pa.Table, path: Path) -> None:
    pq.write_table(table.sort_by("seq"), path)


def sample_records(path: str | Path, limit: int = 100) -> list[dict[str, Any]]:
    """The first ``limit`` records of the first JSON-lines file under ``path`` (for checks)."""
    files = sorted(Path(path).rglob("events-*.jsonl"))
    if not files:
        raise DatasetError(f"no events-*.jsonl files under {path}")
    records = []
    with open(files[0], encoding="utf-8") as handle:
        for line in handle:
            records.append(json.loads(line))
            if len(records) >= limit:
                break
    return records


def describe(stats: SynthStats) -> dict[str, Any]:
    """JSON-friendly summary of a generation run."""
    return {
        "n_decisions": stats.n_decisions,
        "n_outcomes": stats.n_outcomes,
        "n_feedback": stats.n_feedback,
        "n_events": stats.n_events,
        "n_files": stats.n_files,
        "seconds": round(stats.seconds, 2),
        "jsonl_dir": stats.jsonl_dir,
        "parquet_dir": stats.parquet_dir,
    }
