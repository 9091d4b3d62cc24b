"""Always-valid confidence sequences for the canary's sequential test (the maths; the
controller that uses them is :mod:`router.canary.controller`).

Per arm we observe the reward of each request with quality feedback, ``quality - w_cost *
cost / cost_scale - w_latency * latency / latency_scale`` with the *champion's* reward spec
(both arms are judged on the objective being served), and an error indicator for every outcome
(``error_class`` set, except ``client_disconnected``: the caller's doing).

For each arm and each of the two quantities we keep a two-sided Gaussian-mixture *asymptotic
confidence sequence* (Waudby-Smith, Arbour, Sinha, Kennedy & Ramdas, "Time-uniform central
limit theory and asymptotic confidence sequences", Annals of Statistics 2024, arXiv:2103.06476,
Theorem 2.2; the boundary is Robbins' normal mixture, see Howard, Ramdas, McAuliffe & Sekhon,
"Time-uniform, nonparametric, nonasymptotic confidence sequences", Annals of Statistics 2021):

    mean_n +/- sd_n * sqrt( 2 (n rho^2 + 1) / (n^2 rho^2) * log( sqrt(n rho^2 + 1) / a ) )

with ``rho^2 = (-2 log a + log(-2 log a + 1)) / n*`` (tightest near ``n* = min_requests``).
Its coverage holds uniformly over all n, so the test may look after every observation and
stop at any time. Each of the four sequences runs at ``a = alpha / 4``; by the union bound the
chance that the canary is ever stopped while the challenger is not worse by more than the
tolerances is at most ``alpha`` (asymptotically: the sequences use the running standard
deviation; error rates use ``p(1 - p)`` with ``p = (errors + 0.5) / (n + 1)`` so that a run
without errors does not claim zero variance).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


def cs_radius(n: int, sd: float, alpha: float, n_star: float) -> float:
    """Half-width of the two-sided Gaussian-mixture confidence sequence after ``n`` samples.

    Parameters
    ----------
    n : int
        Samples so far (>= 1).
    sd : float
        Standard deviation (running estimate for the asymptotic sequence).
    alpha : float
        Error level, uniformly over all n.
    n_star : float
        Sample size where the sequence is tightest (sets the mixture's rho).
    """
    if n < 1:
        return math.inf
    rho2 = (-2 * math.log(alpha) + math.log(-2 * math.log(alpha) + 1)) / n_star
    growth = n * rho2 + 1
    return sd * math.sqrt(2 * growth / (n * n * rho2) * math.log(math.sqrt(growth) / alpha))


@dataclass
class RunningMean:
    """Welford's running mean and variance."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def add(self, x: float) -> None:
        self.n += 1
        delta = x - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (x - self.mean)

    @property
    def sd(self) -> float:
        return math.sqrt(self.m2 / (self.n - 1)) if self.n > 1 else math.inf


@dataclass
class ArmStats:
    """What one arm has shown so far."""

    requests: int = 0
    outcomes: int = 0
    errors: int = 0
    reward: RunningMean = field(default_factory=RunningMean)

    def reward_interval(self, alpha: float, n_star: float) -> tuple[float, float]:
        # one pseudo-observation of variance 1/4 (the most a [0, 1] quality can have), as the
        # error rate's +0.5: an arm whose first rewards happen to be equal must not get a
        # zero-width interval and be stopped on a point estimate
        n = self.reward.n
        sd = math.sqrt((self.reward.m2 + 0.25) / n) if n else math.inf
        r = cs_radius(n, sd, alpha, n_star)
        return self.reward.mean - r, self.reward.mean + r

    def error_interval(self, alpha: float, n_star: float) -> tuple[float, float]:
        rate = self.errors / self.outcomes if self.outcomes else 0.0
        p = (self.errors + 0.5) / (self.outcomes + 1)
        r = cs_radius(self.outcomes, math.sqrt(p * (1 - p)), alpha, n_star)
        return max(0.0, rate - r), min(1.0, rate + r)
