"""The action catalogue: each model's static description and a per-request cost/latency model.

An :class:`~router.policy.base.Action` carries static features (price, speed, context window)
and the request's expected cost and latency. Expected cost = input tokens x input price +
predicted output tokens x output price; output tokens are predicted per model by a ridge
regression on the request features (one matrix-vector product per request for all models).

Serving loads a catalogue with the standard library and numpy only (``load``); pandas and
scikit-learn are imported where a catalogue is fitted or saved (training).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from features.actions import ACTION_FEATURES as ACTION_FEATURES  # re-exported
from features.errors import PolicyError
from router.policy.base import Action

if TYPE_CHECKING:
    import pandas as pd

CATALOGUE_COLUMNS = (
    "model",
    "usd_per_mtok_in",
    "usd_per_mtok_out",
    "ttft_ms",
    "tokens_per_s",
    "context_tokens",
)


class ActionCatalogue:
    """Models with their prices and speeds, and a fitted output-length model.

    Parameters
    ----------
    models : DataFrame with :data:`CATALOGUE_COLUMNS`, or a mapping of those column names to
        sequences (what ``load`` reads without pandas)

    Attributes (after ``fit``)
    --------------------------
    token_coef_ : ndarray, shape (n_features, n_models)
    token_intercept_ : ndarray, shape (n_models,)
        Ridge regression of ``log1p(output_tokens)`` on request features, per model.
    """

    def __init__(self, models: pd.DataFrame | Mapping[str, Sequence[Any]]) -> None:
        missing = [c for c in CATALOGUE_COLUMNS if c not in models]
        if missing:
            raise PolicyError(f"action catalogue: missing column(s) {missing}")
        # the table's columns as plain lists (a DataFrame's values or the mapping's)
        self._table: dict[str, list[Any]] = {c: list(models[c]) for c in CATALOGUE_COLUMNS}
        self.names: list[str] = [str(m) for m in self._table["model"]]
        self.index = {m: i for i, m in enumerate(self.names)}
        m = {c: np.asarray(self._table[c], dtype=float) for c in CATALOGUE_COLUMNS[1:]}
        self.static_features = np.column_stack(
            [
                np.log1p(m["usd_per_mtok_in"]),
                np.log1p(m["usd_per_mtok_out"]),
                np.log(m["ttft_ms"] + 1.0),
                np.log(m["tokens_per_s"]),
                np.log(m["context_tokens"]),
            ]
        )
        # read-only, and one row object per model reused by every request: a policy may key
        # per-model state on the identity of these arrays (the VW policy's fast path does)
        self.static_features.setflags(write=False)
        self._rows: list[np.ndarray] = list(self.static_features)
        self._price_in = m["usd_per_mtok_in"] / 1e6
        self._price_out = m["usd_per_mtok_out"] / 1e6
        self._ttft = m["ttft_ms"]
        self._speed = m["tokens_per_s"]

    @property
    def models(self) -> pd.DataFrame:
        """The catalogue as a DataFrame with :data:`CATALOGUE_COLUMNS` (imports pandas)."""
        import pandas as pd

        return pd.DataFrame(self._table, columns=list(CATALOGUE_COLUMNS))

    def fit(
        self, contexts: np.ndarray, output_tokens: np.ndarray, available: np.ndarray
    ) -> ActionCatalogue:
        """Fit the per-model output-length regressions.

        Parameters
        ----------
        contexts : ndarray, shape (n, n_features)
        output_tokens, available : ndarray, shape (n, n_models)
        """
        from sklearn.linear_model import Ridge  # fitting only: serving never imports it

        k = len(self.names)
        coef = np.zeros((contexts.shape[1], k))
        intercept = np.zeros(k)
        for j in range(k):
            ok = available[:, j]
            if ok.sum() < 5:
                intercept[j] = (
                    float(np.log1p(np.nanmedian(output_tokens[:, j]))) if ok.any() else 0.0
                )
                continue
            reg = Ridge(alpha=1.0).fit(contexts[ok], np.log1p(output_tokens[ok, j]))
            coef[:, j] = reg.coef_
            intercept[j] = float(reg.intercept_)
        self.token_coef_ = coef
        self.token_intercept_ = intercept
        return self

    def expected_output_tokens(self, contexts: np.ndarray) -> np.ndarray:
        """Predicted output tokens, shape ``(n, n_models)`` (or ``(n_models,)`` for one row)."""
        if not hasattr(self, "token_coef_"):
            raise PolicyError("ActionCatalogue is not fitted: call fit() or load() first")
        log_tokens = contexts @ self.token_coef_
        log_tokens += self.token_intercept_
        # = np.clip(log_tokens, 0, 12) (NaN stays NaN), without np.clip's Python-level overhead
        np.maximum(log_tokens, 0.0, out=log_tokens)
        np.minimum(log_tokens, 12.0, out=log_tokens)
        return np.expm1(log_tokens, out=log_tokens)

    def expected_cost(self, contexts: np.ndarray, input_tokens: np.ndarray) -> np.ndarray:
        """Predicted USD cost, same shape as ``expected_output_tokens``; ``input_tokens`` per
        row (shape (n,) or (n, n_models))."""
        tokens_in = np.asarray(input_tokens, dtype=float)
        if contexts.ndim == 2 and tokens_in.ndim == 1:
            tokens_in = tokens_in[:, None]
        return tokens_in * self._price_in + self.expected_output_tokens(contexts) * self._price_out

    @property
    def ttft_ms(self) -> np.ndarray:
        """Time to first token of each catalogue model, ms."""
        return self._ttft

    @property
    def tokens_per_s(self) -> np.ndarray:
        """Output speed of each catalogue model."""
        return self._speed

    def expected_latency(
        self, contexts: np.ndarray, output_tokens: np.ndarray | None = None
    ) -> np.ndarray:
        """Predicted latency in ms; pass ``output_tokens`` when already predicted."""
        if output_tokens is None:
            output_tokens = self.expected_output_tokens(contexts)
        latency: np.ndarray = self._ttft + output_tokens / self._speed * 1000.0
        return latency

    def actions(
        self, context: np.ndarray, input_tokens: float, models: Sequence[str] | None = None
    ) -> list[Action]:
        """The actions of one request for ``models`` (default: all), in that order."""
        names = self.names if models is None else list(models)
        unknown = [m for m in names if m not in self.index]
        if unknown:
            raise PolicyError(f"unknown model(s) {unknown}; the catalogue has {self.names}")
        out_tokens = self.expected_output_tokens(context)
        result = []
        for name in names:
            j = self.index[name]
            result.append(
                Action(
                    model=name,
                    features=self._rows[j],
                    expected_cost=float(
                        input_tokens * self._price_in[j] + out_tokens[j] * self._price_out[j]
                    ),
                    expected_latency_ms=float(
                        self._ttft[j] + out_tokens[j] / self._speed[j] * 1000.0
                    ),
                )
            )
        return result

    def actions_with_costs(
        self, costs: np.ndarray, latencies: np.ndarray, models: Sequence[str] | None = None
    ) -> list[Action]:
        """Actions whose expected cost/latency are given (e.g. precomputed in a batch)."""
        names = self.names if models is None else list(models)
        cost = np.asarray(costs, dtype=float).tolist()
        latency = np.asarray(latencies, dtype=float).tolist()
        rows, index, new = self._rows, self.index, object.__new__
        result = []
        for name in names:
            j = index[name]
            # = Action(name, rows[j], cost[j], latency[j]) in a third of the time (one per
            # eligible model per request): the frozen dataclass's __init__ sets the same four
            # attributes, through object.__setattr__
            action = new(Action)
            action.__dict__.update(
                model=name, features=rows[j], expected_cost=cost[j], expected_latency_ms=latency[j]
            )
            result.append(action)
        return result

    def save(self, directory: str | Path) -> Path:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        self.models.to_csv(path / "catalogue.csv", index=False)
        np.savez(path / "catalogue.npz", coef=self.token_coef_, intercept=self.token_intercept_)
        (path / "catalogue.json").write_text(json.dumps({"models": self.names}))
        return path

    @classmethod
    def load(cls, directory: str | Path) -> ActionCatalogue:
        path = Path(directory)
        catalogue = cls(read_table(path / "catalogue.csv"))
        arrays = np.load(path / "catalogue.npz")
        catalogue.token_coef_ = arrays["coef"]
        catalogue.token_intercept_ = arrays["intercept"]
        return catalogue


def _cell(column: str, text: str) -> Any:
    """One CSV cell as ``pandas.read_csv`` reads a catalogue's: the model name as text, a number
    as an int when it is written as one, else a float."""
    if column == "model":
        return text
    if text == "":
        return float("nan")  # how pandas writes a missing number
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            raise PolicyError(f"action catalogue: {column}={text!r} is not a number") from None


def read_table(path: Path) -> dict[str, list[Any]]:
    """The columns of a catalogue CSV (as ``save`` writes it), read without pandas."""
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        missing = [c for c in CATALOGUE_COLUMNS if c not in header]
        if missing:
            raise PolicyError(f"{path}: missing column(s) {missing}")
        table: dict[str, list[Any]] = {c: [] for c in CATALOGUE_COLUMNS}
        for row in reader:
            for column in CATALOGUE_COLUMNS:
                table[column].append(_cell(column, row[column]))
    return table
