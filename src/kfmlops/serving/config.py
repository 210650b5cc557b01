"""Typed settings for serving and deployment, validated once at the boundary like :mod:`kfmlops.config`.

- :class:`ServingConfig`: how the predictor treats requests (unseen categories, size limits,
  micro-batching, online features from a feature store); travels to the serving container as one
  JSON flag.
- :class:`FeatureStoreRef`: a feature service of a Feast repository (training's
  ``data.feature_store`` and serving's ``serving.feature_store`` both name one).
- :class:`InferenceServiceConfig`: what the KServe ``InferenceService`` looks like (runtime, image,
  resources, replicas and autoscaling, request logger, scheduling).
- :class:`DeployConfig`: the deploy stage (target, SLOs for the pre-push validation and for the
  canary, the canary's traffic share, and the rollout ``strategy``: canary, blue-green, shadow or
  an A/B test, each with its typed settings: :class:`BlueGreen`, :class:`Shadow`, :class:`AbTest`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from kfmlops import IMAGE
from kfmlops.typed import SettingsModel

DNS_LABEL = r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$"


class FeatureStoreRef(SettingsModel):
    """A feature service of a Feast feature repository (:mod:`kfmlops.feature_store`)."""

    repo_path: str = Field(description="The Feast repository: the folder that holds its feature_store.yaml.")
    feature_service: str = Field(min_length=1, description="The feature service whose features the model reads.")


class ServingConfig(SettingsModel):
    """How the predictor checks and scores requests."""

    unseen_categories: Literal["reject", "unknown"] = Field(
        default="reject",
        description="A category the model has no embedding for: 'reject' answers 400 naming the column; "
        "'unknown' scores it with the unknown bucket, as the MLflow pyfunc does.",
    )
    max_rows: int = Field(default=10_000, ge=1, description="Rows in one request; more is answered 413.")
    max_body_bytes: int = Field(default=16 << 20, ge=1024, description="Request body size; more is answered 413.")
    micro_batching: bool = Field(
        default=False, description="Score concurrent requests together in one forward pass (adaptive micro-batching)."
    )
    batch_max_rows: int = Field(default=512, ge=1, description="A micro-batch is scored as soon as it holds this many rows.")
    batch_wait_ms: float = Field(
        default=0.0,
        ge=0.0,
        le=100.0,
        description="How long the first request of a micro-batch waits for others; 0 batches only the requests "
        "that arrived in the same event-loop turn (no added latency).",
    )
    parity_tolerance: float = Field(
        default=1e-5, gt=0.0, description="Largest score difference allowed between the served path and the model's own "
        "scores (its PyTorch forward pass, XGBoost or MLflow) in the load-time self-check: absolute for probabilities, "
        "relative to the largest value for regression (kfmlops.serving.outputs.score_diff).",
    )
    decision_threshold: float = Field(
        default=0.5, gt=0.0, lt=1.0, description="Binary task: P(positive) at or above which V2's 'label' output is the "
        "positive class (the deploy stage sets it to evaluate.decision_threshold).",
    )
    explain_max_rows: int = Field(
        default=64, ge=1, description="Most instances one :explain request may hold; more is answered 400 (the deploy "
        "stage sets it to explain.serving_max_rows).",
    )
    feature_store: FeatureStoreRef | None = Field(
        default=None,
        description="Look up the feature service's online features by entity key before scoring: a request that "
        "carries the join keys gets the features it does not carry itself (kfmlops.serving.online_features). "
        "Unset: requests carry every feature.",
    )


class Resources(SettingsModel):
    cpu_request: str = "500m"
    memory_request: str = "1Gi"
    cpu_limit: str | None = "2"
    memory_limit: str | None = "2Gi"


class Toleration(SettingsModel):
    key: str | None = None
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None


class RequestLogger(SettingsModel):
    """KServe's inference logger: every request/response as a CloudEvent to ``url`` (the monitoring sink)."""

    url: str = Field(description="The monitoring sink's URL, e.g. http://kfmlops-sink.kubeflow.svc.cluster.local/")
    mode: Literal["all", "request", "response"] = "all"


