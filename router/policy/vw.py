"""Vowpal Wabbit contextual bandit: ``--cb_explore_adf --squarecb`` with an epsilon floor.

SquareCB (Foster & Rakhlin 2020, "Beyond UCB", arXiv 2002.04926) turns a regression oracle's
predicted costs into an inverse-gap-weighted pmf; VW's ``--epsilon`` then enforces a minimum
probability of epsilon / K per action (a projection onto ``p >= epsilon / K``), so that every
eligible model keeps a probability > 0 (logging needs it). Examples are ADF (action-dependent
features): a shared line with the request features (namespace ``c``) and one line per eligible
model (namespace ``a``: identity ``m=<model>`` and static numeric features). ``--interactions
ca`` gives each model its own weights on the request features.

VW learns costs; we pass ``cost = -reward``. Warm start from full-information data feeds, per
prompt and model, an example labelled with that model's reward and probability 1 (a plain
regression example for the multi-task regression ``--cb_type mtr``).

Serving does not go through VW's text parser: :class:`_ExactScorer` computes the same pmf in
numpy from the workspace's weights, bit for bit (see the comment above it). VW stays the learner
and the reference: every learn goes to the workspace, the fast path is rebuilt from its weights
once predictions follow without learning, and its first pmf after each rebuild is checked against
``Workspace.predict`` (a mismatch turns the fast path off for good, with a warning).
"""

from __future__ import annotations

import logging
import math
import re
import tempfile
from collections.abc import Sequence
from functools import lru_cache
from operator import attrgetter
from pathlib import Path
from typing import Any

import numpy as np
from vowpalwabbit import Workspace

from router.errors import PolicyError
from router.policy.actions import ACTION_FEATURES
from router.policy.base import Action, Policy, RewardSpec

logger = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[\s|:]")


def _context_line(context: np.ndarray) -> str:
    return "shared |c " + " ".join(f"{i}:{v:.6g}" for i, v in enumerate(context.tolist()) if v)


@lru_cache(maxsize=4096)
def _static_action_line(model: str, features: tuple[float, ...]) -> str:
    numeric = " ".join(f"{n}:{v:.6g}" for n, v in zip(ACTION_FEATURES, features, strict=False))
    return f"|a m={_UNSAFE.sub('_', model)} {numeric}"


def _action_line(action: Action) -> str:
    # an action's line depends only on the model and its static features: formatted once
    return _static_action_line(action.model, tuple(action.features.tolist()))


# ---- the exact fast path -------------------------------------------------------------------------
# For this model VW 9's pmf is a fixed sequence of float32 operations on the example; the scorer
# below repeats them in numpy, in the same order, from the workspace's own weights and hashes, so
# its pmfs equal ``Workspace.predict``'s bit for bit (tests/test_policies.py checks it on random
# contexts and eligible subsets, after fit, after learn_one updates and after save/load). What it
# repeats, from VW 9.x's source (vowpalwabbit/core and vowpalwabbit/explore):
# - text parsing of ``f"{v:.6g}"`` (``VW::details::parse_float``): the decimal digits as an integer
#   in float32, times ``fast_pow10(exponent - decimals)``, a table VW builds by float32 products
#   and quotients of 10 (not the correctly rounded powers: 1.2573 reads as 1.2572999f);
# - hashing: ``hash_feature`` per feature; the weight of a ``c x a`` interaction sits at
#   ``((FNV_PRIME * c_index) ^ a_index) & mask`` on stride-scaled indices;
# - an action's score (``gd`` ``inline_predict`` under ``csoaa_ldf`` rank and ``cb_adf``): a float32
#   running sum of ``value * weight`` over the action's namespace ``a`` (in line order), then the
#   constant feature, then the shared namespace ``c``, then the interactions (for each context
#   feature, for each action feature, ``(x_c * x_a) * w``); zero features add exact zeros;
# - SquareCB (``cb_explore_adf_squarecb.cc``): scores sorted ascending (ties by action index),
#   ``gamma = gamma_scale * counter ** gamma_exponent`` (counter = examples learned),
#   ``1 / (K + gamma * (score - best))`` for every action but the best, which gets ``1 - sum``
#   (summed in sorted order);
# - the floor (``enforce_minimum_probability``): a threshold tau from the descending-sorted pmf and
#   its running sums, then ``max(p - tau, epsilon / K)``.
_F32 = np.float32
_FNV_PRIME = 16777619
_VW_CONSTANT = 11650396  # the hash of VW's constant feature
_REBUILD_AFTER = 8  # predictions in a row without learning before the fast path is rebuilt
_N_ACTION_FEATURES = 1 + len(ACTION_FEATURES)  # the identity m=<model>, then the numeric ones
_MODEL, _FEATURES = attrgetter("model"), attrgetter("features")


