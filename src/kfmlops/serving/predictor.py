"""The KServe predictor: any kfmlops Model artifact from MLflow (or a local model directory) behind ``kserve.Model``.

:func:`resolve_model` finds the model: a registry URI (``models:/NAME@ALIAS`` or
``models:/NAME/VERSION``; an alias is resolved to its version first, so a moving alias cannot
change the model mid-load), any other MLflow artifact URI, or a local MLflow model directory such
as the ``/mnt/models`` that KServe's storage initializer fills. :class:`Predictor` loads it once:

1. verifies the signed provenance of the whole model directory when given the verify key
   (:func:`kfmlops.provenance.verify`: signature, the digest of every file, no file missing or
   added, every gate passed) before it reads any of it;
2. reads the task and features from the MLmodel's kfmlops metadata
   (:mod:`kfmlops.model_contract`) and builds the request checks from its signature
   (:mod:`kfmlops.serving.schema`);
3. picks a scorer (:mod:`kfmlops.serving.scorer`): a ``tabular-net`` bundle runs as a compiled
   NumPy forward pass (checked against the PyTorch model on random inputs), a ``gbdt`` bundle as
   XGBoost's ``inplace_predict`` on the encoded matrix, any other MLflow model (sklearn, xgboost,
   a custom pyfunc...) through :meth:`LoadedModel.scores <kfmlops.model_contract.LoadedModel.scores>`;
4. checks the request path end to end on the model's input example against the model's own scores
   (:func:`~kfmlops.serving.outputs.score_diff` within ``serving.parity_tolerance``) before it
   reports ready;
5. with ``serving.feature_store`` set, opens the Feast feature service whose online features it
   joins into requests that carry entity keys (:mod:`kfmlops.serving.online_features`).

``predict`` takes KServe's decoded V1 body (``{"instances": [...]}``) or V2 ``InferRequest`` (one
input per column), scores the rows (micro-batched with ``serving.micro_batching``) and answers with
the task's outputs (:mod:`kfmlops.serving.outputs`: V1 P(positive), ``{class: probability}`` or the
value per row; V2 ``probability``/``probabilities`` and ``label``, or ``value``). Invalid input
raises :class:`~kfmlops.serving.schema.RequestRejected` (a 4xx naming the field).

``explain`` answers KServe's V1 explain (``POST /v1/models/NAME:explain``, the same
``{"instances": [...]}`` body, checked the same way) with per-row attributions
(:mod:`kfmlops.attributions`): SHAP tree values for a ``gbdt`` bundle or a user's tree ensemble,
integrated gradients for a ``tabular-net``. Cost is bounded: at most ``serving.explain_max_rows``
instances per request (more: 400 saying the limit). Any other model is answered 501 naming why:
model-agnostic per-row attributions (Kernel SHAP, occlusion) need a reference sample that a model
brought from elsewhere does not carry, and cost features x samples model calls per row; rather
than invent a reference, the predictor refuses and the training run's permutation importance
(``explain/explanation.json``) covers such models.
"""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from http import HTTPStatus
import shutil
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import kserve
import numpy as np
import pandas as pd
from kserve.protocol.infer_type import InferRequest, InferResponse

from kfmlops.serving.batching import MicroBatcher
from kfmlops.serving.config import ServingConfig
from kfmlops.serving.metrics import BATCH_ROWS, MODEL_INFO, PREDICTED_CLASS, PREDICTED_PROBABILITY, REQUEST_ROWS
from kfmlops.serving.outputs import output_types, predicted_labels, score_diff, v1_predictions, v2_outputs
from kfmlops.serving.schema import RequestRejected, RequestSchema
from kfmlops.tasks import Task

log = logging.getLogger(__name__)

REGISTRY_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w.-]+))/?")
GENERIC = "pyfunc"
"""The served kind of a model that is not a kfmlops bundle."""


@dataclass(frozen=True)
class ModelSource:
    """Where the served model came from: ``model_dir`` is a local MLflow model directory."""

    uri: str
    model_dir: Path
    registered_model: str | None = None
    version: str | None = None
    temporary: Path | None = None  # the download folder to remove once the model is in memory


def resolve_model(source: str, tracking_uri: str | None = None, download_dir: str | Path | None = None) -> ModelSource:
    """A model URI or local directory -> a local MLflow model directory (downloaded when remote).

    A registry version is downloaded from its source (the run's artifacts), exactly the files that
    were signed: MLflow's ``models:/`` download would add a file of its own."""
    local = Path(source.removeprefix("file://"))
    if "://" not in source.removeprefix("file://") and ":/" not in source.removeprefix("file://"):
        if not (local / "MLmodel").is_file():
            raise FileNotFoundError(f"{local} is not an MLflow model directory (no MLmodel file)")
        return ModelSource(source, local)
    import mlflow
    from mlflow.tracking import MlflowClient

    name = version = None
    uri = source
    match = REGISTRY_URI.fullmatch(source)
    if match:  # resolved with an explicit client: no global MLflow state changes
        client = MlflowClient(tracking_uri, tracking_uri)
        name, version, alias = match["name"], match["version"], match["alias"]
        if alias:
            version = str(client.get_model_version_by_alias(name, alias).version)
        uri = client.get_model_version_download_uri(name, version)
    dst = Path(download_dir or tempfile.mkdtemp(prefix="kfmlops-model-"))
    path = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst), tracking_uri=tracking_uri)
    return ModelSource(source, Path(path), name, version, temporary=None if download_dir else dst)


