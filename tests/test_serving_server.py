"""The predictor behind KServe's real ModelServer, in a child process on a loopback port.

A binary tabular-net model: V1 and V2 requests (httpx and KServe's own ``InferenceRESTClient``)
against the model's own scores in process; health, metadata and Prometheus metrics; a battery of
bad requests, each a 4xx naming the field, with the server still answering afterwards. A
multiclass scikit-learn model and a regression model, V1 and V2, with their per-task outputs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures

import json

import httpx
import numpy as np
import orjson
import pytest
from serving_fixtures import served_store, signature, task_models  # noqa: F401  (fixtures)

from kfmlops import model_contract
from kfmlops.serving.config import ServingConfig
from kfmlops.serving.outputs import scores_from_v1, scores_from_v2
from kfmlops.serving.predictor import records
from kfmlops.serving.probe import bad_requests, send_bad_requests, v2_body
from kfmlops.serving.process import PredictorProcess, PredictorStartError

ROWS = 300


@pytest.fixture(scope="module")
def server(served_store):
    with PredictorProcess(
        "models:/adult@champion", model_name="adult", tracking_uri=served_store.mlflow.tracking_uri, verify_key=served_store.verify_key
    ) as p:
        yield p


@pytest.fixture(scope="module")
def expected(served_store) -> np.ndarray:
    """P(positive) of the first test rows, by the model's own (PyTorch) path."""
    return model_contract.load(served_store.model_dir).scores(served_store.features.head(ROWS))[:, 1]


def _v1(server, body: dict | bytes, **kwargs) -> httpx.Response:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return httpx.post(f"{server.url}/v1/models/adult:predict", content=content, headers={"content-type": "application/json"}, **kwargs)


def _v2_inputs(frame, signature) -> list[dict]:
    inputs = []
    for name, type_, _ in signature:
        values = records(frame[[name]])
        inputs.append({
            "name": name,
            "shape": [len(frame)],
            "datatype": "BYTES" if type_ == "string" else "INT64",
            "data": [v[name] for v in values],
        })
    return inputs


def test_v1_objects_and_lists_match_the_model(server, served_store, expected, signature):
    rows = records(served_store.features.head(ROWS))
    got = _v1(server, {"instances": rows})
    assert got.status_code == 200, got.text
    np.testing.assert_allclose(got.json()["predictions"], expected, atol=1e-5)
    lists = [[r[name] for name, *_ in signature] for r in rows[:10]]
    np.testing.assert_allclose(_v1(server, {"instances": lists}).json()["predictions"], expected[:10], atol=1e-5)
    singles = [_v1(server, {"instances": [r]}).json()["predictions"][0] for r in rows[:20]]
    np.testing.assert_allclose(singles, expected[:20], atol=1e-5)


def test_v2_rest_and_the_kserve_client_match_the_model(server, served_store, expected, signature):
    from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

    frame = served_store.features.head(ROWS)
    inputs = _v2_inputs(frame, signature)
    got = httpx.post(f"{server.url}/v2/models/adult/infer", json={"id": "req-1", "inputs": inputs})
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["id"] == "req-1" and body["model_name"] == "adult"
    probability, label = body["outputs"]
    assert (probability["name"], probability["datatype"], probability["shape"]) == ("probability", "FP64", [ROWS])
    np.testing.assert_allclose(probability["data"], expected, atol=1e-5)
    assert (label["name"], label["datatype"], label["shape"]) == ("label", "BYTES", [ROWS])
    negative, positive = served_store.task.classes
    assert label["data"] == [positive if p >= 0.5 else negative for p in probability["data"]]

    async def with_sdk():
        client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30))
        request = InferRequest(
            model_name="adult",
            infer_inputs=[InferInput(i["name"], i["shape"], i["datatype"], i["data"]) for i in inputs],
        )
        try:
            return await client.infer(server.url, request, model_name="adult")
        finally:
            await client.close()

    response = asyncio.run(with_sdk())
    np.testing.assert_allclose(response.outputs[0].data, expected, atol=1e-5)


