"""The predictor's request checks, encoding, scorers and per-task outputs, in process (no server).

Bundle fast paths (tabular-net compiled to NumPy, gbdt on XGBoost's inplace_predict) and the
generic MLflow path, on binary, multiclass and regression models, against each model's own scores.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from kserve.protocol.infer_type import InferInput
from kserve.protocol.infer_type import InferRequest
from serving_fixtures import served_store, signature, task_models  # noqa: F401  (fixtures)

from kfmlops import model_contract
from kfmlops.serving.batching import MicroBatcher
from kfmlops.serving.config import ServingConfig
from kfmlops.serving.outputs import score_diff, scores_from_v1, v1_predictions
from kfmlops.serving.predictor import GENERIC, Predictor, load_served, records
from kfmlops.serving.schema import BundleEncoder, FrameEncoder, RequestRejected, RequestSchema
from kfmlops.serving.scorer import CompiledNet, UnsupportedNet, check_parity, random_inputs
from kfmlops.train.bundles import load_bundle
from kfmlops.train.model import ModelBundle


@pytest.fixture(scope="module")
def bundle(served_store) -> ModelBundle:
    return load_bundle(model_contract.bundle_path(served_store.model_dir))


@pytest.fixture(scope="module")
def schema(bundle, signature) -> RequestSchema:
    return RequestSchema.for_bundle(bundle.preprocessor, signature, max_rows=1000)


@pytest.fixture(scope="module")
def encode(bundle, schema) -> BundleEncoder:
    return BundleEncoder(bundle.preprocessor, schema, "reject")


@pytest.fixture(scope="module")
def rows(served_store) -> list[dict]:
    return records(served_store.features.head(500))


def test_encoding_matches_the_preprocessor_and_scores_match_the_bundle(schema, encode, bundle, served_store, rows):
    frame = served_store.features.head(500)
    codes, numbers = encode(schema.columns_from_v1({"instances": rows}))
    expected_codes, expected_numbers = bundle.preprocessor.transform({c: frame[c].to_numpy() for c in frame.columns})
    np.testing.assert_array_equal(codes, expected_codes)
    np.testing.assert_array_equal(numbers, expected_numbers)
    compiled = CompiledNet.of(bundle)
    expected = bundle.scores({c: frame[c].to_numpy() for c in frame.columns})
    assert expected.shape == (500, 2)
    np.testing.assert_allclose(compiled(codes, numbers), expected, atol=1e-6)
    assert check_parity(compiled, bundle.net, *random_inputs(bundle.net, 300), 1e-5) < 1e-6


def test_list_rows_and_v2_tensors_encode_like_objects(schema, encode, rows, signature):
    objects = encode(schema.columns_from_v1({"instances": rows[:20]}))
    lists = encode(schema.columns_from_v1({"instances": [[r[name] for name, *_ in signature] for r in rows[:20]]}))
    tensors = [
        InferInput(name, [20, 1] if i % 2 else [20], "BYTES" if type_ == "string" else "INT64", [r[name] for r in rows[:20]])
        for i, (name, type_, _) in enumerate(signature)
    ]
    v2 = encode(schema.columns_from_v2(tensors))
    for got in (lists, v2):
        np.testing.assert_array_equal(got[0], objects[0])
        np.testing.assert_array_equal(got[1], objects[1])


def _rejected(schema, payload, encode) -> RequestRejected:
    with pytest.raises(RequestRejected) as info:
        encode(schema.columns_from_v1(payload))
    return info.value


def test_each_invalid_request_is_rejected_naming_the_field(schema, encode, rows):
    def rejected(payload) -> RequestRejected:
        return _rejected(schema, payload, encode)

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
        error = rejected(payload)
        assert (error.kind, error.status) == (kind, 400), (kind, str(error))
        assert needle in str(error), (kind, str(error))
    assert rejected({"instances": [{**row, "sex": True}]}).kind == "wrong_type"
    assert rejected({"instances": [{**row, "age": True}]}).kind == "wrong_type"
    assert rejected({"instances": [{**row, "age": float("inf")}]}).kind == "wrong_type"
    assert rejected({"instances": [row, [1, 2]]}).kind == "malformed"
    assert rejected({"instances": [[1, 2]]}).kind == "malformed"
    assert "instances[1]" in str(rejected({"instances": [row, {"age": 3}]}))
    too_many = rejected({"instances": [row] * 1001})
    assert (too_many.kind, too_many.status) == ("too_large", 413)


def test_nulls_follow_the_signature_and_unseen_categories_can_be_bucketed(bundle, signature, rows):
    row = next(r for r in rows if None not in r.values())
    optional = {"workclass", "occupation", "native_country"}
    signature = [(n, t, n not in optional) for n, t, _ in signature]
    lenient = RequestSchema.for_bundle(bundle.preprocessor, signature, max_rows=10)
    encode = BundleEncoder(bundle.preprocessor, lenient, "unknown")
    codes, _ = encode(lenient.columns_from_v1({"instances": [{**row, "workclass": "Astronaut", "race": None}]}))
    names = [f.name for f in bundle.preprocessor.categorical]
    assert codes[0, names.index("workclass")] == 0 and codes[0, names.index("race")] == 0
    without_optional = {k: v for k, v in row.items() if k not in optional}
    codes, _ = encode(lenient.columns_from_v1({"instances": [without_optional]}))
    assert all(codes[0, names.index(n)] == 0 for n in optional)


def test_v2_tensor_errors_name_the_input(schema, encode, rows, signature):
    row = next(r for r in rows if None not in r.values())
    good = [InferInput(n, [1], "BYTES" if t == "string" else "INT64", [row[n]]) for n, t, _ in signature]
    def reject(tensors) -> RequestRejected:
        with pytest.raises(RequestRejected) as info:
            encode(schema.columns_from_v2(tensors))
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
        CompiledNet(net, bundle.task)


def test_micro_batcher_scores_concurrent_requests_in_one_pass_and_returns_each_its_rows():
    """Any number of arrays per request; 2-D results (class probabilities) are split by rows too."""
    calls = []

    def score(codes, numbers, names):
        calls.append(len(codes))
        return np.column_stack([codes[:, 0] * 10.0, numbers[:, 0], [len(n) for n in names]])

    batcher = MicroBatcher(score, max_rows=100, wait_s=0.0)

    async def main():
        requests = [(np.full((n, 1), i, dtype=np.int64), np.full((n, 1), -i, np.float32), np.array(["x" * i] * n, object))
                    for i, n in enumerate([1, 3, 2, 1])]
        results = await asyncio.gather(*(batcher.score(*arrays) for arrays in requests))
        return requests, results

    requests, results = asyncio.run(main())
    assert calls == [7]
    for (codes, numbers, names), result in zip(requests, results):
        np.testing.assert_array_equal(result, np.column_stack([codes[:, 0] * 10.0, numbers[:, 0], [len(n) for n in names]]))


def test_micro_batcher_hands_a_scoring_error_to_every_waiting_request():
    def score(codes, numbers):
        raise RuntimeError("boom")

    batcher = MicroBatcher(score, max_rows=2, wait_s=0.01)

    async def main():
        one = np.zeros((1, 1), np.int64), np.zeros((1, 0), np.float32)
        return await asyncio.gather(*(batcher.score(*one) for _ in range(3)), return_exceptions=True)

    assert [type(r) for r in asyncio.run(main())] == [RuntimeError] * 3


KINDS = {"penguins-sklearn": GENERIC, "penguins-tabular-net": "tabular-net", "penguins-gbdt": "gbdt",
         "cps1988-tabular-net": "tabular-net", "cps1988-gbdt": "gbdt", "cps1988-sklearn": GENERIC, "adult-gbdt": "gbdt"}


@pytest.mark.parametrize("name", sorted(KINDS))
def test_every_kind_and_task_serves_the_models_own_scores(task_models, name):
    """The served path (request checks, encoder, scorer) on test rows (all of penguins', 2,000
    of the others), V1 answer read back, equals the model's own scores through the model contract."""
    model = task_models[name]
    served = load_served(model.model_dir, ServingConfig(unseen_categories="unknown"))  # as the model scores rare ones
    assert (served.kind, served.task) == (KINDS[name], model.task)
    assert served.parity <= ServingConfig().parity_tolerance
    frame = model.features.head(2000)
    got = served.score(*served.encode(served.schema.columns_from_v1({"instances": records(frame)})))
    expected = model_contract.load(model.model_dir).scores(frame)
    assert got.shape == expected.shape == ((len(frame), len(model.task.classes)) if model.task.classes else (len(frame),))
    assert score_diff(model.task, got, expected) < 1e-6
    assert score_diff(model.task, scores_from_v1(model.task, v1_predictions(model.task, got)), got) == 0.0