@dataclass(frozen=True)
class ServedModel:
    """A model ready to serve: ``encode(columns) -> arrays`` and ``score(*arrays) -> scores``.

    ``kind``: ``tabular-net``, ``gbdt`` or ``pyfunc``; ``reference(frame)``: the model's own scores
    (its PyTorch / XGBoost / MLflow path), which the served path must match; ``parity``: the largest
    difference the load-time checks found; ``attributor(*arrays) -> Attributions`` on the encoded
    arrays, or None and ``not_explainable`` says why."""

    kind: str
    task: Task
    schema: RequestSchema
    encode: Callable[..., tuple[np.ndarray, ...]]
    score: Callable[..., np.ndarray]
    reference: Callable[[pd.DataFrame], np.ndarray]
    parity: float = 0.0
    attributor: Callable | None = None
    not_explainable: str = ""


def load_served(model_dir: Path, config: ServingConfig) -> ServedModel:
    """Build the :class:`ServedModel` of an MLflow model directory (already verified) and check the
    request path on its input example; a ValueError says what does not fit."""
    from mlflow.models import Model

    from kfmlops import model_contract

    info = model_contract.read_info(model_dir)
    if info is None:
        raise ValueError(
            f"{model_dir}/MLmodel has no kfmlops metadata (metadata.{model_contract.METADATA_KEY}), so its task is "
            "unknown: register it through kfmlops (the import_model step records the task)"
        )
    mlmodel = Model.load(str(model_dir))
    bundle_dir = model_contract.bundle_path(model_dir)
    served = _bundle(bundle_dir, mlmodel, config) if bundle_dir else _generic(model_dir, mlmodel, info.task, config)
    example = mlmodel.load_input_example(str(model_dir))
    if example is None:
        return served
    example = pd.DataFrame(example)
    got = served.score(*served.encode(served.schema.columns_from_v1({"instances": records(example)})))
    diff = max(served.parity, score_diff(served.task, got, served.reference(example)))
    if diff > config.parity_tolerance:
        raise ValueError(
            f"served scores differ from the model's own by {diff:.3g} on its input example "
            f"(> serving.parity_tolerance {config.parity_tolerance})"
        )
    return replace(served, parity=diff)


def _explained(served: ServedModel, native, features: list[str]) -> ServedModel:
    """``served`` with its attribution method, or the reason it has none."""
    from kfmlops.attributions import NotExplainable, attributor

    try:
        return replace(served, attributor=attributor(native, served.task, features))
    except NotExplainable as exc:
        return replace(served, not_explainable=str(exc))


def _bundle(bundle_dir: Path, mlmodel, config: ServingConfig) -> ServedModel:
    from kfmlops.serving.schema import BundleEncoder, signature_of
    from kfmlops.serving.scorer import CompiledNet, GbdtScorer, check_parity, random_inputs
    from kfmlops.train.bundles import load_bundle

    bundle = load_bundle(bundle_dir)
    schema = RequestSchema.for_bundle(bundle.preprocessor, signature_of(mlmodel), config.max_rows)
    encode = BundleEncoder(bundle.preprocessor, schema, config.unseen_categories)

    def reference(frame: pd.DataFrame) -> np.ndarray:
        return bundle.scores({c: frame[c].to_numpy() for c in frame.columns})

    if bundle.kind == "tabular-net":
        net = CompiledNet.of(bundle)
        diff = check_parity(net, bundle.net, *random_inputs(bundle.net, 256), config.parity_tolerance)
        return _explained(ServedModel(bundle.kind, bundle.task, schema, encode, net, reference, diff), bundle, [])
    return _explained(ServedModel(bundle.kind, bundle.task, schema, encode, GbdtScorer(bundle), reference), bundle, [])


def _generic(model_dir: Path, mlmodel, task: Task, config: ServingConfig) -> ServedModel:
    from kfmlops import model_contract
    from kfmlops.serving.schema import FrameEncoder, signature_of
    from kfmlops.serving.scorer import ModelScorer

    loaded = model_contract.load(model_dir, task)
    schema = RequestSchema.for_model(signature_of(mlmodel), loaded.features, config.max_rows)
    served = ServedModel(GENERIC, task, schema, FrameEncoder(schema), ModelScorer(loaded, schema.features), loaded.scores)
    return _explained(served, loaded.native, schema.features)


