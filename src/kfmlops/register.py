"""Register: a Model artifact in, a registered MLflow model version with lineage, task and aliases out.

Consumes the Model artifact (an MLflow model directory of any framework, see
:mod:`kfmlops.model_contract`), the data's :class:`~kfmlops.tasks.Task`, the MLflow run the
pipeline logs to, a :class:`Lineage` (dataset fingerprint, config hash, code commit, pipeline run
id, test metrics, the primary metric, every gate's verdict and the URIs of the train and test
snapshots, :mod:`kfmlops.snapshots`), a few test rows without the label
and an Ed25519 signing key. A copy of the model directory must score those rows for the task
(a model of another task, other classes or other columns is refused); a model without kfmlops
metadata gets it (the task, its columns, trainer ``imported``) and one without a column signature
gets one inferred from the rows. The copy is signed as a whole: ``provenance.json`` at its top
holds the lineage, the residency verdicts and the SHA-256 of every other file
(:mod:`kfmlops.provenance`), so a changed, added or removed file fails verification. The directory
is logged as the run's ``model`` artifact and registered as a new version, tagged with the
lineage and the task (``kfmlops.task``, ``kfmlops.label``, ``kfmlops.classes``, ``kfmlops.trainer``,
``kfmlops.primary_metric``), tagged with what its model card says it is for (``kfmlops.card.intended_use``,
``kfmlops.card.limitations``, from :class:`~kfmlops.config.ModelCardConfig`) and given the ``challenger`` alias. :func:`promote` moves ``champion``
to a version and records the version it replaced, so a rollback knows where to go.
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
from kfmlops.config import MlflowConfig, ModelCardConfig
from kfmlops.tasks import Task

CHALLENGER = "challenger"
CHAMPION = "champion"
TAG_PREFIX = "kfmlops."
PREVIOUS_CHAMPION_TAG = TAG_PREFIX + "previous_champion"
DEPLOY_STATUS_TAG = TAG_PREFIX + "deploy.status"  # written by kfmlops.serving.deploy
DEPLOY_REASONS_TAG = TAG_PREFIX + "deploy.reasons"
TASK_TAG = TAG_PREFIX + "task"
LABEL_TAG = TAG_PREFIX + "label"
CLASSES_TAG = TAG_PREFIX + "classes"
TRAINER_TAG = TAG_PREFIX + "trainer"
PRIMARY_METRIC_TAG = TAG_PREFIX + "primary_metric"
CARD_TAG = TAG_PREFIX + "card"  # written by kfmlops.model_card.attach: where the card is
CARD_HTML_TAG = CARD_TAG + ".html"
INTENDED_USE_TAG = CARD_TAG + ".intended_use"
LIMITATIONS_TAG = CARD_TAG + ".limitations"
SNAPSHOT_TAG_PREFIX = TAG_PREFIX + "snapshot."  # + train / test: where the split's snapshot is (kfmlops.snapshots)
TAG_LIMIT = 5000  # MLflow's limit on a tag value
MODEL_ARTIFACT = "model"
"""Where in the pipeline's MLflow run the registered model directory is logged."""
EXAMPLE_ROWS = 5


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
    primary_metric: str | None = None
    tuning: dict[str, str] | None = None
    """The search that picked the train settings, as :mod:`kfmlops.tune` tags it (``kfmlops.tuning.*``:
    space digest, budget, best trial and value); None when the settings were not tuned."""
    snapshots: dict[str, str] | None = None  # split -> snapshot URI (kfmlops.snapshots)

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
        if self.primary_metric:
            tags["primary_metric"] = self.primary_metric
        tags |= {f"snapshot.{split}": uri for split, uri in (self.snapshots or {}).items()}
        tags = {TAG_PREFIX + k: v for k, v in tags.items()} | dict(self.tuning or {})
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


def task_tags(task: Task, trainer: str) -> dict[str, str]:
    """The tags that record a version's task (kind, label, classes as JSON) and trainer."""
    return {TASK_TAG: task.kind, LABEL_TAG: task.label, CLASSES_TAG: json.dumps(list(task.classes))[:TAG_LIMIT],
            TRAINER_TAG: trainer}


