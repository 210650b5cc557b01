"""The MLflow pyfunc flavour of a kfmlops bundle (``tabular-net``, ``gbdt``): raw rows in, the
prediction columns of :mod:`kfmlops.tasks` out.

Logged as a model from code (``mlflow_model.py``), so loading it unpickles nothing. ``predict``
returns a DataFrame: ``proba:<class>`` per class for classification, ``prediction`` (the value) for
regression.
"""

from __future__ import annotations

import mlflow.pyfunc
import pandas as pd

from kfmlops.model_contract import BUNDLE_ARTIFACT, predictions


class BundlePyfunc(mlflow.pyfunc.PythonModel):
    """``predict(DataFrame of the feature columns) -> DataFrame of class probabilities or values``."""

    def load_context(self, context) -> None:
        from kfmlops.train.bundles import load_bundle

        self.bundle = load_bundle(context.artifacts[BUNDLE_ARTIFACT])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        task = self.bundle.task
        frame = predictions(task, self.bundle.scores({c: model_input[c].to_numpy() for c in model_input.columns}))
        return frame[task.proba_columns] if task.is_classification else frame
