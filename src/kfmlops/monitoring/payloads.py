"""KServe request and response bodies (V1 and V2 JSON) to per-row inputs and outputs.

:func:`request_rows` turns a request body into one ``{input name: value}`` mapping per instance;
:func:`response_rows` turns a response body into one output per instance plus the model name and
version the body names. Shapes understood:

- V1 ``{"instances": [...]}`` or ``{"inputs": [...]}``: rows as objects (named inputs), lists
  (inputs named ``"0"``, ``"1"``, ...) or scalars; ``{"inputs": {name: [values]}}`` is columnar.
- V2 ``{"inputs": [{"name", "shape", "datatype", "data"}, ...]}``: the first dimension is the
  batch; a tensor one value wide per row is input ``name``, a wider one inputs ``name.0``,
  ``name.1``, ...
- V1 ``{"predictions": [...]}``: one output per row, whatever its shape.
- V2 ``{"outputs": [...]}``: kfmlops' own answers (:mod:`kfmlops.serving.outputs`) read as their
  V1 form: a ``probability`` (binary P(positive)) or ``value`` (regression) tensor gives a number per
  row, a ``probabilities`` tensor ``[n, K]`` whose ``classes`` parameter names its columns a
  ``{class: probability}`` mapping per row; the ``label`` tensor beside them (the predicted class,
  which the scores say) is left out. Any other tensors: one gives a value (or a list) per row;
  several give a ``{name: value}`` mapping per row.

Unrecognised bodies give no rows (the event is still logged, with empty inputs or outputs).
"""

from __future__ import annotations

import json
from typing import Any

SCORE_TENSORS = ("probability", "probabilities", "value")
"""kfmlops' V2 score outputs (:mod:`kfmlops.serving.outputs`), one per answer, maybe beside ``label``."""
LABEL_TENSOR = "label"


def request_rows(body: Any) -> list[dict[str, Any]]:
    """One ``{input name: value}`` mapping per instance of a V1 or V2 request body."""
    if not isinstance(body, dict):
        return []
    if "instances" in body:
        rows = body["instances"]
    elif "inputs" in body:
        rows = body["inputs"]
        if _is_v2_tensors(rows):
            return _v2_rows(rows)
    else:
        return []
    if isinstance(rows, dict):  # V1 columnar: {name: [values]}
        columns = {k: v if isinstance(v, list) else [v] for k, v in rows.items()}
        n = max((len(v) for v in columns.values()), default=0)
        return [{k: v[i] if i < len(v) else None for k, v in columns.items()} for i in range(n)]
    if not isinstance(rows, list):
        return []
    return [_row(r) for r in rows]


def response_rows(body: Any) -> tuple[list[Any], str | None, str | None]:
    """``(one output per instance, model name, model version)`` of a V1 or V2 response body."""
    if not isinstance(body, dict):
        return [], None, None
    name, version = body.get("model_name"), body.get("model_version")
    name = None if name is None else str(name)
    version = None if version is None else str(version)
    if isinstance(body.get("predictions"), list):
        return body["predictions"], name, version
    if _is_v2_tensors(body.get("outputs")):
        return _v2_outputs(body["outputs"]), name, version
    return [], name, version


def _v2_outputs(tensors: list[dict[str, Any]]) -> list[Any]:
    """One output per row of V2 output tensors (see the module docstring)."""
    names = {str(t["name"]) for t in tensors}
    scores = [t for t in tensors if t["name"] in SCORE_TENSORS]
    if len(scores) == 1 and names <= {scores[0]["name"], LABEL_TENSOR}:
        rows = _per_row(scores[0])
        classes = _classes(scores[0])
        if classes is None or not all(isinstance(r, list) and len(r) == len(classes) for r in rows):
            return rows
        return [dict(zip(classes, row)) for row in rows]
    columns = {t["name"]: _per_row(t) for t in tensors}
    if len(columns) == 1:
        return next(iter(columns.values()))
    n = max(len(v) for v in columns.values())
    return [{k: v[i] if i < len(v) else None for k, v in columns.items()} for i in range(n)]


def _classes(tensor: dict[str, Any]) -> list[str] | None:
    """The class names a ``probabilities`` tensor's ``classes`` parameter lists (JSON text or a list)."""
    parameters = tensor.get("parameters")
    raw = parameters.get("classes") if isinstance(parameters, dict) else None
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            return None
    return [str(c) for c in raw] if isinstance(raw, list) else None


def _row(row: Any) -> dict[str, Any]:
    if isinstance(row, dict):
        return row
    if isinstance(row, list):
        return {str(i): v for i, v in enumerate(row)}
    return {"0": row}


def _is_v2_tensors(value: Any) -> bool:
    return (
        isinstance(value, list) and bool(value)
        and all(isinstance(t, dict) and "name" in t and "data" in t for t in value)
    )


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _per_row(tensor: dict[str, Any]) -> list[Any]:
    """A tensor's values grouped by its first dimension: scalars when one wide, else lists."""
    flat = _flatten(tensor["data"])
    shape = tensor.get("shape") or [len(flat)]
    n = int(shape[0]) if shape and shape[0] else len(flat)
    if n <= 0:
        return []
    width = max(len(flat) // n, 1)
    if width == 1:
        return flat[:n]
    return [flat[i * width:(i + 1) * width] for i in range(n)]


def _v2_rows(tensors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    columns: dict[str, list[Any]] = {}
    for tensor in tensors:
        name = str(tensor["name"])
        values = _per_row(tensor)
        if values and isinstance(values[0], list):
            for j in range(len(values[0])):
                columns[f"{name}.{j}"] = [v[j] for v in values]
        else:
            columns[name] = values
    n = max((len(v) for v in columns.values()), default=0)
    return [{k: v[i] if i < len(v) else None for k, v in columns.items()} for i in range(n)]
