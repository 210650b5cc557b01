"""Online features at serving time: a request's entity keys in, the request with its features joined out.

:class:`OnlineFeatures` is built once, at load, from ``serving.feature_store`` (a Feast repository
and one of its feature services, the one the model was trained from). A request that carries the
service's join keys (V1 rows as objects, or V2 inputs) has every row's features read from the
online store in one batched ``get_online_features`` call, before the request's schema checks;
each feature the request does not carry itself is added (a column the request sends wins: a
request-time value). A request that carries none of the join keys is left as it is: it must carry
every feature, as the deploy checks' test rows do. Feature names are normalised as ingest
normalises the training table's (:func:`kfmlops.ingest.normalise_name`).

Refused with a 400 naming the row (:class:`~kfmlops.serving.schema.RequestRejected`):

- a row without one of the join keys (``missing_column``);
- a key of the wrong type (``wrong_type``): an integer key takes whole numbers, a string key strings
  (Feast itself would turn ``1.5`` into entity ``1``);
- an entity the online store holds no row for in one of the service's feature views (``unknown_entity``):
  scoring it on imputed values would answer for an entity nothing is known about.

A feature whose stored value is null reaches the model as a null, which the model's own
missing-value handling decides (a null in a required numeric column is a 400 ``missing_value``).
"""

from __future__ import annotations

from collections.abc import Sequence

from kserve.protocol.infer_type import InferInput, InferRequest

from kfmlops.feature_store import Service, describe, open_store
from kfmlops.ingest import normalise_name
from kfmlops.serving.config import FeatureStoreRef
from kfmlops.serving.schema import RequestRejected, RequestSchema, tensor_values

_INTEGER_KEYS = {"Int32", "Int64"}
_V2_DATATYPE = {"String": "BYTES", "Bool": "BOOL"}
"""The V2 datatype of an added feature by its Feast type; any other is FP64."""


class OnlineFeatures:
    """Joins a feature service's online features into requests (see the module docstring)."""

    def __init__(self, store, service: Service):
        self.store = store
        self.service = service
        self.keys = {k: t for v in service.views for k, t in v.keys}
        self.names = {f: normalise_name(f) for f in service.features}
        self.datatypes = {normalise_name(f): _V2_DATATYPE.get(t, "FP64") for v in service.views for f, t in v.features}

    @classmethod
    def open(cls, ref: FeatureStoreRef) -> "OnlineFeatures":
        """The online features of ``ref``; an IngestError (a ValueError) when the repository or the service is not there."""
        store = open_store(ref)
        return cls(store, describe(store, ref))

    def lookup(self, keys: dict[str, Sequence]) -> dict[str, list]:
        """``{join key: value per row}`` -> ``{normalised feature: value per row}``, one online store
        read; a :class:`RequestRejected` for a key of the wrong type or an unknown entity."""
        from feast.protos.feast.serving.ServingService_pb2 import FieldStatus

        for key, type_ in self.keys.items():
            for row, value in enumerate(keys[key]):
                if not _fits(value, type_):
                    raise RequestRejected(f"row {row}: entity key {key!r} is {type(value).__name__} {value!r}; "
                                          f"expected {'a whole number' if type_ in _INTEGER_KEYS else type_}",
                                          "wrong_type")
        response = self.store.get_online_features(features=self.service.service, entity_rows=dict(keys))
        statuses = {name: result.statuses for name, result in zip(response.proto.metadata.feature_names.val,
                                                                  response.proto.results)}
        for view in self.service.views:
            for row in range(len(next(iter(keys.values())))):
                if all(statuses[f][row] == FieldStatus.NOT_FOUND for f, _ in view.features):
                    entity = {k: keys[k][row] for k, _ in view.keys}
                    raise RequestRejected(f"row {row}: the online store has no entity {entity} in feature view "
                                          f"{view.name!r}", "unknown_entity")
        values = response.to_dict()
        return {self.names[f]: values[f] for f in self.service.features}

    def join_v1(self, payload: object, schema: RequestSchema) -> object:
        """A V1 body whose rows (objects) carry the join keys, with their features added; any other body as it is."""
        rows = payload.get("instances") if isinstance(payload, dict) else None
        if not (isinstance(rows, list) and rows and isinstance(rows[0], dict) and self.keys.keys() & rows[0].keys()):
            return payload
        schema.check_size(len(rows), "instances")
        for row, values in enumerate(rows):
            absent = [k for k in self.keys if not isinstance(values, dict) or k not in values]
            if absent:
                raise RequestRejected(f"instances[{row}] is missing entity key(s) {absent}", "missing_column")
        features = self.lookup({k: [values[k] for values in rows] for k in self.keys})
        joined = [{**{f: column[row] for f, column in features.items()}, **values} for row, values in enumerate(rows)]
        return {**payload, "instances": joined}

    def join_v2(self, request: InferRequest, schema: RequestSchema) -> InferRequest:
        """A V2 request with join key inputs, with an input added per feature it lacks; any other as it is."""
        by_name = {tensor.name: tensor for tensor in request.inputs}
        if not self.keys.keys() & by_name.keys():
            return request
        absent = [k for k in self.keys if k not in by_name]
        if absent:
            raise RequestRejected(f"missing entity key input(s) {absent}", "missing_column")
        keys = {k: tensor_values(by_name[k]) for k in self.keys}
        n = len(keys[next(iter(self.keys))])
        schema.check_size(n, "entity keys")
        if any(len(v) != n for v in keys.values()):
            raise RequestRejected(f"entity key inputs {list(self.keys)} differ in length", "malformed")
        for name, values in self.lookup(keys).items():
            if name not in by_name:
                request.inputs.append(InferInput(name, [n], self.datatypes[name], values))
        return request


def _fits(value: object, feast_type: str) -> bool:
    if feast_type in _INTEGER_KEYS:
        return isinstance(value, int) and not isinstance(value, bool)
    if feast_type == "String":
        return isinstance(value, str)
    return value is not None
