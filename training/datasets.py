"""Routing datasets: per-prompt x per-model outcomes, loaded into dense matrices.

A routing dataset is a directory with ``prompts.parquet``, ``outcomes.parquet`` and
``models.csv`` (format: README.md, "The offline benchmark"). :func:`load_dataset` validates it,
derives cost and latency from ``models.csv`` where they were not measured, and returns a
:class:`RoutingDataset` whose matrices have shape ``(n_prompts, n_models)``.

Holes are explicit: an absent or null ``score`` is ``NaN`` in :attr:`RoutingDataset.quality`
and ``False`` in :attr:`RoutingDataset.available`. Evaluation never counts it as 0: a model is
not eligible on a prompt where its outcome is unknown. What the loader did is listed in
:attr:`RoutingDataset.notes`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from features.errors import DatasetError
from router.policy.actions import CATALOGUE_COLUMNS

PROMPT_COLUMNS = ("prompt_id", "task", "prompt", "split")
OUTCOME_COLUMNS = (
    "prompt_id",
    "model",
    "score",
    "cost_usd",
    "input_tokens",
    "output_tokens",
    "latency_ms",
)
MODEL_COLUMNS = CATALOGUE_COLUMNS
SPLITS = ("train", "test")
BUNDLED = "bundled"


@dataclass(frozen=True)
class RoutingDataset:
    """A validated routing dataset as aligned matrices.

    Attributes
    ----------
    name : str
        Directory name (or ``bundled``).
    prompts : pandas.DataFrame
        ``prompt_id, task, prompt, split``, one row per prompt, in matrix row order.
    models : pandas.DataFrame
        The model catalogue (``models.csv``) restricted to models with outcomes, in matrix
        column order.
    quality, cost, latency : numpy.ndarray, shape (n_prompts, n_models)
        Score in [0, 1] (``NaN`` where unknown), cost in USD, latency in ms.
    input_tokens, output_tokens : numpy.ndarray, shape (n_prompts, n_models)
    available : numpy.ndarray of bool, shape (n_prompts, n_models)
        Whether the model's outcome on the prompt is known.
    responses : numpy.ndarray of object or None, shape (n_prompts, n_models)
        The recorded answers when the dataset has them.
    notes : list of str
        What the loader derived or excluded, for reports.
    """

    name: str
    prompts: pd.DataFrame
    models: pd.DataFrame
    quality: np.ndarray
    cost: np.ndarray
    latency: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    available: np.ndarray
    responses: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def model_names(self) -> list[str]:
        return [str(m) for m in self.models["model"]]

    @property
    def n_prompts(self) -> int:
        return len(self.prompts)

    def subset(self, rows: np.ndarray) -> RoutingDataset:
        """Rows selected by a boolean mask or integer index, all models kept."""
        idx = np.flatnonzero(rows) if rows.dtype == bool else np.asarray(rows)
        return RoutingDataset(
            name=self.name,
            prompts=self.prompts.iloc[idx].reset_index(drop=True),
            models=self.models,
            quality=self.quality[idx],
            cost=self.cost[idx],
            latency=self.latency[idx],
            input_tokens=self.input_tokens[idx],
            output_tokens=self.output_tokens[idx],
            available=self.available[idx],
            responses=None if self.responses is None else self.responses[idx],
            notes=self.notes,
        )

    def with_models(self, names: Sequence[str]) -> RoutingDataset:
        """The same prompts with only the model columns ``names``, in that order."""
        unknown = [m for m in names if m not in self.model_names]
        if unknown or not names:
            raise DatasetError(
                f"with_models needs models of the dataset, got unknown {unknown} "
                f"(known: {self.model_names})"
            )
        cols = [self.model_names.index(m) for m in names]
        return RoutingDataset(
            name=self.name,
            prompts=self.prompts,
            models=self.models.iloc[cols].reset_index(drop=True),
            quality=self.quality[:, cols],
            cost=self.cost[:, cols],
            latency=self.latency[:, cols],
            input_tokens=self.input_tokens[:, cols],
            output_tokens=self.output_tokens[:, cols],
            available=self.available[:, cols],
            responses=None if self.responses is None else self.responses[:, cols],
            notes=self.notes,
        )

    def split(self, name: str) -> RoutingDataset:
        if name not in SPLITS:
            raise DatasetError(f"split must be one of {SPLITS}, got {name!r}")
        return self.subset((self.prompts["split"] == name).to_numpy())


def bundled_path() -> Path:
    """Directory of the bundled MMLU-Pro sample shipped inside the package."""
    return Path(str(resources.files("training") / "data" / "mmlu_pro_sample"))


def load_dataset(path: str | Path) -> RoutingDataset:
    """Load and validate a routing dataset directory (or ``"bundled"``).

    Raises
    ------
    DatasetError
        Naming the file, the column and the problem: a missing file or column, a score outside
        [0, 1], an outcome for a model absent from ``models.csv`` or for an unknown prompt, a
        duplicated prompt or (prompt, model) row, a split other than train/test.
    """
    directory = bundled_path() if str(path) == BUNDLED else Path(path)
    if not directory.is_dir():
        raise DatasetError(f"dataset directory {directory} does not exist")
    prompts = _read(directory / "prompts.parquet", PROMPT_COLUMNS)
    outcomes = _read(directory / "outcomes.parquet", OUTCOME_COLUMNS)
    models = _read(directory / "models.csv", MODEL_COLUMNS)
    notes: list[str] = []

    _validate_prompts(prompts, directory / "prompts.parquet")
    _validate_models(models, directory / "models.csv")
    _validate_outcomes(outcomes, prompts, models, directory / "outcomes.parquet")

    model_order = [m for m in models["model"] if m in set(outcomes["model"])]
    unused = sorted(set(models["model"]) - set(model_order))
    if unused:
        notes.append(f"models.csv lists {len(unused)} model(s) without outcomes, ignored: {unused}")
    catalogue = models.set_index("model").loc[model_order].reset_index()

    null_scores = int(outcomes["score"].isna().sum())
    if null_scores:
        notes.append(f"{null_scores} outcome(s) with a null score treated as unknown (not 0)")

    outcomes = _derive_cost_latency(outcomes, catalogue, notes)
    prompts = prompts.reset_index(drop=True)
    row = pd.Index(prompts["prompt_id"]).get_indexer(outcomes["prompt_id"])
    col = pd.Index(model_order).get_indexer(outcomes["model"])
    shape = (len(prompts), len(model_order))

    def matrix(column: str, fill: float = np.nan) -> np.ndarray:
        out = np.full(shape, fill, dtype=float)
        out[row, col] = outcomes[column].to_numpy(dtype=float)
        return out

    quality = matrix("score")
    available = ~np.isnan(quality)
    missing = int(shape[0] * shape[1] - len(outcomes))
    if missing:
        per_model = shape[0] - np.bincount(col, minlength=shape[1])
        holes = {m: int(c) for m, c in zip(model_order, per_model, strict=True) if c}
        notes.append(f"{missing} absent (prompt, model) outcome(s) are unknown; per model: {holes}")
    responses = None
    if "response" in outcomes.columns:
        responses = np.full(shape, None, dtype=object)
        responses[row, col] = outcomes["response"].to_numpy(dtype=object)
    return RoutingDataset(
        name="bundled" if str(path) == BUNDLED else directory.name,
        prompts=prompts[list(PROMPT_COLUMNS)],
        models=catalogue,
        quality=quality,
        cost=matrix("cost_usd"),
        latency=matrix("latency_ms"),
        input_tokens=matrix("input_tokens", 0.0),
        output_tokens=matrix("output_tokens", 0.0),
        available=available,
        responses=responses,
        notes=notes,
    )


def _read(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    if not path.is_file():
        raise DatasetError(f"{path}: file is missing")
    try:
        frame = pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
    except Exception as exc:  # pyarrow and the csv parser raise many types
        raise DatasetError(f"{path}: cannot be read ({exc})") from exc
    absent = [c for c in required if c not in frame.columns]
    if absent:
        raise DatasetError(f"{path}: missing column(s) {absent}; expected {list(required)}")
    return frame


def _fail_rows(path: Path, column: str, problem: str, bad: pd.Series, frame: pd.DataFrame) -> None:
    if bad.any():
        first = frame.loc[bad].head(3)
        key = "prompt_id" if "prompt_id" in frame.columns else frame.columns[0]
        examples = ", ".join(map(str, first[key].tolist()))
        raise DatasetError(
            f"{path}: column {column!r}: {int(bad.sum())} row(s) {problem} (first: {examples})"
        )


def _validate_prompts(prompts: pd.DataFrame, path: Path) -> None:
    _fail_rows(path, "prompt_id", "are null", prompts["prompt_id"].isna(), prompts)
    _fail_rows(path, "prompt_id", "are duplicated", prompts["prompt_id"].duplicated(), prompts)
    _fail_rows(path, "prompt", "are null", prompts["prompt"].isna(), prompts)
    bad_split = ~prompts["split"].isin(SPLITS)
    _fail_rows(path, "split", f"are not one of {list(SPLITS)}", bad_split, prompts)


def _validate_models(models: pd.DataFrame, path: Path) -> None:
    _fail_rows(path, "model", "are duplicated", models["model"].duplicated(), models)
    for column in MODEL_COLUMNS[1:]:
        values = pd.to_numeric(models[column], errors="coerce")
        _fail_rows(path, column, "are not non-negative numbers", ~(values >= 0), models)
    _fail_rows(path, "tokens_per_s", "are zero", models["tokens_per_s"] == 0, models)


def _validate_outcomes(
    outcomes: pd.DataFrame, prompts: pd.DataFrame, models: pd.DataFrame, path: Path
) -> None:
    score = pd.to_numeric(outcomes["score"], errors="coerce")
    out_of_range = score.notna() & ~score.between(0.0, 1.0)
    _fail_rows(path, "score", "are outside [0, 1]", out_of_range, outcomes)
    not_numeric = outcomes["score"].notna() & score.isna()
    _fail_rows(path, "score", "are not numbers", not_numeric, outcomes)
    unknown_model = ~outcomes["model"].isin(models["model"])
    if unknown_model.any():
        names = sorted(set(outcomes.loc[unknown_model, "model"]))[:5]
        raise DatasetError(f"{path}: column 'model': unknown model(s) not in models.csv: {names}")
    unknown_prompt = ~outcomes["prompt_id"].isin(prompts["prompt_id"])
    _fail_rows(path, "prompt_id", "are not in prompts.parquet", unknown_prompt, outcomes)
    duplicated = outcomes.duplicated(["prompt_id", "model"])
    _fail_rows(
        path, "prompt_id, model", "are duplicated (prompt, model) pairs", duplicated, outcomes
    )
    tokens = pd.to_numeric(outcomes["input_tokens"], errors="coerce")
    _fail_rows(path, "input_tokens", "are not non-negative numbers", ~(tokens >= 0), outcomes)
    for column in ("output_tokens", "cost_usd", "latency_ms"):  # nullable: derived when null
        values = pd.to_numeric(outcomes[column], errors="coerce")
        bad = outcomes[column].notna() & ~(values >= 0)
        _fail_rows(path, column, "are not null or non-negative numbers", bad, outcomes)


def _derive_cost_latency(
    outcomes: pd.DataFrame, catalogue: pd.DataFrame, notes: list[str]
) -> pd.DataFrame:
    out = outcomes.copy()
    prices = catalogue.set_index("model")
    per = prices.loc[out["model"]].reset_index(drop=True)
    out = out.reset_index(drop=True)
    for column in ("score", "input_tokens"):
        out[column] = pd.to_numeric(out[column], errors="coerce")
    output_tokens = pd.to_numeric(out["output_tokens"], errors="coerce")
    if output_tokens.isna().any():
        from_text = (
            out["response"].str.len() / 4
            if "response" in out.columns
            else pd.Series(np.nan, index=out.index)
        )
        filled = output_tokens.fillna(from_text)
        median = filled.groupby(out["model"]).transform("median")
        n_missing = int(output_tokens.isna().sum())
        out["output_tokens"] = filled.fillna(median).fillna(0.0)
        notes.append(
            f"{n_missing} null output_tokens estimated from the answer length / 4, "
            "else the model's median"
        )
    else:
        out["output_tokens"] = output_tokens
    cost = pd.to_numeric(out["cost_usd"], errors="coerce")
    derived = (
        out["input_tokens"] * per["usd_per_mtok_in"]
        + out["output_tokens"] * per["usd_per_mtok_out"]
    ) / 1e6
    if cost.isna().any():
        notes.append(
            f"{int(cost.isna().sum())} cost_usd value(s) derived from tokens x models.csv "
            "list prices (approximate late-2024 prices)"
        )
    out["cost_usd"] = cost.fillna(derived)
    latency = pd.to_numeric(out["latency_ms"], errors="coerce")
    derived_latency = per["ttft_ms"] + out["output_tokens"] / per["tokens_per_s"] * 1000.0
    if latency.isna().any():
        notes.append(
            f"{int(latency.isna().sum())} latency_ms value(s) derived from ttft_ms + "
            "output_tokens / tokens_per_s (typical serving speeds)"
        )
    out["latency_ms"] = latency.fillna(derived_latency)
    return out
