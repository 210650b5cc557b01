"""The served model's input contract: request payloads in, checked and encoded feature arrays out.

A :class:`RequestSchema` is built once, at load time, from the model's MLflow signature (column
order, types, which columns are required) and the features the model reads. It turns

- V1 ``instances`` (a list of objects keyed by column, or a list of value lists in signature order),
- V2 / Open Inference ``inputs`` (one input tensor per column, ``BYTES`` for string columns),

into ``{feature: values}``, checking presence, shape and size. An encoder then turns those columns
into the arrays the model's scorer takes (:mod:`kfmlops.serving.scorer`), checking each value:

- :class:`BundleEncoder` (kfmlops bundles, ``tabular-net`` and ``gbdt``): ``(int64 codes [n,
  n_categorical], float32 values [n, n_numeric])``, exactly the numbers the bundle's fitted
  :meth:`Preprocessor.transform <kfmlops.train.preprocess.Preprocessor.transform>` produces; work is
  per column over the whole batch, no DataFrame is built. Nulls are allowed in categorical columns
  (the model has a missing bucket) and in numeric columns the signature marks optional
  (``required: false``; imputed with the train median); an unseen category is refused or scored
  as unknown (``serving.unseen_categories``).
- :class:`FrameEncoder` (any other MLflow model): one array per feature, strings for ``string``
  columns, numbers for numeric ones (int64 for ``long``/``integer`` columns given whole numbers),
  as given for other types; nulls only in columns the signature marks optional.

Every problem raises :class:`RequestRejected`, whose message names the column (and row): a missing
column, a value of the wrong type, an unseen category, a null where none is allowed, an empty or
oversized batch. Optional columns may be left out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus

import numpy as np
from kserve.errors import InvalidInput

from kfmlops.train.preprocess import Preprocessor

NUMERIC_TYPES = {"long", "integer", "double", "float"}
INTEGER_TYPES = {"long", "integer"}
V2_NUMERIC = {"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64", "FP16", "FP32", "FP64"}
_NUMBER = {int, float}

Signature = list[tuple[str, str, bool]]
"""A model signature's inputs as ``[(column, MLflow type name, required)]``."""


class RequestRejected(InvalidInput):
    """A request the model cannot score: ``status`` is the HTTP answer, ``kind`` a metric label.

    Kinds: ``malformed``, ``empty``, ``too_large``, ``missing_column``, ``wrong_type``,
    ``unseen_category``, ``missing_value``, ``refused_by_model`` (the model's own input checks,
    e.g. MLflow's schema enforcement, refused the rows), ``not_explainable`` (501: ``:explain`` on a
    model with no attribution method), ``unknown_entity`` (an entity key the online feature store has
    no features for: :mod:`kfmlops.serving.online_features`).
    """

    def __init__(self, message: str, kind: str, status: int = HTTPStatus.BAD_REQUEST):
        super().__init__(message)
        self.kind = kind
        self.status = int(status)


@dataclass(frozen=True)
class Column:
    """One signature column: ``kind`` is ``string``, ``numeric``, ``any`` (checked by the model
    itself) or ``unused`` (not a model feature); ``type`` is the MLflow type name."""

    name: str
    kind: str
    type: str
    required: bool
    nullable: bool


def signature_of(mlmodel) -> Signature | None:
    """An ``mlflow.models.Model``'s column signature, or None when it has none (or a tensor one)."""
    signature = mlmodel.signature
    if signature is None or signature.inputs is None or not signature.inputs.has_input_names():
        return None
    return [(c.name, c.type.name, c.required) for c in signature.inputs.inputs]


