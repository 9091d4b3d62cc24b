"""VW's SquareCB pmf computed exactly in numpy from a workspace's weights (the serving fast path).

:class:`ExactScorer` repeats, in float32 and in the same order, the operations VW 9 performs to
score an example of :class:`router.policy.vw.VWSquareCBPolicy` (``--cb_explore_adf --squarecb
--epsilon``, ``--interactions ca``, the text of :mod:`router.policy.vw_text`), so that its pmfs
equal ``Workspace.predict``'s bit for bit; how, in the comment below. The policy keeps VW as the
learner and the reference and checks the scorer against it (see :mod:`router.policy.vw`). Its
speed is measured in experiments/results/decision_latency.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from operator import attrgetter
from typing import TYPE_CHECKING, Any

import numpy as np

from router.policy.actions import ACTION_FEATURES
from router.policy.base import Action
from router.policy.vw_text import model_token

if TYPE_CHECKING:
    from vowpalwabbit import Workspace

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


def vw_text_value(value: float) -> np.float32:
    """The float32 that VW's text parser reads from ``f"{value:.6g}"`` (one value, exact)."""
    text = f"{value:.6g}"
    mantissa, _, exponent = text.lstrip("-").partition("e")
    whole, _, fraction = mantissa.partition(".")
    parsed = _F32(int(whole + fraction)) * _vw_pow10(
        (int(exponent) if exponent else 0) - len(fraction)
    )
    return _F32(-parsed if text.startswith("-") else parsed)


def vw_text_values(values: np.ndarray) -> np.ndarray | None:
    """``vw_text_value`` of every element, vectorised (zeros give 0: VW drops them), or None
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
            parsed[i] = vw_text_value(float(values[i]))
    text_values: np.ndarray = parsed.astype(np.float32, copy=False)
    return text_values


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


class ExactScorer:
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
            names = [f"m={model_token(model)}", *ACTION_FEATURES]
            values = np.array([1.0, *(vw_text_value(v) for v in features)], dtype=np.float32)
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
        x = vw_text_values(context)
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
        scores: np.ndarray = np.add.reduce(terms, axis=0)
        return scores

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


__all__ = ["ExactScorer", "squarecb_pmf", "vw_text_value", "vw_text_values"]
