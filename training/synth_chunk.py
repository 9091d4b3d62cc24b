"""One chunk of synthetic-from-real events, vectorised: decisions (eligible sets, logging pmf,
choice) and their followers (outcomes, feedback); see :mod:`training.synth_events`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from training.synth_events import SynthConfig, SynthSource


@dataclass
class Followers:
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
    def empty(cls) -> Followers:
        f = np.zeros(0)
        return cls(np.zeros(0, dtype=object), f, np.zeros(0, bool), f, f, f, f, f)

    def __len__(self) -> int:
        return len(self.timestamp)

    def _fields(self) -> dict[str, np.ndarray]:
        return dict(self.__dict__)

    def concat(self, other: Followers) -> Followers:
        a, b = self._fields(), other._fields()
        return Followers(**{k: np.concatenate([a[k], b[k]]) for k in a})

    def take(self, index: np.ndarray) -> Followers:
        return Followers(**{k: v[index] for k, v in self._fields().items()})

    def split(self, boundary: float) -> tuple[Followers, Followers]:
        now = self.timestamp <= boundary
        return self.take(np.flatnonzero(now)), self.take(np.flatnonzero(~now))


def make_chunk(
    source: SynthSource, config: SynthConfig, rng: np.random.Generator, first: int, n: int
) -> tuple[dict[str, Any], Followers]:
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
    event_id = event_ids(rng, n)
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
    outcomes = Followers(
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
        Followers(
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


def event_ids(rng: np.random.Generator, n: int) -> np.ndarray:
    raw = rng.bytes(16 * n)
    return np.array([raw[i : i + 16].hex() for i in range(0, 16 * n, 16)], dtype=object)


def ordered(decisions: dict[str, Any], followers: Followers, seq0: int) -> dict[str, np.ndarray]:
    """Write order of a chunk's events: by timestamp (decisions first on ties)."""
    n = len(decisions["timestamp"])
    timestamp = np.concatenate([decisions["timestamp"], followers.timestamp])
    kind = np.concatenate([np.zeros(n, np.int8), np.where(followers.is_outcome, 1, 2)])
    row = np.concatenate([np.arange(n), np.arange(len(followers))])
    order = np.lexsort((kind, timestamp))
    seq = np.empty(len(order), np.int64)
    seq[order] = seq0 + np.arange(len(order))
    return {"kind": kind, "row": row, "order": order, "seq": seq}
