"""The request featurizer: one fitted, versioned object used identically online and in training.

Features of a request = ``[LSA embedding (TF-IDF -> truncated SVD), hand-made signals]``.

``fit`` uses scikit-learn (``TfidfVectorizer`` + ``TruncatedSVD``), imported inside ``fit``:
a serving process only loads fitted arrays and never imports it (with the SciPy and pandas it
brings, most of the ~170 MB a worker no longer holds: experiments/results/memory.md).
``transform``/``transform_one`` compute the scikit-learn transform with numpy alone: its
per-call input validation and sparse-matrix construction cost more than the whole decision-path
budget (timings: experiments/results/features_latency.md). The fast path is a dictionary
lookup per token and one small dense product;
``tests/test_features.py`` and ``tests/test_lean.py`` check it against scikit-learn's
``TfidfVectorizer`` on real prompts.
"""

from __future__ import annotations

import hashlib
import json
import math
import string
from collections import Counter
from dataclasses import asdict, dataclass
from functools import partial
from itertools import repeat
from pathlib import Path

import numpy as np

from features.errors import ConfigError
from features.errors import FeaturizerError as PolicyError  # the featurizer's own error class
from features.signals import SIGNAL_NAMES, compute_signals

FORMAT_VERSION = 2
# ASCII punctuation becomes a separator. Tokens are UTF-8 bytes: bytes.translate with a 256-byte
# table is ~10x faster than str.translate, and a regular-expression tokenizer costs 3-4x more
# again on our machines. Splitting UTF-8 at ASCII bytes never cuts a multi-byte character, so
# every token decodes back to text (the saved vocabulary is text).
_SEPARATORS = bytes.maketrans(string.punctuation.encode(), b" " * len(string.punctuation))


def analyze(text: str, max_chars: int) -> list[bytes]:
    """Lower-cased word tokens of the text's first and last ``max_chars // 2`` characters.

    Bounding the text bounds the cost of one request: a 100k-token prompt costs what a
    ``max_chars`` prompt costs. The head carries the instruction, the tail the actual question.
    """
    if len(text) > max_chars:
        half = max_chars // 2
        text = text[:half] + " " + text[-half:]
    return text.lower().encode("utf-8", "replace").translate(_SEPARATORS).split()


@dataclass(frozen=True)
class FeaturizerConfig:
    """Parameters of :class:`RequestFeaturizer`.

    n_components : dimension of the LSA embedding.
    max_features : vocabulary size cap.
    max_chars : characters of a request that are embedded (head and tail halves).
    min_df : minimum document frequency of a term.
    seed : randomness of the SVD.
    """

    n_components: int = 96
    max_features: int = 40_000
    max_chars: int = 1024
    min_df: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_components < 1:
            raise ConfigError(f"n_components must be >= 1, got {self.n_components}")
        if self.max_features < 10:
            raise ConfigError(f"max_features must be >= 10, got {self.max_features}")
        if self.max_chars < 16:
            raise ConfigError(f"max_chars must be >= 16, got {self.max_chars}")
        if self.min_df < 1:
            raise ConfigError(f"min_df must be >= 1, got {self.min_df}")


