"""What a dataset's model answered on a prompt: the lookup behind the replay backend.

Requests are matched to dataset rows by ``metadata.prompt_id`` or by prompt text, and each
(row, model) gives the recorded answer, tokens, latency, cost and score. Where the dataset does
not know the outcome, tokens and latency are estimated from ``models.csv`` and no score is
given, so a router under test never learns from an invented score.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from training.datasets import RoutingDataset
from training.replay.wire import content_text

UNKNOWN_PROMPT_ANSWER = "[replay: unknown prompt]"


@dataclass(frozen=True)
class ReplayOutcome:
    """One replayed answer.

    Attributes
    ----------
    answer : str
    prompt_tokens, completion_tokens : int
    latency_ms : float
        Total recorded (or estimated) latency, before ``time_scale``.
    ttft_ms : float
        Time to first token (``models.csv``), at most ``latency_ms``.
    cost_usd : float
    prompt_id : str or None
        The matched dataset prompt, None when the prompt is unknown.
    score : float or None
        The recorded quality; None when the outcome is unknown.
    recorded : bool
        Tokens, latency and cost come from the dataset (else estimated).
    """

    answer: str
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    ttft_ms: float
    cost_usd: float
    prompt_id: str | None
    score: float | None
    recorded: bool


def estimate_tokens(text: str) -> int:
    """Tokens as characters / 4 (the dataset format's own approximation), at least 1."""
    return max(1, round(len(text) / 4))


class RecordedOutcomes:
    """Index of a routing dataset for replay, built once.

    Parameters
    ----------
    dataset : RoutingDataset

    Notes
    -----
    Prompt texts are matched after stripping whitespace at both ends. When several rows share a
    text (the bundled sample has 17 such duplicates) the first row wins; ``metadata.prompt_id``
    picks any row exactly.
    """

    def __init__(self, dataset: RoutingDataset) -> None:
        self.dataset = dataset
        self.model_names = dataset.model_names
        self._column = {name: j for j, name in enumerate(self.model_names)}
        ids = dataset.prompts["prompt_id"].astype(str).tolist()
        self._prompt_ids = ids
        self._by_id = {pid: i for i, pid in enumerate(ids)}
        self._by_text: dict[str, int] = {}
        for i, text in enumerate(dataset.prompts["prompt"].astype(str)):
            self._by_text.setdefault(text.strip(), i)
        # models.csv row j is matrix column j (the loader aligns them)
        prices = dataset.models[
            ["usd_per_mtok_in", "usd_per_mtok_out", "ttft_ms", "tokens_per_s"]
        ].to_numpy(dtype=float)
        self._prices: dict[str, tuple[float, ...]] = {
            name: tuple(float(v) for v in prices[j]) for j, name in enumerate(self.model_names)
        }

    def has_model(self, model: str) -> bool:
        return model in self._column

    def find_row(self, prompt_id: str | None, messages: list[dict[str, Any]]) -> int | None:
        """Dataset row of a request: by ``prompt_id`` when it is known, else by text.

        Text candidates, in order: the last user message, all user messages joined by newlines,
        all messages joined by newlines (a prompt sent with a system message still matches).
        """
        if prompt_id is not None and prompt_id in self._by_id:
            return self._by_id[prompt_id]
        user = [content_text(m.get("content")) for m in messages if m.get("role") == "user"]
        every = [content_text(m.get("content")) for m in messages]
        candidates = [*user[-1:], "\n".join(user), "\n".join(every)]
        for text in candidates:
            row = self._by_text.get(text.strip())
            if row is not None:
                return row
        return None

    def outcome(self, model: str, row: int | None, prompt_text: str) -> ReplayOutcome:
        """The replayed answer of ``model`` on dataset ``row`` (None: an unknown prompt)."""
        col = self._column[model]
        d = self.dataset
        if row is not None and bool(d.available[row, col]):
            recorded = None if d.responses is None else d.responses[row, col]
            # a null in the optional response column is NaN or None once in the matrix
            if not isinstance(recorded, str):
                recorded = self.recorded_note(model, row, float(d.quality[row, col]))
            latency = float(d.latency[row, col])
            return ReplayOutcome(
                answer=recorded,
                prompt_tokens=int(d.input_tokens[row, col]),
                completion_tokens=int(d.output_tokens[row, col]),
                latency_ms=latency,
                ttft_ms=min(self._prices[model][2], latency),
                cost_usd=float(d.cost[row, col]),
                prompt_id=self._prompt_ids[row],
                score=float(d.quality[row, col]),
                recorded=True,
            )
        if row is None:
            answer, prompt_id = UNKNOWN_PROMPT_ANSWER, None
        else:
            prompt_id = self._prompt_ids[row]
            answer = self.placeholder(model, prompt_id)
            prompt_text = str(d.prompts["prompt"].iat[row])
        return self._estimated(model, answer, prompt_text, prompt_id)

    @staticmethod
    def placeholder(model: str, prompt_id: str) -> str:
        """The answer where the dataset has no outcome of ``model`` on the prompt."""
        return f"[replay: no recorded answer for model {model} on prompt {prompt_id}]"

    def recorded_note(self, model: str, row: int, score: float) -> str:
        """The answer where the dataset records the outcome but not its text (the bundled
        MMLU-Pro sample): a note of what is recorded, labelled as such, never an invented
        answer."""
        d = self.dataset
        task = str(d.prompts["task"].iat[row]) if "task" in d.prompts.columns else "unknown"
        graded = {1.0: "correct", 0.0: "wrong"}.get(score, f"{score:g} of 1")
        tokens = int(d.output_tokens[row, self._column[model]])
        return (
            f"[replay: this dataset records no answer text. Recorded outcome: {model} answered "
            f"prompt {self._prompt_ids[row]} (task {task}) in {tokens} tokens, graded {graded} "
            f"(score {score:g}).]"
        )

    def _estimated(
        self, model: str, answer: str, prompt_text: str, prompt_id: str | None
    ) -> ReplayOutcome:
        usd_in, usd_out, ttft_ms, tokens_per_s = self._prices[model]
        prompt_tokens = estimate_tokens(prompt_text)
        completion_tokens = estimate_tokens(answer)
        return ReplayOutcome(
            answer=answer,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            latency_ms=ttft_ms + completion_tokens / tokens_per_s * 1000.0,
            ttft_ms=ttft_ms,
            cost_usd=(prompt_tokens * usd_in + completion_tokens * usd_out) / 1e6,
            prompt_id=prompt_id,
            score=None,
            recorded=False,
        )
