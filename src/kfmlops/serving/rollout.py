"""Where a rollout lands: the local predictor process, or a KServe InferenceService through the Kubernetes API.

A target offers four moves that :func:`kfmlops.serving.deploy.deploy` strings together:
``live_version()`` (what serves now; None before the first rollout), ``start(version, percent)``
(put the candidate up with that share of traffic and return the URL that reaches the candidate
alone), ``promote()`` (the candidate takes all traffic) and ``rollback()`` (the previous version
takes all traffic back).
"""

from __future__ import annotations

import time
from typing import Protocol

from kfmlops.serving.config import InferenceServiceConfig
from kfmlops.kube import custom_objects_api
from kfmlops.serving.inferenceservice import GROUP, PLURAL, VERSION, VERSION_LABEL, inference_service, to_yaml


class RolloutError(RuntimeError):
    """The cluster did not reach the state a rollout step asked for; the message says which and why."""


class RolloutTarget(Protocol):
    def live_version(self) -> str | None: ...

    def start(self, version: str, percent: int) -> str: ...

    def promote(self) -> None: ...

    def rollback(self) -> None: ...


class LocalTarget:
    """The candidate process started for validation takes the canary probe whole.

    Locally nothing else serves, so there is no traffic to split: ``percent`` is recorded, not
    applied. The registry's ``champion`` alias is the deployment record (``kfmlops serve`` follows
    it), so promote and rollback only change the alias, which the deploy stage does for every target.
    """

    def __init__(self, candidate_url: str, live: str | None):
        self.candidate_url = candidate_url
        self.live = live

    def live_version(self) -> str | None:
        return self.live

    def start(self, version: str, percent: int) -> str:
        return self.candidate_url

    def promote(self) -> None:
        """Nothing runs but the candidate; the alias already names it."""

    def rollback(self) -> None:
        """The candidate process stops with the deploy stage; the alias is restored by it."""


class KServeTarget:
    """An InferenceService updated in place: the canary is KServe's ``canaryTrafficPercent``.

    ``api`` is a ``kubernetes.client.CustomObjectsApi`` (built from the in-cluster config or the
    kubeconfig when not given). The manifest applied last is kept in ``manifest``.
    """

    def __init__(
        self,
        config: InferenceServiceConfig,
        *,
        storage_uri: str,
        registered_model: str,
        ready_timeout_s: float,
        poll_interval_s: float,
        api=None,
    ):
        self.config = config
        self.storage_uri = storage_uri
        self.registered_model = registered_model
        self.ready_timeout_s = ready_timeout_s
        self.poll_interval_s = poll_interval_s
        self.api = api if api is not None else custom_objects_api()
        self.manifest: str | None = None
        self._previous: str | None = None
        self._created = False

    def _get(self) -> dict | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.api.get_namespaced_custom_object(GROUP, VERSION, self.config.namespace, PLURAL, self.config.name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def _patch(self, body: dict) -> None:
        self.api.patch_namespaced_custom_object(GROUP, VERSION, self.config.namespace, PLURAL, self.config.name, body)

    def live_version(self) -> str | None:
        current = self._get()
        self._previous = None if current is None else current["metadata"].get("labels", {}).get(VERSION_LABEL)
        return self._previous

    def start(self, version: str, percent: int) -> str:
        existing = self._get()
        manifest = inference_service(
            self.config,
            storage_uri=self.storage_uri,
            registered_model=self.registered_model,
            model_version=version,
            canary_traffic_percent=percent if existing is not None and percent < 100 else None,
        )
        self.manifest = to_yaml(manifest)
        if existing is None:
            self.api.create_namespaced_custom_object(GROUP, VERSION, self.config.namespace, PLURAL, manifest)
            self._created = True
        else:
            self._patch(manifest)
        status = self._wait_ready(f"version {version} at {percent}%")
        return canary_url(status)

    def promote(self) -> None:
        self._patch({"spec": {"predictor": {"canaryTrafficPercent": None}}})  # removing the field sends 100% to the latest
        self._wait_ready("promotion to 100%")

    def rollback(self) -> None:
        if self._created:  # the first rollout: nothing to fall back to
            self.api.delete_namespaced_custom_object(GROUP, VERSION, self.config.namespace, PLURAL, self.config.name)
            return
        # KServe's rollback: 0% to the latest revision routes all traffic to the previous ready one.
        self._patch({"metadata": {"labels": {VERSION_LABEL: self._previous}}, "spec": {"predictor": {"canaryTrafficPercent": 0}}})
        self._wait_ready("rollback")

    def _wait_ready(self, what: str) -> dict:
        deadline = time.monotonic() + self.ready_timeout_s
        reason = "no status yet"
        while True:
            current = self._get() or {}
            status = current.get("status", {})
            ready = next((c for c in status.get("conditions", []) if c.get("type") == "Ready"), None)
            predictor = status.get("components", {}).get("predictor", {})
            settled = predictor.get("latestCreatedRevision") == predictor.get("latestReadyRevision")
            observed = status.get("observedGeneration", 0) >= current.get("metadata", {}).get("generation", 0)
            if ready and ready.get("status") == "True" and settled and observed:
                return status
            if ready:
                reason = f"Ready={ready.get('status')} {ready.get('reason', '')} {ready.get('message', '')}".strip()
            if time.monotonic() > deadline:
                raise RolloutError(f"InferenceService {self.config.name}: {what} not ready after {self.ready_timeout_s:.0f} s ({reason})")
            time.sleep(self.poll_interval_s)


def switch_colour(config: InferenceServiceConfig, colour: str, api=None) -> dict:
    """Blue-green on a cluster: patch Service ``config.name`` to select ``colour``'s predictor pods
    (:func:`kfmlops.serving.routing_specs.switch_patch`); ``api`` a ``CoreV1Api`` (from the cluster
    config when not given). Returns the patch applied."""
    from kfmlops.kube import core_v1_api
    from kfmlops.serving.routing_specs import switch_patch

    patch = switch_patch(config, colour)
    (api if api is not None else core_v1_api()).patch_namespaced_service(config.name, config.namespace, patch)
    return patch


def canary_url(status: dict) -> str:
    """The URL that reaches only the latest revision (tag routing), else the service's cluster address."""
    for route in status.get("components", {}).get("predictor", {}).get("traffic", []):
        if route.get("tag") == "latest" and route.get("url"):
            return route["url"]
    url = status.get("address", {}).get("url") or status.get("url")
    if not url:
        raise RolloutError("the InferenceService status has no URL")
    return url
