"""The served model's input contract: request payloads in, checked and encoded feature arrays out.

A :class:`RequestSchema` is built once, at load time, from the model's fitted
:class:`~kfmlops.train.preprocess.Preprocessor` (vocabularies, imputation and scaling) and its
MLflow signature (column order and which columns are required). It turns

- V1 ``instances`` (a list of objects keyed by column, or a list of value lists in signature order),
- V2 / Open Inference ``inputs`` (one input tensor per column, ``BYTES`` for categorical columns),

into the arrays the network takes: ``(int64 codes [n, n_categorical], float32 values [n, n_numeric])``,
with exactly the numbers :meth:`Preprocessor.transform` produces. Work is per column over the whole
batch; no DataFrame is built.

Every problem raises :class:`RequestRejected`, whose message names the column (and row): a missing
column, a value of the wrong type, an unseen category, a null where none is allowed, an empty or
oversized batch. Nulls are allowed in categorical columns (the model has a missing bucket) and in
numeric columns the signature marks optional (``required: false``; imputed with the train median);
optional columns may also be left out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus

import numpy as np
from kserve.errors import InvalidInput

from kfmlops.train.preprocess import Preprocessor

NUMERIC_TYPES = {"long", "integer", "double", "float"}
V2_NUMERIC = {"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64", "FP16", "FP32", "FP64"}
_NUMBER = {int, float}


class RequestRejected(InvalidInput):
    """A request the model cannot score: ``status`` is the HTTP answer, ``kind`` a metric label.

    Kinds: ``malformed``, ``empty``, ``too_large``, ``missing_column``, ``wrong_type``,
    ``unseen_category``, ``missing_value``.
    """

    def __init__(self, message: str, kind: str, status: int = HTTPStatus.BAD_REQUEST):
        super().__init__(message)
        self.kind = kind
        self.status = int(status)


@dataclass(frozen=True)
class Column:
    """One signature column: ``kind`` is ``categorical``, ``numeric`` or ``unused`` (not a model feature)."""

    name: str
    kind: str
    required: bool
    nullable: bool


class RequestSchema:
    """Checks request columns against the model and encodes them (see the module docstring)."""

    def __init__(self, preprocessor: Preprocessor, columns: list[Column], unseen: str, max_rows: int):
        self.preprocessor = preprocessor
        self.columns = columns
        self.unseen = unseen
        self.max_rows = max_rows
        self.names = [c.name for c in columns]
        by_name = {c.name: c for c in columns}
        self._categorical = [(by_name[f.name], _lookup(f.vocabulary)) for f in preprocessor.categorical]
        numeric = preprocessor.numeric
        self._numeric = [by_name[f.name] for f in numeric]
        self._nullable = np.array([c.nullable for c in self._numeric], dtype=bool)
        self._median = np.array([f.median for f in numeric], dtype=np.float64)
        self._log = np.array([f.log for f in numeric], dtype=bool)
        self._mean = np.array([f.mean for f in numeric], dtype=np.float64)
        self._std = np.array([f.std for f in numeric], dtype=np.float64)

    @classmethod
    def from_model(
        cls, preprocessor: Preprocessor, signature_inputs: list[tuple[str, str, bool]] | None, unseen: str, max_rows: int
    ) -> "RequestSchema":
        """Columns from the signature (``[(name, mlflow type, required)]``), else the model's features."""
        categorical = {f.name for f in preprocessor.categorical}
        numeric = {f.name for f in preprocessor.numeric}
        if signature_inputs is None:
            signature_inputs = [(n, "string" if n in categorical else "double", True) for n in preprocessor.feature_names]
        columns, seen = [], set()
        for name, type_, required in signature_inputs:
            seen.add(name)
            if name in categorical:
                if type_ != "string":
                    raise ValueError(f"signature column {name!r} is {type_} but the model encodes it as categorical")
                columns.append(Column(name, "categorical", required, True))
            elif name in numeric:
                if type_ not in NUMERIC_TYPES:
                    raise ValueError(f"signature column {name!r} is {type_} but the model scales it as numeric")
                columns.append(Column(name, "numeric", required, not required))
            else:
                columns.append(Column(name, "unused", required, True))
        absent = [n for n in preprocessor.feature_names if n not in seen]
        if absent:
            raise ValueError(f"the model's features {absent} are not in its signature")
        return cls(preprocessor, columns, unseen, max_rows)

    # ---- payloads -> columns -------------------------------------------------------------------

    def columns_from_v1(self, payload: object) -> dict[str, Sequence]:
        """``{"instances": [...]}`` -> ``{column: values}``; rows are objects or lists in signature order."""
        if not isinstance(payload, dict) or "instances" not in payload:
            raise RequestRejected('the body must be a JSON object with an "instances" list', "malformed")
        rows = payload["instances"]
        if not isinstance(rows, list):
            raise RequestRejected('"instances" must be a list of rows', "malformed")
        self._check_size(len(rows), "instances")
        if isinstance(rows[0], dict):
            return self._from_objects(rows)
        if isinstance(rows[0], list):
            return self._from_lists(rows)
        raise RequestRejected(
            f"instances[0] must be an object keyed by column or a list of {len(self.names)} values in the order "
            f"{self.names}; got {type(rows[0]).__name__}",
            "malformed",
        )

    def columns_from_v2(self, inputs: Sequence) -> dict[str, Sequence]:
        """Open Inference ``inputs`` (one tensor per column, shape ``[n]`` or ``[n, 1]``) -> ``{column: values}``."""
        if not inputs:
            raise RequestRejected('"inputs" is empty: send one input per column', "empty")
        by_name = {tensor.name: tensor for tensor in inputs}
        missing = [c.name for c in self.columns if c.required and c.name not in by_name]
        if missing:
            raise RequestRejected(f"missing input(s) {missing}; the model takes {self.names}", "missing_column")
        columns, n = {}, None
        for column in self.columns:
            tensor = by_name.get(column.name)
            if tensor is None or column.kind == "unused":
                continue
            values = _tensor_values(tensor)
            shape = list(tensor.shape)
            if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)) or shape[0] != len(values):
                raise RequestRejected(
                    f"input {column.name!r}: shape {shape} does not match its {len(values)} values; send shape [n] or [n, 1]",
                    "malformed",
                )
            if n is None:
                n = len(values)
                self._check_size(n, f"input {column.name!r}")
            elif len(values) != n:
                raise RequestRejected(f"input {column.name!r} has {len(values)} values; other inputs have {n}", "malformed")
            expected = "BYTES" if column.kind == "categorical" else "a numeric datatype (INT64, FP64, ...)"
            if (tensor.datatype == "BYTES") != (column.kind == "categorical") or (
                column.kind == "numeric" and tensor.datatype not in V2_NUMERIC
            ):
                raise RequestRejected(
                    f"input {column.name!r} has datatype {tensor.datatype}; expected {expected}", "wrong_type"
                )
            columns[column.name] = values
        if n is None:
            raise RequestRejected("no input carries a model feature", "empty")
        return {name: columns.get(name, [None] * n) for name in self.preprocessor.feature_names}

    def _check_size(self, n: int, where: str) -> None:
        if n == 0:
            raise RequestRejected(f"{where} is empty: send at least one row", "empty")
        if n > self.max_rows:
            raise RequestRejected(
                f"{where} has {n} rows; the limit is {self.max_rows} per request (serving.max_rows)",
                "too_large",
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            )

    def _from_objects(self, rows: list) -> dict[str, Sequence]:
        columns = {}
        for column in self.columns:
            if column.kind == "unused":
                continue
            name = column.name
            try:
                columns[name] = [row[name] for row in rows] if column.required else [row.get(name) for row in rows]
            except (KeyError, TypeError, AttributeError):
                for i, row in enumerate(rows):
                    if not isinstance(row, dict):
                        raise RequestRejected(
                            f"instances[{i}] is a {type(row).__name__}; every row must be an object like instances[0]",
                            "malformed",
                        ) from None
                    absent = [c.name for c in self.columns if c.required and c.name not in row]
                    if absent:
                        raise RequestRejected(f"instances[{i}] is missing column(s) {absent}", "missing_column") from None
                raise
        return columns

    def _from_lists(self, rows: list) -> dict[str, Sequence]:
        width = len(self.names)
        for i, row in enumerate(rows):
            if not isinstance(row, list) or len(row) != width:
                got = f"{len(row)} values" if isinstance(row, list) else f"a {type(row).__name__}"
                raise RequestRejected(
                    f"instances[{i}] has {got}; a list row takes {width} values in the order {self.names}", "malformed"
                )
        by_position = list(zip(*rows))
        return {c.name: by_position[j] for j, c in enumerate(self.columns) if c.kind != "unused"}

    # ---- columns -> arrays ---------------------------------------------------------------------

    def encode(self, columns: Mapping[str, Sequence]) -> tuple[np.ndarray, np.ndarray]:
        """Checked columns -> (int64 codes ``[n, n_categorical]``, float32 values ``[n, n_numeric]``)."""
        n = len(next(iter(columns.values())))
        codes = np.empty((n, len(self._categorical)), dtype=np.int64)
        for j, (column, lookup) in enumerate(self._categorical):
            values = columns[column.name]
            try:
                codes[:, j] = [lookup[v] for v in values]
            except (KeyError, TypeError):
                codes[:, j] = self._codes_slow(column, lookup, values)
        raw = np.empty((n, len(self._numeric)), dtype=np.float64)
        for j, column in enumerate(self._numeric):
            values = columns[column.name]
            if not set(map(type, values)) <= _NUMBER:
                values = _numbers_slow(column, values)
            try:
                raw[:, j] = values
            except OverflowError:
                raise RequestRejected(f"column {column.name!r}: a value is too large for a float", "wrong_type") from None
        missing = np.isnan(raw)
        if missing.any() and (missing & ~self._nullable).any():
            i, j = (int(k[0]) for k in np.nonzero(missing & ~self._nullable))
            raise RequestRejected(
                f"column {self._numeric[j].name!r}, row {i}: null/NaN is not allowed (the signature marks it required)",
                "missing_value",
            )
        if np.isinf(raw).any():
            j = int(np.nonzero(np.isinf(raw))[1][0])
            raise RequestRejected(f"column {self._numeric[j].name!r}: values must be finite", "wrong_type")
        raw = np.where(np.isnan(raw), self._median, raw)
        if self._log.any():
            raw[:, self._log] = np.log1p(np.maximum(raw[:, self._log], 0.0))
        numbers = ((raw - self._mean) / self._std).astype(np.float32)
        return codes, numbers

    def _codes_slow(self, column: Column, lookup: dict, values: Sequence) -> list[int]:
        out = []
        for i, value in enumerate(values):
            if value is not None and not isinstance(value, str):
                raise RequestRejected(
                    f"column {column.name!r}, row {i}: expected a string, got {type(value).__name__} {value!r}", "wrong_type"
                )
            code = lookup.get(value)
            if code is None:
                if self.unseen == "reject":
                    known = sorted(k for k in lookup if k is not None)
                    raise RequestRejected(
                        f"column {column.name!r}, row {i}: unseen category {value!r}; known: {known}", "unseen_category"
                    )
                code = 0
            out.append(code)
        return out

    # ---- V2 metadata ---------------------------------------------------------------------------

    def input_types(self) -> list[dict]:
        """V2 model metadata: one tensor per signature column."""
        return [
            {"name": c.name, "datatype": "FP64" if c.kind == "numeric" else "BYTES", "shape": [-1]} for c in self.columns
        ]