class RequestSchema:
    """Checks request columns against the model's signature (see the module docstring)."""

    def __init__(self, columns: list[Column], features: list[str], max_rows: int):
        self.columns = columns
        self.features = features
        self.max_rows = max_rows
        self.names = [c.name for c in columns]
        self.by_name = {c.name: c for c in columns}

    @classmethod
    def for_bundle(cls, preprocessor: Preprocessor, signature: Signature | None, max_rows: int) -> "RequestSchema":
        """Columns of a kfmlops bundle: kinds from its preprocessor, order and ``required`` from the
        signature (else the features, all required)."""
        categorical = {f.name for f in preprocessor.categorical}
        numeric = {f.name for f in preprocessor.numeric}
        if signature is None:
            signature = [(n, "string" if n in categorical else "double", True) for n in preprocessor.feature_names]
        columns = []
        for name, type_, required in signature:
            if name in categorical:
                if type_ != "string":
                    raise ValueError(f"signature column {name!r} is {type_} but the model encodes it as categorical")
                columns.append(Column(name, "string", type_, required, True))
            elif name in numeric:
                if type_ not in NUMERIC_TYPES:
                    raise ValueError(f"signature column {name!r} is {type_} but the model scales it as numeric")
                columns.append(Column(name, "numeric", type_, required, not required))
            else:
                columns.append(Column(name, "unused", type_, required, True))
        absent = [n for n in preprocessor.feature_names if n not in {c.name for c in columns}]
        if absent:
            raise ValueError(f"the model's features {absent} are not in its signature")
        return cls(columns, preprocessor.feature_names, max_rows)

    @classmethod
    def for_model(cls, signature: Signature | None, features: list[str], max_rows: int) -> "RequestSchema":
        """Columns of any other model: kinds from the signature's types; the model reads ``features``
        (its kfmlops metadata; empty: every signature column). Without a signature every feature is
        required and of kind ``any``."""
        if signature is None:
            if not features:
                raise ValueError("the model has neither a column signature nor a feature list: its inputs are unknown")
            return cls([Column(n, "any", "", True, True) for n in features], list(features), max_rows)
        used = set(features or [name for name, *_ in signature])
        absent = [n for n in features if n not in {name for name, *_ in signature}]
        if absent:
            raise ValueError(f"the model's features {absent} are not in its signature")
        columns = [
            Column(name, _kind(type_) if name in used else "unused", type_, required, not required)
            for name, type_, required in signature
        ]
        return cls(columns, [c.name for c in columns if c.kind != "unused"], max_rows)

    # ---- payloads -> columns -------------------------------------------------------------------

    def columns_from_v1(self, payload: object) -> dict[str, Sequence]:
        """``{"instances": [...]}`` -> ``{feature: values}``; rows are objects or lists in signature order."""
        if not isinstance(payload, dict) or "instances" not in payload:
            raise RequestRejected('the body must be a JSON object with an "instances" list', "malformed")
        rows = payload["instances"]
        if not isinstance(rows, list):
            raise RequestRejected('"instances" must be a list of rows', "malformed")
        self.check_size(len(rows), "instances")
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
        """Open Inference ``inputs`` (one tensor per column, shape ``[n]`` or ``[n, 1]``) -> ``{feature: values}``."""
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
            values = tensor_values(tensor)
            shape = list(tensor.shape)
            if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)) or shape[0] != len(values):
                raise RequestRejected(
                    f"input {column.name!r}: shape {shape} does not match its {len(values)} values; send shape [n] or [n, 1]",
                    "malformed",
                )
            if n is None:
                n = len(values)
                self.check_size(n, f"input {column.name!r}")
            elif len(values) != n:
                raise RequestRejected(f"input {column.name!r} has {len(values)} values; other inputs have {n}", "malformed")
            _check_datatype(column, tensor.datatype)
            columns[column.name] = values
        if n is None:
            raise RequestRejected("no input carries a model feature", "empty")
        return {name: columns.get(name, [None] * n) for name in self.features}

    def check_size(self, n: int, where: str) -> None:
        """A :class:`RequestRejected` naming ``where`` unless a request of ``n`` rows is within ``max_rows``."""
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
        for name in self.features:
            column = self.by_name[name]
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
        by_position = dict(zip(self.names, zip(*rows)))
        return {name: by_position[name] for name in self.features}

    # ---- V2 metadata ---------------------------------------------------------------------------

    def input_types(self) -> list[dict]:
        """V2 model metadata: one tensor per signature column."""
        datatype = {"numeric": "FP64", "string": "BYTES"}
        return [{"name": c.name, "datatype": datatype.get(c.kind, "BYTES"), "shape": [-1]} for c in self.columns]


