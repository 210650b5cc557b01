"""A user's own trainer for kfmlops: ``train.trainer: "examples.sklearn_trainer:fit"``.

kfmlops calls ``fit(train, label, task, params)`` with the train split (canonical labels: class names,
or numbers for regression), the label column, the :class:`kfmlops.tasks.Task` and
``train.params``; it returns a fitted scikit-learn estimator, which kfmlops saves as an MLflow model
and sends through the same gates as its own trainers.
"""

from __future__ import annotations

import pandas as pd
from sklearn.compose import make_column_selector, make_column_transformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler


def fit(train: pd.DataFrame, label: str, task, params: dict):
    """A regularised linear model on one-hot categories and scaled numbers."""
    features = train.drop(columns=[label])
    prepare = make_column_transformer(
        (make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), make_column_selector(dtype_include="number")),
        (make_pipeline(SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="ignore")),
         make_column_selector(dtype_exclude="number")),
    )
    strength = float(params.get("C", 1.0))
    model = LogisticRegression(C=strength, max_iter=2000) if task.is_classification else Ridge(alpha=1 / strength)
    return make_pipeline(prepare, model).fit(features, train[label])
