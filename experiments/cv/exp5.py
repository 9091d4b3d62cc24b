"""CV on the train split of the real replay_rounds + quality policy."""
import sys, time, os; sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))
import numpy as np
from sklearn.model_selection import KFold
from training.datasets import load_dataset
from training.evaluation import Reference, lambda_grid
from training.metrics import aiq
from training.simulate import replay_rounds, quality_policy_curve
from features.featurizer import RequestFeaturizer
from router.policy.actions import ActionCatalogue
from router.policy.base import RewardSpec
from router.policy.quality import QualitySquareCBPolicy
name, share, gs = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
rounds = int(os.environ.get("ROUNDS", "4")); folds = int(os.environ.get("FOLDS", "3")); lam = float(os.environ.get("LAM", "0.2"))
data = load_dataset(f"../shared/data/{name}"); train = data.split("train")
res = []
for k, (a, b) in enumerate(KFold(folds, shuffle=True, random_state=0).split(np.arange(train.n_prompts))):
    t0 = time.time()
    tr, va = train.subset(a), train.subset(b); va = va.subset(va.available.all(axis=1))
    f = RequestFeaturizer().fit(tr.prompts["prompt"].tolist())
    xtr, xva = f.transform(tr.prompts["prompt"].tolist()), f.transform(va.prompts["prompt"].tolist())
    cat = ActionCatalogue(data.models).fit(xtr, tr.output_tokens, tr.available)
    ref = Reference.of(tr); scale = ref.c_hi
    spec = RewardSpec(w_cost=lam, cost_scale=scale)
    lab = np.random.default_rng(1).random(tr.n_prompts) < share if share > 0 else None
    out = replay_rounds(lambda: QualitySquareCBPolicy(reward=spec, gamma_scale=gs, min_outcomes=int(os.environ.get("MINOUT", "0")), estimator=os.environ.get("ESTIMATOR", "logistic_cv"), optimism=float(os.environ.get("OPTIMISM", "0")), residuals=os.environ.get("RESIDUALS", "chosen")), tr, xtr, cat,
                        cat.expected_cost(xtr, tr.input_tokens), cat.expected_latency(xtr), labelled=lab, rounds=rounds)
    curve = quality_policy_curve(out.policy, va, xva, cat.expected_cost(xva, va.input_tokens), scale, lambda_grid(40))
    rv = Reference.of(va)
    z = aiq(list(rv.single.values()), rv.c_lo, rv.c_hi); s = aiq(curve, rv.c_lo, rv.c_hi)
    res.append((s, z, out.trace.reward.mean()))
    print(f"  fold {k}: aiq {s:.4f} zero {z:.4f} (+{s-z:.4f}) replay mean reward {out.trace.reward.mean():.4f} {time.time()-t0:.0f}s", flush=True)
r = np.array(res)
print(f"{name} est={os.environ.get('ESTIMATOR')} optimism={os.environ.get('OPTIMISM')} share={share} gamma_scale={gs} rounds={rounds} lam={lam}: cv aiq {r[:,0].mean():.4f} zero {r[:,1].mean():.4f} (+{(r[:,0]-r[:,1]).mean():.4f}) mean replay reward {r[:,2].mean():.4f}")