def test_health_metadata_and_metrics(server):
    assert httpx.get(f"{server.url}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{server.url}/v2/health/ready").json() == {"ready": True}
    assert httpx.get(f"{server.url}/v2/models/adult/ready").json() == {"name": "adult", "ready": True}
    assert httpx.get(f"{server.url}/v1/models/adult").json() == {"name": "adult", "ready": True}
    metadata = httpx.get(f"{server.url}/v2/models/adult").json()
    types = {i["name"]: i["datatype"] for i in metadata["inputs"]}
    assert types["age"] == "FP64" and types["workclass"] == "BYTES"
    assert metadata["outputs"] == [{"name": "probability", "datatype": "FP64", "shape": [-1]},
                                   {"name": "label", "datatype": "BYTES", "shape": [-1]}]
    assert _v1(server, {"instances": [{"age": 1}]}).status_code == 400
    metrics = httpx.get(f"{server.url}/metrics").text
    for name in (
        'kfmlops_requests_total{code="200",model="adult",protocol="v1"}',
        "kfmlops_request_duration_seconds_bucket",
        'kfmlops_request_errors_total{kind="client",model="adult",protocol="v1"}',
        'kfmlops_rejected_requests_total{kind="missing_column",model="adult"}',
        "kfmlops_request_rows_bucket",
        'kfmlops_model_info{model="adult",registered_model="adult",version="1"} 1.0',
        'kfmlops_predicted_class_total{class="',  # the prediction distribution
        'kfmlops_predicted_probability_bucket{le="0.5",model="adult"}',
    ):
        assert name in metrics, name


def test_every_bad_request_is_a_4xx_naming_the_field_and_the_server_keeps_serving(server, served_store, signature):
    row = records(served_store.features.dropna().head(1))[0]
    results = send_bad_requests(server.url, "adult", bad_requests(signature, row, max_rows=ServingConfig().max_rows))
    assert len(results) >= 14
    for result in results:
        assert result.refused, (result.case, result.status, result.message)
    messages = {r.case: r.message for r in results}
    assert "age" in messages["string_in_numeric_column"] and "not-a-number" in messages["string_in_numeric_column"]
    assert "__kfmlops_unseen__" in messages["unseen_category"] and "workclass" in messages["unseen_category"]
    assert "age" in messages["null_in_required_numeric_column"]
    assert "10001 rows" in messages["oversized_batch"]
    assert next(r.status for r in results if r.case == "oversized_batch") == 413
    assert "instances" in messages["not_an_object"]
    # other shapes of garbage, then the server still scores
    assert _v1(server, b"\xff\xfe garbage").status_code == 400
    text = httpx.post(f"{server.url}/v1/models/adult:predict", content=b"hello", headers={"content-type": "text/plain"})
    assert text.status_code == 400
    assert httpx.post(f"{server.url}/v1/models/nope:predict", json={"instances": [row]}).status_code == 404
    assert _v1(server, {"instances": [row]}).status_code == 200
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
    assert server.alive()


def test_concurrent_requests_with_micro_batching_and_a_body_limit(served_store, expected):
    serving = ServingConfig(micro_batching=True, batch_wait_ms=2.0, max_body_bytes=4096)
    rows = records(served_store.features.head(ROWS))
    with PredictorProcess(
        "models:/adult@champion",
        model_name="adult",
        tracking_uri=served_store.mlflow.tracking_uri,
        serving=serving,
        verify_key=served_store.verify_key,
    ) as p:
        with httpx.Client(base_url=p.url, limits=httpx.Limits(max_connections=16)) as client, concurrent.futures.ThreadPoolExecutor(16) as pool:
            def one(row):
                return client.post("/v1/models/adult:predict", json={"instances": [row]}).json()["predictions"][0]
            answers = list(pool.map(one, rows))
        np.testing.assert_allclose(answers, expected, atol=1e-5)
        big = _v1(p, {"instances": rows[:40]})
        assert big.status_code == 413 and "max_body_bytes" in big.json()["error"]
        def chunks():
            yield orjson.dumps({"instances": rows[:40]})
        chunked = httpx.post(f"{p.url}/v1/models/adult:predict", content=chunks(), headers={"content-type": "application/json"})
        assert chunked.status_code == 413
        assert _v1(p, {"instances": rows[:2]}).status_code == 200
        metrics = httpx.get(f"{p.url}/metrics").text
        batches = float(next(l for l in metrics.splitlines() if l.startswith('kfmlops_batch_rows_count{model="adult"}')).split()[-1])
        assert 0 < batches <= ROWS + 1


def test_a_model_that_cannot_load_fails_the_start_with_its_log(tmp_path):
    with pytest.raises(PredictorStartError, match="not an MLflow model directory"):
        PredictorProcess(str(tmp_path), model_name="adult", ready_timeout_s=60).start()


