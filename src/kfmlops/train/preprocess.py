"""Preprocessing fitted on the train split only, stored as JSON beside the model weights.

Categorical columns (strings, booleans) become integer codes into a vocabulary of the values seen
at least ``min_category_count`` times; code 0 is the bucket for missing and unseen values.
Numeric columns are imputed with the train median, ``log1p``-compressed when non-negative and
heavily skewed, and standardised. ``transform`` is vectorised over a whole batch of columns
(NumPy arrays or pandas Series), so serving a request never builds a DataFrame per row.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

SKEW_FOR_LOG = 2.0


@dataclass(frozen=True)
class CategoricalFeature:
    name: str
    vocabulary: list[str | bool]

    @property
    def cardinality(self) -> int:
        return len(self.vocabulary) + 1  # + the unknown/missing bucket


@dataclass(frozen=True)
class NumericFeature:
    name: str
    median: float
    log: bool
    mean: float
    std: float


class SchemaMismatch(ValueError):
    """Input columns do not match what the model was trained on; the message names the fields."""


@dataclass(frozen=True)
class Preprocessor:
    categorical: list[CategoricalFeature]
    numeric: list[NumericFeature]

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.categorical] + [f.name for f in self.numeric]

    @classmethod
    def fit(cls, frame: pd.DataFrame, features: list[str], min_category_count: int) -> "Preprocessor":
        categorical, numeric = [], []
        for name in features:
            column = frame[name]
            if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
                values = column.to_numpy(dtype=np.float64, na_value=np.nan)
                median = float(np.nanmedian(values)) if np.isfinite(values).any() else 0.0
                values = np.where(np.isnan(values), median, values)
                log = bool(values.min() >= 0 and _skew(values) > SKEW_FOR_LOG)
                if log:
                    values = np.log1p(values)
                std = float(values.std())
                numeric.append(NumericFeature(name, median, log, float(values.mean()), std if std > 0 else 1.0))
            else:
                present = column.dropna()
                # booleans stay booleans, so transform() matches True/False; anything else by its text
                counts = (present if pd.api.types.is_bool_dtype(column) else present.astype(str)).value_counts()
                vocab = sorted(counts[counts >= min_category_count].index.tolist())
                categorical.append(CategoricalFeature(name, vocab))
        return cls(categorical, numeric)

    def transform(self, columns: Mapping[str, object]) -> tuple[np.ndarray, np.ndarray]:
        """Raw columns -> (int64 codes ``[n, n_categorical]``, float32 values ``[n, n_numeric]``)."""
        missing = [n for n in self.feature_names if n not in columns]
        if missing:
            raise SchemaMismatch(f"missing feature columns {missing}")
        n = len(next(iter(columns[name] for name in self.feature_names))) if self.feature_names else 0
        codes = np.zeros((n, len(self.categorical)), dtype=np.int64)
        for j, feature in enumerate(self.categorical):
            values = np.asarray(columns[feature.name], dtype=object)
            codes[:, j] = pd.Categorical(values, categories=feature.vocabulary).codes.astype(np.int64) + 1
        numbers = np.empty((n, len(self.numeric)), dtype=np.float32)
        for j, feature in enumerate(self.numeric):
            try:
                values = np.asarray(columns[feature.name], dtype=np.float64)
            except (TypeError, ValueError):
                raise SchemaMismatch(f"column {feature.name!r} must be numeric") from None
            values = np.where(np.isnan(values), feature.median, values)
            if feature.log:
                values = np.log1p(np.maximum(values, 0.0))
            numbers[:, j] = (values - feature.mean) / feature.std
        return codes, numbers

    def to_json(self) -> dict:
        return {"categorical": [asdict(f) for f in self.categorical], "numeric": [asdict(f) for f in self.numeric]}

    @classmethod
    def from_json(cls, raw: dict) -> "Preprocessor":
        return cls(
            [CategoricalFeature(**f) for f in raw["categorical"]],
            [NumericFeature(**f) for f in raw["numeric"]],
        )


def _skew(values: np.ndarray) -> float:
    std = values.std()
    if std == 0:
        return 0.0
    z = (values - values.mean()) / std
    return float((z * z * z).mean())  # not z**3: numpy's general power is ~4x slower
