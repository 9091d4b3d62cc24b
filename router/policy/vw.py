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

The text of the examples is written by :mod:`router.policy.vw_text` (the one formatter, also
used by retraining on large logs). Serving does not go through VW's text parser:
:class:`router.policy.vw_scorer.ExactScorer` computes the same pmf in numpy from the
workspace's weights, bit for bit. VW stays the learner
and the reference: every learn goes to the workspace, the fast path is rebuilt from its weights
once predictions follow without learning, and its first pmf after each rebuild is checked against
``Workspace.predict`` (a mismatch turns the fast path off for good, with a warning). Its
timings are in experiments/results/decision_latency.md.
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from vowpalwabbit import Workspace

from features.errors import ConfigError, PolicyError
from router.policy.base import Action, Policy, RewardSpec
from router.policy.vw_scorer import ExactScorer
from router.policy.vw_text import action_line, context_line, example_lines

logger = logging.getLogger(__name__)

_REBUILD_AFTER = 8  # predictions in a row without learning before the fast path is rebuilt


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
        the model's numeric features. (Crossing with the identity alone predicts faster through
        VW's text parser but earned less mean reward on the held-out quarter of the bundled
        train split, so it is not the default; the exact fast path reproduces ``ca`` only.
        Figures: experiments/results/decision_latency.md.)
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
            raise ConfigError(f"epsilon must be in (0, 1), got {epsilon}")
        if gamma_scale <= 0:
            raise ConfigError(f"gamma_scale must be > 0, got {gamma_scale}")
        self.epsilon = epsilon
        self.gamma_scale = gamma_scale
        self.gamma_exponent = gamma_exponent
        self.learning_rate = learning_rate
        self.interactions = interactions
        self.extra_args = extra_args
        self._n_learned: int | None = 0  # VW's SquareCB counter: examples the workspace learned
        self._since_learn = _REBUILD_AFTER  # predictions since the last learn
        self._scorer: ExactScorer | None = None
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

    def vw_arguments(self) -> str:
        """The VW command-line arguments of this policy's fresh workspace."""
        return (
            f"--cb_explore_adf --squarecb --epsilon {self.epsilon} --gamma_scale "
            f"{self.gamma_scale} --gamma_exponent {self.gamma_exponent} -l {self.learning_rate} "
            f"--interactions {self.interactions} --random_seed {self.seed} --quiet "
            f"{self.extra_args}"
        ).strip()

    @property
    def workspace(self) -> Workspace:
        """The VW workspace (created on first use with :meth:`vw_arguments`)."""
        if not hasattr(self, "vw_"):
            self.vw_ = Workspace(self.vw_arguments())
        return self.vw_

    @property
    def has_workspace(self) -> bool:
        """Whether the workspace exists yet (fitted, learned or loaded)."""
        return hasattr(self, "vw_")

    def adopt_workspace(self, workspace: Workspace) -> None:
        """Serve from ``workspace``, trained outside the policy (e.g. by VW's own parser on a
        file of :mod:`router.policy.vw_text` examples), the way loading a saved policy does, so
        that the derived state (SquareCB's example counter, the exact fast path) follows its
        weights."""
        with tempfile.TemporaryDirectory(prefix="polyroute-vw-") as tmp:
            workspace.save(str(Path(tmp) / "policy.vw"))
            self._load_state(Path(tmp))

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
        lines = [context_line(context), *map(action_line, actions)]
        return np.asarray(self.workspace.predict(lines), dtype=float)

    def _fast_pmf(self, context: np.ndarray, actions: Sequence[Action]) -> np.ndarray | None:
        if self._scorer is None:
            if self._n_learned is None:
                self.fast_path_error = "the SquareCB example counter of the loaded model is unknown"
                return None
            self._scorer = ExactScorer(
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
        lines = example_lines(context, actions, chosen, probability, reward)
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