def card_tags(card: ModelCardConfig) -> dict[str, str]:
    """The tags that record what a version's model card says about its use (the fields that are set)."""
    fields = {INTENDED_USE_TAG: card.intended_use, LIMITATIONS_TAG: card.limitations}
    return {tag: text[:TAG_LIMIT] for tag, text in fields.items() if text}


def register(
    model_dir: str | Path,
    run_id: str,
    mlflow_config: MlflowConfig,
    lineage: Lineage,
    input_example: pd.DataFrame,
    *,
    task: Task,
    signing_key: bytes,
    residency: dict[str, Any] | None = None,
    extra_tags: dict[str, str] | None = None,
    card: ModelCardConfig = ModelCardConfig(),
) -> ModelVersionRef:
    """Check, complete and sign a copy of the model directory, log it into ``run_id``, register a new
    version, tag it and alias it ``challenger`` (see the module docstring). ``input_example``: test
    rows without the label; ``residency``: the policy and verdicts recorded in the provenance;
    ``extra_tags``: more tags for the version; ``card``: the intended use and limitations its model card states."""
    import mlflow

    from kfmlops.provenance import sign_model_dir
    from kfmlops.tracking import client, use

    use(mlflow_config)
    name = mlflow_config.model_name
    with tempfile.TemporaryDirectory(prefix="kfmlops-register-") as tmp:
        copy = Path(tmp) / MODEL_ARTIFACT
        shutil.copytree(model_dir, copy)
        info = complete_model_dir(copy, task, input_example)
        signed = sign_model_dir(copy, lineage.provenance(name, run_id, residency), signing_key)
        with mlflow.start_run(run_id=run_id):
            mlflow.log_artifacts(str(copy), MODEL_ARTIFACT)
    tags = {**lineage.tags(), **task_tags(info.task, info.trainer), **card_tags(card),
            TAG_PREFIX + "provenance_key_id": signed.key_id, **(extra_tags or {})}
    version = str(mlflow.register_model(f"runs:/{run_id}/{MODEL_ARTIFACT}", name, tags=tags).version)
    client(mlflow_config).set_registered_model_alias(name, CHALLENGER, version)
    return ModelVersionRef(name, version, f"models:/{name}/{version}")


def complete_model_dir(model_dir: Path, task: Task, rows: pd.DataFrame):
    """Check that the MLflow model at ``model_dir`` scores ``rows`` for ``task``; record kfmlops
    metadata and a column signature where it has none. Produces its :class:`~kfmlops.model_contract.ModelInfo`."""
    from mlflow.models import Model, infer_signature

    from kfmlops import model_contract

    loaded = model_contract.load(model_dir, task)
    features = loaded.features or list(rows.columns)
    example = rows[features].head(EXAMPLE_ROWS).reset_index(drop=True)
    loaded.scores(example)
    info = model_contract.read_info(model_dir)
    if info is None:
        info = model_contract.ModelInfo(task, features, "imported")
        model_contract.with_info(model_dir, info)
    mlmodel = Model.load(str(model_dir))
    if mlmodel.signature is None:
        mlmodel.signature = infer_signature(example)
        mlmodel.save(str(model_dir / model_contract.MLMODEL))
    return info


def aliases(mlflow_config: MlflowConfig) -> dict[str, str]:
    """Alias -> version of the registered model (versions as str: sqlite gives ints, REST strings); {} if none."""
    from mlflow.exceptions import MlflowException

    from kfmlops.tracking import client

    try:
        model = client(mlflow_config).get_registered_model(mlflow_config.model_name)
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
    from kfmlops.tracking import client

    previous = current_champion(mlflow_config)
    registry = client(mlflow_config)
    name = mlflow_config.model_name
    registry.set_model_version_tag(name, version, PREVIOUS_CHAMPION_TAG, previous or "none")
    registry.set_registered_model_alias(name, CHAMPION, version)
    return Promotion(name, str(version), previous)
