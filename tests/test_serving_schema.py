"""The predictor's request checks, encoding and compiled forward pass, in process (no server)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from kserve.protocol.infer_type import InferInput
from serving_fixtures import served_store  # noqa: F401  (fixture)

from kfmlops.serving.batching import MicroBatcher
from kfmlops.serving.predictor import records
from kfmlops.serving.schema import RequestRejected, RequestSchema
from kfmlops.serving.scorer import CompiledNet, UnsupportedNet, check_parity, random_inputs
from kfmlops.train.model import ModelBundle


@pytest.fixture(scope="module")
def bundle(served_store) -> ModelBundle:
    return ModelBundle.load(served_store.model_dir)


@pytest.fixture(scope="module")
def signature(served_store):
    import mlflow.models

    info = mlflow.models.get_model_info(f"models:/adult/{served_store.champion}")
    return [(c.name, c.type.name, c.required) for c in info.signature.inputs.inputs]


@pytest.fixture(scope="module")
def schema(bundle, signature) -> RequestSchema:
    return RequestSchema.from_model(bundle.preprocessor, signature, "reject", max_rows=1000)


@pytest.fixture(scope="module")
def rows(served_store) -> list[dict]:
    return records(served_store.features.head(500))


def test_encoding_matches_the_preprocessor_and_scores_match_the_bundle(schema, bundle, served_store, rows):
    frame = served_store.features.head(500)
    codes, numbers = schema.encode(schema.columns_from_v1({"instances": rows}))
    expected_codes, expected_numbers = bundle.preprocessor.transform({c: frame[c].to_numpy() for c in frame.columns})
    np.testing.assert_array_equal(codes, expected_codes)
    np.testing.assert_array_equal(numbers, expected_numbers)
    compiled = CompiledNet(bundle.net)
    expected = bundle.predict_proba({c: frame[c].to_numpy() for c in frame.columns})
    np.testing.assert_allclose(compiled(codes, numbers), expected, atol=1e-6)
    assert check_parity(compiled, bundle.net, *random_inputs(bundle.net, 300), 1e-5) < 1e-6


def test_list_rows_and_v2_tensors_encode_like_objects(schema, rows, signature):
    objects = schema.encode(schema.columns_from_v1({"instances": rows[:20]}))
    lists = schema.encode(schema.columns_from_v1({"instances": [[r[name] for name, *_ in signature] for r in rows[:20]]}))
    tensors = [
        InferInput(name, [20, 1] if i % 2 else [20], "BYTES" if type_ == "string" else "INT64", [r[name] for r in rows[:20]])
        for i, (name, type_, _) in enumerate(signature)
    ]
    v2 = schema.encode(schema.columns_from_v2(tensors))
    for got in (lists, v2):
        np.testing.assert_array_equal(got[0], objects[0])
        np.testing.assert_array_equal(got[1], objects[1])


def _rejected(schema, payload) -> RequestRejected:
    with pytest.raises(RequestRejected) as info:
        schema.encode(schema.columns_from_v1(payload))
    return info.value


def test_each_invalid_request_is_rejected_naming_the_field(schema, rows):
    row = next(r for r in rows if None not in r.values())
    cases = {
        "missing_column": ({"instances": [{k: v for k, v in row.items() if k != "age"}]}, "age"),
        "wrong_type": ({"instances": [{**row, "age": "39"}]}, "'age'"),
        "unseen_category": ({"instances": [{**row, "workclass": "Astronaut"}]}, "'workclass'"),
        "missing_value": ({"instances": [{**row, "hours_per_week": None}]}, "'hours_per_week'"),
        "empty": ({"instances": []}, "empty"),
        "malformed": ({"rows": [row]}, "instances"),
    }
    for kind, (payload, needle) in cases.items():
        error = _rejected(schema, payload)
        assert (error.kind, error.status) == (kind, 400), (kind, str(error))
        assert needle in str(error), (kind, str(error))
    assert _rejected(schema, {"instances": [{**row, "sex": True}]}).kind == "wrong_type"
    assert _rejected(schema, {"instances": [{**row, "age": True}]}).kind == "wrong_type"
    assert _rejected(schema, {"instances": [{**row, "age": float("inf")}]}).kind == "wrong_type"
    assert _rejected(schema, {"instances": [row, [1, 2]]}).kind == "malformed"
    assert _rejected(schema, {"instances": [[1, 2]]}).kind == "malformed"
    assert "instances[1]" in str(_rejected(schema, {"instances": [row, {"age": 3}]}))
    too_many = _rejected(schema, {"instances": [row] * 1001})
    assert (too_many.kind, too_many.status) == ("too_large", 413)


def test_nulls_follow_the_signature_and_unseen_categories_can_be_bucketed(bundle, signature, rows):
    row = next(r for r in rows if None not in r.values())
    optional = {name for name, _, required in signature if not required}
    assert optional and all(t == "string" for n, t, _ in signature if n in optional)
    lenient = RequestSchema.from_model(bundle.preprocessor, signature, "unknown", max_rows=10)
    codes, _ = lenient.encode(lenient.columns_from_v1({"instances": [{**row, "workclass": "Astronaut", "race": None}]}))
    names = [f.name for f in bundle.preprocessor.categorical]
    assert codes[0, names.index("workclass")] == 0 and codes[0, names.index("race")] == 0
    without_optional = {k: v for k, v in row.items() if k not in optional}
    codes, _ = lenient.encode(lenient.columns_from_v1({"instances": [without_optional]}))
    assert all(codes[0, names.index(n)] == 0 for n in optional)


def test_v2_tensor_errors_name_the_input(schema, rows, signature):
    row = next(r for r in rows if None not in r.values())
    good = [InferInput(n, [1], "BYTES" if t == "string" else "INT64", [row[n]]) for n, t, _ in signature]
    def reject(tensors) -> RequestRejected:
        with pytest.raises(RequestRejected) as info:
            schema.encode(schema.columns_from_v2(tensors))
        return info.value
    assert "age" in str(reject([t for t in good if t.name != "age"]))
    assert reject([InferInput("age", [1], "BYTES", ["x"]) if t.name == "age" else t for t in good]).kind == "wrong_type"
    assert reject([InferInput("age", [2], "INT64", [1]) if t.name == "age" else t for t in good]).kind == "malformed"
    assert reject([InferInput("age", [1], "INT64", [None]) if t.name == "age" else t for t in good]).kind == "missing_value"
    assert reject([]).kind == "empty"


def test_a_layer_the_compiler_does_not_know_is_refused(bundle):
    import copy

    from torch import nn

    net = copy.deepcopy(bundle.net)
    net.mlp.insert(2, nn.Tanh())
    with pytest.raises(UnsupportedNet, match="Tanh"):
        CompiledNet(net)


def test_micro_batcher_scores_concurrent_requests_in_one_pass_and_returns_each_its_rows():
    calls = []

    def score(codes, numbers):
        calls.append(len(codes))
        return codes[:, 0].astype(np.float64) * 10

    batcher = MicroBatcher(score, max_rows=100, wait_s=0.0)

    async def main():
        requests = [np.full((n, 1), i, dtype=np.int64) for i, n in enumerate([1, 3, 2, 1])]
        results = await asyncio.gather(*(batcher.score(c, np.zeros((len(c), 0), np.float32)) for c in requests))
        return requests, results

    requests, results = asyncio.run(main())
    assert calls == [7]
    for codes, result in zip(requests, results):
        np.testing.assert_array_equal(result, codes[:, 0] * 10)


def test_micro_batcher_hands_a_scoring_error_to_every_waiting_request():
    def score(codes, numbers):
        raise RuntimeError("boom")

    batcher = MicroBatcher(score, max_rows=2, wait_s=0.01)

    async def main():
        one = np.zeros((1, 1), np.int64), np.zeros((1, 0), np.float32)
        return await asyncio.gather(*(batcher.score(*one) for _ in range(3)), return_exceptions=True)

    assert [type(r) for r in asyncio.run(main())] == [RuntimeError] * 3
