"""The MLflow pyfunc flavour of a kfmlops model: raw rows in, positive-class probabilities out.

Logged as a model from code (``mlflow_model.py``), so loading it unpickles nothing; the bundle's
weights load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import mlflow.pyfunc
import numpy as np
import pandas as pd

from kfmlops.train.model import ModelBundle

BUNDLE_ARTIFACT = "bundle"


class TabularPyfunc(mlflow.pyfunc.PythonModel):
    """``predict(DataFrame of the ingested feature columns) -> 1-D float array of P(label = 1)``."""

    def load_context(self, context) -> None:
        self.bundle = ModelBundle.load(context.artifacts[BUNDLE_ARTIFACT])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        return self.bundle.predict_proba({c: model_input[c].to_numpy() for c in model_input.columns})