class BundleEncoder:
    """Checked columns -> ``(int64 codes [n, n_categorical], float32 values [n, n_numeric])`` as the
    bundle's preprocessor encodes them; ``unseen``: ``reject`` or ``unknown`` (the missing bucket)."""

    def __init__(self, preprocessor: Preprocessor, schema: RequestSchema, unseen: str):
        self.unseen = unseen
        self._categorical = [(schema.by_name[f.name], _lookup(f.vocabulary)) for f in preprocessor.categorical]
        numeric = preprocessor.numeric
        self._numeric = [schema.by_name[f.name] for f in numeric]
        self._nullable = np.array([c.nullable for c in self._numeric], dtype=bool)
        self._median = np.array([f.median for f in numeric], dtype=np.float64)
        self._log = np.array([f.log for f in numeric], dtype=bool)
        self._mean = np.array([f.mean for f in numeric], dtype=np.float64)
        self._std = np.array([f.std for f in numeric], dtype=np.float64)

    def __call__(self, columns: Mapping[str, Sequence]) -> tuple[np.ndarray, np.ndarray]:
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
            raw[:, j] = _numbers(column, columns[column.name])
        _check_nulls(raw, self._numeric, self._nullable)
        raw = np.where(np.isnan(raw), self._median, raw)
        if self._log.any():
            raw[:, self._log] = np.log1p(np.maximum(raw[:, self._log], 0.0))
        numbers = ((raw - self._mean) / self._std).astype(np.float32)
        return codes, numbers

    def _codes_slow(self, column: Column, lookup: dict, values: Sequence) -> list[int]:
        out = []
        for i, value in enumerate(values):
            _check_string(column, i, value)
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


class FrameEncoder:
    """Checked columns -> one array per feature (in ``schema.features`` order) for a generic model:
    object arrays of strings, float64 (or int64) numbers, other types as given."""

    def __init__(self, schema: RequestSchema):
        self._columns = [schema.by_name[name] for name in schema.features]

    def __call__(self, columns: Mapping[str, Sequence]) -> tuple[np.ndarray, ...]:
        return tuple(self._array(column, columns[column.name]) for column in self._columns)

    def _array(self, column: Column, values: Sequence) -> np.ndarray:
        if column.kind == "numeric":
            numbers = np.asarray(_numbers(column, values), dtype=np.float64)
            _check_nulls(numbers[:, None], [column], np.array([column.nullable]))
            whole = column.type in INTEGER_TYPES and not np.isnan(numbers).any() and bool((numbers == np.round(numbers)).all())
            return numbers.astype(np.int64) if whole else numbers
        array = np.empty(len(values), dtype=object)
        array[:] = list(values)
        if column.kind == "string" and all(type(v) is str for v in values):
            return array
        for i, value in enumerate(values):
            if value is None:
                if not column.nullable:
                    raise RequestRejected(
                        f"column {column.name!r}, row {i}: null is not allowed (the signature marks it required)",
                        "missing_value",
                    )
            elif column.kind == "string":
                _check_string(column, i, value)
        return array


def _kind(type_: str) -> str:
    return "string" if type_ == "string" else "numeric" if type_ in NUMERIC_TYPES else "any"


def _check_datatype(column: Column, datatype: str) -> None:
    if column.kind == "string" and datatype != "BYTES":
        raise RequestRejected(f"input {column.name!r} has datatype {datatype}; expected BYTES", "wrong_type")
    if column.kind == "numeric" and datatype not in V2_NUMERIC:
        raise RequestRejected(
            f"input {column.name!r} has datatype {datatype}; expected a numeric datatype (INT64, FP64, ...)", "wrong_type"
        )


def _check_string(column: Column, row: int, value) -> None:
    if value is not None and not isinstance(value, str):
        raise RequestRejected(
            f"column {column.name!r}, row {row}: expected a string, got {type(value).__name__} {value!r}", "wrong_type"
        )


def _check_nulls(raw: np.ndarray, columns: list[Column], nullable: np.ndarray) -> None:
    """Refuse a null/NaN in a column not ``nullable``, and any infinity; ``raw``: ``[n, len(columns)]``."""
    missing = np.isnan(raw)
    if missing.any() and (missing & ~nullable).any():
        i, j = (int(k[0]) for k in np.nonzero(missing & ~nullable))
        raise RequestRejected(
            f"column {columns[j].name!r}, row {i}: null/NaN is not allowed (the signature marks it required)",
            "missing_value",
        )
    if np.isinf(raw).any():
        j = int(np.nonzero(np.isinf(raw))[1][0])
        raise RequestRejected(f"column {columns[j].name!r}: values must be finite", "wrong_type")


def _lookup(vocabulary: list[str]) -> dict:
    """Category -> code as :meth:`Preprocessor.transform` assigns them (0 = missing/unknown)."""
    return {None: 0} | {value: i + 1 for i, value in enumerate(vocabulary)}


def _numbers(column: Column, values: Sequence) -> Sequence:
    """A numeric column's values, nulls as NaN (checked by the caller); rejects anything else."""
    if set(map(type, values)) <= _NUMBER:
        try:
            return np.asarray(values, dtype=np.float64)
        except OverflowError:
            raise RequestRejected(f"column {column.name!r}: a value is too large for a float", "wrong_type") from None
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
    return _numbers(column, out)


def tensor_values(tensor) -> list:
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
