"""The VW text format of polyroute's examples: the one formatter, used online and offline.

An example is ADF (action-dependent features): a shared line with the request features
(namespace ``c``, ``<index>:<value>``, zero features left out) and one line per eligible model
(namespace ``a``: identity ``m=<model>``, then the static numeric features
:data:`router.policy.actions.ACTION_FEATURES`). Numbers are written with 6 significant digits
(``%.6g``); in model names, whitespace, ``|`` and ``:`` become ``_``. A learned example puts
the label ``0:<cost>:<probability>`` (cost = -reward) before the chosen action's line.

Two implementations of the same text: per example (:func:`context_line`, :func:`action_line`,
:func:`example_lines`; the policy's predict and learn, :mod:`router.policy.vw`) and vectorised
over many rows with Arrow kernels (:func:`examples_text`; retraining on large logs,
:mod:`training.scale`). ``tests/test_policies.py`` and ``tests/test_scale.py`` check that they
write the same text, character for character.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from router.policy.actions import ACTION_FEATURES
from router.policy.base import Action

if TYPE_CHECKING:  # pyarrow is imported by the vectorised formatter only, when it runs
    import pyarrow as pa

UNSAFE = r"[\s|:]"  # characters of a model name that VW's text format cannot carry
_UNSAFE = re.compile(UNSAFE)
SHARED_PREFIX = "shared |c"
ACTION_PREFIX = "|a m="


def model_token(model: str) -> str:
    """The model name as written after ``m=`` (unsafe characters replaced by ``_``)."""
    return _UNSAFE.sub("_", model)


def context_line(context: np.ndarray) -> str:
    """The shared line: ``shared |c 0:v0 3:v3 ...`` (zero features left out)."""
    return f"{SHARED_PREFIX} " + " ".join(
        f"{i}:{v:.6g}" for i, v in enumerate(context.tolist()) if v
    )


@lru_cache(maxsize=4096)
def static_action_line(model: str, features: tuple[float, ...]) -> str:
    """An action's line from its model name and static numeric features."""
    numeric = " ".join(f"{n}:{v:.6g}" for n, v in zip(ACTION_FEATURES, features, strict=False))
    return f"{ACTION_PREFIX}{model_token(model)} {numeric}"


def action_line(action: Action) -> str:
    """An action's line (depends only on the model and its static features: formatted once)."""
    return static_action_line(action.model, tuple(action.features.tolist()))


def label(cost: float, probability: float) -> str:
    """The label of the chosen action of a learned example."""
    return f"0:{cost:.6g}:{probability:.6g}"


def example_lines(
    context: np.ndarray,
    actions: Sequence[Action],
    chosen: int | None = None,
    probability: float = 1.0,
    reward: float = 0.0,
) -> list[str]:
    """The lines of one example; labelled (cost ``-reward``) on action ``chosen`` if given."""
    lines = [context_line(context)]
    for i, action in enumerate(actions):
        line = action_line(action)
        if i == chosen:
            line = f"{label(-reward, probability)} {line}"
        lines.append(line)
    return lines


# ---- vectorised: many examples at once ----------------------------------------------------------

_POW10 = 10.0 ** np.arange(0, 309)


def round6(values: np.ndarray) -> np.ndarray:
    """``values`` rounded to 6 significant digits, as ``float(f"{v:.6g}")`` gives.

    ``round(v * 10**k) / 10**k`` with an exact power of ten is the correctly rounded decimal
    (up to ties), so VW parses the same float from our text as from :func:`context_line`'s.
    """
    return _round6(values)[0]


