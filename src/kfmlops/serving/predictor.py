"""The KServe predictor: a kfmlops model from MLflow (or a local model directory) behind ``kserve.Model``.

:func:`resolve_model` finds the model: a registry URI (``models:/NAME@ALIAS`` or
``models:/NAME/VERSION``; an alias is resolved to its version first, so a moving alias cannot
change the model mid-load), any other MLflow artifact URI, or a local MLflow model directory such
as the ``/mnt/models`` that KServe's storage initializer fills. :class:`Predictor` loads it once
(the bundle named by the MLmodel file's ``python_function`` ``bundle`` artifact, and the
signature), verifies the bundle's signed provenance (:func:`kfmlops.provenance.verify`: signature,
file digests, every gate passed) when given the verify key, compiles the network (:mod:`kfmlops.serving.scorer`) and checks the compiled pass
against the PyTorch model before it reports ready.

``predict`` takes KServe's decoded V1 body (``{"instances": [...]}``) or V2 ``InferRequest``
(one input per column) and answers ``{"predictions": [p, ...]}`` or an ``InferResponse`` with one
``probability`` output (FP64), ``p = P(label = 1)`` per row. Invalid input raises
:class:`~kfmlops.serving.schema.RequestRejected` (a 4xx naming the field).
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import kserve
import numpy as np
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from kfmlops.serving.batching import MicroBatcher
from kfmlops.serving.config import ServingConfig
from kfmlops.serving.metrics import BATCH_ROWS, MODEL_INFO, REQUEST_ROWS
from kfmlops.serving.schema import RequestSchema
from kfmlops.serving.scorer import CompiledNet, check_parity, random_inputs

log = logging.getLogger(__name__)

REGISTRY_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w.-]+))/?")
OUTPUT = "probability"


@dataclass(frozen=True)
class ModelSource:
    """Where the served model came from: ``model_dir`` is a local MLflow model directory."""

    uri: str
    model_dir: Path
    registered_model: str | None = None
    version: str | None = None
    temporary: Path | None = None  # the download folder to remove once the model is in memory


def resolve_model(source: str, tracking_uri: str | None = None, download_dir: str | Path | None = None) -> ModelSource:
    """A model URI or local directory -> a local MLflow model directory (downloaded when remote)."""
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


class Predictor(kserve.Model):
    """``kserve.Model`` serving one kfmlops model (see the module docstring)."""

    def __init__(
        self, name: str, source: str, config: ServingConfig, tracking_uri: str | None = None, verify_key: bytes | None = None
    ):
        super().__init__(name)
        self.source_uri = source
        self.verify_key = verify_key
        self.config = config
        self.tracking_uri = tracking_uri
        self.source: ModelSource | None = None
        self.schema: RequestSchema | None = None
        self.net: CompiledNet | None = None
        self._rows = REQUEST_ROWS.labels(name)
        self._batcher: MicroBatcher | None = None

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
        from mlflow.models import Model

        from kfmlops.provenance import verify
        from kfmlops.pyfunc import BUNDLE_ARTIFACT
        from kfmlops.train.model import ModelBundle

        mlmodel = Model.load(model_dir)
        try:
            bundle_path = mlmodel.flavors["python_function"]["artifacts"][BUNDLE_ARTIFACT]["path"]
        except KeyError:
            raise ValueError(f"{model_dir}/MLmodel has no python_function '{BUNDLE_ARTIFACT}' artifact") from None
        if self.verify_key is not None:  # signature, file digests and gate verdicts, before any byte is loaded
            verify(model_dir / bundle_path, self.verify_key)
        else:
            log.warning("serving %s without verifying its provenance", self.source.uri)
        bundle = ModelBundle.load(model_dir / bundle_path)
        signature = None
        if mlmodel.signature is not None:
            signature = [(c.name, c.type.name, c.required) for c in mlmodel.signature.inputs.inputs]
        self.schema = RequestSchema.from_model(
            bundle.preprocessor, signature, self.config.unseen_categories, self.config.max_rows
        )
        self.net = CompiledNet(bundle.net)
        diff = check_parity(self.net, bundle.net, *random_inputs(bundle.net, 256), self.config.parity_tolerance)
        example = mlmodel.load_input_example(model_dir)
        if example is not None:  # the request path end to end, against the bundle's own predict_proba
            columns = self.schema.columns_from_v1({"instances": records(example)})
            expected = bundle.predict_proba({c: example[c].to_numpy() for c in example.columns})
            diff = max(diff, float(np.max(np.abs(self.net(*self.schema.encode(columns)) - expected))))
            if diff > self.config.parity_tolerance:
                raise ValueError(f"served predictions differ from the model's by {diff:.3g} on its input example")
        if self.config.micro_batching:
            batch_rows = BATCH_ROWS.labels(self.name)
            self._batcher = MicroBatcher(
                self.net, self.config.batch_max_rows, self.config.batch_wait_ms / 1000, batch_rows.observe
            )
        MODEL_INFO.labels(self.name, self.source.registered_model or "", self.source.version or "").set(1)
        log.info("loaded %s (version %s) as %r; compiled pass within %.2g of PyTorch", self.source.uri, self.source.version, self.name, diff)

    async def predict(self, payload, headers=None, response_headers=None):
        v2 = isinstance(payload, InferRequest)
        columns = self.schema.columns_from_v2(payload.inputs) if v2 else self.schema.columns_from_v1(payload)
        codes, numbers = self.schema.encode(columns)
        self._rows.observe(len(codes))
        probabilities = await self._batcher.score(codes, numbers) if self._batcher else self.net(codes, numbers)
        if v2:
            output = InferOutput(OUTPUT, [len(probabilities)], "FP64", probabilities.tolist())
            return InferResponse(payload.id or str(uuid.uuid4()), self.name, [output])
        return {"predictions": probabilities.tolist()}

    def get_input_types(self) -> list[dict]:
        return self.schema.input_types()

    def get_output_types(self) -> list[dict]:
        return [{"name": OUTPUT, "datatype": "FP64", "shape": [-1]}]


def records(frame) -> list[dict]:
    """A DataFrame as JSON-ready V1 rows: missing values become None (JSON null)."""
    return frame.astype(object).where(frame.notna(), None).to_dict("records")
