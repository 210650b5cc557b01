"""Label coding: decide a label's task from its values and write every value in canonical form.

Consumes a :class:`~kfmlops.config.DataSpec` and the label column's raw values (pyarrow arrays,
nulls already removed), one batch at a time; produces canonical labels (see :mod:`kfmlops.tasks`)
and, at the end, the :class:`~kfmlops.tasks.Task`.

The task is ``data.task`` when set; otherwise it is inferred from the first labelled batch:

- ``positive_labels`` or ``negative_labels`` set, or a boolean label: **binary**;
- numbers with a fractional part: **regression**;
- whole numbers: two distinct values **binary**, up to :data:`~kfmlops.tasks.MAX_INTEGER_CLASSES`
  **multiclass**, more **regression**;
- text: two distinct values **binary**, up to :data:`~kfmlops.tasks.MAX_CLASSES` **multiclass**,
  more is refused (set ``data.task``).

Binary: a value in ``positive_labels`` is positive and any other negative; when no value of the
label is in the default list, the last of its two values in sorted order is positive (scikit-learn's
rule). Each class is named after its most frequent raw value in the first batch that has it, so
``>50K`` and ``>50K.`` both become ``>50K``. Multiclass: a value's text is its class; the classes
are sorted. Regression: values as float64.
"""

from __future__ import annotations

import zlib
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kfmlops.config import DataSpec, TaskKind
from kfmlops.tasks import MAX_CLASSES, MAX_INTEGER_CLASSES, Task

NEGATIVE, POSITIVE = 0, 1


class LabelError(ValueError):
    """The label's values do not fit its task; the message names the values and the setting to change."""


def infer_kind(values: pa.Array, data: DataSpec) -> tuple[TaskKind, str]:
    """The task kind of a label from its first non-null values, and why."""
    if data.task:
        return data.task, f"data.task is {data.task!r}"
    if "positive_labels" in data.model_fields_set or data.negative_labels is not None:
        return "binary", "data.positive_labels is set"
    kind = values.type
    if pa.types.is_boolean(kind):
        return "binary", "the label is boolean"
    distinct = pc.unique(values)
    n = len(distinct)
    shown = _examples(distinct)
    if pa.types.is_floating(kind):
        fractional = pc.any(pc.not_equal(pc.floor(distinct), distinct)).as_py()
        if fractional:
            return "regression", f"the label has fractional values ({shown})"
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        if n <= 2:
            return "binary", f"the label has two distinct numbers ({shown})"
        if n <= MAX_INTEGER_CLASSES:
            return "multiclass", f"the label has {n} distinct whole numbers (at most {MAX_INTEGER_CLASSES}: {shown})"
        return "regression", f"the label has {n} distinct whole numbers (more than {MAX_INTEGER_CLASSES})"
    if n <= 2:
        return "binary", f"the label has two distinct values ({shown})"
    if n <= MAX_CLASSES:
        return "multiclass", f"the label has {n} distinct values ({shown})"
    raise LabelError(
        f"label {data.label!r} has {n} distinct text values in its first rows ({shown}), more than the {MAX_CLASSES} "
        "a multiclass task is inferred for: set data.task (regression for numbers written as text, multiclass to "
        "keep every value a class)"
    )


