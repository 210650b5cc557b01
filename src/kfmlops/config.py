"""Typed settings for every lifecycle stage, validated once at the boundary.

A pipeline run is described by a :class:`PipelineConfig`: a :class:`DataSpec` (what the data is:
where it lives, which column is the label, which columns are sensitive) and :class:`Settings` (how
each stage behaves). Both load from one YAML file (``PipelineConfig.from_yaml``) and travel to KFP
components as JSON (``model_dump(mode="json")``); each component validates what it receives back
into these models, so a typo in a setting fails at the start of the step that reads it, naming the
field.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from kfmlops.residency import ResidencyPolicy
from kfmlops.serving.config import DeployConfig, FeatureStoreRef
from kfmlops.typed import SettingsModel, load_yaml, parse, resolve_path

TaskKind = Literal["binary", "multiclass", "regression"]


class FeatureStoreSource(FeatureStoreRef):
    """Training data as a Feast feature store's point-in-time join (:mod:`kfmlops.feature_store`):
    ``data.source`` (and ``data.test_source``) are entity tables, each row an entity's join keys, its
    event time and its label; the feature service's features are joined onto each row as they were
    at its event time."""

    timestamp_column: str = Field(
        default="event_timestamp",
        min_length=1,
        description="The entity table's event time column (as named in the file); naive times are read as UTC.",
    )
    keep_columns: list[str] = Field(
        default=[],
        description="Join keys to keep as model features; the event time and the other join keys are dropped "
        "from the training table.",
    )


class DataSpec(SettingsModel):
    """What the data is: the only settings most users change (they are pipeline parameters)."""

    source: str = Field(
        description="Training data: a local path or an fsspec/pyarrow URI (CSV, Parquet, JSON Lines), or a database "
        "table or query: postgresql://user@host:port/db?table=schema.name or ...?query=SELECT ... (kfmlops.warehouse)."
    )
    test_source: str | None = Field(
        default=None, description="Held-out test data in the same layout; when unset the test split is cut from source."
    )
    label: str = Field(description="The label column (raw or normalised name).")
    task: TaskKind | None = Field(
        default=None,
        description="binary, multiclass or regression; unset: inferred from the label's values (the run summary "
        "says what was inferred and why).",
    )
    positive_labels: list[str | int | bool] = Field(
        default=[1, True, "1"],
        description="Binary task: label values that mean the positive class; every other value is negative. When "
        "no value of the label is in the list, the last of its two values in sorted order is positive.",
    )
    negative_labels: list[str | int | bool] | None = Field(
        default=None,
        description="Label values that mean the negative class; when set, a label value in neither list fails "
        "ingest instead of counting as negative.",
    )
    sensitive_features: list[str] = Field(default=[], description="Columns the fairness gate slices by.")
    feature_store: FeatureStoreSource | None = Field(
        default=None,
        description="Join features from a Feast feature service onto the source's entity rows at their event "
        "times; unset: the source holds every feature.",
    )

    @field_validator("source", "test_source")
    @classmethod
    def _no_password(cls, v: str | None) -> str | None:
        if v is not None and "://" in v:
            try:
                password = urlsplit(v).password
            except ValueError:  # a malformed port: the step that reads it says so
                password = None
            if password is not None:
                raise PydanticCustomError(
                    "password_in_uri",
                    "the URI holds a password, which would be recorded in lineage and logs: remove it and give it "
                    "through $PGPASSWORD or ingest.warehouse.password_file (a mounted Secret)",
                )
        return v

    @field_validator("positive_labels")
    @classmethod
    def _non_empty(cls, v: list) -> list:
        if not v:
            raise ValueError("positive_labels must name at least one label value")
        return v

    @model_validator(mode="after")
    def _classes_disjoint(self) -> "DataSpec":
        both = [v for v in self.negative_labels or [] if v in self.positive_labels]
        if both:
            raise ValueError(f"negative_labels and positive_labels both hold {both}")
        return self

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> "DataSpec":
        return parse(cls, raw, "data")

    def to_parameter(self) -> dict[str, Any]:
        """The data spec as a KFP pipeline parameter: JSON without unset fields (KFP parameters
        cannot hold null, and an optional parameter left unset fails in kfp.local and on the
        KFP backend alike, kubeflow/pipelines#11667). Fields left at their default are left out too, so
        the step that parses it back sees what was set (a set ``positive_labels`` means a binary task)."""
        return self.model_dump(mode="json", exclude_none=True, exclude_unset=True)


class WarehouseConfig(SettingsModel):
    """How a database source (``postgresql://...``, see :mod:`kfmlops.warehouse`) is connected to. The
    password never sits in the config: it comes from a mounted Secret file or an environment variable."""

    password_env: str = Field(
        default="PGPASSWORD", min_length=1,
        description="Environment variable holding the database password (a Secret as env); read when "
        "password_file is unset. Neither set: libpq's own lookup (~/.pgpass, trust).",
    )
    password_file: str | None = Field(
        default=None, description="File holding the database password (a mounted Secret); wins over password_env."
    )
    connect_timeout_s: int = Field(
        default=10, ge=1, description="Seconds to wait for the database to answer before ingest fails (libpq's "
        "connect_timeout; a connect_timeout in the URI wins)."
    )


class SnapshotConfig(SettingsModel):
    """Where the content-addressed train/test snapshots of every run go (:mod:`kfmlops.snapshots`) and how
    many are kept."""

    directory: str | None = Field(
        default=None,
        description="Folder or URI (s3://, gs://, ...) of the snapshots; unset: $KFMLOPS_HOME/snapshots, beside the "
        "local registry store. On a cluster, storage every step reaches (the artifact store's bucket, a shared volume).",
    )
    keep_last: int | None = Field(
        default=None, ge=0,
        description="Keep at most this many of the newest snapshots that no protected version points at; "
        "None: keep every snapshot.",
    )
    keep_registered: bool = Field(
        default=True,
        description="True: a snapshot any registered version points at is never pruned. False: only the versions "
        "with an alias (champion, challenger) protect theirs; the others count against keep_last.",
    )


class IngestConfig(SettingsModel):
    format: Literal["auto", "csv", "parquet", "jsonl"] = "auto"
    delimiter: str = Field(default=",", min_length=1, max_length=1)
    na_values: list[str] = ["", "?", "NA", "N/A", "NaN", "null"]
    test_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)
    seed: int = 42
    block_size_bytes: int = Field(
        default=16 << 20, ge=1 << 16,
        description="CSV/JSON read block, and the size of the batches a database sends; bounds memory.",
    )
    block_rows: int = Field(
        default=65_536, ge=1, description="Most rows per record batch read from Parquet files and databases."
    )
    drop_columns: list[str] = []
    warehouse: WarehouseConfig = WarehouseConfig()


class Expectation(SettingsModel):
    """One Great Expectations expectation, by its snake_case name, e.g. ``expect_column_values_to_be_between``."""

    type: str = Field(pattern=r"^expect_[a-z_]+$")
    kwargs: dict[str, Any] = {}
    severity: Literal["error", "warning"] = "error"


class ValidateConfig(SettingsModel):
    expectations: list[Expectation] = []
    infer_from_train: bool = Field(
        default=True, description="Add a suite inferred from the train split (types, ranges, category sets, null rates)."
    )
    inferred_severity: Literal["error", "warning"] = "warning"
    category_mostly: float = Field(default=0.99, gt=0.0, le=1.0)
    null_rate_tolerance: float = Field(default=0.05, ge=0.0, le=1.0)
    range_margin: float = Field(default=0.1, ge=0.0, description="Inferred numeric ranges widen by this share of the span.")


class GbdtConfig(SettingsModel):
    """The ``gbdt`` trainer: XGBoost's histogram trees, early-stopped on the validation split."""

    max_rounds: int = Field(default=2000, ge=1, description="Most boosting rounds; early stopping usually ends sooner.")
    learning_rate: float = Field(default=0.05, gt=0.0, le=1.0)
    max_depth: int = Field(default=6, ge=0, description="0: no limit (with grow_policy lossguide).")
    min_child_weight: float = Field(default=1.0, ge=0.0)
    subsample: float = Field(default=0.8, gt=0.0, le=1.0)
    colsample_bytree: float = Field(default=0.8, gt=0.0, le=1.0)
    reg_lambda: float = Field(default=1.0, ge=0.0)
    max_bin: int = Field(default=256, ge=2)
    early_stopping_rounds: int = Field(default=50, ge=1)
    threads: int | None = Field(default=None, ge=1, description="CPU threads (None: XGBoost's default, every core).")


class TrainConfig(SettingsModel):
    trainer: str = Field(
        default="gbdt",
        pattern=r"^(tabular-net|gbdt|[A-Za-z_][\w.]*:[A-Za-z_]\w*)$",
        description="gbdt (XGBoost; the default: the only trainer within 0.01 ROC AUC / macro F1 and 2% RMSE of the "
        "best scikit-learn baseline on all four benchmark sets, benchmarks/README.md), tabular-net (PyTorch: DDP "
        "across ranks and nodes, GPUs), or a user function 'package.module:fit' (see kfmlops.train.user).",
    )
    params: dict[str, Any] = Field(default={}, description="Hyperparameters passed to a user trainer's fit function.")
    gbdt: GbdtConfig = GbdtConfig()
    hidden_units: list[int] = [128, 64]
    max_embedding_dim: int = Field(default=16, ge=1)
    min_category_count: int = Field(default=5, ge=1, description="Rarer categories map to the unknown bucket.")
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0)
    epochs: int = Field(default=200, ge=1, description="Most epochs; early stopping on the validation split usually ends sooner.")
    patience: int = Field(
        default=8, ge=1, description="Stop after this many epochs without a better validation loss (once min_steps are done)."
    )
    min_steps: int = Field(default=300, ge=0, description="Optimizer steps taken before early stopping may stop training.")
    class_weight: Literal["balanced", "none"] = Field(
        default="balanced", description="Classification: weight each class's loss by its inverse frequency, or not."
    )
    batch_size: int = Field(default=512, ge=1, description="Global batch: every step, all ranks together see this many rows.")
    learning_rate: float = Field(default=2e-3, gt=0.0, description="Peak learning rate at lr_base_batch_size rows per batch.")
    lr_scaling: Literal["sqrt", "linear", "none"] = Field(
        default="sqrt",
        description="How the learning rate grows with batch_size / lr_base_batch_size: 'sqrt' (Adam's rule), 'linear' "
        "(Goyal et al.'s rule for SGD), or 'none'.",
    )
    lr_base_batch_size: int = Field(default=512, ge=1, description="The batch size learning_rate was tuned at.")
    weight_decay: float = Field(default=1e-4, ge=0.0)
    validation_fraction: float = Field(default=0.1, gt=0.0, lt=1.0)
    seed: int = 42
    processes: int = Field(
        default=1,
        ge=1,
        description="Local ranks train() starts; more than 1 runs DDP (gloo on CPU, NCCL on GPU). A cluster job's "
        "ranks come from its nodes and processes per node instead.",
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    exclude_features: list[str] = Field(default=[], description="Columns never fed to the model.")
    checkpoint_dir: str | None = Field(
        default=None,
        description="Keep a resumable checkpoint here after every epoch; a rerun (or a torchrun restart) resumes "
        "from it. With several nodes it must be on storage every rank sees.",
    )
    checkpoint_every_steps: int | None = Field(
        default=None, ge=1, description="Also checkpoint every this many steps within an epoch (None: at epoch ends only)."
    )
    compile: bool = Field(default=False, description="torch.compile the network (worth it on GPUs; needs a C++ compiler on CPU).")
    cpu_threads: int | None = Field(
        default=None,
        ge=1,
        description="Intra-op threads of each rank on CPU (None: torch's default; the local launcher gives each rank "
        "cores / processes). 1 is fastest for small batches on a busy machine.",
    )


class FloatRange(SettingsModel):
    """A float drawn between ``low`` and ``high`` (inclusive), uniformly or on a log scale."""

    type: Literal["float"]
    low: float
    high: float
    log: bool = Field(default=False, description="Draw on a log scale (low must be above 0).")


class IntRange(SettingsModel):
    """An integer drawn from ``low, low + step, ..., high``."""

    type: Literal["int"]
    low: int
    high: int
    step: int = Field(default=1, ge=1)
    log: bool = Field(default=False, description="Draw on a log scale (low must be above 0; step 1 only).")


class Choice(SettingsModel):
    """One of ``choices``: any values the setting takes (strings, numbers, lists such as hidden_units)."""

    type: Literal["categorical"]
    choices: list[Any] = Field(min_length=1)


SearchParameter = Annotated[FloatRange | IntRange | Choice, Field(discriminator="type")]


class TuningConfig(SettingsModel):
    """Hyperparameter search over ``train`` settings (:mod:`kfmlops.tune`): Optuna's TPE, trial 0 the
    settings as given, every trial scored on the validation slice of the train split."""

    space: dict[str, SearchParameter] = Field(
        default={},
        description="Dotted paths into the train settings (gbdt.learning_rate, hidden_units, trainer, params.C) "
        "-> a float or int range or a categorical choice.",
    )
    n_trials: int = Field(default=0, ge=0, description="Trials in all, the default included (0: no tuning).")
    parallelism: int = Field(default=1, ge=1, description="Worker processes running trials at once; each trial gets "
                                                            "cores / parallelism threads.")
    timeout_seconds: float | None = Field(
        default=None, gt=0, description="Start no trial after this long (a running trial finishes; None: no limit)."
    )
    pruner: bool = Field(default=True, description="Stop trials whose validation metric trails the median of earlier "
                                                   "trials at the same step (gbdt: every 10 rounds; tabular-net: every "
                                                   "epoch; user trainers are never pruned).")
    pruner_startup_trials: int = Field(default=3, ge=0, description="Trials finished before any trial is pruned.")
    pruner_warmup_steps: int = Field(
        default=100, ge=0,
        description="Steps of a trial before it may be pruned: gbdt boosting rounds, tabular-net epochs (lower it for "
        "tabular-net). Early rounds favour high learning rates: on Adult, 10 picked a worse model than 100 "
        "(benchmarks/README.md).",
    )
    seed: int = 0

    @field_validator("space")
    @classmethod
    def _paths_exist(cls, space: dict[str, Any]) -> dict[str, Any]:
        for path, parameter in space.items():
            _check_search_parameter(path, parameter)
        return space

    @model_validator(mode="after")
    def _space_when_tuning(self) -> "TuningConfig":
        if self.n_trials and not self.space:
            raise ValueError(f"n_trials is {self.n_trials} but the search space is empty: name the settings to tune in "
                             "tuning.space")
        return self


class EvaluateConfig(SettingsModel):
    decision_threshold: float = Field(
        default=0.5, gt=0.0, lt=1.0, description="Binary task: P(positive) at or above which the prediction is positive."
    )
    primary_metric: str | None = Field(
        default=None,
        description="The metric the blessing compares (None: roc_auc for binary, macro_f1 for multiclass, rmse for "
        "regression); its direction comes from kfmlops.tasks.",
    )
    limits: dict[str, float] = Field(
        default={},
        description="Absolute bounds on test metrics, each in its metric's direction: {roc_auc: 0.85} needs at least "
        "0.85, {rmse: 4.0} at most 4.0.",
    )
    min_baseline_improvement: float = Field(
        default=0.05,
        ge=0.0,
        lt=1.0,
        description="The candidate must close at least this share of the gap between the trivial baseline (the prior "
        "or the mean) and a perfect score on the primary metric.",
    )
    max_regression: float = Field(
        default=0.01, ge=0.0, description="Largest allowed worsening of the primary metric against the current champion."
    )


class FairnessConfig(SettingsModel):
    """Thresholds of the fairness gate; None (the default) leaves a figure reported but not gated."""

    max_demographic_parity_difference: float | None = Field(default=None, ge=0.0, le=1.0)
    min_demographic_parity_ratio: float | None = Field(default=None, ge=0.0, le=1.0)
    max_equalized_odds_difference: float | None = Field(default=None, ge=0.0, le=1.0)
    max_accuracy_difference: float | None = Field(
        default=None, ge=0.0, le=1.0, description="Multiclass: largest gap in accuracy between groups."
    )
    max_mae_ratio: float | None = Field(
        default=None, ge=1.0, description="Regression: largest ratio of the worst group's MAE to the best group's."
    )
    max_mean_prediction_difference: float | None = Field(
        default=None, ge=0.0, description="Regression: largest gap in mean prediction between groups, in label units."
    )
    min_group_size: int = Field(
        default=100, ge=1, description="Groups with fewer test rows are reported but do not decide the gate."
    )


class ExplainConfig(SettingsModel):
    """The explain step (kfmlops.explain) and the predictor's ``:explain`` endpoint."""

    enabled: bool = Field(default=True, description="false: the explain step writes an empty report and records nothing.")
    max_rows: int = Field(
        default=1000, ge=10, description="Test rows explained, a seeded sample; the step makes 1 + features x repeats "
        "model calls on this many rows at most.",
    )
    repeats: int = Field(default=3, ge=1, description="Shuffles per column for permutation importance.")
    top_k: int = Field(default=10, ge=1, description="Features shown in the report and logged as metrics.")
    serving_max_rows: int = Field(
        default=64, ge=1, description="Most instances one :explain request may hold; more is answered 400.",
    )
    seed: int = 42


class MlflowConfig(SettingsModel):
    tracking_uri: str | None = Field(
        default=None, description="Unset: $MLFLOW_TRACKING_URI, else sqlite under $KFMLOPS_HOME (default ./.kfmlops)."
    )
    experiment: str = "kfmlops"
    model_name: str = Field(default="kfmlops-model", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ProvenanceConfig(SettingsModel):
    """Where the Ed25519 keys that sign and verify model provenance come from."""

    signing_key_file: str | None = Field(
        default=None, description="PEM private key file (a mounted Secret); unset: $KFMLOPS_SIGNING_KEY."
    )
    verify_key_file: str | None = Field(
        default=None, description="PEM public key file; unset: $KFMLOPS_VERIFY_KEY."
    )
    development_keys: bool = Field(
        default=True,
        description="With no key configured, use a key pair generated once under $KFMLOPS_HOME/keys "
        "(local runs); set false on a cluster so a missing Secret fails instead.",
    )


class AuditConfig(SettingsModel):
    """Where the audit logs live: one ``<model>.jsonl`` per registered model."""

    directory: str | None = Field(
        default=None,
        description="Folder of the audit logs; unset: $KFMLOPS_HOME/audit, beside the local registry store. On a "
        "cluster, a volume every step that promotes, rolls back or deploys mounts.",
    )


class GovernanceConfig(SettingsModel):
    """Whether a person must approve a candidate before it becomes champion (per environment)."""

    require_approval: bool = Field(
        default=False,
        description="A candidate that passes every automatic gate stays `challenger` and waits for "
        "`kfmlops approve`; only then does it become champion and get deployed.",
    )
    approval_ttl_hours: float = Field(
        default=72.0, gt=0.0, description="A waiting candidate can be approved for this long after its run asked."
    )
    four_eyes: bool = Field(default=True, description="Refuse approval by whoever started the run.")


class ModelCardConfig(SettingsModel):
    """What the model card of each registered version says about use: recorded on the version at
    register time (``kfmlops.card.*`` tags), where :mod:`kfmlops.model_card` reads it."""

    intended_use: str | None = Field(
        default=None, description="What the model is for and who may rely on it; unset: the card says it is not recorded."
    )
    limitations: str | None = Field(
        default=None, description="Known limits: data it was not trained on, uses it must not be put to."
    )


class Settings(SettingsModel):
    """How each stage behaves; every field has a default."""

    ingest: IngestConfig = IngestConfig()
    snapshots: SnapshotConfig = SnapshotConfig()
    validate_: ValidateConfig = Field(default=ValidateConfig(), alias="validate")
    train: TrainConfig = TrainConfig()
    tuning: TuningConfig = TuningConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    fairness: FairnessConfig = FairnessConfig()
    explain: ExplainConfig = ExplainConfig()
    mlflow: MlflowConfig = MlflowConfig()
    provenance: ProvenanceConfig = ProvenanceConfig()
    deploy: DeployConfig = DeployConfig()
    audit: AuditConfig = AuditConfig()
    governance: GovernanceConfig = GovernanceConfig()
    model_card: ModelCardConfig = ModelCardConfig()
    residency: ResidencyPolicy | None = Field(
        default=None, description="Allowed regions and locations; every step refuses a URI outside them."
    )

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, serialize_by_alias=True)

    @model_validator(mode="after")
    def _defaults_inside_the_space(self) -> "Settings":
        # Trial 0 of a search is train as configured: every tuned setting's value must be a point of
        # the space, so the tuned result is never worse than it on validation. No search (n_trials 0):
        # nothing to check, so a config with a space but tuning off may train anything.
        for path, parameter in (self.tuning.space.items() if self.tuning.n_trials > 0 else ()):
            value = train_setting(self.train, path)
            if not _in_space(value, parameter):
                raise PydanticCustomError(
                    "default_outside_space",
                    f"tuning.space[{path!r}]: the configured train.{path} ({value!r}) is not in the space "
                    f"({_describe(parameter)}); widen the space or change train.{path}, since the search starts from "
                    "the configured settings",
                )
        return self

    @classmethod
    def parse(cls, raw: dict[str, Any] | None) -> "Settings":
        return parse(cls, raw or {}, "settings")

    def to_parameter(self) -> dict[str, Any]:
        """The settings as a KFP pipeline parameter: JSON, overrides only (KFP parameters cannot hold null)."""
        return self.model_dump(mode="json", exclude_defaults=True)

    def digest(self) -> str:
        """The config hash recorded in lineage: SHA-256 of the canonical JSON of every section but
        ``mlflow``, ``provenance``, ``deploy``, ``audit``, ``governance``, ``model_card``, ``explain``,
        ``tuning``, ``snapshots``, ``ingest.warehouse`` and ``ingest.block_rows`` (where a run is recorded,
        who signs it, how it is rolled out, where that is logged, who must approve it, what its card says it
        is for, how it is explained, where its data is kept, how the database is logged into and how rows
        are batched do not change the model; a search changes it only through the ``train`` settings it
        picks, and lineage records the search on its own). Integral floats count as ints, because KFP
        carries every number of a parameter as a double."""
        data = _canonical(self.model_dump(mode="json", exclude={"mlflow": True, "provenance": True, "deploy": True,
                                                                "audit": True, "governance": True, "model_card": True,
                                                                "explain": True, "tuning": True, "snapshots": True,
                                                                "ingest": {"warehouse", "block_rows"}}))
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


class PipelineConfig(SettingsModel):
    data: DataSpec
    settings: Settings = Settings()

    @model_validator(mode="before")
    @classmethod
    def _settings_from_sections(cls, raw: Any) -> Any:
        # The YAML file keeps stage sections at the top level beside `data`.
        if isinstance(raw, dict) and "settings" not in raw:
            sections = {k: v for k, v in raw.items() if k != "data"}
            return {"data": raw.get("data"), "settings": sections}
        return raw

    @model_validator(mode="after")
    def _fairness_thresholds_have_features(self) -> "PipelineConfig":
        fairness = self.settings.fairness
        thresholds = [k for k, v in fairness.model_dump().items() if k != "min_group_size" and v is not None]
        if thresholds and not self.data.sensitive_features:
            raise PydanticCustomError(
                "fairness_without_features",
                f"fairness thresholds {thresholds} are set but data.sensitive_features is empty, so the fairness gate "
                "would check nothing: list the columns to slice by in data.sensitive_features, or unset the thresholds"
            )
        return self

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> "PipelineConfig":
        raw, base = load_yaml(path)
        config = parse(cls, raw, str(path))
        data = config.data
        resolved = {f: resolve_path(getattr(data, f), base) for f in ("source", "test_source")}
        if data.feature_store is not None:
            repo = resolve_path(data.feature_store.repo_path, base)
            resolved["feature_store"] = data.feature_store.model_copy(update={"repo_path": repo})
        return config.model_copy(update={"data": data.model_copy(update=resolved)})

    def pipeline_arguments(self) -> dict[str, Any]:
        """The training pipeline's parameters for this config."""
        return {"data": self.data.to_parameter(), "settings": self.settings.to_parameter()}


def _canonical(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value


def train_setting(config: TrainConfig, path: str) -> Any:
    """The value at dotted ``path`` of the train settings (``params.x``: None when unset)."""
    value: Any = config
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else getattr(value, part)
    return value


def with_train_settings(config: TrainConfig, values: dict[str, Any]) -> TrainConfig:
    """``config`` with each dotted path set to its value, validated again (a bad value names its field)."""
    raw = config.model_dump(mode="json")
    for path, value in values.items():
        *parents, leaf = path.split(".")
        node = raw
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return TrainConfig.model_validate(raw)


def _check_search_parameter(path: str, parameter: Any) -> None:
    """The path names a train setting and every point of the range (its ends; a float range's middle)
    or every choice is a valid value of it."""
    model: Any = TrainConfig
    parts = path.split(".")
    for i, part in enumerate(parts):
        where = ".".join(parts[: i + 1])
        if model is dict:  # train.params: any key
            break
        if not (isinstance(model, type) and issubclass(model, SettingsModel)) or part not in model.model_fields:
            known = sorted(model.model_fields) if isinstance(model, type) and issubclass(model, SettingsModel) else []
            raise PydanticCustomError(
                "unknown_setting",
                f"{path!r} is not a train setting: there is no train.{where}" + (f" (it has {known})" if known else ""),
            )
        annotation = model.model_fields[part].annotation
        model = dict if part == "params" else annotation
    if model is not dict and isinstance(model, type) and issubclass(model, SettingsModel):
        raise PydanticCustomError("not_a_leaf", f"{path!r} is a section of train settings, not a setting: name one of "
                                                f"its fields ({sorted(model.model_fields)})")
    if isinstance(parameter, (FloatRange, IntRange)):
        if parameter.low >= parameter.high:
            raise PydanticCustomError("empty_range", f"{path!r}: low ({parameter.low}) must be below high ({parameter.high})")
        if parameter.log and parameter.low <= 0:
            raise PydanticCustomError("log_range", f"{path!r}: a log-scale range needs low above 0 (got {parameter.low})")
        points = [parameter.low, parameter.high]
        if isinstance(parameter, FloatRange):
            points.append((parameter.low + parameter.high) / 2)
    else:
        points = parameter.choices
    for point in points:
        try:
            with_train_settings(TrainConfig(), {path: point})
        except ValueError as exc:
            first = exc.errors()[0]["msg"] if hasattr(exc, "errors") else str(exc)
            raise PydanticCustomError(
                "bad_search_value", f"{path!r}: {point!r} (in the space) is not a valid train.{path}: {first}"
            ) from None


def _in_space(value: Any, parameter: Any) -> bool:
    if isinstance(parameter, Choice):
        return value in parameter.choices
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if isinstance(parameter, IntRange):
        return float(value).is_integer() and parameter.low <= value <= parameter.high and \
            (value - parameter.low) % parameter.step == 0
    return parameter.low <= value <= parameter.high


def _describe(parameter: Any) -> str:
    if isinstance(parameter, Choice):
        return f"choices {parameter.choices}"
    step = f" step {parameter.step}" if isinstance(parameter, IntRange) and parameter.step != 1 else ""
    return f"{parameter.type} {parameter.low} to {parameter.high}{step}" + (" (log)" if parameter.log else "")
