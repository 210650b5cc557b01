"""The current window in the reference's form: features, canonical labels and the predictions dataset's columns.

The drift job compares a window (of the inference log, or any dataset) with the served model's
training data, so both must speak the same language, the served model's :class:`~kfmlops.tasks.Task`:

- :func:`current_from_log` turns the log's rows (``input.*`` columns, the served output as
  :mod:`~kfmlops.monitoring.store` keeps it, the imported labels) into features, ``prediction``
  and ``proba:<class>`` columns (:func:`served_predictions`) and the label under the task's name;
- :func:`normalise_current` normalises names and values as ingest does (snake_case, trimmed
  strings, NA tokens as nulls) and makes the labels canonical (:func:`canonical_labels`): the
  task's class names, or numbers for regression.

A dataset given instead of the log carries its predictions, if any, in the predictions dataset's
form already (``prediction``: class name or value; ``proba:<class>``; see :mod:`kfmlops.tasks`).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kfmlops.config import DataSpec
from kfmlops.ingest import normalise_column, normalise_name
from kfmlops.model_contract import predictions
from kfmlops.monitoring.store import OUTPUT_PREFIX, input_columns, label_text
from kfmlops.tasks import PREDICTION, PROBA_PREFIX, Task

SERVED_OUTPUT = {
    "binary": "P(positive) as a number, or {class: probability}",
    "multiclass": "{class: probability}",
    "regression": "a number",
}
"""What a served output is, per task (the serving contract), in words for error messages."""


def served_predictions(raw: pa.Table, task: Task, threshold: float) -> dict[str, pa.Array]:
    """The predictions dataset's columns (``prediction``, ``proba:<class>``) for the log's served outputs.

    Binary: P(positive) from the log's ``prediction`` number (or an ``output.<class>`` mapping),
    the class at ``threshold``; multiclass: the ``output.<class>`` probabilities and the most
    probable class; regression: the ``prediction`` number. A row whose output is missing or not
    of this form (a probability outside [0, 1] included) has nulls.
    """
    n = raw.num_rows
    number = _floats(raw, "prediction", n)
    if not task.is_classification:
        return {PREDICTION: pa.array(number, mask=np.isnan(number))}
    scores = np.column_stack([_floats(raw, OUTPUT_PREFIX + c, n) for c in task.classes])
    if task.kind == "binary":
        given = ~np.isnan(number)
        scores[given] = np.column_stack([1 - number[given], number[given]])
    with np.errstate(invalid="ignore"):  # NaN compares False: not valid
        valid = ((scores >= 0) & (scores <= 1)).all(axis=1)
    frame = predictions(task, scores[valid], threshold)
    rows = np.full(n, -1, np.int64)
    rows[valid] = np.arange(int(valid.sum()))
    where = pa.array(rows, mask=~valid)
    return {name: pc.take(pa.array(frame[name].to_numpy(), pa.string() if name == PREDICTION else pa.float64()), where)
            for name in frame.columns}


def unreadable_outputs(raw: pa.Table, prediction: pa.Array | pa.ChunkedArray) -> int:
    """Rows of the log with an output (any output column set) but no ``prediction`` (the column
    :func:`served_predictions` read from it): outputs that are not the task's."""
    outputs = [raw[c] for c in raw.column_names if c in ("prediction", "output_json") or c.startswith(OUTPUT_PREFIX)]
    if not outputs or raw.num_rows == 0:
        return 0
    some = np.zeros(raw.num_rows, bool)
    for column in outputs:
        some |= pc.is_valid(column).to_numpy(zero_copy_only=False)
    return int((some & ~pc.is_valid(prediction).to_numpy(zero_copy_only=False)).sum())


def current_from_log(raw: pa.Table, task: Task, threshold: float) -> pa.Table:
    """The log's ``input.*`` columns as features (names normalised), the served outputs as the
    predictions dataset's columns (:func:`served_predictions`), ``model_version``, and the imported
    labels (as text) under the task's label name."""
    columns = {feature: raw[column] for feature, column in input_columns(raw).items()}
    columns |= served_predictions(raw, task, threshold)
    columns["model_version"] = raw["model_version"]
    if "label" in raw.column_names:
        columns[task.label] = raw["label"]
    return pa.table(columns)


def normalise_current(
    table: pa.Table, task: Task, data: DataSpec, na_values: list[str]
) -> tuple[pa.Table, dict[str, int]]:
    """``table`` with names and values normalised as ingest does (the prediction columns kept as
    they are) and the label canonical (:func:`canonical_labels`, nulls for unlabelled rows); and the
    rows of each label value that fits none of the task's classes (left unlabelled)."""
    na = pa.array([v.strip() for v in na_values], pa.string())
    columns = {}
    for name, values in zip(table.column_names, table.columns):
        if name != PREDICTION and not name.startswith(PROBA_PREFIX):
            name, values = normalise_name(name), normalise_column(values, na)
        columns[name] = values
    unknown: dict[str, int] = {}
    if task.label in columns:
        columns[task.label], unknown = canonical_labels(columns[task.label], task, data)
    return pa.table(columns), unknown


def canonical_labels(values: pa.Array | pa.ChunkedArray, task: Task, data: DataSpec) -> tuple[pa.Array, dict[str, int]]:
    """Labels in the task's canonical form: class names (strings) or numbers (float64), nulls kept.

    A label is read as text (:func:`~kfmlops.monitoring.store.label_text`). Classification: a class
    name is itself; otherwise, for a binary task, ingest's rule under the training config (a value
    in ``data.positive_labels`` is the positive class; any other the negative one, or, when
    ``data.negative_labels`` is set, only the values it lists). Regression: the number the text
    spells. Returns the labels and the rows of each value that fits none (null in the labels).
    """
    text = label_text(values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values)
    distinct = pc.unique(pc.drop_null(text))
    mapped = [_canonical(v, task, data) for v in distinct.to_pylist()]
    kind = pa.string() if task.is_classification else pa.float64()
    labels = pc.take(pa.array(mapped, kind), pc.index_in(text, value_set=distinct))
    unfit = pc.and_(pc.is_valid(text), pc.is_null(labels))
    counts = pc.value_counts(text.filter(unfit)).to_pylist()
    return labels, {c["values"]: c["counts"] for c in sorted(counts, key=lambda c: -c["counts"])}


def _canonical(text: str, task: Task, data: DataSpec) -> str | float | None:
    if not task.is_classification:
        try:
            return float(text)
        except ValueError:
            return None
    if text in task.classes:
        return text
    if task.kind != "binary":
        return None
    if text in {str(v) for v in data.positive_labels}:
        return task.positive
    if data.negative_labels is None or text in {str(v) for v in data.negative_labels}:
        return task.classes[0]
    return None


def _floats(table: pa.Table, column: str, rows: int) -> np.ndarray:
    """``column`` as float64 with NaN for nulls; all NaN when the table lacks it."""
    if column not in table.column_names:
        return np.full(rows, np.nan)
    return pc.fill_null(table[column].cast(pa.float64()), np.nan).to_numpy()