class LabelCoder:
    """Codes one label column batch by batch; :meth:`task` gives the task once every batch is coded."""

    def __init__(self, data: DataSpec):
        self.data = data
        self.kind: TaskKind | None = None
        self.reason = ""
        self.positive_values: list | None = None
        self.names: dict[int, str] = {}  # binary: class code -> name
        self.mapping: dict[str, Counter] = {}  # class -> rows of each raw value (classification)
        self.values: Counter = Counter()  # rows of each canonical class (classification)

    def __call__(self, raw: pa.Array) -> pa.Array:
        """Canonical labels for ``raw`` (no nulls): class-name strings, or float64 for regression."""
        if self.kind is None:
            self.kind, self.reason = infer_kind(raw, self.data)
            if self.kind == "binary":
                self.positive_values = self._positive_values(raw)
        if self.kind == "regression":
            return self._number(raw)
        if self.kind == "multiclass":
            names = _text(raw)
            self._count(names, raw)
            return names
        return self._binary(raw)

    def split_keys(self, canonical: pa.Array) -> np.ndarray:
        """:func:`split_keys` of this batch."""
        return split_keys(canonical, self.kind, self.names.get(POSITIVE))

    def task(self, label: str) -> Task:
        """The label's task over every batch coded so far."""
        if self.kind is None:
            raise LabelError(f"label {self.data.label!r} has no values")
        if self.kind == "regression":
            return Task("regression", label, (), self.reason)
        if self.kind == "binary":
            missing = [cls for cls in (NEGATIVE, POSITIVE) if cls not in self.names]
            if missing:
                raise LabelError(self._one_class_message())
            inferred = "positive_labels" not in self.data.model_fields_set and not self.data.task
            merged = {name: sorted(raw) for name, raw in self.mapping.items() if len(raw) > 1}
            if inferred and self.data.negative_labels is None and merged:
                raise LabelError(
                    f"label {self.data.label!r} looked binary in its first rows but has more values later: {merged} "
                    "would be merged into two classes; set data.task: multiclass, or name the positive values in "
                    "data.positive_labels"
                )
            return Task("binary", label, (self.names[NEGATIVE], self.names[POSITIVE]), self.reason)
        classes = tuple(sorted(self.values))
        if len(classes) < 2:
            raise LabelError(self._one_class_message())
        return Task("multiclass", label, classes, self.reason)

    def label_mapping(self) -> dict[str, dict[str, int]]:
        """Rows of each raw label value by the class it became, most frequent first."""
        return {cls: dict(counter.most_common()) for cls, counter in sorted(self.mapping.items())}

    # --- per task ---------------------------------------------------------------------------------

    def _positive_values(self, raw: pa.Array) -> list:
        configured = list(self.data.positive_labels)
        if "positive_labels" in self.data.model_fields_set or self.data.negative_labels is not None:
            return configured
        if pc.any(_is_in(raw, configured, self.data.label)).as_py():
            return configured
        distinct = sorted(v for v in pc.unique(raw).to_pylist())
        if len(distinct) > 2:
            raise LabelError(
                f"label {self.data.label!r} has {len(distinct)} values ({_examples(pa.array(distinct))}) and data.task "
                "is binary, but none of them is in positive_labels: name the positive values in data.positive_labels"
            )
        return [distinct[-1]]

    def _binary(self, raw: pa.Array) -> pa.Array:
        positive = _is_in(raw, self.positive_values, self.data.label)
        negatives = raw.filter(pc.invert(positive))
        if self.data.negative_labels is not None:
            known = _is_in(negatives, list(self.data.negative_labels), self.data.label)
            unmapped = _value_counts(negatives.filter(pc.invert(known)))
            if unmapped:
                shown = ", ".join(f"{v!r} ({n} rows)" for v, n in unmapped.most_common(5))
                raise LabelError(
                    f"label {self.data.label!r} has values in neither positive_labels {list(self.data.positive_labels)} "
                    f"nor negative_labels {list(self.data.negative_labels)}: {shown}; add each to one of the lists, or "
                    "to ingest.na_values to drop its rows"
                )
        for code, values in ((POSITIVE, raw.filter(positive)), (NEGATIVE, negatives)):
            counts = _value_counts(values)
            if counts and code not in self.names:
                self.names[code] = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
            if counts:
                name = self.names[code]
                self.mapping.setdefault(name, Counter()).update(counts)
                self.values[name] += sum(counts.values())
        names = pa.array([self.names.get(NEGATIVE), self.names.get(POSITIVE)], pa.string())
        return pc.take(names, pc.cast(positive, pa.int8()))

    def _count(self, names: pa.Array, raw: pa.Array) -> None:
        pairs = pa.table({"name": names, "raw": _text_raw(raw)}).group_by(["name", "raw"]).aggregate([([], "count_all")])
        for name, value, n in zip(*(pairs.column(c).to_pylist() for c in ("name", "raw", "count_all"))):
            self.mapping.setdefault(name, Counter())[value] += n
            self.values[name] += n

    def _number(self, raw: pa.Array) -> pa.Array:
        if pa.types.is_integer(raw.type) or pa.types.is_floating(raw.type):
            return raw.cast(pa.float64())
        try:
            return pc.cast(raw, pa.float64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            bad = [v for v in raw.to_pylist() if not _is_number(v)][:5]
            raise LabelError(
                f"label {self.data.label!r} is a regression label but has values that are not numbers: {bad}; add them "
                "to ingest.na_values to drop their rows, or set data.task"
            ) from None

    def _one_class_message(self) -> str:
        shown = ", ".join(f"{v!r} ({n} rows)" for v, n in self.values.most_common(5))
        hint = f"; check positive_labels={list(self.data.positive_labels)} against them" if self.kind == "binary" else ""
        return f"label {self.data.label!r} has one class: every row is {shown}{hint}"


def split_keys(canonical: pa.Array, kind: TaskKind, positive: str | None) -> np.ndarray:
    """An int64 key per canonical label that the stratified split groups by: the binary class code
    (1 for ``positive``, else 0), a hash of the multiclass class name, or 0 for every regression row
    (a plain seeded split)."""
    if kind == "regression":
        return np.zeros(len(canonical), dtype=np.int64)
    names = canonical.to_pylist()
    if kind == "binary":
        return np.fromiter((POSITIVE if n == positive else NEGATIVE for n in names), np.int64, len(names))
    return np.fromiter((zlib.crc32(n.encode()) for n in names), np.int64, len(names))


def _is_in(array: pa.Array, wanted: list, label: str) -> pa.Array:
    """Whether each value is one of ``wanted`` (compared as text for strings, as numbers for numbers)."""
    if pa.types.is_string(array.type):
        values = pa.array([str(v) for v in wanted], pa.string())
    elif pa.types.is_boolean(array.type):
        values = pa.array([bool(v) for v in wanted if isinstance(v, bool) or v in (0, 1)], pa.bool_())
    elif pa.types.is_integer(array.type) or pa.types.is_floating(array.type):
        numeric = [v for v in wanted if isinstance(v, (int, float)) and not isinstance(v, bool)]
        numeric += [float(v) for v in wanted if isinstance(v, str) and _is_number(v)]
        values = pa.array(numeric, pa.float64()).cast(array.type, safe=False)
    else:
        raise LabelError(f"label column {label!r} has type {array.type}; expected strings, numbers or booleans")
    return pc.fill_null(pc.is_in(array, value_set=values), False)


def _text(raw: pa.Array) -> pa.Array:
    """Each value as its class name: text as is, whole floats without ``.0``, booleans ``True``/``False``."""
    if pa.types.is_floating(raw.type) and not pc.any(pc.not_equal(pc.floor(raw), raw)).as_py():
        return pc.cast(pc.cast(raw, pa.int64()), pa.string())
    return _text_raw(raw)


def _text_raw(raw: pa.Array) -> pa.Array:
    if pa.types.is_boolean(raw.type):
        return pc.if_else(raw, pa.scalar("True"), pa.scalar("False"))
    return pc.cast(raw, pa.string())


def _is_number(text) -> bool:
    try:
        float(text)
    except (TypeError, ValueError):
        return False
    return True


def _value_counts(values: pa.Array) -> Counter:
    """Rows of each value, keyed by its text (booleans ``True``/``False``)."""
    if len(values) == 0:
        return Counter()
    return Counter({str(v["values"]): v["counts"] for v in pc.value_counts(values).to_pylist()})


def _examples(distinct: pa.Array, k: int = 5) -> str:
    values = distinct.to_pylist()
    shown = ", ".join(repr(v) for v in sorted(values, key=str)[:k])
    return shown + (", ..." if len(values) > k else "")
