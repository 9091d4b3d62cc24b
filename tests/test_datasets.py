"""Tests for training.datasets.load_dataset on small hand-built datasets, the bundled sample and
(when present) the shared RouterBench copy. Format: shared/data/README.md."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from features.errors import DatasetError
from router.http.errors import status_of
from training.datasets import RoutingDataset, load_dataset

SHARED_DATA = Path(__file__).parents[2] / "shared" / "data"

# models.csv order is zeta, unused, alpha: neither alphabetical nor the order outcomes list them.
MODELS = pd.DataFrame(
    {
        "model": ["zeta", "unused", "alpha"],
        "usd_per_mtok_in": [10.0, 5.0, 1.0],
        "usd_per_mtok_out": [30.0, 5.0, 2.0],
        "ttft_ms": [400.0, 100.0, 100.0],
        "tokens_per_s": [20.0, 10.0, 50.0],
        "context_tokens": [128000, 8000, 8000],
    }
)

PROMPTS = pd.DataFrame(
    {
        "prompt_id": ["p1", "p2", "p3"],
        "task": ["math", "law", "math"],
        "prompt": ["What is 2+2?", "Is it legal?", "Integrate x."],
        "split": ["train", "train", "test"],
    }
)

# (p3, alpha) is absent on purpose. Rows are not in prompt/model order.
OUTCOMES = pd.DataFrame(
    {
        "prompt_id": ["p2", "p1", "p3", "p1", "p2"],
        "model": ["alpha", "alpha", "zeta", "zeta", "zeta"],
        "score": [0.5, 0.0, 0.25, 1.0, None],
        "cost_usd": [None, None, 0.01, 0.5, None],
        "input_tokens": [10, 1000, 50, 100, 2000],
        "output_tokens": [None, 200, 20, 50, 100],
        "latency_ms": [None, None, None, 1234.0, None],
        "response": ["x" * 40, "five", "dx", "4", None],
    }
)


def write_dataset(
    directory: Path,
    prompts: pd.DataFrame | None = None,
    outcomes: pd.DataFrame | None = None,
    models: pd.DataFrame | None = None,
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (PROMPTS if prompts is None else prompts).to_parquet(directory / "prompts.parquet")
    (OUTCOMES if outcomes is None else outcomes).to_parquet(directory / "outcomes.parquet")
    (MODELS if models is None else models).to_csv(directory / "models.csv", index=False)
    return directory


@pytest.fixture
def small(tmp_path: Path) -> RoutingDataset:
    return load_dataset(write_dataset(tmp_path / "small"))


def cell(ds: RoutingDataset, prompt_id: str, model: str) -> tuple[int, int]:
    row = ds.prompts["prompt_id"].tolist().index(prompt_id)
    return row, ds.model_names.index(model)


def note_with(ds: RoutingDataset, fragment: str) -> str:
    hits = [n for n in ds.notes if fragment in n]
    assert len(hits) == 1, f"expected one note containing {fragment!r}, got {ds.notes}"
    return hits[0]


# ---------------------------------------------------------------- happy path


def test_shapes_and_orders(small: RoutingDataset) -> None:
    assert small.name == "small"
    assert small.n_prompts == 3
    # models.csv order, restricted to models that have outcomes
    assert small.model_names == ["zeta", "alpha"]
    assert small.models["model"].tolist() == ["zeta", "alpha"]
    assert small.models["usd_per_mtok_in"].tolist() == [10.0, 1.0]
    # prompts.parquet order
    assert small.prompts["prompt_id"].tolist() == ["p1", "p2", "p3"]
    assert list(small.prompts.columns) == ["prompt_id", "task", "prompt", "split"]
    for matrix in (
        small.quality,
        small.cost,
        small.latency,
        small.input_tokens,
        small.output_tokens,
        small.available,
    ):
        assert matrix.shape == (3, 2)
    assert small.available.dtype == bool
    assert small.responses is not None
    assert small.responses.shape == (3, 2)


def test_unused_model_is_noted(small: RoutingDataset) -> None:
    note = note_with(small, "without outcomes")
    assert "unused" in note


def test_quality_matrix(small: RoutingDataset) -> None:
    expected = np.array([[1.0, 0.0], [np.nan, 0.5], [0.25, np.nan]])
    np.testing.assert_array_equal(small.quality, expected)
    np.testing.assert_array_equal(
        small.available, np.array([[True, True], [False, True], [True, False]])
    )


def test_measured_cost_and_latency_are_kept(small: RoutingDataset) -> None:
    assert small.cost[cell(small, "p1", "zeta")] == pytest.approx(0.5)
    assert small.latency[cell(small, "p1", "zeta")] == pytest.approx(1234.0)
    # p3/zeta: cost measured, latency derived
    assert small.cost[cell(small, "p3", "zeta")] == pytest.approx(0.01)


@pytest.mark.parametrize(
    ("prompt_id", "model", "cost", "latency"),
    [
        # alpha: 1 $/Mtok in, 2 $/Mtok out, ttft 100 ms, 50 tok/s
        ("p1", "alpha", (1000 * 1.0 + 200 * 2.0) / 1e6, 100 + 200 / 50 * 1000),
        # zeta: 10 $/Mtok in, 30 $/Mtok out, ttft 400 ms, 20 tok/s (null score: still derived)
        ("p2", "zeta", (2000 * 10.0 + 100 * 30.0) / 1e6, 400 + 100 / 20 * 1000),
        # output_tokens null -> 40 characters / 4 = 10 tokens
        ("p2", "alpha", (10 * 1.0 + 10 * 2.0) / 1e6, 100 + 10 / 50 * 1000),
    ],
)
def test_cost_and_latency_derived_from_catalogue(
    small: RoutingDataset, prompt_id: str, model: str, cost: float, latency: float
) -> None:
    at = cell(small, prompt_id, model)
    assert small.cost[at] == pytest.approx(cost, rel=1e-12)
    assert small.latency[at] == pytest.approx(latency, rel=1e-12)


def test_latency_derived_where_only_cost_measured(small: RoutingDataset) -> None:
    assert small.latency[cell(small, "p3", "zeta")] == pytest.approx(400 + 20 / 20 * 1000)


def test_tokens(small: RoutingDataset) -> None:
    np.testing.assert_array_equal(small.input_tokens, [[100, 1000], [2000, 10], [50, 0]])
    # (p2, alpha) estimated from its 40-character response; the absent pair is 0
    np.testing.assert_array_equal(small.output_tokens, [[50, 200], [100, 10], [20, 0]])


def test_null_score_is_unknown_not_zero(small: RoutingDataset) -> None:
    at = cell(small, "p2", "zeta")
    assert np.isnan(small.quality[at])
    assert not small.available[at]
    assert note_with(small, "null score").startswith("1 outcome(s)")


def test_absent_pair_is_unknown(small: RoutingDataset) -> None:
    at = cell(small, "p3", "alpha")
    assert np.isnan(small.quality[at])
    assert not small.available[at]
    assert np.isnan(small.cost[at])
    assert np.isnan(small.latency[at])
    assert small.responses is not None
    assert small.responses[at] is None
    assert note_with(small, "absent").startswith("1 absent (prompt, model)")


def test_absent_note_per_model_counts_only_absent_pairs(small: RoutingDataset) -> None:
    note = note_with(small, "absent")
    assert note.endswith("{'alpha': 1}")


def test_derivation_notes_count_rows(small: RoutingDataset) -> None:
    assert note_with(small, "cost_usd value(s) derived").startswith("3 ")
    assert note_with(small, "latency_ms value(s) derived").startswith("4 ")
    assert note_with(small, "null output_tokens").startswith("1 ")


def test_responses_aligned(small: RoutingDataset) -> None:
    assert small.responses is not None
    assert small.responses[cell(small, "p1", "alpha")] == "five"
    assert small.responses[cell(small, "p1", "zeta")] == "4"


def test_output_tokens_fall_back_to_model_median_without_responses(tmp_path: Path) -> None:
    outcomes = pd.DataFrame(
        {
            "prompt_id": ["p1", "p2", "p3", "p1"],
            "model": ["alpha", "alpha", "alpha", "zeta"],
            "score": [1.0, 0.0, 1.0, 1.0],
            "cost_usd": [None, None, None, None],
            "input_tokens": [0, 0, 0, 0],
            "output_tokens": [10, None, 30, 7],
            "latency_ms": [None, None, None, None],
        }
    )
    ds = load_dataset(write_dataset(tmp_path / "d", outcomes=outcomes))
    assert ds.responses is None
    at = cell(ds, "p2", "alpha")
    assert ds.output_tokens[at] == pytest.approx(20.0)  # median of alpha's 10 and 30
    assert ds.cost[at] == pytest.approx(20 * 2.0 / 1e6)
    assert ds.latency[at] == pytest.approx(100 + 20 / 50 * 1000)
    # no absent-pair note beyond the two missing zeta cells
    assert note_with(ds, "absent").startswith("2 absent")


def test_complete_dataset_has_no_hole_notes(tmp_path: Path) -> None:
    outcomes = pd.DataFrame(
        {
            "prompt_id": ["p1", "p1", "p2", "p2", "p3", "p3"],
            "model": ["alpha", "zeta"] * 3,
            "score": [1.0, 0.0, 1.0, 1.0, 0.0, 0.0],
            "cost_usd": [0.1] * 6,
            "input_tokens": [1] * 6,
            "output_tokens": [1] * 6,
            "latency_ms": [5.0] * 6,
        }
    )
    ds = load_dataset(write_dataset(tmp_path / "d", outcomes=outcomes))
    assert ds.available.all()
    assert not any("absent" in n or "null" in n or "derived" in n for n in ds.notes)
    np.testing.assert_array_equal(ds.cost, np.full((3, 2), 0.1))
    np.testing.assert_array_equal(ds.latency, np.full((3, 2), 5.0))


def test_split_and_subset(small: RoutingDataset) -> None:
    train = small.split("train")
    test = small.split("test")
    assert train.prompts["prompt_id"].tolist() == ["p1", "p2"]
    assert test.prompts["prompt_id"].tolist() == ["p3"]
    np.testing.assert_array_equal(train.quality, small.quality[:2])
    np.testing.assert_array_equal(test.available, small.available[2:])
    assert train.model_names == small.model_names

    by_index = small.subset(np.array([2, 0]))
    assert by_index.prompts["prompt_id"].tolist() == ["p3", "p1"]
    np.testing.assert_array_equal(by_index.cost, small.cost[[2, 0]])
    assert by_index.responses is not None and small.responses is not None
    np.testing.assert_array_equal(by_index.responses, small.responses[[2, 0]])
    by_mask = small.subset(np.array([False, True, False]))
    assert by_mask.prompts["prompt_id"].tolist() == ["p2"]
    np.testing.assert_array_equal(by_mask.latency, small.latency[[1]])

    with pytest.raises(DatasetError, match="split must be one of"):
        small.split("validation")


# ---------------------------------------------------------------- invalid input


def _drop_file(name: str) -> Callable[[Path], None]:
    return lambda d: (d / name).unlink()


def _set(frame: str, row: int, column: str, value: Any) -> Callable[[Path], None]:
    def mutate(d: Path) -> None:
        readers: dict[str, tuple[Callable[[Path], pd.DataFrame], Callable[..., object], str]] = {
            "prompts": (pd.read_parquet, lambda f, p: f.to_parquet(p), "prompts.parquet"),
            "outcomes": (pd.read_parquet, lambda f, p: f.to_parquet(p), "outcomes.parquet"),
            "models": (pd.read_csv, lambda f, p: f.to_csv(p, index=False), "models.csv"),
        }
        read, write, name = readers[frame]
        table = read(d / name)
        table[column] = table[column].astype(object)
        table.loc[row, column] = value
        write(table, d / name)

    return mutate


def _rewrite(frame: str, change: Callable[[pd.DataFrame], pd.DataFrame]) -> Callable[[Path], None]:
    def mutate(d: Path) -> None:
        if frame == "models":
            change(pd.read_csv(d / "models.csv")).to_csv(d / "models.csv", index=False)
        else:
            path = d / f"{frame}.parquet"
            change(pd.read_parquet(path)).to_parquet(path)

    return mutate


def _str_scores(table: pd.DataFrame) -> pd.DataFrame:
    table = table.copy()
    table["score"] = ["0.5", "high", "0.25", "1.0", None]
    return table


def _append_row(table: pd.DataFrame, **values: object) -> pd.DataFrame:
    row: dict[Any, object] = {**table.iloc[0].to_dict(), **values}
    return pd.concat([table, pd.DataFrame([row])])


INVALID = [
    pytest.param(
        _drop_file("outcomes.parquet"), r"outcomes\.parquet: file is missing", id="no-file"
    ),
    pytest.param(_drop_file("models.csv"), r"models\.csv: file is missing", id="no-models-csv"),
    pytest.param(
        _rewrite("prompts", lambda t: t.drop(columns=["split"])),
        r"prompts\.parquet: missing column\(s\) \['split'\]",
        id="missing-column",
    ),
    pytest.param(
        _rewrite("outcomes", lambda t: t.drop(columns=["cost_usd", "latency_ms"])),
        r"outcomes\.parquet: missing column\(s\) \['cost_usd', 'latency_ms'\]",
        id="missing-columns",
    ),
    pytest.param(
        _rewrite("models", lambda t: t.drop(columns=["tokens_per_s"])),
        r"models\.csv: missing column\(s\) \['tokens_per_s'\]",
        id="missing-model-column",
    ),
    pytest.param(
        _set("outcomes", 1, "score", 1.5),
        r"outcomes\.parquet: column 'score': 1 row\(s\) are outside \[0, 1\] \(first: p1\)",
        id="score-above-1",
    ),
    pytest.param(
        _set("outcomes", 1, "output_tokens", -10),
        r"outcomes\.parquet: column 'output_tokens': 1 row\(s\) are not null or non-negative",
        id="negative-output-tokens",
    ),
    pytest.param(
        _set("outcomes", 0, "score", -0.1),
        r"outcomes\.parquet: column 'score': 1 row\(s\) are outside \[0, 1\] \(first: p2\)",
        id="score-below-0",
    ),
    pytest.param(
        _rewrite("outcomes", _str_scores),
        r"outcomes\.parquet: column 'score': 1 row\(s\) are not numbers \(first: p1\)",
        id="score-not-numeric",
    ),
    pytest.param(
        _set("outcomes", 2, "model", "ghost"),
        r"outcomes\.parquet: column 'model': unknown model\(s\) not in models\.csv: \['ghost'\]",
        id="unknown-model",
    ),
    pytest.param(
        _set("outcomes", 2, "prompt_id", "p9"),
        r"outcomes\.parquet: column 'prompt_id': 1 row\(s\) are not in prompts\.parquet"
        r" \(first: p9\)",
        id="unknown-prompt",
    ),
    pytest.param(
        _rewrite("outcomes", lambda t: _append_row(t, score=0.0)),
        r"outcomes\.parquet: column 'prompt_id, model': 1 row\(s\) are duplicated",
        id="duplicate-pair",
    ),
    pytest.param(
        _rewrite("prompts", lambda t: _append_row(t, prompt="another text")),
        r"prompts\.parquet: column 'prompt_id': 1 row\(s\) are duplicated \(first: p1\)",
        id="duplicate-prompt",
    ),
    pytest.param(
        _set("prompts", 2, "split", "validation"),
        r"prompts\.parquet: column 'split': 1 row\(s\) are not one of \['train', 'test'\]",
        id="bad-split",
    ),
    pytest.param(
        _set("models", 2, "usd_per_mtok_out", -1.0),
        r"models\.csv: column 'usd_per_mtok_out': 1 row\(s\) are not non-negative numbers",
        id="negative-price",
    ),
    pytest.param(
        _set("models", 0, "tokens_per_s", 0.0),
        r"models\.csv: column 'tokens_per_s': 1 row\(s\) are zero",
        id="zero-speed",
    ),
    pytest.param(
        _set("outcomes", 3, "input_tokens", -5),
        r"outcomes\.parquet: column 'input_tokens': 1 row\(s\) are not non-negative",
        id="negative-input-tokens",
    ),
]


@pytest.mark.parametrize(("mutate", "message"), INVALID)
def test_invalid_dataset_is_rejected(
    tmp_path: Path, mutate: Callable[[Path], None], message: str
) -> None:
    directory = write_dataset(tmp_path / "bad")
    mutate(directory)
    with pytest.raises(DatasetError, match=message) as info:
        load_dataset(directory)
    # the message names the full path of the offending file
    assert str(directory) in str(info.value)
    assert status_of(info.value) == 422
    assert isinstance(info.value, ValueError)


def test_text_input_tokens_give_dataset_error_not_type_error(tmp_path: Path) -> None:
    outcomes = OUTCOMES.assign(input_tokens=OUTCOMES["input_tokens"].astype(str))
    directory = write_dataset(tmp_path / "d", outcomes=outcomes)
    try:
        ds = load_dataset(directory)
    except DatasetError as exc:
        assert "input_tokens" in str(exc)
    else:  # or coerced to numbers
        assert ds.input_tokens[cell(ds, "p1", "alpha")] == 1000


def test_missing_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(
        DatasetError, match=rf"dataset directory {re.escape(str(missing))} does not"
    ):
        load_dataset(missing)


def test_path_to_a_file_is_not_a_directory(tmp_path: Path) -> None:
    directory = write_dataset(tmp_path / "d")
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(directory / "models.csv")


# ---------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def bundled() -> RoutingDataset:
    return load_dataset("bundled")


def test_bundled_sample(bundled: RoutingDataset) -> None:
    assert bundled.name == "bundled"
    assert bundled.n_prompts == 3000
    assert len(bundled.model_names) == 29
    assert bundled.quality.shape == (3000, 29)
    assert bundled.prompts["prompt_id"].is_unique
    assert bundled.prompts["split"].value_counts().to_dict() == {"train": 2400, "test": 600}
    np.testing.assert_array_equal(bundled.available, ~np.isnan(bundled.quality))
    known = bundled.quality[bundled.available]
    assert ((known >= 0) & (known <= 1)).all()
    # every known outcome has a finite, non-negative cost and a positive latency
    assert np.isfinite(bundled.cost[bundled.available]).all()
    assert (bundled.cost[bundled.available] >= 0).all()
    assert (bundled.latency[bundled.available] > 0).all()
    assert 0 < (~bundled.available).sum() < 0.05 * bundled.available.size


def test_bundled_split_and_subset(bundled: RoutingDataset) -> None:
    train, test = bundled.split("train"), bundled.split("test")
    assert (train.n_prompts, test.n_prompts) == (2400, 600)
    assert set(train.prompts["split"]) == {"train"}
    assert set(test.prompts["split"]) == {"test"}
    assert not set(train.prompts["prompt_id"]) & set(test.prompts["prompt_id"])
    is_test = (bundled.prompts["split"] == "test").to_numpy()
    np.testing.assert_array_equal(test.quality, bundled.quality[is_test])
    np.testing.assert_array_equal(test.cost, bundled.cost[is_test])
    first = bundled.subset(np.arange(10))
    assert first.n_prompts == 10
    assert first.quality.shape == (10, 29)
    assert first.prompts["prompt_id"].tolist() == bundled.prompts["prompt_id"].tolist()[:10]


def test_shared_routerbench() -> None:
    directory = SHARED_DATA / "routerbench"
    if not directory.is_dir():
        pytest.skip(f"shared RouterBench data not present at {directory}")
    ds = load_dataset(directory)
    assert ds.n_prompts == 3164
    assert len(ds.model_names) == 11
    assert ds.quality.shape == (3164, 11)
    assert int((~ds.available).sum()) == 68
    assert note_with(ds, "null score").startswith("68 outcome(s)")
    # RouterBench has measured cost for every call: nothing derived
    assert not any("cost_usd value(s) derived" in n for n in ds.notes)
    assert np.isfinite(ds.cost).all()


def test_with_models_keeps_prompts_and_the_named_columns_in_order(bundled: RoutingDataset) -> None:
    names = [bundled.model_names[3], bundled.model_names[0]]
    two = bundled.with_models(names)
    assert two.model_names == names and two.n_prompts == bundled.n_prompts
    np.testing.assert_array_equal(two.quality, bundled.quality[:, [3, 0]])
    np.testing.assert_array_equal(two.available, bundled.available[:, [3, 0]])
    np.testing.assert_array_equal(two.cost, bundled.cost[:, [3, 0]])
    with pytest.raises(DatasetError, match=r"unknown \['gpt-9'\]"):
        bundled.with_models(["gpt-9", names[0]])
    with pytest.raises(DatasetError, match="with_models needs"):
        bundled.with_models([])
