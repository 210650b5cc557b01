"""The InferenceService manifest (schema-checked, no cluster) and the deploy stage's state machine.

The rollout runs against the local predictor: healthy canary -> promoted; failing canary ->
rolled back with the champion alias restored; failing validation -> rejected before any push.
A multiclass scikit-learn model and a regression bundle deploy the same way, their served score
vectors compared with the model's own; a model whose flavors do not fit KServe's runtime is
rejected.
The KServe target's API calls are checked against an in-memory stand-in for the cluster; a real
cluster is used only by the ``cluster``-marked test.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from schemas import validate_crd
from serving_fixtures import reset_champion, served_store, task_models  # noqa: F401  (fixtures)

from kfmlops import IMAGE
from kfmlops.config import MlflowConfig, ProvenanceConfig
from kfmlops.register import current_champion
from kfmlops.serving.config import Check, DeployConfig, InferenceServiceConfig, Probe, RequestLogger, Slo, Toleration
from kfmlops.register import DEPLOY_REASONS_TAG, DEPLOY_STATUS_TAG
from kfmlops.serving.deploy import deploy
from kfmlops.serving.inferenceservice import VERSION_LABEL, check_runtime, inference_service, to_yaml
from kfmlops.serving.rollout import KServeTarget, RolloutError

FULL = InferenceServiceConfig(
    name="adult",
    namespace="models",
    service_account="kfmlops-predictor",
    min_replicas=2,
    max_replicas=6,
    scale_metric="rps",
    scale_target=200,
    container_concurrency=32,
    timeout_s=30,
    logger=RequestLogger(url="http://inference-log-sink.kfmlops.svc.cluster.local/"),
    node_selector={"topology.kubernetes.io/region": "me-central-1"},
    tolerations=[Toleration(key="dedicated", value="inference", effect="NoSchedule")],
    labels={"team": "ml"},
)


@pytest.mark.parametrize("runtime", ["kfmlops", "mlflow", "sklearn", "xgboost"])
def test_inference_service_matches_the_crd_schema(runtime):
    config = FULL.model_copy(update={"runtime": runtime})
    manifest = inference_service(config, storage_uri="s3://models/adult/3", registered_model="adult", model_version="3", canary_traffic_percent=10)
    validate_crd(manifest)
    validate_crd(yaml.safe_load(to_yaml(manifest)))
    predictor = manifest["spec"]["predictor"]
    assert predictor["canaryTrafficPercent"] == 10
    assert (predictor["minReplicas"], predictor["maxReplicas"], predictor["scaleMetric"], predictor["scaleTarget"]) == (2, 6, "rps", 200)
    assert predictor["logger"] == {"url": "http://inference-log-sink.kfmlops.svc.cluster.local/", "mode": "all"}
    assert predictor["serviceAccountName"] == "kfmlops-predictor"
    assert predictor["tolerations"] == [{"key": "dedicated", "operator": "Equal", "value": "inference", "effect": "NoSchedule"}]
    assert manifest["metadata"]["labels"][VERSION_LABEL] == "3"
    if runtime == "kfmlops":
        (container,) = predictor["containers"]
        assert container["image"] == IMAGE
        assert {"name": "STORAGE_URI", "value": "s3://models/adult/3"} in container["env"]
        assert container["args"][:2] == ["--model-dir", "/mnt/models"]
        assert container["readinessProbe"]["httpGet"]["path"] == "/v2/models/adult/ready"
    else:
        assert "containers" not in predictor
        assert predictor["model"]["modelFormat"] == {"name": runtime}
        assert predictor["model"]["storageUri"] == "s3://models/adult/3"
        assert predictor["model"]["protocolVersion"] == ("v2" if runtime == "mlflow" else "v1")


def test_kserve_runtimes_take_only_models_of_their_flavor(task_models):
    from mlflow.models import Model

    sklearn = Model.load(str(task_models["penguins-sklearn"].model_dir)).flavors
    bundle = Model.load(str(task_models["penguins-gbdt"].model_dir)).flavors
    assert check_runtime("sklearn", sklearn) is None and check_runtime("mlflow", sklearn) is None
    assert check_runtime("mlflow", bundle) is None and check_runtime("kfmlops", bundle) is None
    assert "'xgboost' MLflow flavor" in check_runtime("xgboost", bundle)  # our gbdt bundle is a pyfunc
    assert "use runtime 'kfmlops'" in check_runtime("sklearn", bundle)


def test_the_schema_check_catches_a_misplaced_field():
    from schemas import CRDValidationError

    manifest = inference_service(InferenceServiceConfig(), storage_uri="s3://m/1", registered_model="m", model_version="1")
    manifest["spec"]["predictor"]["canaryTraficPercent"] = 10
    with pytest.raises(CRDValidationError):
        validate_crd(manifest)


def test_invalid_settings_name_the_field():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="max_replicas"):
        InferenceServiceConfig(min_replicas=4, max_replicas=2)
    with pytest.raises(ValidationError, match="name"):
        InferenceServiceConfig(name="Not_A_DNS_Name")
    with pytest.raises(ValidationError, match="canary_traffic_percent"):
        DeployConfig(canary_traffic_percent=100)


class FakeCluster:
    """Stands in for ``CustomObjectsApi``: stores the object, marks every change Ready, records calls."""

    def __init__(self, existing: dict | None = None, ready: bool = True):
        self.object = existing
        self.ready = ready
        self.calls: list[tuple[str, dict | None]] = []

    def _status(self):
        generation = self.object["metadata"].get("generation", 0) + 1
        self.object["metadata"]["generation"] = generation
        self.object["status"] = {
            "observedGeneration": generation,
            "conditions": [{"type": "Ready", "status": "True" if self.ready else "False", "reason": "RevisionFailed"}],
            "components": {"predictor": {
                "latestCreatedRevision": f"r{generation}", "latestReadyRevision": f"r{generation}" if self.ready else "r0",
                "traffic": [{"tag": "latest", "url": "http://latest-adult-predictor.models.svc.cluster.local", "percent": 10}],
            }},
            "address": {"url": "http://adult-predictor.models.svc.cluster.local"},
        }

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        from kubernetes.client.exceptions import ApiException

        if self.object is None:
            raise ApiException(status=404)
        return self.object

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        self.calls.append(("create", body))
        self.object = body
        self._status()

    def patch_namespaced_custom_object(self, group, version, namespace, plural, name, body):
        self.calls.append(("patch", body))
        _merge(self.object, body)
        self._status()

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name):
        self.calls.append(("delete", None))
        self.object = None


def _merge(target: dict, patch: dict) -> None:  # JSON merge patch (RFC 7386)
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value


def _target(api) -> KServeTarget:
    return KServeTarget(FULL, storage_uri="s3://m/2", registered_model="adult", ready_timeout_s=0.2, poll_interval_s=0.05, api=api)


def test_kserve_target_canary_then_promotion():
    live = inference_service(FULL, storage_uri="s3://m/1", registered_model="adult", model_version="1")
    api = FakeCluster(live)
    target = _target(api)
    assert target.live_version() == "1"
    assert target.start("2", 10) == "http://latest-adult-predictor.models.svc.cluster.local"
    (verb, body), = api.calls
    assert verb == "patch" and body["spec"]["predictor"]["canaryTrafficPercent"] == 10
    validate_crd(yaml.safe_load(target.manifest))
    target.promote()
    assert "canaryTrafficPercent" not in api.object["spec"]["predictor"]
    assert api.object["metadata"]["labels"][VERSION_LABEL] == "2"


def test_kserve_target_rollback_sends_traffic_back_and_a_first_rollout_is_removed():
    api = FakeCluster(inference_service(FULL, storage_uri="s3://m/1", registered_model="adult", model_version="1"))
    target = _target(api)
    target.live_version()
    target.start("2", 10)
    target.rollback()
    assert api.object["spec"]["predictor"]["canaryTrafficPercent"] == 0
    assert api.object["metadata"]["labels"][VERSION_LABEL] == "1"

    empty = FakeCluster(None)
    first = _target(empty)
    assert first.live_version() is None
    first.start("1", 100)
    assert "canaryTrafficPercent" not in empty.calls[0][1]["spec"]["predictor"]
    first.rollback()
    assert empty.calls[-1] == ("delete", None) and empty.object is None


def test_kserve_target_times_out_with_the_ready_condition():
    api = FakeCluster(inference_service(FULL, storage_uri="s3://m/1", registered_model="adult", model_version="1"), ready=False)
    with pytest.raises(RolloutError, match="RevisionFailed"):
        _target(api).start("2", 10)


QUICK = Check(probe=Probe(rows=300, concurrency=4, timeout_s=60), slo=Slo(p99_latency_ms=2000))


def _deploy(store, **overrides):
    config = DeployConfig(**{"model_version": store.challenger, "validation": QUICK, "canary": QUICK, **overrides})
    os.environ["KFMLOPS_VERIFY_KEY"] = store.verify_key.decode()
    try:
        return deploy(store.test_path, store.task, config, store.mlflow, ProvenanceConfig(development_keys=False))
    finally:
        del os.environ["KFMLOPS_VERIFY_KEY"]


def test_healthy_canary_is_promoted(served_store):
    reset_champion(served_store)
    result = _deploy(served_store)
    assert result.status == "promoted", result
    assert (result.version, result.previous_version, result.champion, result.traffic_percent) == (
        served_store.challenger, served_store.champion, served_store.challenger, 100)
    assert current_champion(served_store.mlflow) == served_store.challenger
    assert result.validation.passed and result.canary.passed
    assert result.validation.max_prediction_diff < 1e-5
    assert all(answer["refused"] for answer in result.validation.bad_requests)
    assert result.validation.probe["requests"] == 300 and result.validation.probe["errors"] == 0
    tags = MlflowClient(served_store.mlflow.tracking_uri).get_model_version("adult", served_store.challenger).tags
    assert tags[DEPLOY_STATUS_TAG] == "promoted"


def test_failing_canary_rolls_back_to_the_previous_champion(served_store):
    reset_champion(served_store)
    failing = Check(probe=QUICK.probe, slo=Slo(p99_latency_ms=0.001))  # no predictor answers in 1 µs
    result = _deploy(served_store, canary=failing)
    assert result.status == "rolled_back", result
    assert result.validation.passed and not result.canary.passed
    assert "p99 latency" in result.canary.reasons[0]
    assert result.champion == served_store.champion == current_champion(served_store.mlflow)
    assert "champion alias restored to " + served_store.champion in result.steps
    tags = MlflowClient(served_store.mlflow.tracking_uri).get_model_version("adult", served_store.challenger).tags
    assert tags[DEPLOY_STATUS_TAG] == "rolled_back" and "p99 latency" in tags[DEPLOY_REASONS_TAG]


def test_failing_validation_is_rejected_before_any_push(served_store):
    reset_champion(served_store)
    result = _deploy(served_store, max_prediction_diff=1e-12)
    if result.validation.max_prediction_diff == 0.0:
        pytest.skip("compiled and pyfunc predictions happen to be bit-identical on these rows")
    assert result.status == "rejected" and result.canary is None
    assert "differ from the registry model" in result.validation.reasons[0]
    assert current_champion(served_store.mlflow) == served_store.champion


def _deploy_task_model(model, **overrides):
    store = MlflowConfig(tracking_uri=model.tracking_uri, experiment="tasks", model_name=model.name)
    config = DeployConfig(**{"model_version": "1", "validation": QUICK, "canary": QUICK, **overrides})
    os.environ["KFMLOPS_VERIFY_KEY"] = model.verify_key.decode()
    try:
        return deploy(model.test_path, model.task, config, store, ProvenanceConfig(development_keys=False))
    finally:
        del os.environ["KFMLOPS_VERIFY_KEY"]


@pytest.mark.parametrize("name", ["penguins-sklearn", "cps1988-tabular-net"])
def test_a_multiclass_sklearn_model_and_a_regression_bundle_deploy(task_models, name):
    model = task_models[name]
    result = _deploy_task_model(model)
    assert result.status == "promoted", result
    assert "first rollout: no previous version, so no canary split" in result.steps
    assert result.validation.passed and result.canary.passed
    assert result.validation.max_prediction_diff <= 1e-5  # over the whole score vector (regression: relative)
    assert result.validation.probe["ok"] == result.validation.probe["requests"] > 0
    cases = {answer["case"] for answer in result.validation.bad_requests}
    assert all(answer["refused"] for answer in result.validation.bad_requests)
    assert ("unseen_category" in cases) == (name != "penguins-sklearn")  # a generic model's categories are unknown
    assert {"string_in_numeric_column", "number_in_categorical_column", "v2_wrong_datatype"} <= cases


def test_a_model_that_does_not_fit_the_kserve_runtime_is_rejected(task_models):
    model = task_models["penguins-gbdt"]
    service = InferenceServiceConfig(runtime="sklearn")
    result = _deploy_task_model(model, target="kserve", inference_service=service)
    assert result.status == "rejected" and result.canary is None
    assert "'sklearn' MLflow flavor" in result.validation.reasons[0]


def _kubeconfig() -> bool:
    return bool(os.environ.get("KUBECONFIG")) or (Path.home() / ".kube" / "config").exists()


@pytest.mark.cluster
@pytest.mark.skipif(not _kubeconfig(), reason="needs a Kubernetes cluster (no kubeconfig)")
def test_the_api_server_accepts_the_inference_service():
    """Server-side dry run against the real CRD: nothing is created."""
    from kubernetes import client, config

    config.load_kube_config()
    manifest = inference_service(FULL.model_copy(update={"namespace": "default"}), storage_uri="s3://m/1", registered_model="adult", model_version="1")
    client.CustomObjectsApi().create_namespaced_custom_object(
        "serving.kserve.io", "v1beta1", "default", "inferenceservices", manifest, dry_run="All"
    )