def _vw_pow10_table() -> np.ndarray:
    """VW's ``fast_pow10`` for exponents -37..38 (index exponent + 37), built the way VW does."""
    ten = _F32(10.0)
    negative, positive = [_F32(1.0)], [_F32(1.0)]
    for _ in range(37):
        negative.append(_F32(negative[-1] / ten))
    for _ in range(38):
        positive.append(_F32(positive[-1] * ten))
    return np.array(negative[:0:-1] + positive, dtype=np.float32)


def _digit_tables() -> tuple[np.ndarray, np.ndarray]:
    """For every integer d < 10**6: d without its trailing decimal zeros (float32, exact), and
    how many zeros that drops (``%g`` drops them, and VW's parser reads what is left)."""
    digits = np.arange(1_000_000, dtype=np.int64)
    zeros = np.zeros(len(digits), dtype=np.intp)
    for _ in range(6):
        trailing = (digits % 10 == 0) & (digits > 0)
        digits = np.where(trailing, digits // 10, digits)
        zeros += trailing
    return digits.astype(np.float32), zeros


_VW_POW10 = _vw_pow10_table()
_MAX_MAGNITUDE = 1e13  # VW's table agrees with ours below this (its large positive powers differ)
# Vectorised parsing handles decimal exponents e in -16..5 (our features are below 1e3), where
# 10 ** (5 - e) is an exact float64, so that |v| * 10 ** (5 - e) rounds once; other exponents
# scale to NaN, which sends those elements to the exact string path.
_E_OFFSET = 400  # log10 of a float64 is within [-324, 309)
_SCALE = np.full(2 * _E_OFFSET, np.nan)
_SCALE[_E_OFFSET - 16 : _E_OFFSET + 6] = 10.0 ** (5 - np.arange(-16, 6))
_DIGIT_TABLES: tuple[np.ndarray, np.ndarray] | None = None


def _vw_pow10(exponent: int) -> np.float32:
    exponent = (exponent + 128) % 256 - 128  # VW casts the exponent to int8
    if exponent > 38:
        return _F32(np.inf)
    if exponent < -37:
        return _F32(0.0)
    return _F32(_VW_POW10[exponent + 37])


def _vw_text_value(value: float) -> np.float32:
    """The float32 that VW's text parser reads from ``f"{value:.6g}"`` (one value, exact)."""
    text = f"{value:.6g}"
    mantissa, _, exponent = text.lstrip("-").partition("e")
    whole, _, fraction = mantissa.partition(".")
    parsed = _F32(int(whole + fraction)) * _vw_pow10(
        (int(exponent) if exponent else 0) - len(fraction)
    )
    return _F32(-parsed if text.startswith("-") else parsed)


def _vw_text_values(values: np.ndarray) -> np.ndarray | None:
    """``_vw_text_value`` of every element, vectorised (zeros give 0: VW drops them), or None
    when some value is not finite or ``|value| >= 1e13`` (the caller then asks VW).

    ``%.6g`` keeps 6 significant digits, correctly rounded from the binary value:
    ``digits = rint(|v| * 10 ** (5 - e))`` with ``e = floor(log10 |v|)`` gives them exactly unless
    the product lies within 1e-9 of a half-integer (its one rounding could then decide), ``e`` is
    off by one next to a power of ten, or ``e`` is outside -16..5: those elements take the exact
    string path (about one request in 600 has one).
    """
    global _DIGIT_TABLES
    if _DIGIT_TABLES is None:
        _DIGIT_TABLES = _digit_tables()
    stripped, trailing = _DIGIT_TABLES
    magnitude = np.abs(values)
    if not math.isfinite(magnitude.sum()):  # NaN or infinite values: VW's business
        return None
    safe = magnitude + (magnitude == 0.0)  # a zero is read as 1.0, then multiplied by sign 0
    exponent = np.log10(safe)
    np.floor(exponent, out=exponent)
    k = exponent.astype(np.intp)
    k += _E_OFFSET
    scaled = safe * _SCALE[k]
    rounded = np.rint(scaled)
    # NaN (unsupported exponent) fails both tests; digits must be 6 (e off by one: 5 or 7)
    exact = np.abs(scaled - rounded).max() < 0.5 - 1e-9
    slow: np.ndarray | None = None
    if not (exact and np.abs(rounded - 549_999.5).max() < 450_000.0):
        if magnitude.max() >= _MAX_MAGNITUDE:
            return None
        slow = ~(
            (np.abs(scaled - rounded) < 0.5 - 1e-9) & (np.abs(rounded - 549_999.5) < 450_000.0)
        )
        rounded[slow] = 100_000.0  # placeholders, replaced below
        k[slow] = _E_OFFSET
    digits = rounded.astype(np.intp)
    k += trailing[digits]
    k -= _E_OFFSET + 5 - 37  # the index of 10 ** (e - 5 + dropped zeros) in _VW_POW10
    parsed = stripped[digits] * _VW_POW10[k]
    parsed *= np.sign(values)
    if slow is not None:
        for i in np.flatnonzero(slow).tolist():
            parsed[i] = _vw_text_value(float(values[i]))
    return parsed.astype(np.float32, copy=False)


class _Columns:
    """Per action slot (column), for one context dimension n: the terms that do not depend on
    the request (the action's linear terms, then the constant), its feature values, and the
    weights of its interactions with each context feature."""

    def __init__(self, n: int, capacity: int) -> None:
        self.capacity = capacity
        self.head = np.zeros((_N_ACTION_FEATURES + 1, capacity), dtype=np.float32)
        self.values = np.zeros((_N_ACTION_FEATURES, capacity), dtype=np.float32)
        self.weights = np.zeros((n, _N_ACTION_FEATURES, capacity), dtype=np.float32)
        self.filled = np.zeros(capacity, dtype=bool)


class _ExactScorer:
    """VW's pmf for one fixed set of weights (see the comment above); discarded on learning.

    Per action (model, static features) it looks up, once, the action's parsed feature values and
    the weights of its linear and interaction features for the context dimension in use; per
    eligible set it gathers them (cached per set). Per request: parse the context as VW would,
    one float32 product per interaction term, a sequential float32 sum per action, then SquareCB
    and the floor.
    """

    def __init__(
        self,
        workspace: Workspace,
        counter: int,
        epsilon: float,
        gamma_scale: float,
        gamma_exponent: float,
    ) -> None:
        self._vw = workspace
        self._n_weights = workspace.num_weights()
        self._stride = workspace.get_stride()
        self._ns_c = workspace.hash_space("c")
        self._ns_a = workspace.hash_space("a")
        # gamma = float(gamma_scale) * float(pow(double(counter), double(float(gamma_exponent))))
        self.gamma = _F32(_F32(gamma_scale) * _F32(float(counter) ** float(_F32(gamma_exponent))))
        self.epsilon = _F32(epsilon)
        self._constant = _F32(self._weight(_VW_CONSTANT & (self._n_weights - 1)))
        self._context: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # n -> hashes, weights
        self._actions: dict[tuple[str, tuple[float, ...]], int] = {}  # action -> slot
        self._by_identity: dict[tuple[Any, ...], tuple[tuple[np.ndarray, ...], Any]] = {}
        self._slots: list[tuple[np.ndarray, np.ndarray]] = []  # values (6,), hashes (6,)
        self._tables: dict[int, _Columns] = {}  # context dimension -> per-slot arrays
        self._sets: dict[tuple[tuple[int, ...], int], tuple[np.ndarray, ...]] = {}

    def _weight(self, index: int) -> float:
        return float(self._vw.get_weight(index, 0))

    def _weights(self, indices: np.ndarray) -> np.ndarray:
        get = self._vw.get_weight
        return np.array([get(i, 0) for i in indices.ravel().tolist()], dtype=np.float32).reshape(
            indices.shape
        )

    def _interaction_indices(self, c_hashes: np.ndarray, a_hashes: np.ndarray) -> np.ndarray:
        stride = np.uint64(self._stride)
        mask = np.uint64(self._n_weights * self._stride - 1)
        first = np.uint64(_FNV_PRIME) * (c_hashes * stride)  # wraps modulo 2**64, as in VW
        full = (first[:, None] ^ (a_hashes * stride)[None, :]) & mask
        return full // stride  # multiples of the stride: the weight's own slot (offset 0)

    def _context_state(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        state = self._context.get(n)
        if state is None:
            hashes = np.array(
                [self._vw.hash_feature(str(i), self._ns_c) for i in range(n)], dtype=np.uint64
            )
            weights = self._weights(hashes & np.uint64(self._n_weights - 1))
            state = self._context[n] = (hashes, weights)
        return state

    def _slot(self, model: str, features: tuple[float, ...]) -> int | None:
        key = (model, features)
        slot = self._actions.get(key)
        if slot is None:
            if len(features) != len(ACTION_FEATURES) or not all(
                math.isfinite(v) and abs(v) < _MAX_MAGNITUDE for v in features
            ):
                return None
            names = [f"m={_UNSAFE.sub('_', model)}", *ACTION_FEATURES]
            values = np.array([1.0, *(_vw_text_value(v) for v in features)], dtype=np.float32)
            hashes = np.array(
                [self._vw.hash_feature(name, self._ns_a) for name in names], dtype=np.uint64
            )
            slot = self._actions[key] = len(self._slots)
            self._slots.append((values, hashes))
        return slot

    def _columns(self, slots: list[int], n: int) -> _Columns:
        """Per-slot arrays for context dimension n, with the columns of ``slots`` filled."""
        table = self._tables.get(n)
        if table is None or table.capacity < len(self._slots):
            grown = _Columns(n, max(32, 2 * len(self._slots)))
            if table is not None:  # copy what was looked up already
                done = table.capacity
                grown.head[:, :done] = table.head
                grown.values[:, :done] = table.values
                grown.weights[:, :, :done] = table.weights
                grown.filled[:done] = table.filled
            table = self._tables[n] = grown
        c_hashes, _ = self._context_state(n)
        for slot in slots:
            if not table.filled[slot]:
                values, hashes = self._slots[slot]
                table.values[:, slot] = values
                table.head[:-1, slot] = values * self._weights(
                    hashes & np.uint64(self._n_weights - 1)
                )
                table.head[-1, slot] = self._constant
                table.weights[:, :, slot] = self._weights(
                    self._interaction_indices(c_hashes, hashes)
                )
                table.filled[slot] = True
        return table

    def _set_state(self, actions: Sequence[Action], n: int) -> tuple[np.ndarray, ...] | None:
        """The arrays of an eligible set, in its order. Sets of read-only feature arrays (the
        catalogue's) are found by identity, at a few microseconds per request; others by value."""
        names = tuple(map(_MODEL, actions))
        arrays = list(map(_FEATURES, actions))
        identity = (names, tuple(map(id, arrays)), n)
        found = self._by_identity.get(identity)
        if found is not None:
            return found[0]
        found_slots = [self._slot(a.model, tuple(a.features.tolist())) for a in actions]
        if None in found_slots:
            return None
        slots = [s for s in found_slots if s is not None]
        key = (tuple(slots), n)
        state = self._sets.get(key)
        if state is None:
            table = self._columns(slots, n)
            # the first rows of the terms, the same for every request (a's linear terms, the
            # constant), the action features' values, the interaction weights: (n, 6, k)
            state = (
                table.head[:, slots],
                table.values[:, slots],
                np.ascontiguousarray(np.take(table.weights, slots, axis=2)),
            )
            if len(self._sets) >= 256:
                self._sets.clear()
            self._sets[key] = state
        if not any(f.flags.writeable for f in arrays):
            if len(self._by_identity) >= 256:
                self._by_identity.clear()
            # the entry holds the arrays, so their ids cannot be reused while it exists
            self._by_identity[identity] = (state, arrays)
        return state

    def scores(self, context: np.ndarray, actions: Sequence[Action]) -> np.ndarray | None:
        """VW's float32 score (predicted cost) of each action, or None if this context or
        an action is outside what the scorer reproduces exactly (the caller then asks VW)."""
        x = _vw_text_values(context)
        if x is None:
            return None
        n = len(x)
        state = self._set_state(actions, n)
        if state is None:
            return None
        head, values, weights = state
        k = len(actions)
        h = len(head)
        terms = np.empty((h + n + n * _N_ACTION_FEATURES, k), dtype=np.float32)
        terms[:h] = head
        terms[h : h + n] = (x * self._context_state(n)[1])[:, None]
        inter = terms[h + n :].reshape(n, _N_ACTION_FEATURES, k)
        np.multiply(x[:, None, None], values[None, :, :], out=inter)
        inter *= weights
        # a sequential float32 sum down the rows: the order in which VW adds the terms
        return np.add.reduce(terms, axis=0)

    def pmf(self, context: np.ndarray, actions: Sequence[Action]) -> np.ndarray | None:
        scores = self.scores(context, actions)
        if scores is None:
            return None
        return squarecb_pmf(scores, self.gamma, self.epsilon)


@lru_cache(maxsize=64)
def _floor_constants(k: int, epsilon: float) -> tuple[np.float32, np.ndarray, np.ndarray]:
    """For ``k`` actions: VW's floor ``epsilon / k`` and, per rank i of the descending pmf, the
    float32 terms ``(k - i - 1) * floor`` and ``i + 1`` of its threshold."""
    floor = _F32(_F32(epsilon) / _F32(k))
    rank = np.arange(k, dtype=np.float32)
    return floor, (_F32(k) - rank - _F32(1.0)) * floor, rank + _F32(1.0)


def squarecb_pmf(scores: np.ndarray, gamma: np.float32, epsilon: np.float32) -> np.ndarray:
    """VW 9's SquareCB pmf with the epsilon floor, in float32, from float32 scores (costs)."""
    k = len(scores)
    order = np.argsort(scores, kind="stable")  # ascending, ties by index: VW's score_comp
    p = scores[order]
    p -= p[0]
    p *= gamma
    p += _F32(k)
    np.divide(_F32(1.0), p, out=p)
    # the best action gets what the others leave, summed in rank order
    p[0] = _F32(1.0) - np.add.accumulate(p[1:])[-1] if k > 1 else _F32(1.0)
    if epsilon > 0.999:
        p[:] = _F32(1.0) / _F32(k)
    elif epsilon > 0.0:
        floor, scaled_rank, rank = _floor_constants(k, float(epsilon))
        descending = np.sort(p)[::-1]
        running = np.add.accumulate(descending)
        threshold = scaled_rank + running
        threshold -= _F32(1.0)
        threshold /= rank
        threshold += floor
        above = np.flatnonzero(descending > threshold)
        rho = int(above[-1]) if len(above) else 0
        tau = (scaled_rank[rho] + running[rho] - _F32(1.0)) / rank[rho]
        p -= tau
        np.maximum(p, floor, out=p)
    pmf = np.empty_like(p)
    pmf[order] = p
    return pmf


class VWSquareCBPolicy(Policy):
    """The default serving policy.

    Parameters
    ----------
    epsilon : float
        Exploration floor: VW lifts every probability to at least epsilon / K (K eligible
        models), taking the mass from the larger ones.
    gamma_scale : float
        SquareCB's gamma = gamma_scale * t ** gamma_exponent (greedier as t grows).
    interactions : str
        VW ``--interactions``; ``ca`` crosses every request feature with the model identity and
        the model's numeric features. (Crossing with the identity alone cut VW's text-format
        predict with 29 models from ~515 to ~340 us, but lost ~0.02 mean reward on the held-out
        quarter of the bundled train split, so it is not the default; the exact fast path,
        which serves ``ca`` in ~50 us, reproduces ``ca`` only.)
    learning_rate : float
        Defaults (gamma_scale 200, learning rate 2) were chosen on a held-out quarter of the
        bundled sample's train split (mean reward of the replayed policy), not on any test split.
    extra_args : str
        More VW arguments (e.g. ``--l2 1e-6``).
    """

    name = "vw_squarecb"
    explores = True

    def __init__(
        self,
        reward: RewardSpec | None = None,
        seed: int = 0,
        epsilon: float = 0.02,
        gamma_scale: float = 200.0,
        gamma_exponent: float = 0.5,
        learning_rate: float = 2.0,
        interactions: str = "ca",
        extra_args: str = "",
    ) -> None:
        super().__init__(reward, seed)
        if not 0.0 < epsilon < 1.0:
            raise ValueError(f"epsilon must be in (0, 1), got {epsilon}")
        if gamma_scale <= 0:
            raise ValueError(f"gamma_scale must be > 0, got {gamma_scale}")
        self.epsilon = epsilon
        self.gamma_scale = gamma_scale
        self.gamma_exponent = gamma_exponent
        self.learning_rate = learning_rate
        self.interactions = interactions
        self.extra_args = extra_args
        self._n_learned: int | None = 0  # VW's SquareCB counter: examples the workspace learned
        self._since_learn = _REBUILD_AFTER  # predictions since the last learn
        self._scorer: _ExactScorer | None = None
        self._scorer_checked = False
        # why the exact fast path is off for good (None: it serves whenever it is built)
        self.fast_path_error: str | None = (
            None
            if interactions == "ca" and not extra_args.strip()
            else "only --interactions ca without extra arguments is reproduced exactly"
        )

    def params(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "epsilon": self.epsilon,
            "gamma_scale": self.gamma_scale,
            "gamma_exponent": self.gamma_exponent,
            "learning_rate": self.learning_rate,
            "interactions": self.interactions,
            "extra_args": self.extra_args,
        }

    def _arguments(self) -> str:
        return (
            f"--cb_explore_adf --squarecb --epsilon {self.epsilon} --gamma_scale "
            f"{self.gamma_scale} --gamma_exponent {self.gamma_exponent} -l {self.learning_rate} "
            f"--interactions {self.interactions} --random_seed {self.seed} --quiet "
            f"{self.extra_args}"
        ).strip()

    @property
    def workspace(self) -> Workspace:
        if not hasattr(self, "vw_"):
            self.vw_ = Workspace(self._arguments())
        return self.vw_

    def _predict_one(self, context: np.ndarray, actions: Sequence[Action]) -> np.ndarray:
        self._since_learn += 1
        # right after learning (e.g. replay: predict, learn, predict, ...) rebuilding the fast
        # path per prediction would cost more than it saves: VW predicts until learning pauses
        if self._since_learn > _REBUILD_AFTER and self.fast_path_error is None:
            pmf = self._fast_pmf(context, actions)
            if pmf is not None:
                return pmf
        return self._vw_pmf(context, actions)

    def _vw_pmf(self, context: np.ndarray, actions: Sequence[Action]) -> np.ndarray:
        lines = [_context_line(context), *map(_action_line, actions)]
        return np.asarray(self.workspace.predict(lines), dtype=float)

    def _fast_pmf(self, context: np.ndarray, actions: Sequence[Action]) -> np.ndarray | None:
        if self._scorer is None:
            if self._n_learned is None:
                self.fast_path_error = "the SquareCB example counter of the loaded model is unknown"
                return None
            self._scorer = _ExactScorer(
                self.workspace,
                self._n_learned,
                self.epsilon,
                self.gamma_scale,
                self.gamma_exponent,
            )
            self._scorer_checked = False
        pmf = self._scorer.pmf(context, actions)
        if pmf is None:
            return None
        result = pmf.astype(float)
        if not self._scorer_checked:  # the first pmf of every rebuild is checked against VW
            reference = self._vw_pmf(context, actions)
            if not np.array_equal(result, reference):
                self.fast_path_error = (
                    f"the exact fast path disagrees with Workspace.predict: {result.tolist()} vs "
                    f"{reference.tolist()}"
                )
                logger.warning("%s: %s; serving VW's predictions", self.name, self.fast_path_error)
                self._scorer = None
                return reference
            self._scorer_checked = True
        return result

    def _learn_one(
        self,
        context: np.ndarray,
        actions: Sequence[Action],
        chosen: int,
        probability: float,
        reward: float,
    ) -> None:
        lines = [_context_line(context)]
        for i, action in enumerate(actions):
            line = _action_line(action)
            if i == chosen:
                line = f"0:{-reward:.6g}:{probability:.6g} {line}"
            lines.append(line)
        self._scorer = None  # the weights change
        self._since_learn = 0
        self.workspace.learn(lines)
        if self._n_learned is not None:
            self._n_learned += 1

    def fit(
        self,
        contexts: np.ndarray,
        actions: Sequence[Action] | Sequence[Sequence[Action]],
        quality: np.ndarray,
    ) -> VWSquareCBPolicy:
        """Warm start from full information: every known (prompt, model) reward, probability 1.

        ``actions`` is one catalogue for all rows or one list of actions per row (per-request
        expected costs); ``quality[i, j]`` belongs to action j of row i (NaN: unknown, skipped).
        """
        rng = np.random.default_rng(self.seed)
        for i in rng.permutation(len(contexts)):
            row_actions = actions[i] if isinstance(actions[0], Sequence) else actions
            rewards = self.reward.expected(quality[i], row_actions)  # type: ignore[arg-type]
            for j in np.flatnonzero(np.isfinite(rewards)):
                self._learn_one(contexts[i], row_actions, int(j), 1.0, float(rewards[j]))  # type: ignore[arg-type]
        self._since_learn = _REBUILD_AFTER  # fitted: the next prediction builds the fast path
        return self

    def _save_state(self, path: Path) -> None:
        self.workspace.save(str(path / "policy.vw"))

    def _load_state(self, path: Path) -> None:
        model = path / "policy.vw"
        if not model.is_file():
            raise PolicyError(f"{path}: policy.vw is missing")
        self.vw_ = Workspace(f"--quiet -i {model}")
        self._n_learned = _squarecb_counter(model)
        self._since_learn = _REBUILD_AFTER
        self._scorer = None


def _squarecb_counter(model: Path) -> int | None:
    """The SquareCB example counter saved in a VW model file (it sets gamma), read from VW's
    readable dump of the model; None if VW does not write it."""
    with tempfile.TemporaryDirectory() as tmp:
        readable = Path(tmp) / "model.txt"
        Workspace(f"--quiet -i {model} --readable_model {readable}").finish()
        text = readable.read_text() if readable.is_file() else ""
    found = re.search(r"squarecb adf storing example counter:\s*=\s*(\d+)", text)
    return int(found.group(1)) if found else None
