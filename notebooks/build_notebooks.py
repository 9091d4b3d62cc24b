"""Writes the two notebooks from their cells (kept as code so reviews see plain diffs).

    .venv/bin/python notebooks/build_notebooks.py

The notebooks only call the packages; CI executes them top to bottom (tests/test_notebooks.py).
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).parent

SETUP = '''import os, tempfile
from pathlib import Path

work = Path(tempfile.mkdtemp(prefix="polyroute-notebook-"))
os.environ["POLYROUTE_HOME"] = str(work)          # MLflow's embedded SQLite store goes here
tracking_uri = f"sqlite:///{work / 'mlflow.db'}"

# a routing profile of six models, from cheap to strong (see README: the learning loop)
MODELS = ["gemini-1.5-flash-002", "DeepSeek-Coder-V2", "Meta-Llama-3_1-70B-Instruct",
          "gemini-1.5-pro-002", "Phi-3-mini-4k-instruct", "Mistral-7B-Instruct-v0.2"]
work'''

LOGS = '''from training.bundle_train import train_bundle
from router.events import FileEventSink, read_events
from router.events.join import join_events
from training.datasets import load_dataset
from training.traffic import simulate_events

data = load_dataset("bundled")
# a new deployment: features and cost model fitted, the policy has seen no outcome yet
cold = train_bundle(data, cold_start=True, policy_name="vw_squarecb",
                    policy_params={"learning_rate": 0.5})
cold.save(work / "cold-bundle")

# 6,000 requests of the train split served by the cold policy, as the gateway logs them;
# 90% get quality feedback
with FileEventSink(work / "events", queue_size=50_000, put_timeout_s=5.0) as sink:
    for event in simulate_events(cold, data.split("train"), 6000, seed=1,
                                 feedback_share=0.9, models=MODELS):
        sink.emit(event)

joined = join_events(read_events(work / "events"))
joined[["chosen_model", "chosen_probability", "cost_usd", "quality", "quality_imputed", "reward"]].describe(include="all")'''

RETRAIN = [
    new_markdown_cell(
        "# Retraining from logs\n\n"
        "One turn of the learning loop on the bundled MMLU-Pro sample: the gateway's logs "
        "(simulated here in-process; `polyroute demo` makes them through the real service) train "
        "a candidate policy, off-policy evaluation on the latest logs compares it with the "
        "champion, the promotion gate decides, and MLflow records all of it. The same steps run "
        "from the shell as `polyroute train --events DIR`."
    ),
    new_code_cell(SETUP),
    new_markdown_cell("## The logs\n\nDecisions, outcomes and feedback, joined per decision."),
    new_code_cell(LOGS),
    new_code_cell(
        "joined.groupby('chosen_model')['reward'].agg(['count', 'mean']).sort_values('mean')"
    ),
    new_markdown_cell(
        "## Retrain, evaluate, gate\n\n"
        "`retrain` registers the cold bundle as the first `@champion`, trains a candidate "
        "warm-started from it on the earliest 70% of the logs, evaluates both on the latest 30% "
        "(doubly robust with a cross-fitted LightGBM reward model, bootstrap intervals) and "
        "promotes the candidate only if the lower bound of its improvement is above the margin "
        "and the effective sample size is large enough."
    ),
    new_code_cell(
        '''from training.promote import GateConfig
from training.loop_turn import RetrainConfig, retrain

config = RetrainConfig(events=str(work / "events"), tracking_uri=tracking_uri,
                       base_bundle=str(work / "cold-bundle"), report_dir=str(work / "reports"),
                       gate=GateConfig(margin=0.0, min_ess=50), n_bootstrap=500)
outcome = retrain(config)
print(outcome.decision.reason)
outcome.alias, outcome.version, outcome.report'''
    ),
    new_code_cell(
        '''import pandas as pd
pd.Series(outcome.stats)'''
    ),
    new_markdown_cell("## What MLflow holds"),
    new_code_cell(
        '''import mlflow
from training import model_registry

client = mlflow.MlflowClient(tracking_uri=tracking_uri)
run = client.get_run(outcome.run_id)
{k: v for k, v in run.data.tags.items() if k.startswith("gate.")}'''
    ),
    new_code_cell(
        '''{"champion": model_registry.alias_version("champion", tracking_uri=tracking_uri),
 "challenger": model_registry.alias_version("challenger", tracking_uri=tracking_uri),
 "history": model_registry.champion_history(tracking_uri=tracking_uri)}'''
    ),
    new_markdown_cell(
        "## A gate that must fail, and a rollback\n\n"
        "With an effective-sample-size requirement no log can meet, the next candidate stays "
        "`@challenger` with the reason recorded; `rollback` then moves `@champion` back."
    ),
    new_code_cell(
        '''strict = RetrainConfig(**{**config.__dict__, "gate": GateConfig(min_ess=1e9)})
second = retrain(strict)
print(second.alias, "-", second.decision.reason)
assert not second.decision.promote'''
    ),
    new_code_cell(
        '''before, after = model_registry.rollback(tracking_uri=tracking_uri, reason="notebook demo")
before, after, model_registry.alias_version("champion", tracking_uri=tracking_uri)'''
    ),
]

EVALUATION = [
    new_markdown_cell(
        "# Off-policy evaluation of a candidate\n\n"
        "The estimators of `training.ope` (IPS, SNIPS, DM, DR, Switch-DR, DR-OS; reproduced "
        "against Open Bandit Pipeline and vw-estimators reference values in the tests) applied to "
        "logged decisions through `training.ope_logged`, and the HTML report of "
        "`polyroute evaluate`."
    ),
    new_code_cell(SETUP),
    new_code_cell(LOGS),
    new_markdown_cell("## A candidate trained on the earliest 70% of the logs"),
    new_code_cell(
        '''from training.train import train_from_logs

result = train_from_logs(read_events(work / "events"), cold, holdout=0.3, seed=0)
pd_stats = {k: result.stats[k] for k in ("n_train", "n_holdout", "n_quality_imputed")}
pd_stats'''
    ),
    new_markdown_cell(
        "## Estimates on the latest 30%\n\nCandidate, champion (the logging policy here) and "
        "baselines, with bootstrap and Gaussian intervals."
    ),
    new_code_cell(
        '''from training.ope_logged import evaluate_policies

evaluation = evaluate_policies(result.holdout_rows.frame,
                               {"candidate": result.candidate, "champion": cold},
                               n_bootstrap=500, seed=0, min_ess=50)
evaluation.table("reward").round(4)'''
    ),
    new_code_cell(
        '''import pandas as pd
pd.DataFrame({p: {k: d[k] for k in ("ess", "ess_ratio", "max_weight")}
              for p, d in evaluation.diagnostics.items()}).T.round(3)'''
    ),
    new_code_cell('evaluation.improvement("candidate", "champion", estimator="dr")'),
    new_markdown_cell(
        "## The estimators by hand\n\nThe same numbers from the arrays: logged action, reward, "
        "logging probability, the candidate's pmf and the cross-fitted reward model."
    ),
    new_code_cell(
        '''from training.ope import diagnostics, estimate_policy_value

frame = result.holdout_rows.frame.set_index("event_id").loc[evaluation.event_ids]
index = {m: j for j, m in enumerate(evaluation.models)}
action = frame["chosen_model"].map(index).to_numpy()
pscore = frame["chosen_probability"].to_numpy()
by_hand = estimate_policy_value(action, frame["reward"].to_numpy(), pscore,
                                evaluation.action_dist["candidate"], n_bootstrap=500)
by_hand.round(4)'''
    ),
    new_code_cell(
        '''import numpy as np
# the report's IPS/SNIPS are these numbers
assert np.isclose(by_hand.loc["ipw", "value"], evaluation.table("reward").loc[("candidate", "ipw"), "value"])
diagnostics(action, pscore, evaluation.action_dist["candidate"])'''
    ),
    new_markdown_cell("## The report"),
    new_code_cell(
        '''from training.report import write_report

path = write_report(evaluation, work / "report.html", title="Candidate vs cold start",
                    champion="champion", candidate="candidate", min_ess=50)
print(path, path.stat().st_size, "bytes")'''
    ),
    new_code_cell(
        '''from IPython.display import IFrame
IFrame(src=str(path), width="100%", height=600)'''
    ),
]


def main() -> None:
    for name, cells in (("retraining.ipynb", RETRAIN), ("evaluation.ipynb", EVALUATION)):
        notebook = new_notebook(cells=cells)
        notebook.metadata["kernelspec"] = {
            "name": "python3",
            "display_name": "Python 3",
            "language": "python",
        }
        nbformat.write(notebook, HERE / name)
        print("wrote", HERE / name)


if __name__ == "__main__":
    main()
