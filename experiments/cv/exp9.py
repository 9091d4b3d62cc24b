"""Cold start with many models, diagnosed on the train split only: the serving policy's cold
learning loop (`replay_rounds`, partial feedback only, 4 rounds) on two thirds of a dataset's
train prompts, its final policy scored on the other third (the benchmark's 62-point curve):
AIQ over that third's zero router with the pmf (exploration included, as the benchmark) and
greedy (argmax of the same predictions), so exploration's share of the loss and the quality
model's share are told apart. Policy options from env: ESTIMATOR, GAMMA_SCALE, GAMMA_EXPONENT,
EPSILON, RESIDUALS, KAPPA; W_COST the loop's cost weight (default 0.2).
usage: exp9.py DATASET [SEED]"""
import sys, os, time; sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))
import numpy as np
from features.featurizer import RequestFeaturizer
from router.policy.actions import ActionCatalogue
from router.policy.base import RewardSpec
from router.policy.quality import QualitySquareCBPolicy
from training.datasets import load_dataset
from training.evaluation import Reference, lambda_grid, sweep
from training.metrics import aiq
from training.simulate import quality_policy_curve, replay_rounds

name = sys.argv[1]; seed = int(sys.argv[2]) if len(sys.argv) > 2 else 0
t0 = time.time()
train = load_dataset(name).split("train")
rng = np.random.default_rng(seed)
dev = rng.random(train.n_prompts) < 1 / 3
learn, valid = train.subset(~dev), train.subset(dev)
valid = valid.subset(valid.available.all(axis=1))
f = RequestFeaturizer().fit(learn.prompts["prompt"].tolist())
x, xv = f.transform(learn.prompts["prompt"].tolist()), f.transform(valid.prompts["prompt"].tolist())
cat = ActionCatalogue(learn.models).fit(x, learn.output_tokens, learn.available)
c_l, c_v = cat.expected_cost(x, learn.input_tokens), cat.expected_cost(xv, valid.input_tokens)
ref = Reference.of(valid); scale = Reference.of(learn).c_hi
grid = lambda_grid()
mid = float(os.environ.get("W_COST", 0.2))
params = {}
for key, cast in (("ESTIMATOR", str), ("GAMMA_SCALE", float), ("EPSILON", float), ("RESIDUALS", str), ("KAPPA", float), ("GAMMA_EXPONENT", float)):
    if key in os.environ:
        params[key.lower()] = cast(os.environ[key])
spec = RewardSpec(w_cost=mid, cost_scale=scale)
res = replay_rounds(lambda: QualitySquareCBPolicy(reward=spec, seed=seed, **params), learn, x, cat, c_l,
                    cat.expected_latency(x), labelled=None, rounds=4, seed=seed)
pol = res.policy
zero = aiq(list(ref.single.values()), ref.c_lo, ref.c_hi)
pmf_curve = quality_policy_curve(pol, valid, xv, c_v, scale, grid)
names = valid.model_names
base = pol.quality(xv, names) + pol.adjustments(names)[None, :]
greedy = sweep(valid, base, c_v, scale, grid)  # argmax of the same predictions
# the true per-model means on the learn part: how far the model's own estimates are from them
q_true = np.nanmean(np.where(learn.available, learn.quality, np.nan), axis=0)
q_est = pol.quality(x, names).mean(axis=0) + pol.adjustments(names)
print(f"{name} seed {seed} {params}: pmf {aiq(pmf_curve, ref.c_lo, ref.c_hi) - zero:+.4f} greedy {aiq(greedy, ref.c_lo, ref.c_hi) - zero:+.4f} "
      f"reward while learning {res.trace.reward.mean():.3f}; mean |q_est - q_true| {np.abs(q_est - q_true).mean():.3f}; "
      f"gamma {pol.gamma():.0f}; {time.time() - t0:.0f}s", flush=True)