def _round6(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`round6`, and where the 6th digit is next to a tie (there the float product may
    round the other way than ``%g``, which rounds the exact binary value)."""
    x = np.asarray(values, dtype=float)
    out = x.copy()
    near_tie = np.zeros(len(x), dtype=bool)
    ok = np.flatnonzero(np.isfinite(x) & (x != 0))
    v = x[ok]
    shift = 5 - np.floor(np.log10(np.abs(v))).astype(np.int64)
    up = shift >= 0
    scale = _POW10[np.minimum(np.abs(shift), 308)]
    with np.errstate(over="ignore", invalid="ignore"):
        scaled = v * scale
        down = np.flatnonzero(~up)
        scaled[down] = v[down] / scale[down]
        rounded = np.round(scaled)
        near_tie[ok] = np.abs(np.abs(scaled - rounded) - 0.5) < 1e-6
        rounded /= scale
        rounded[down] = np.round(scaled[down]) * scale[down]
    rounded = np.where(np.isfinite(rounded) & (np.abs(shift) <= 308), rounded, v)
    out[ok] = rounded
    return out, near_tie


def _numbers(values: np.ndarray) -> pa.Array:
    """``f"{v:.6g}"`` of every value: Arrow's cast of the 6-digit rounding spells it the same
    way except where ``%g`` uses an exponent (below 1e-4 or from 1e6 on in magnitude, and
    non-finite values) and next to a rounding tie; those are formatted by Python (few: our
    features are neither tiny nor huge, nor decimal ties)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    values = np.asarray(values, dtype=float).ravel()
    rounded, other = _round6(values)
    text = pc.cast(pa.array(rounded), pa.string())
    magnitude = np.abs(rounded)  # %g picks its notation after rounding (999999.5 -> 1e+06)
    with np.errstate(invalid="ignore"):
        other |= ~np.isfinite(values) | ((magnitude < 1e-4) & (magnitude > 0))
        other |= magnitude >= 1e6
    if other.any():
        spelled = [f"{v:.6g}" for v in values[other].tolist()]
        text = pc.replace_with_mask(text, pa.array(other), pa.array(spelled, pa.string()))
    return text


def _prefixed(prefix: str, values: np.ndarray) -> pa.Array:
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.binary_join_element_wise(pa.scalar(prefix), _numbers(values), pa.scalar(""))


def examples_text(
    context: np.ndarray,
    eligible: pa.ListArray,
    per_action: np.ndarray,
    offsets: np.ndarray,
    chosen_flat: np.ndarray,
    label_cost: np.ndarray,
    probability: np.ndarray,
) -> list[str]:
    """One multi-line labelled example per row, the text :func:`example_lines` writes.

    ``context`` (n, width); ``eligible`` the eligible models per row; ``per_action`` their
    static features (one row per eligible model, all rows flattened; ``offsets`` where each
    row's start); ``chosen_flat`` the flat index of each row's chosen action, labelled
    ``0:label_cost:probability``. A few vectorised Arrow kernels over all values (no Python
    loop per row).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    n, width = context.shape
    if n == 0:
        return []
    flat = context.ravel()
    nonzero = flat != 0
    index = np.tile(np.arange(width, dtype=np.int32), n)[nonzero]
    prefixes = pc.take(pa.array([f"{j}:" for j in range(width)]), pa.array(index))
    pairs = pc.binary_join_element_wise(prefixes, _numbers(flat[nonzero]), pa.scalar(""))
    per_row = np.concatenate([[0], np.cumsum(nonzero.reshape(n, width).sum(axis=1))])
    shared = pc.binary_join(
        pa.ListArray.from_arrays(pa.array(per_row.astype(np.int32)), pairs), " "
    )
    shared = pc.binary_join_element_wise(pa.scalar(SHARED_PREFIX), shared, pa.scalar(" "))
    names = pc.replace_substring_regex(pc.list_flatten(eligible), UNSAFE, "_")
    numeric = [
        _prefixed(f"{name}:", per_action[:, k])
        for k, name in zip(range(per_action.shape[1]), ACTION_FEATURES, strict=False)
    ]
    head = pc.binary_join_element_wise(pa.scalar(ACTION_PREFIX), names, pa.scalar(""))
    lines = pc.binary_join_element_wise(head, *numeric, pa.scalar(" "))
    labels = pc.binary_join_element_wise(
        pa.scalar("0"), _numbers(label_cost), _numbers(probability), pa.scalar(":")
    )
    label_at = np.full(len(names), None, dtype=object)
    label_at[chosen_flat] = labels.to_numpy(zero_copy_only=False)
    lines = pc.binary_join_element_wise(
        pa.array(label_at, pa.string()), lines, pa.scalar(" "), null_handling="skip"
    )
    action_block = pc.binary_join(
        pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), lines), "\n"
    )
    text = pc.binary_join_element_wise(shared, action_block, pa.scalar("\n"))
    return list(text.to_pylist())


__all__ = [
    "ACTION_PREFIX",
    "SHARED_PREFIX",
    "UNSAFE",
    "action_line",
    "context_line",
    "example_lines",
    "examples_text",
    "label",
    "model_token",
    "round6",
    "static_action_line",
]
