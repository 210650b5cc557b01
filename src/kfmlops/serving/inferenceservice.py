"""The KServe ``InferenceService`` (``serving.kserve.io/v1beta1``) for a model version, as a dict or YAML.

Consumes an :class:`~kfmlops.serving.config.InferenceServiceConfig`, the model's ``storage_uri``
(its MLflow artifact location; KServe's storage initializer downloads it to ``/mnt/models``) and
the registered model name and version (recorded as labels); produces the manifest:

- runtime ``kfmlops``: a custom predictor container running our image
  (``kfmlops serve --model-dir /mnt/models``, ``STORAGE_URI`` set, the provenance verify key from
  a Secret), with readiness/liveness probes;
- runtime ``mlflow``, ``sklearn`` or ``xgboost``: KServe's own runtime for that ``modelFormat``,
  reading the model directory from ``storageUri`` (``mlflow`` on MLServer speaks V2 only; the
  others V1). :func:`check_runtime` says whether a model's MLflow flavors fit the runtime;

plus replicas and autoscaling (``scaleMetric``/``scaleTarget``), resources, ``canaryTrafficPercent``,
the request/response logger, service account, node selector and tolerations. The tag-routing
annotation gives the canary its own ``latest-`` URL, which the rollout probes.
"""

from __future__ import annotations

import yaml

from kfmlops.provenance import VERIFY_KEY_ENV
from kfmlops.serving.config import InferenceServiceConfig

API_VERSION = "serving.kserve.io/v1beta1"
KIND = "InferenceService"
GROUP, VERSION = API_VERSION.split("/")
PLURAL = "inferenceservices"
MODEL_DIR = "/mnt/models"
HTTP_PORT = 8080
TAG_ROUTING = "serving.kserve.io/enable-tag-routing"
VERSION_LABEL = "kfmlops.io/model-version"
PROTOCOL = {"kfmlops": "v1", "mlflow": "v2", "sklearn": "v1", "xgboost": "v1"}
"""The inference protocol the deploy stage probes each runtime with (ours speaks V1 and V2)."""
NAME_LABEL = "kfmlops.io/registered-model"


def inference_service(
    config: InferenceServiceConfig,
    *,
    storage_uri: str,
    registered_model: str,
    model_version: str,
    canary_traffic_percent: int | None = None,
) -> dict:
    """The manifest as a dict in the API's camelCase (see the module docstring)."""
    predictor: dict = {
        "minReplicas": config.min_replicas,
        "maxReplicas": config.max_replicas,
        "scaleMetric": config.scale_metric,
        "scaleTarget": config.scale_target,
    }
    optional = {
        "canaryTrafficPercent": canary_traffic_percent,
        "containerConcurrency": config.container_concurrency,
        "timeout": config.timeout_s,
        "serviceAccountName": config.service_account,
        "nodeSelector": dict(config.node_selector) or None,
        "tolerations": [t.model_dump(exclude_none=True) for t in config.tolerations] or None,
        "logger": config.logger.model_dump() if config.logger else None,
    }
    predictor |= {k: v for k, v in optional.items() if v is not None}
    if config.runtime == "kfmlops":
        predictor["containers"] = [_container(config, storage_uri, registered_model, model_version)]
    else:
        predictor["model"] = {
            "modelFormat": {"name": config.runtime},
            "protocolVersion": PROTOCOL[config.runtime],
            "storageUri": storage_uri,
            "resources": _resources(config),
        }
    labels = {**config.labels, NAME_LABEL: registered_model, VERSION_LABEL: str(model_version)}
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": config.name,
            "namespace": config.namespace,
            "labels": labels,
            "annotations": {**config.annotations, TAG_ROUTING: "true"},
        },
        "spec": {"predictor": predictor},
    }


def check_runtime(runtime: str, flavors: dict) -> str | None:
    """Why a model with these MLflow ``flavors`` (its MLmodel's) cannot run on ``runtime``; None when it can."""
    needed = {"mlflow": "python_function", "sklearn": "sklearn", "xgboost": "xgboost"}.get(runtime)
    if needed is None or needed in flavors:
        return None
    return (f"inference_service.runtime {runtime!r} serves models with the {needed!r} MLflow flavor; this model has "
            f"{sorted(flavors)}: use runtime 'kfmlops' (any MLflow model)")


def _container(config: InferenceServiceConfig, storage_uri: str, registered_model: str, model_version: str) -> dict:
    ready = f"/v2/models/{registered_model}/ready"
    return {
        "name": "kserve-container",
        "image": config.image,
        "command": ["kfmlops", "serve"],
        "args": [
            "--model-dir", MODEL_DIR,
            "--model-name", registered_model,
            "--host", "0.0.0.0",
            "--http-port", str(HTTP_PORT),
            "--serving", config.serving.model_dump_json(),
        ],
        "env": [
            {"name": "STORAGE_URI", "value": storage_uri},
            {"name": "KFMLOPS_MODEL_VERSION", "value": str(model_version)},
            {"name": VERIFY_KEY_ENV, "valueFrom": {"secretKeyRef": {"name": config.verify_key_secret, "key": "verify.pem"}}},
        ],
        "ports": [{"containerPort": HTTP_PORT, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": ready, "port": HTTP_PORT}, "periodSeconds": 5},
        "livenessProbe": {"httpGet": {"path": "/v2/health/live", "port": HTTP_PORT}, "periodSeconds": 10},
        "resources": _resources(config),
    }


def _resources(config: InferenceServiceConfig) -> dict:
    r = config.resources
    resources: dict = {"requests": {"cpu": r.cpu_request, "memory": r.memory_request}}
    limits = {k: v for k, v in {"cpu": r.cpu_limit, "memory": r.memory_limit}.items() if v is not None}
    if limits:
        resources["limits"] = limits
    return resources


def to_yaml(manifest: dict) -> str:
    """The manifest as YAML for ``kubectl apply -f``."""
    return yaml.safe_dump(manifest, sort_keys=False)