def _lookup(vocabulary: list[str]) -> dict:
    """Category -> code as :meth:`Preprocessor.transform` assigns them (0 = missing/unknown)."""
    return {None: 0} | {value: i + 1 for i, value in enumerate(vocabulary)}


def _numbers_slow(column: Column, values: Sequence) -> list[float]:
    """Numbers and nulls (as NaN, checked by the caller) from a column with non-float values; else rejects."""
    out = []
    for i, value in enumerate(values):
        if value is None:
            out.append(np.nan)
        elif type(value) in _NUMBER:
            out.append(value)
        else:
            raise RequestRejected(
                f"column {column.name!r}, row {i}: expected a number, got {type(value).__name__} {value!r}", "wrong_type"
            )
    return out


def _tensor_values(tensor) -> list:
    """A V2 input's values as a flat list (JSON ``data``, nested or not, or binary ``raw_data``)."""
    data = tensor.data
    if data is None:
        array = tensor.as_numpy().reshape(-1)
        data = [v.decode() if isinstance(v, bytes) else v for v in array.tolist()]
    elif data and isinstance(data[0], list):
        if any(not isinstance(row, list) or len(row) != 1 for row in data):
            raise RequestRejected(f"input {tensor.name!r}: nested data must be [[v], [v], ...]", "malformed")
        data = [row[0] for row in data]
    return data