class RequestFeaturizer:
    """TF-IDF + SVD embedding plus hand-made signals, fitted on training prompts.

    Attributes (after ``fit``)
    --------------------------
    vocabulary_ : dict[bytes, int]
        UTF-8 token -> column.
    idf_ : ndarray, shape (n_terms + 1,)
    projection_ : ndarray, shape (n_terms + 1, n_components)
        ``TruncatedSVD.components_.T``; the last row (and idf entry) is a zero padding row for
        out-of-vocabulary terms.
    version_ : str
        Hash of the configuration and fitted state: a policy records it, so a policy and its
        features always travel together.
    """

    def __init__(self, config: FeaturizerConfig | None = None) -> None:
        self.config = config or FeaturizerConfig()

    @property
    def feature_names(self) -> list[str]:
        k = self._projection().shape[1]
        return [f"lsa_{i}" for i in range(k)] + list(SIGNAL_NAMES)

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    def fit(self, texts: list[str]) -> RequestFeaturizer:
        if len(texts) < 2:
            raise ConfigError(f"fit needs at least 2 texts, got {len(texts)}")
        # fitting only: serving loads the fitted arrays and never imports scikit-learn
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer

        cfg = self.config
        tfidf = TfidfVectorizer(
            analyzer=partial(analyze, max_chars=cfg.max_chars),
            min_df=min(cfg.min_df, len(texts)),
            max_features=cfg.max_features,
            sublinear_tf=True,
            dtype=np.float64,
        )
        matrix = tfidf.fit_transform(texts)
        k = max(1, min(cfg.n_components, matrix.shape[1] - 1, len(texts) - 1))
        svd = TruncatedSVD(n_components=k, random_state=cfg.seed, algorithm="randomized")
        svd.fit(matrix)
        self._set_state(
            {bytes(t): int(i) for t, i in tfidf.vocabulary_.items()},
            np.asarray(tfidf.idf_, dtype=np.float64),
            np.ascontiguousarray(svd.components_.T, dtype=np.float64),
        )
        return self

    def _set_state(
        self, vocabulary: dict[bytes, int], idf: np.ndarray, projection: np.ndarray
    ) -> None:
        self.vocabulary_ = vocabulary
        self.idf_ = np.append(idf, 0.0)  # last entry: the out-of-vocabulary padding row
        self.projection_ = np.vstack([projection, np.zeros((1, projection.shape[1]))])
        self._padding = repeat(len(vocabulary))
        self.version_ = self._hash()

    def transform(self, texts: list[str], n_turns: list[int] | None = None) -> np.ndarray:
        """Features of many requests, shape ``(len(texts), n_features)``."""
        turns = n_turns or [1] * len(texts)
        return np.vstack([self.transform_one(t, n) for t, n in zip(texts, turns, strict=True)])

    def transform_one(self, text: str, n_turns: int = 1) -> np.ndarray:
        """Features of one request, shape ``(n_features,)``; the online fast path."""
        projection = self._projection()
        counts = Counter(analyze(text, self.config.max_chars))
        k = projection.shape[1]
        out = np.empty(k + len(SIGNAL_NAMES))
        # Out-of-vocabulary tokens map to the padding row (idf 0, projection 0): no Python filter.
        idx = np.fromiter(
            map(self.vocabulary_.get, counts, self._padding), dtype=np.intp, count=len(counts)
        )
        weights = np.log(np.fromiter(counts.values(), dtype=float, count=len(counts)))
        weights += 1.0
        weights *= self.idf_[idx]
        norm = math.sqrt(float(weights @ weights))
        if norm > 0.0:
            out[:k] = (weights @ projection[idx]) / norm
        else:
            out[:k] = 0.0
        out[k:] = compute_signals(text, n_turns, self.config.max_chars)
        return out

    def _projection(self) -> np.ndarray:
        if not hasattr(self, "projection_"):
            raise PolicyError("RequestFeaturizer is not fitted: call fit() or load() first")
        return self.projection_

    def _text_vocabulary(self) -> dict[str, int]:
        return {t.decode(): i for t, i in self.vocabulary_.items()}

    def _hash(self) -> str:
        digest = hashlib.sha256()
        digest.update(json.dumps(asdict(self.config), sort_keys=True).encode())
        digest.update(json.dumps(sorted(self._text_vocabulary().items())).encode())
        digest.update(self.idf_.tobytes())
        digest.update(np.round(self.projection_, 12).tobytes())
        return f"feat-{FORMAT_VERSION}-{digest.hexdigest()[:12]}"

    def save(self, directory: str | Path) -> Path:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        self._projection()
        meta = {
            "format": FORMAT_VERSION,
            "config": asdict(self.config),
            "version": self.version_,
            "vocabulary": self._text_vocabulary(),
        }
        (path / "featurizer.json").write_text(json.dumps(meta))
        np.savez(path / "featurizer.npz", idf=self.idf_[:-1], projection=self.projection_[:-1])
        return path

    @classmethod
    def load(cls, directory: str | Path) -> RequestFeaturizer:
        path = Path(directory)
        meta = json.loads((path / "featurizer.json").read_text())
        if meta.get("format") != FORMAT_VERSION:
            raise PolicyError(
                f"{path}: featurizer format {meta.get('format')} is not {FORMAT_VERSION}"
            )
        arrays = np.load(path / "featurizer.npz")
        featurizer = cls(FeaturizerConfig(**meta["config"]))
        featurizer._set_state(
            {str(k).encode(): int(v) for k, v in meta["vocabulary"].items()},
            arrays["idf"],
            arrays["projection"],
        )
        if featurizer.version_ != meta["version"]:
            raise PolicyError(
                f"{path}: featurizer version {featurizer.version_} does not match the recorded "
                f"{meta['version']}: the files were altered or come from different fits"
            )
        return featurizer
