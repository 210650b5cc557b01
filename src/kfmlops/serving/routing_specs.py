"""The cluster manifests of the blue-green, shadow and A/B rollouts, as dicts (``to_yaml`` for ``kubectl apply``).

Consumes the :class:`~kfmlops.serving.config.InferenceServiceConfig` of the live service (its
``name`` is the live InferenceService's), the candidate's model location and version, and for A/B
the :class:`~kfmlops.serving.config.AbTest`; produces the manifests each strategy needs. The
KServe deployment mode each needs:

- **canary** (today's :class:`~kfmlops.serving.rollout.KServeTarget`): Serverless (Knative), whose
  revisions ``canaryTrafficPercent`` splits between.
- **blue-green** (:func:`blue_green`): RawDeployment. Two InferenceServices, ``NAME-blue`` and
  ``NAME-green``, each with its own Deployment; a plain Service ``NAME`` selects the predictor pods
  of the live colour (KServe labels them ``serving.kserve.io/inferenceservice: NAME-COLOUR``). The
  switch, and the switch back, is one patch of that selector (:func:`switch_patch`); the other
  colour stays up until it is deleted.
- **shadow** (:func:`shadow`): KServe has no mirror, so Istio: the candidate as ``NAME-shadow``
  (RawDeployment) and a VirtualService on the live predictor's host that routes everything to it and
  mirrors ``mirror_percent`` of the requests to the candidate; Envoy drops the mirror's answers.
  Both InferenceServices' request loggers (``inference_service.logger``) send to the sink, where
  the answers are compared by request id (:func:`kfmlops.serving.experiment.compare_shadow`).
- **ab** (:func:`ab_test`): Istio as well: the challenger as ``NAME-challenger`` and a
  VirtualService on the live predictor's host: a request whose ``x-kfmlops-arm`` header names an
  arm goes to it (the sticky path: the edge or client sets the header from the key with
  :func:`kfmlops.serving.router.in_challenger`), any other is split by weight (not sticky). Each
  answer carries its arm in ``x-kfmlops-arm``.

Shadow and A/B need Istio sidecars on the callers (or an Istio gateway in front) and the live
InferenceService in RawDeployment mode too: in Serverless mode Knative owns the predictor hosts'
routing. None of this was applied to a cluster here: the manifests are checked against the CRD
schemas only.
"""

from __future__ import annotations

from kfmlops.serving.config import AbTest, InferenceServiceConfig
from kfmlops.serving.inferenceservice import inference_service
from kfmlops.serving.router import ARM_HEADER

DEPLOYMENT_MODE = "serving.kserve.io/deploymentMode"
ISVC_POD_LABEL = "serving.kserve.io/inferenceservice"
COLOURS = ("blue", "green")
SERVICE_PORT = 80  # KServe's predictor Services listen on 80 and forward to the container's 8080
ISTIO_API = "networking.istio.io/v1"


def _raw(config: InferenceServiceConfig, name: str) -> InferenceServiceConfig:
    """``config`` for the InferenceService ``name`` in RawDeployment mode."""
    return config.model_copy(update={"name": name, "annotations": {**config.annotations, DEPLOYMENT_MODE: "RawDeployment"}})


def _predictor_host(config: InferenceServiceConfig, name: str) -> str:
    """The cluster host of InferenceService ``name``'s predictor Service (RawDeployment: ``NAME-predictor``)."""
    return f"{name}-predictor.{config.namespace}.svc.cluster.local"


def blue_green(config: InferenceServiceConfig, *, colour: str, storage_uri: str, registered_model: str,
               model_version: str) -> list[dict]:
    """The ``colour`` InferenceService serving ``model_version``, and the Service ``config.name`` that
    selects it (apply the Service once; later switches are :func:`switch_patch`)."""
    if colour not in COLOURS:
        raise ValueError(f"colour {colour!r}: expected one of {COLOURS}")
    isvc = inference_service(_raw(config, f"{config.name}-{colour}"), storage_uri=storage_uri,
                             registered_model=registered_model, model_version=model_version)
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": config.name, "namespace": config.namespace, "labels": dict(config.labels)},
        "spec": {"selector": _selector(config, colour),
                 "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": 8080, "protocol": "TCP"}]},
    }
    return [isvc, service]


def switch_patch(config: InferenceServiceConfig, colour: str) -> dict:
    """The merge patch of Service ``config.name`` that sends every new connection to ``colour``
    (``kubectl patch service NAME --type merge -p ...``): the switch and the switch back."""
    return {"spec": {"selector": _selector(config, colour)}}


def _selector(config: InferenceServiceConfig, colour: str) -> dict:
    return {ISVC_POD_LABEL: f"{config.name}-{colour}", "component": "predictor"}


def shadow(config: InferenceServiceConfig, *, storage_uri: str, registered_model: str, model_version: str,
           mirror_percent: float = 100.0) -> list[dict]:
    """The candidate InferenceService ``NAME-shadow`` and the VirtualService that mirrors
    ``mirror_percent`` of the live predictor's requests to it."""
    name = f"{config.name}-shadow"
    isvc = inference_service(_raw(config, name), storage_uri=storage_uri, registered_model=registered_model,
                             model_version=model_version)
    live = _predictor_host(config, config.name)
    http = [{
        "name": "live-with-shadow",
        "route": [{"destination": _destination(live), "weight": 100}],
        "mirror": _destination(_predictor_host(config, name)),
        "mirrorPercentage": {"value": float(mirror_percent)},
    }]
    return [isvc, _virtual_service(config, name, live, http)]


def ab_test(config: InferenceServiceConfig, ab: AbTest, *, storage_uri: str, registered_model: str,
            model_version: str) -> list[dict]:
    """The challenger InferenceService ``NAME-challenger`` and the VirtualService that routes by the
    ``x-kfmlops-arm`` header, else by ``ab.challenger_percent``."""
    name = f"{config.name}-challenger"
    isvc = inference_service(_raw(config, name), storage_uri=storage_uri, registered_model=registered_model,
                             model_version=model_version)
    live = _predictor_host(config, config.name)
    arms = {"champion": live, "challenger": _predictor_host(config, name)}

    def route(arm: str, weight: int) -> dict:
        return {"destination": _destination(arms[arm]), "weight": weight,
                "headers": {"response": {"set": {ARM_HEADER: arm}}}}

    http = [{"name": f"sticky-{arm}", "match": [{"headers": {ARM_HEADER: {"exact": arm}}}], "route": [route(arm, 100)]}
            for arm in arms]
    http.append({"name": "split", "route": [route("champion", 100 - ab.challenger_percent),
                                            route("challenger", ab.challenger_percent)]})
    return [isvc, _virtual_service(config, f"{config.name}-ab", live, http)]


def _destination(host: str) -> dict:
    return {"host": host, "port": {"number": SERVICE_PORT}}


def _virtual_service(config: InferenceServiceConfig, name: str, host: str, http: list[dict]) -> dict:
    return {
        "apiVersion": ISTIO_API,
        "kind": "VirtualService",
        "metadata": {"name": name, "namespace": config.namespace, "labels": dict(config.labels)},
        "spec": {"hosts": [host], "http": http},
    }
