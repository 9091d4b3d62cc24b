"""The pyfunc face of a policy bundle, logged to MLflow as code (not pickled).

``predict`` takes a DataFrame with a ``prompt`` column (optionally ``input_tokens``) and returns,
per row, the policy's most probable model over every model of the bundle, its probability and
the full pmf as JSON. The service does not go through this (it loads the bundle directory
itself); it is there so a registered policy can be inspected and scored with
``mlflow.pyfunc.load_model`` from any environment where polyroute is installed (the model
imports its packages rather than carrying a copy of them).
"""

from __future__ import annotations

import json
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc.model import PythonModel

from router.bundle import PolicyBundle


class BundleModel(PythonModel):
    def load_context(self, context: Any) -> None:
        self.bundle = PolicyBundle.load(context.artifacts["bundle"])

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> pd.DataFrame:
        bundle = self.bundle
        catalogue = bundle.catalogue
        rows = []
        for i, text in enumerate(model_input["prompt"].astype(str)):
            x = bundle.featurizer.transform_one(text, 1)
            tokens = (
                float(model_input["input_tokens"].iloc[i])
                if "input_tokens" in model_input
                else max(1.0, len(text) / 4)
            )
            cost = catalogue.expected_cost(x[None, :], np.array([tokens]))[0]
            latency = catalogue.expected_latency(x[None, :])[0]
            actions = catalogue.actions_with_costs(cost, latency)
            pmf = bundle.policy.predict_one(x, actions)
            k = int(np.argmax(pmf))
            by_model = {a.model: float(p) for a, p in zip(actions, pmf, strict=True)}
            rows.append(
                {
                    "model": actions[k].model,
                    "probability": float(pmf[k]),
                    "pmf": json.dumps(by_model),
                }
            )
        return pd.DataFrame(rows, columns=["model", "probability", "pmf"])


mlflow.models.set_model(BundleModel())