def test_a_model_signed_by_another_key_is_refused_before_loading(served_store):
    from kfmlops.provenance import ProvenanceError, generate_keypair
    from kfmlops.serving.predictor import Predictor

    stranger = generate_keypair()[1]
    model = Predictor("adult", "models:/adult@champion", ServingConfig(), served_store.mlflow.tracking_uri, stranger)
    with pytest.raises(ProvenanceError, match="signed by key"):
        model.load()
    assert not model.ready


def test_serve_flags_become_typed_settings(tmp_path, monkeypatch):
    from kfmlops.typed import ConfigError
    from kfmlops.serving.server import settings_from_args

    monkeypatch.setenv("KFMLOPS_HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    default = settings_from_args([])
    assert default.model == "models:/kfmlops-model@champion" and default.model_name == "kfmlops-model"
    assert default.tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}" and default.host == "127.0.0.1"
    pod = settings_from_args(["--model-dir", "/mnt/models", "--model-name", "adult", "--host", "0.0.0.0",
                              "--verify-key-file", "/keys/verify.pem", "--serving", '{"micro_batching": true}'])
    assert (pod.model, pod.model_name, pod.tracking_uri, pod.host) == ("/mnt/models", "adult", None, "0.0.0.0")
    assert pod.serving.micro_batching and pod.provenance.verify_key_file == "/keys/verify.pem"
    assert settings_from_args(["--model-uri", "models:/adult/3"]).model_name == "adult"
    with pytest.raises(ConfigError, match="max_rows"):
        settings_from_args(["--serving", '{"max_rows": 0}'])
    with pytest.raises(ConfigError, match="unknown_setting"):
        settings_from_args(["--serving", '{"unknown_setting": 1}'])


def _serve(model):
    return PredictorProcess(model.uri, model_name=model.name, tracking_uri=model.tracking_uri, verify_key=model.verify_key)


def test_a_multiclass_sklearn_model_answers_class_probabilities_v1_and_v2(task_models):
    model = task_models["penguins-sklearn"]
    task, frame = model.task, model.features
    expected = model_contract.load(model.model_dir).scores(frame)
    with _serve(model) as p:
        v1 = httpx.post(f"{p.url}/v1/models/{model.name}:predict", json={"instances": records(frame)})
        assert v1.status_code == 200, v1.text
        predictions = v1.json()["predictions"]
        assert all(set(row) == set(task.classes) for row in predictions)
        np.testing.assert_allclose(scores_from_v1(task, predictions), expected, atol=1e-12)

        v2 = httpx.post(f"{p.url}/v2/models/{model.name}/infer", json=v2_body(frame))
        assert v2.status_code == 200, v2.text
        probabilities, label = v2.json()["outputs"]
        assert (probabilities["name"], probabilities["shape"]) == ("probabilities", [len(frame), 3])
        assert json.loads(probabilities["parameters"]["classes"]) == list(task.classes)
        np.testing.assert_allclose(scores_from_v2(task, v2.json()["outputs"]), expected, atol=1e-12)
        assert label["data"] == [task.classes[i] for i in expected.argmax(axis=1)]
        metadata = httpx.get(f"{p.url}/v2/models/{model.name}").json()
        assert metadata["outputs"][0] == {"name": "probabilities", "datatype": "FP64", "shape": [-1, 3]}
        assert {i["name"]: i["datatype"] for i in metadata["inputs"]}["island"] == "BYTES"

        row = records(frame.dropna().head(1))[0]
        wrong = httpx.post(f"{p.url}/v1/models/{model.name}:predict", json={"instances": [{**row, "bill_length_mm": "long"}]})
        assert wrong.status_code == 400 and "bill_length_mm" in wrong.json()["error"]
        missing = httpx.post(f"{p.url}/v1/models/{model.name}:predict", json={"instances": [{"island": "Dream"}]})
        assert missing.status_code == 400 and "missing column" in missing.json()["error"]


def test_a_regression_model_answers_values_v1_and_v2(task_models):
    model = task_models["cps1988-tabular-net"]
    frame = model.features.head(ROWS)
    expected = model_contract.load(model.model_dir).scores(frame)
    with _serve(model) as p:
        v1 = httpx.post(f"{p.url}/v1/models/{model.name}:predict", json={"instances": records(frame)})
        assert v1.status_code == 200, v1.text
        np.testing.assert_allclose(v1.json()["predictions"], expected, rtol=1e-5)
        v2 = httpx.post(f"{p.url}/v2/models/{model.name}/infer", json=v2_body(frame))
        (value,) = v2.json()["outputs"]
        assert (value["name"], value["datatype"], value["shape"]) == ("value", "FP64", [ROWS])
        np.testing.assert_allclose(value["data"], expected, rtol=1e-5)
