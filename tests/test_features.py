from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer

from features.errors import FeaturizerError
from features.featurizer import FeaturizerConfig, RequestFeaturizer, analyze
from features.signals import SIGNAL_NAMES, compute_signals
from training.datasets import RoutingDataset


def test_fast_path_equals_scikit_learn(small: RoutingDataset) -> None:
    train, test = small.split("train"), small.split("test")
    featurizer = RequestFeaturizer(FeaturizerConfig(n_components=16, max_chars=300)).fit(
        train.prompts["prompt"].tolist()
    )
    texts = test.prompts["prompt"].tolist()
    reference = TfidfVectorizer(
        analyzer=lambda t: analyze(t, 300),
        sublinear_tf=True,
        vocabulary=featurizer.vocabulary_,
        lowercase=False,  # the analyzer lower-cases; the check on a fixed vocabulary wants str
    )
    reference.fit(train.prompts["prompt"].tolist())
    lsa = reference.transform(texts) @ featurizer.projection_[:-1]
    ours = featurizer.transform(texts)
    assert ours.shape == (len(texts), 16 + len(SIGNAL_NAMES))
    np.testing.assert_allclose(ours[:, :16], lsa, atol=1e-9)
    assert featurizer.feature_names[-len(SIGNAL_NAMES) :] == list(SIGNAL_NAMES)


def test_unknown_words_and_empty_text_give_zero_embedding(small: RoutingDataset) -> None:
    featurizer = RequestFeaturizer(FeaturizerConfig(n_components=8)).fit(
        small.prompts["prompt"].tolist()[:100]
    )
    for text in ("", "zzqxj wvvkq", "!!!"):
        row = featurizer.transform_one(text)
        assert np.all(row[:8] == 0.0)
        assert np.all(np.isfinite(row))


def test_save_load_round_trip_keeps_version_and_output(
    tmp_path: Path, small: RoutingDataset
) -> None:
    texts = small.prompts["prompt"].tolist()[:200]
    featurizer = RequestFeaturizer(FeaturizerConfig(n_components=8)).fit(texts)
    featurizer.save(tmp_path / "f")
    loaded = RequestFeaturizer.load(tmp_path / "f")
    assert loaded.version_ == featurizer.version_
    np.testing.assert_array_equal(loaded.transform(texts[:20]), featurizer.transform(texts[:20]))
    other = RequestFeaturizer(FeaturizerConfig(n_components=8)).fit(texts[:150])
    assert other.version_ != featurizer.version_


def test_altered_files_are_refused(tmp_path: Path, small: RoutingDataset) -> None:
    featurizer = RequestFeaturizer(FeaturizerConfig(n_components=8)).fit(
        small.prompts["prompt"].tolist()[:100]
    )
    featurizer.save(tmp_path / "f")
    arrays = dict(np.load(tmp_path / "f" / "featurizer.npz"))
    arrays["idf"] = arrays["idf"] * 2
    np.savez(tmp_path / "f" / "featurizer.npz", **arrays)
    with pytest.raises(FeaturizerError, match="does not match"):
        RequestFeaturizer.load(tmp_path / "f")


def test_unfitted_featurizer_raises() -> None:
    with pytest.raises(FeaturizerError, match="not fitted"):
        RequestFeaturizer().transform_one("hello")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_components": 0}, "n_components"),
        ({"max_features": 1}, "max_features"),
        ({"max_chars": 3}, "max_chars"),
        ({"min_df": 0}, "min_df"),
    ],
)
def test_invalid_config(kwargs: dict[str, int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FeaturizerConfig(**kwargs)


def test_signals_see_code_maths_script_and_options() -> None:
    def named(text: str, **kw: Any) -> dict[str, float]:
        return dict(zip(SIGNAL_NAMES, compute_signals(text, **kw), strict=True))

    code = named("def f(x):\n    return x + 1\n")
    prose = named("Tell me about the history of Rome.")
    assert code["code_markers"] > prose["code_markers"] == 0
    assert named("Solve $x^2 = 4$")["math_markers"] > prose["math_markers"]
    assert named("Как дела?")["cyrillic_share"] > 0.5
    assert named("日本語の文章です")["cjk_share"] > 0.5
    assert named("Q?\nA. one\nB. two\nC. three")["n_options"] == 3
    assert named("Is it?")["ends_with_question"] == 1.0
    assert named("hi", n_turns=4)["log_turns"] == pytest.approx(np.log(5))
    assert named("Write a poem")["imperative_start"] == 1.0


def test_long_text_cost_is_bounded_but_length_is_counted() -> None:
    long = "word " * 100_000
    values = dict(zip(SIGNAL_NAMES, compute_signals(long, max_chars=1024), strict=True))
    assert values["log_chars"] == pytest.approx(np.log1p(len(long)))
    assert len(analyze(long, 1024)) <= 1024 // 4 + 2
