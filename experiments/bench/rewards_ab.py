"""A/B of QualitySquareCBPolicy._rewards / gamma: d60f211's bodies vs the current ones, in one
process, alternated (separates a code change from the machine's drift). Usage:
.venv/bin/python experiments/bench/rewards_ab.py /tmp/bundle_new"""
import sys, time, numpy as np
from router.bundle import PolicyBundle
from router.policy.quality import QualitySquareCBPolicy
from router.policy.base import Action
b = PolicyBundle.load(sys.argv[1]); pol = b.policy
names = list(pol._prior_index); d = pol._linear[0].shape[0]
actions = [Action(m, np.zeros(5), expected_cost=0.001, expected_latency_ms=100.0) for m in names]
xs = np.random.default_rng(0).normal(size=(2000, d))
new_rewards = QualitySquareCBPolicy._rewards
def old_rewards(self, context, actions):
    return self._prior_rewards(context, actions) + self.residuals([a.model for a in actions])
new_gamma = QualitySquareCBPolicy.gamma
def old_gamma(self):
    t = self.n_prior_ + sum(self.residual_count_.values())
    return self.gamma_scale * max(t, 1) ** self.gamma_exponent
res = {"old": [], "new": []}
for rep in range(12):
    for label, r, g in (("old", old_rewards, old_gamma), ("new", new_rewards, new_gamma)):
        QualitySquareCBPolicy._rewards = r; QualitySquareCBPolicy.gamma = g
        t = time.perf_counter()
        for x in xs: pol.predict_one(x, actions)
        res[label].append((time.perf_counter() - t) / len(xs) * 1e6)
for k, v in res.items(): print(k, "min %.1f median %.1f" % (min(v), sorted(v)[len(v)//2]))