class InferenceServiceConfig(SettingsModel):
    """The ``serving.kserve.io/v1beta1`` InferenceService the deploy stage applies."""

    name: str = Field(default="kfmlops-model", pattern=DNS_LABEL)
    namespace: str = Field(default="kubeflow", pattern=DNS_LABEL)
    runtime: Literal["kfmlops", "mlflow", "sklearn", "xgboost"] = Field(
        default="kfmlops",
        description="'kfmlops': our predictor image (custom container, V1 + V2 REST, provenance verified, the "
        "outputs of kfmlops.serving.outputs); else KServe's own runtime for that model format, given the model's "
        "storageUri: 'mlflow' (MLServer, V2 only; a kfmlops bundle needs kfmlops in the runtime image), 'sklearn' "
        "or 'xgboost' (the model needs that MLflow flavor). KServe's runtimes neither verify provenance nor answer "
        "in kfmlops's output format.",
    )
    image: str = IMAGE
    service_account: str | None = Field(default=None, description="Needs read access to the model storage.")
    verify_key_secret: str = Field(
        default="kfmlops-verify-key",
        description="Secret whose 'verify.pem' is the Ed25519 public key the predictor checks model provenance with.",
    )
    resources: Resources = Resources()
    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=3, ge=1)
    scale_metric: Literal["concurrency", "rps", "cpu", "memory"] = "concurrency"
    scale_target: int = Field(default=16, ge=1, description="Autoscaling target per replica, in scale_metric's unit.")
    container_concurrency: int | None = Field(default=None, ge=0, description="Hard limit of in-flight requests per replica.")
    timeout_s: int | None = Field(default=None, ge=1)
    logger: RequestLogger | None = None
    node_selector: dict[str, str] = {}
    tolerations: list[Toleration] = []
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    serving: ServingConfig = ServingConfig()

    @model_validator(mode="after")
    def _replicas(self) -> "InferenceServiceConfig":
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) is below min_replicas ({self.min_replicas})")
        return self


class Slo(SettingsModel):
    """What a healthy predictor must show under the probe."""

    p99_latency_ms: float = Field(default=50.0, gt=0.0)
    max_error_rate: float = Field(default=0.0, ge=0.0, le=1.0, description="Share of 5xx answers and transport errors.")
    max_rejected_rate: float = Field(default=0.01, ge=0.0, le=1.0, description="Share of test rows answered 4xx.")


class Probe(SettingsModel):
    """The traffic a check sends: test-split rows, bounded in count and time."""

    rows: int = Field(default=2000, ge=1, description="Test rows sent (the first ones, in file order).")
    rows_per_request: int = Field(default=1, ge=1)
    concurrency: int = Field(default=8, ge=1)
    timeout_s: float = Field(default=60.0, gt=0.0, description="The whole probe stops after this.")


class Check(SettingsModel):
    probe: Probe = Probe()
    slo: Slo = Slo()


class BlueGreen(SettingsModel):
    """Blue-green: green (the candidate) fully up beside blue (the live version), validated on its own
    URL, then the route switches at once; blue stays up for the after-switch check and the route
    switches back at once when it fails."""

    green: Check = Field(default=Check(probe=Probe(rows=1000, concurrency=4)),
                         description="The check of green on its own URL before the switch.")
    after_switch: Check = Field(default=Check(probe=Probe(rows=500, concurrency=4)),
                                description="The check of the live route once it points at green; failing "
                                "switches the route back to blue.")


class Shadow(SettingsModel):
    """Shadow: the live version answers; every request is mirrored to the candidate, whose answer is
    logged beside the live one, compared, and never returned."""

    check: Check = Field(default=Check(probe=Probe(rows=1000, concurrency=4)),
                         description="The traffic sent through the live route (test rows) and the live route's SLOs.")
    min_compared: int = Field(default=200, ge=1, description="Rows that both versions answered needed for a verdict.")
    max_disagreement: float = Field(
        default=0.05, ge=0.0, le=1.0, description="Largest share of mirrored rows where the candidate's answer differs "
        "from the live one: another predicted class (classification), or a value off by more than "
        "regression_tolerance relative to the live value (regression).")
    regression_tolerance: float = Field(default=0.1, gt=0.0, description="Regression: relative difference that counts as disagreeing.")
    max_candidate_error_rate: float = Field(default=0.0, ge=0.0, le=1.0,
                                            description="Share of mirrored requests the candidate may fail (5xx, transport).")