def test_a_generic_model_checks_its_signature(task_models):
    model = task_models["penguins-sklearn"]
    served = load_served(model.model_dir, ServingConfig())
    schema, row = served.schema, records(model.features.dropna().head(1))[0]
    assert isinstance(served.encode, FrameEncoder)
    types = {c.name: (c.kind, c.type) for c in schema.columns}
    assert types["island"] == ("string", "string") and types["year"] == ("numeric", "long")

    def rejected(payload) -> RequestRejected:
        with pytest.raises(RequestRejected) as info:
            served.encode(schema.columns_from_v1(payload))
        return info.value

    assert rejected({"instances": [{**row, "island": 3}]}).kind == "wrong_type"
    assert rejected({"instances": [{**row, "year": "2007"}]}).kind == "wrong_type"
    assert rejected({"instances": [{k: v for k, v in row.items() if k != "island"}]}).kind == "missing_column"
    year = served.encode(schema.columns_from_v1({"instances": [row]}))[schema.features.index("year")]
    assert year.dtype == np.int64  # a long column given whole numbers stays int64, as the model was fitted
    optional = [c.name for c in schema.columns if not c.required]
    assert optional and all(c.nullable for c in schema.columns if c.name in optional)


def test_outputs_per_task_in_process(task_models):
    """``Predictor.predict`` answers V1 and V2 with the task's outputs (no server)."""
    for name, first in [("penguins-gbdt", "probabilities"), ("cps1988-gbdt", "value"), ("adult-gbdt", "probability")]:
        model = task_models[name]
        predictor = Predictor(name, str(model.model_dir), ServingConfig(decision_threshold=0.3))
        predictor.load()
        rows = records(model.features.head(4))
        v1 = asyncio.run(predictor.predict({"instances": rows}))["predictions"]
        inputs = [InferInput(c["name"], c["shape"], c["datatype"], c["data"]) for c in _v2(model.features.head(4))]
        v2 = asyncio.run(predictor.predict(InferRequest(name, inputs)))
        names = [o.name for o in v2.outputs]
        assert names[0] == first and names == [t["name"] for t in predictor.get_output_types()]
        scores = scores_from_v1(model.task, v1)
        if model.task.kind == "binary":
            negative, positive = model.task.classes
            assert v2.outputs[1].data == [positive if p >= 0.3 else negative for p in scores[:, 1]]
        if model.task.kind == "multiclass":
            assert all(isinstance(row, dict) and abs(sum(row.values()) - 1) < 1e-9 for row in v1)
            assert v2.outputs[0].shape == [4, len(model.task.classes)]
        if model.task.kind == "regression":
            assert v2.outputs[0].data == pytest.approx(v1)


def _v2(frame) -> list[dict]:
    from kfmlops.serving.probe import v2_body

    return v2_body(frame)["inputs"]


def test_a_model_without_kfmlops_metadata_is_refused(tmp_path, task_models):
    import shutil

    from mlflow.models import Model

    copy = tmp_path / "model"
    shutil.copytree(task_models["penguins-sklearn"].model_dir, copy)
    mlmodel = Model.load(str(copy))
    mlmodel.metadata = {}
    mlmodel.save(str(copy / "MLmodel"))
    with pytest.raises(ValueError, match="no kfmlops metadata"):
        load_served(copy, ServingConfig())
