"""Predict: a model scores a split into the predictions dataset.

Consumes a Model artifact (an MLflow model directory of any flavor, or a ``models:/``/``runs:/`` or
artifact URI; see :mod:`kfmlops.model_contract`), a split (a DataFrame, or a Parquet file) and the
data's :class:`~kfmlops.tasks.Task`; produces the predictions dataset (:mod:`kfmlops.tasks`):
``label`` when the split holds the label column, ``prediction`` (binary: the positive class where
P(positive) >= ``threshold``; multiclass: the most probable class; regression: the value) and, for
classification, ``proba:<class>``, one row per input row in input order. The model never sees the
label column.

Rows are scored :data:`BATCH_ROWS` at a time, so a model's working memory stays bounded;
:func:`predict_file` also reads and writes the Parquet files batch by batch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from kfmlops import model_contract
from kfmlops.model_contract import LoadedModel
from kfmlops.tasks import Task

BATCH_ROWS = 65_536


def _empty_scores(task: Task) -> np.ndarray:
    return np.zeros((0, len(task.classes))) if task.is_classification else np.zeros(0)


def score_frame(model: LoadedModel, frame: pd.DataFrame, task: Task, threshold: float = 0.5,
                batch_rows: int = BATCH_ROWS) -> pd.DataFrame:
    """The predictions dataset of a loaded model on ``frame``, scored ``batch_rows`` rows at a time."""
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be at least 1, got {batch_rows}")
    features = frame.drop(columns=[task.label], errors="ignore")
    parts = [model.scores(features.iloc[start:start + batch_rows]) for start in range(0, len(frame), batch_rows)]
    scores = np.concatenate(parts) if parts else _empty_scores(task)
    labels = frame[task.label].to_numpy() if task.label in frame.columns else None
    return model_contract.predictions(task, scores, threshold, labels)


def predict(model: str | Path, frame: pd.DataFrame, task: Task, threshold: float = 0.5,
            batch_rows: int = BATCH_ROWS) -> pd.DataFrame:
    """Load ``model`` (its task must agree with ``task``) and score ``frame`` into the predictions dataset."""
    return score_frame(model_contract.load(model, task), frame, task, threshold, batch_rows)


def predict_file(model: str | Path, source: str | Path, out: str | Path, task: Task, threshold: float = 0.5,
                 batch_rows: int = BATCH_ROWS) -> int:
    """Score the Parquet split ``source`` into the predictions dataset at ``out`` (Parquet), one batch
    of rows in memory at a time; returns the number of rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    loaded = model_contract.load(model, task)
    reader = pq.ParquetFile(str(source))
    writer, rows = None, 0
    try:
        for batch in reader.iter_batches(batch_size=batch_rows):
            table = pa.Table.from_pandas(score_frame(loaded, batch.to_pandas(), task, threshold, batch_rows),
                                         preserve_index=False)
            if writer is None:
                writer = pq.ParquetWriter(str(out), table.schema)
            writer.write_table(table.cast(writer.schema))
            rows += table.num_rows
        if writer is None:  # no rows: the columns still say what the dataset holds
            labels = [] if task.label in reader.schema_arrow.names else None
            empty = model_contract.predictions(task, _empty_scores(task), threshold, labels)
            pq.write_table(pa.Table.from_pandas(empty, preserve_index=False), str(out))
    finally:
        if writer is not None:
            writer.close()
    return rows