class Predictor(kserve.Model):
    """``kserve.Model`` serving one kfmlops Model artifact (see the module docstring)."""

    def __init__(
        self, name: str, source: str, config: ServingConfig, tracking_uri: str | None = None, verify_key: bytes | None = None
    ):
        super().__init__(name)
        self.source_uri = source
        self.verify_key = verify_key
        self.config = config
        self.tracking_uri = tracking_uri
        self.source: ModelSource | None = None
        self.served: ServedModel | None = None
        self._rows = REQUEST_ROWS.labels(name)
        self._batcher: MicroBatcher | None = None
        self._online = None

    def load(self) -> bool:
        self.source = resolve_model(self.source_uri, self.tracking_uri)
        try:
            self._load(self.source.model_dir)
        finally:  # everything needed is in memory now
            if self.source.temporary is not None:
                shutil.rmtree(self.source.temporary, ignore_errors=True)
        self.ready = True
        return self.ready

    def _load(self, model_dir: Path) -> None:
        from kfmlops.provenance import verify

        if self.verify_key is not None:  # signature, file digests and gate verdicts, before any byte is loaded
            verify(model_dir, self.verify_key)
        else:
            log.warning("serving %s without verifying its provenance", self.source.uri)
        self.served = load_served(model_dir, self.config)
        if self.config.feature_store is not None:
            from kfmlops.serving.online_features import OnlineFeatures

            self._online = OnlineFeatures.open(self.config.feature_store)
        if self.config.micro_batching:
            batch_rows = BATCH_ROWS.labels(self.name)
            self._batcher = MicroBatcher(
                self.served.score, self.config.batch_max_rows, self.config.batch_wait_ms / 1000, batch_rows.observe
            )
        MODEL_INFO.labels(self.name, self.source.registered_model or "", self.source.version or "").set(1)
        log.info("loaded %s (version %s) as %r: a %s %s model; served path within %.2g of the model's own",
                 self.source.uri, self.source.version, self.name, self.served.task.kind, self.served.kind,
                 self.served.parity)

    async def predict(self, payload, headers=None, response_headers=None):
        served = self.served
        v2 = isinstance(payload, InferRequest)
        if self._online is not None:  # entity keys -> their online features, before the schema checks
            payload = self._online.join_v2(payload, served.schema) if v2 else self._online.join_v1(payload, served.schema)
        columns = served.schema.columns_from_v2(payload.inputs) if v2 else served.schema.columns_from_v1(payload)
        arrays = served.encode(columns)
        self._rows.observe(len(arrays[0]))
        scores = await self._batcher.score(*arrays) if self._batcher else served.score(*arrays)
        self._observe(scores)
        if v2:
            outputs = v2_outputs(served.task, scores, self.config.decision_threshold)
            return InferResponse(payload.id or str(uuid.uuid4()), self.name, outputs)
        return {"predictions": v1_predictions(served.task, scores)}

    async def explain(self, payload, headers=None):
        """Per-row attributions of V1 ``instances``: ``{"method", "output", "base_value", "explanations":
        [{column: attribution}, ...]}`` (multiclass: ``{class: {column: attribution}}`` per row);
        see :meth:`kfmlops.attributions.Attributions.to_json`."""
        served = self.served
        if served.attributor is None:
            raise RequestRejected(f"model {self.name!r} cannot explain rows: {served.not_explainable}; its training "
                                  "run's explain/explanation.json has permutation importance", "not_explainable",
                                  HTTPStatus.NOT_IMPLEMENTED)
        columns = served.schema.columns_from_v1(payload)
        rows = len(next(iter(columns.values())))
        limit = self.config.explain_max_rows
        if rows > limit:
            raise RequestRejected(f"instances has {rows} rows; :explain takes at most {limit} per request "
                                  "(serving.explain_max_rows, from explain.serving_max_rows)", "too_large")
        return served.attributor(*served.encode(columns)).to_json()

    def _observe(self, scores: np.ndarray) -> None:
        """The prediction distribution's metrics (see :mod:`kfmlops.serving.metrics`)."""
        task = self.served.task
        if not task.is_classification:
            return
        labels, counts = np.unique(predicted_labels(task, scores, self.config.decision_threshold), return_counts=True)
        for label, count in zip(labels.tolist(), counts.tolist()):
            PREDICTED_CLASS.labels(self.name, label).inc(count)
        if task.kind == "binary":
            probability = PREDICTED_PROBABILITY.labels(self.name)
            for p in scores[:, 1].tolist():
                probability.observe(p)

    def get_input_types(self) -> list[dict]:
        return self.served.schema.input_types()

    def get_output_types(self) -> list[dict]:
        return output_types(self.served.task)


def records(frame) -> list[dict]:
    """A DataFrame as JSON-ready V1 rows: missing values become None (JSON null)."""
    return frame.astype(object).where(frame.notna(), None).to_dict("records")