class AbTest(SettingsModel):
    """An A/B test: keys hashed into arms (sticky), each arm's predictions logged with its version,
    later labels joined by request id, then a two-sided test on the arms' quality."""

    challenger_percent: int = Field(default=50, ge=1, le=99, description="Share of keys routed to the challenger.")
    key_header: str = Field(default="x-kfmlops-key", pattern=r"^[a-z0-9-]+$",
                            description="Request header holding the sticky key (a user or session id).")
    key_column: str | None = Field(default=None, description="Else the value of this input column of a request's first "
                                   "instance; neither given: the request id (no stickiness beyond one request).")
    salt: str = Field(default="kfmlops-ab", description="Mixed into the key's hash: another salt, another assignment.")
    test: Literal["auto", "two-proportion-z", "welch-t"] = Field(
        default="auto", description="'two-proportion-z': accuracy (classification), pooled two-proportion z-test; "
        "'welch-t': squared errors (regression), Welch's unequal-variance t-test; 'auto': the one for the task.")
    alpha: float = Field(default=0.05, gt=0.0, lt=0.5, description="Two-sided significance level.")
    min_samples_per_arm: int = Field(default=400, ge=10, description="The planned sample: the test runs once, at the "
                                     "first look where each arm holds this many labelled predictions (no peeking before).")
    max_duration_s: float = Field(default=600.0, gt=0.0, description="The experiment ends after this: undecided means inconclusive.")
    batch_rows: int = Field(default=200, ge=1, description="Locally: test rows sent between two looks at the labelled log.")


class DeployConfig(SettingsModel):
    """The deploy stage: validate the candidate locally, then roll it out by ``strategy``."""

    target: Literal["local", "kserve"] = Field(
        default="local",
        description="'local': the candidate predictor runs as a local process and takes the canary probe; "
        "'kserve': the InferenceService is updated through the Kubernetes API.",
    )
    model_version: str | None = Field(default=None, description="The version to deploy; unset: the 'champion' alias.")
    canary_traffic_percent: int = Field(default=10, ge=1, le=99)
    max_prediction_diff: float = Field(
        default=1e-5, gt=0.0, description="Largest difference between the served scores (class probabilities, or values) "
        "and the registry model's own on the test rows: absolute for probabilities, relative to the largest value for "
        "regression (kfmlops.serving.outputs.score_diff)."
    )
    strategy: Literal["canary", "blue-green", "shadow", "ab"] = Field(
        default="canary", description="'canary': canary_traffic_percent to the candidate, then all; 'blue-green': the "
        "candidate fully up beside the live version, one switch, instant switch back; 'shadow': the candidate gets a "
        "copy of live traffic, compared, never returned; 'ab': a sticky split, labels joined, a statistical test. "
        "Strategies other than canary run on target 'local'; on a cluster apply kfmlops.serving.routing_specs.")
    validation: Check = Check()
    canary: Check = Check(probe=Probe(rows=1000, concurrency=4))
    blue_green: BlueGreen = BlueGreen()
    shadow: Shadow = Shadow()
    ab: AbTest = AbTest()
    log_root: str | None = Field(default=None, description="The inference log that shadow and A/B rollouts write the "
                                 "versions' answers to (a sink's root); unset: a temporary directory, removed afterwards.")
    ready_timeout_s: float = Field(default=600.0, gt=0.0, description="Wait for the InferenceService to be Ready.")
    poll_interval_s: float = Field(default=5.0, gt=0.0)
    inference_service: InferenceServiceConfig = InferenceServiceConfig()

    @model_validator(mode="after")
    def _strategy_target(self) -> "DeployConfig":
        if self.strategy != "canary" and self.target != "local":
            raise ValueError(f"strategy {self.strategy!r} runs on target 'local' only; on a cluster apply the manifests of "
                             "kfmlops.serving.routing_specs (see the README's 'Rollout strategies')")
        return self
