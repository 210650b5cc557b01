"""Register: a trained bundle in, a registered MLflow model version with lineage and aliases out.

Consumes the model bundle from :mod:`kfmlops.train`, the MLflow run the training logged to, a
:class:`Lineage` (dataset fingerprint, config hash, code commit, pipeline run id, test metrics and
every gate's verdict) and an Ed25519 signing key. Produces a new version of the registered model,
logged as a pyfunc that takes raw rows and returns probabilities, with signature and input
example, tagged with the lineage and given the ``challenger`` alias. The bundle inside it carries
``provenance.json``: the lineage, the residency verdicts and the SHA-256 of every file, signed
(see :mod:`kfmlops.provenance`). :func:`promote` moves ``champion`` to a version and
records the version it replaced, so a rollback knows where to go.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from kfmlops import __version__
from kfmlops.config import MlflowConfig

CHALLENGER = "challenger"
CHAMPION = "champion"
TAG_PREFIX = "kfmlops."
PREVIOUS_CHAMPION_TAG = TAG_PREFIX + "previous_champion"
DEPLOY_STATUS_TAG = TAG_PREFIX + "deploy.status"  # written by kfmlops.serving.deploy
DEPLOY_REASONS_TAG = TAG_PREFIX + "deploy.reasons"
TAG_LIMIT = 5000  # MLflow's limit on a tag value


def gate_tags(gate: str, passed: bool, reasons: list[str] | None = None) -> dict[str, str]:
    """The tags that record a gate's verdict, on the pipeline's MLflow run and on the model version."""
    tags = {f"{TAG_PREFIX}gate.{gate}.passed": str(passed).lower()}
    if reasons is not None:
        tags[f"{TAG_PREFIX}gate.{gate}.reasons"] = json.dumps(reasons)[:TAG_LIMIT]
    return tags


@dataclass(frozen=True)
class GateVerdict:
    passed: bool
    reasons: list[str]


@dataclass(frozen=True)
class Lineage:
    dataset_fingerprint: str
    config_hash: str
    train_data: str
    code_commit: str | None = None
    pipeline_run_id: str | None = None
    metrics: dict[str, float] | None = None
    gates: dict[str, GateVerdict] | None = None

    @property
    def all_gates_passed(self) -> bool:
        return all(g.passed for g in (self.gates or {}).values())

    def tags(self) -> dict[str, str]:
        tags = {
            "dataset_fingerprint": self.dataset_fingerprint,
            "config_hash": self.config_hash,
            "train_data": self.train_data,
            "code_commit": self.code_commit or "unknown",
            "pipeline_run_id": self.pipeline_run_id or "none",
            "package_version": __version__,
            "all_gates_passed": str(self.all_gates_passed).lower(),
        }
        tags |= {f"metric.{k}": f"{v:.6g}" for k, v in (self.metrics or {}).items()}
        tags = {TAG_PREFIX + k: v for k, v in tags.items()}
        for name, gate in (self.gates or {}).items():
            tags |= gate_tags(name, gate.passed, gate.reasons)
        return tags

    def provenance(self, model_name: str, run_id: str, residency: dict[str, Any] | None):
        """The record to sign; the artifact digests are filled in when the bundle is signed."""
        from kfmlops.provenance import Provenance

        return Provenance(
            model_name=model_name,
            dataset_fingerprint=self.dataset_fingerprint,
            code_commit=self.code_commit,
            config_hash=self.config_hash,
            pipeline_run_id=self.pipeline_run_id or run_id,
            metrics=dict(self.metrics or {}),
            gates={name: {"passed": g.passed, "reasons": list(g.reasons)} for name, g in (self.gates or {}).items()},
            residency=residency or {},
        )


@dataclass(frozen=True)
class ModelVersionRef:
    name: str
    version: str
    model_uri: str


@dataclass(frozen=True)
class Promotion:
    name: str
    version: str
    previous_champion: str | None


def code_commit() -> str | None:
    """The source commit: ``$KFMLOPS_GIT_COMMIT`` (set in the image), else ``git`` in the source tree."""
    if os.environ.get("KFMLOPS_GIT_COMMIT"):
        return os.environ["KFMLOPS_GIT_COMMIT"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def register(
    model_dir: str | Path,
    run_id: str,
    mlflow_config: MlflowConfig,
    lineage: Lineage,
    input_example: pd.DataFrame,
    *,
    signing_key: bytes,
    residency: dict[str, Any] | None = None,
) -> ModelVersionRef:
    """Sign a copy of the bundle, log it as a pyfunc into ``run_id``, register a new version, tag it
    and alias it ``challenger``. ``residency`` is the policy and verdicts recorded in the provenance."""
    import mlflow
    from mlflow.models import infer_signature
    from mlflow.tracking import MlflowClient

    from kfmlops import mlflow_model
    from kfmlops.provenance import sign_model_dir
    from kfmlops.pyfunc import BUNDLE_ARTIFACT
    from kfmlops.tracking import use
    from kfmlops.train.model import ModelBundle

    use(mlflow_config)
    example = input_example.head(5).reset_index(drop=True)
    bundle = ModelBundle.load(model_dir)
    signature = infer_signature(example, bundle.predict_proba({c: example[c].to_numpy() for c in example.columns}))
    with tempfile.TemporaryDirectory(prefix="kfmlops-register-") as tmp, mlflow.start_run(run_id=run_id):
        bundle_dir = Path(tmp) / BUNDLE_ARTIFACT
        shutil.copytree(model_dir, bundle_dir)
        signed = sign_model_dir(bundle_dir, lineage.provenance(mlflow_config.model_name, run_id, residency), signing_key)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=mlflow_model.__file__,
            artifacts={BUNDLE_ARTIFACT: str(bundle_dir)},
            signature=signature,
            input_example=example,
            pip_requirements=[f"kfmlops=={__version__}"],
            registered_model_name=mlflow_config.model_name,
        )
    client = MlflowClient()
    version = str(info.registered_model_version)
    client.set_model_version_tag(mlflow_config.model_name, version, TAG_PREFIX + "provenance_key_id", signed.key_id)
    for key, value in lineage.tags().items():
        client.set_model_version_tag(mlflow_config.model_name, version, key, value)
    client.set_registered_model_alias(mlflow_config.model_name, CHALLENGER, version)
    return ModelVersionRef(mlflow_config.model_name, version, f"models:/{mlflow_config.model_name}/{version}")


def aliases(mlflow_config: MlflowConfig) -> dict[str, str]:
    """Alias -> version of the registered model (versions as str: sqlite gives ints, REST strings); {} if none."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from kfmlops.tracking import tracking_uri

    try:
        model = MlflowClient(tracking_uri(mlflow_config)).get_registered_model(mlflow_config.model_name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return {}
        raise
    return {alias: str(version) for alias, version in model.aliases.items()}


def current_champion(mlflow_config: MlflowConfig) -> str | None:
    """The version the ``champion`` alias points at; None when there is no such model or alias."""
    return aliases(mlflow_config).get(CHAMPION)


def promote(mlflow_config: MlflowConfig, version: str) -> Promotion:
    """Point ``champion`` at ``version``; the replaced champion is recorded on the new version."""
    from mlflow.tracking import MlflowClient

    from kfmlops.tracking import tracking_uri

    previous = current_champion(mlflow_config)
    client = MlflowClient(tracking_uri(mlflow_config))
    name = mlflow_config.model_name
    client.set_model_version_tag(name, version, PREVIOUS_CHAMPION_TAG, previous or "none")
    client.set_registered_model_alias(name, CHAMPION, version)
    return Promotion(name, str(version), previous)
