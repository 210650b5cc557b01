"""Typed settings for the inference-log sink and the drift job, validated once at the boundary.

:class:`SinkConfig` configures ``kfmlops sink`` (where the log and the sink's write-ahead log live,
how long a request waits for its response, how large an event may be). :class:`DriftConfig`
configures ``kfmlops drift``: what to check (a window of the inference log or any dataset),
against what (the served model version's training data), how (Evidently stat tests), what counts
as a reason to retrain (:class:`PolicyConfig`), where the figures go (:class:`MetricsConfig`) and
how retraining is submitted (:class:`TriggerConfig`), and which shifts of the serving metrics are
reported as anomalies (:class:`AnomalyConfig`).
Both load from YAML; relative paths in a file are relative to that file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from kfmlops.typed import SettingsModel, load_yaml, parse, resolve_path

Signal = Literal["dataset_drift", "prediction_drift", "feature_drift", "performance"]
WATCHED_METRICS: dict[str, dict[str, bool]] = {
    "binary": {"roc_auc": True, "accuracy": True, "precision": True, "recall": True, "f1": True},
    "multiclass": {"accuracy": True, "macro_f1": True},
    "regression": {"rmse": False, "mae": False},
}
"""Per task kind, the window metrics (:func:`kfmlops.monitoring.stats.performance`) the performance
signal may watch (``policy.min_performance``): metric -> whether higher is better."""


class InferenceLogConfig(SettingsModel):
    root: str = Field(
        description="Directory of the log on a local disk or mounted volume (commits rely on fsync and rename)."
    )
    max_buffered_rows: int = Field(
        default=20_000, ge=1, description="Rows held in memory before they are committed; bounds the writer's memory."
    )
    flush_interval_s: float = Field(default=30.0, gt=0.0, description="Buffered rows are committed at least this often.")
    compression: Literal["zstd", "snappy", "gzip", "none"] = "zstd"


class CompactionConfig(SettingsModel):
    """Merging the small Parquet files of closed hours (:mod:`~kfmlops.monitoring.compaction`)."""

    target_file_bytes: int = Field(
        default=128 << 20, ge=1 << 10,
        description="Files smaller than this are merged, in groups of at most this many bytes (as stored).",
    )
    settle_minutes: float = Field(
        default=10.0, ge=0.0, description="An hour is compacted once it ended at least this long ago."
    )
    interval_minutes: float = Field(
        default=60.0, ge=0.0, description="The sink compacts the log this often (0: never; `kfmlops sink compact` does)."
    )


class SinkConfig(SettingsModel):
    log: InferenceLogConfig
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    join_timeout_s: float = Field(
        default=30.0, gt=0.0, description="A request (or response) waits this long for its pair, then is written alone."
    )
    max_pending: int = Field(
        default=10_000, ge=1, description="Events waiting for their pair; past this the oldest is written alone."
    )
    max_pending_bytes: int = Field(
        default=256 << 20, ge=1024, description="Bodies waiting for their pair; past this the oldest is written alone."
    )
    max_body_bytes: int = Field(default=16 << 20, ge=1024, description="Larger events are refused with 413.")
    max_rows_per_event: int = Field(
        default=10_000, ge=1,
        description="Events with more instances (or predictions), or more than log.max_buffered_rows, are refused with 413.",
    )
    wal_dir: str | None = Field(
        default=None,
        description="The write-ahead log (events are fsync'd here before they are acknowledged); unset: <log.root>/wal.",
    )
    wal_checkpoint_bytes: int = Field(
        default=64 << 20, ge=1024,
        description="Commit to Parquet and release the write-ahead log after this many bytes (or log.flush_interval_s).",
    )
    compaction: CompactionConfig = CompactionConfig()
    auth_token_file: str | None = Field(
        default=None,
        description="A file holding the bearer token every POST must carry (a mounted Secret, re-read when it changes); "
        "unset: no token asked. $KFMLOPS_SINK_AUTH_TOKEN_FILE overrides it.",
    )
    tls_cert_file: str | None = Field(
        default=None, description="Serve HTTPS with this PEM certificate (chain) where the mesh does not; with tls_key_file."
    )
    tls_key_file: str | None = Field(default=None, description="The PEM private key of tls_cert_file.")

    @model_validator(mode="after")
    def _tls_needs_both(self) -> "SinkConfig":
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("TLS needs both tls_cert_file and tls_key_file")
        return self

    @property
    def rows_per_event(self) -> int:
        """The most rows an event may hold: one event's rows are committed in one file."""
        return min(self.max_rows_per_event, self.log.max_buffered_rows)

    @property
    def wal_path(self) -> str:
        return self.wal_dir or str(Path(self.log.root) / "wal")

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> "SinkConfig":
        raw, base = load_yaml(path)
        config = parse(cls, raw, str(path))
        return config.model_copy(update={
            "log": config.log.model_copy(update={"root": resolve_path(config.log.root, base)}),
            "wal_dir": resolve_path(config.wal_dir, base),
            **{field: resolve_path(getattr(config, field), base)
               for field in ("auth_token_file", "tls_cert_file", "tls_key_file")},
        })


class WindowConfig(SettingsModel):
    """Which slice of the inference log one run checks: whole hours, ending at the last settled hour."""

    model: str = Field(description="The InferenceService name: the log's model partition.")
    hours: int = Field(default=24, ge=1)
    settle_minutes: float = Field(
        default=10.0, ge=0.0, description="The window ends at the last whole hour that ended at least this long ago."
    )


class ReferenceConfig(SettingsModel):
    uri: str | None = Field(
        default=None, description="Reference data; unset: the served version's train snapshot (`kfmlops.snapshot.train`), "
        "else its `kfmlops.train_data` lineage tag."
    )
    model_version: str | None = Field(
        default=None, description="The served version; unset: the window's most common `model_version`, else `alias`."
    )
    alias: str = "champion"
    score_with_model: bool = Field(
        default=True, description="Score the reference with the served version, the baseline for prediction drift."
    )


class DriftTestConfig(SettingsModel):
    """Evidently stat tests; names and defaults as in ``DataDriftPreset`` (unset = Evidently's automatic choice)."""

    columns: list[str] | None = Field(default=None, description="Features to check; unset: every reference feature.")
    num_method: str | None = None
    cat_method: str | None = None
    per_column_method: dict[str, str] = {}
    threshold: float | None = Field(default=None, description="Unset: the stat test's own default threshold.")
    per_column_threshold: dict[str, float] = {}
    positive_probability: bool = Field(
        default=True,
        description="Binary task: test the drift of P(positive) (the proba:<positive> column) beside the predicted class's.",
    )
    report_rows: int = Field(
        default=20_000, ge=0, description="Rows sampled for Evidently's interactive HTML reports; 0 skips them."
    )
    seed: int = 0


class PolicyConfig(SettingsModel):
    signals: list[Signal] = Field(
        default=["dataset_drift", "prediction_drift"], description="Which signals may start a retrain."
    )
    drift_share: float = Field(default=0.5, gt=0.0, le=1.0, description="dataset_drift: this share of features drifted.")
    watched_features: list[str] = Field(
        default=[], description="feature_drift fires when one of these drifted (any feature when empty)."
    )
    min_rows: int = Field(default=1000, ge=1, description="Smaller windows are reported and never trigger.")
    min_labelled_rows: int = Field(
        default=100, ge=0, description="Retraining (and the performance signal) needs this many labelled window rows."
    )
    min_performance: dict[str, float] = Field(
        default={},
        description="The performance signal's limits on the labelled window, each in its metric's direction: "
        "{roc_auc: 0.8} fires below 0.8, {rmse: 4.0} above 4.0 (see WATCHED_METRICS for each task's metrics).",
    )
    label_wait_hours: float = Field(
        default=168.0, ge=0.0,
        description="performance: a window judged with fewer than min_labelled_rows labels is re-evaluated when they "
        "arrive, for this long after it was judged (kfmlops.monitoring.late_labels).",
    )
    cooldown_hours: float = Field(default=24.0, ge=0.0, description="Least time between two retrains of a model.")
    max_retrains_per_day: int = Field(default=1, ge=0, description="Per model, over any 24 hours; 0 never retrains.")

    @model_validator(mode="after")
    def _performance_needs_limits(self) -> "PolicyConfig":
        if "performance" in self.signals and not self.min_performance:
            raise ValueError("the performance signal needs min_performance, e.g. {roc_auc: 0.8} or {rmse: 4.0}")
        known = {metric for metrics in WATCHED_METRICS.values() for metric in metrics}
        unknown = sorted(set(self.min_performance) - known)
        if unknown:
            raise ValueError(f"min_performance names unknown metrics {unknown}; known: "
                             + "; ".join(f"{task}: {', '.join(m)}" for task, m in WATCHED_METRICS.items()))
        return self


class AnomalyConfig(SettingsModel):
    """Anomalies in the serving metrics of a window of the log (:mod:`~kfmlops.monitoring.anomaly`); reported, never retrained on."""

    trailing_hours: int = Field(
        default=168, ge=0, description="The window is compared with this many hours before it (0: no anomaly check)."
    )
    interval_minutes: int = Field(default=60, ge=1, le=1440, description="Predictions are counted per interval this long.")
    rate_z: float = Field(
        default=5.0, gt=0.0, description="A window interval whose count is this many robust standard deviations off the trailing median."
    )
    score_psi: float = Field(
        default=0.25, gt=0.0, description="The window's served scores shifted: PSI against the trailing scores at least this."
    )
    min_trailing_intervals: int = Field(default=6, ge=2, description="Fewer trailing intervals with traffic: no rate check.")
    min_scores: int = Field(default=100, ge=10, description="Fewer scores in the window or before it: no score check.")


class MetricsConfig(SettingsModel):
    pushgateway_url: str | None = None
    job: str = "kfmlops_drift"
    textfile: str | None = Field(default=None, description="A .prom file for node exporter's textfile collector.")


class TriggerConfig(SettingsModel):
    submitter: Literal["none", "local", "kfp"] = Field(
        default="none", description="none: decide and record only; local: kfp.local; kfp: a Kubeflow Pipelines host."
    )
    kfp_host: str | None = None
    pipeline_package: str | None = Field(default=None, description="Compiled training pipeline YAML (submitter kfp).")
    experiment: str = "kfmlops-retraining"
    ledger_dir: str | None = Field(default=None, description="Unset: $KFMLOPS_HOME/drift/ledger.")
    data_dir: str | None = Field(
        default=None, description="Where fresh training data is written (the pipeline must read it); unset: $KFMLOPS_HOME/drift/data."
    )

    @model_validator(mode="after")
    def _kfp_needs_target(self) -> "TriggerConfig":
        if self.submitter == "kfp" and not (self.kfp_host and self.pipeline_package):
            raise ValueError("submitter kfp needs kfp_host and pipeline_package")
        return self


class DriftConfig(SettingsModel):
    training_config: str = Field(
        description="The pipeline YAML the served model was trained with (data spec, settings); retraining reuses it."
    )
    log_root: str | None = Field(default=None, description="The inference log to read `window` from.")
    window: WindowConfig | None = None
    current: str | None = Field(default=None, description="Instead of the log: any dataset (CSV, Parquet, JSON Lines).")
    model: str | None = Field(default=None, description="With `current`: the model name its metrics carry.")
    output_dir: str = "drift-report"
    reference: ReferenceConfig = ReferenceConfig()
    drift: DriftTestConfig = DriftTestConfig()
    policy: PolicyConfig = PolicyConfig()
    anomaly: AnomalyConfig = AnomalyConfig()
    metrics: MetricsConfig = MetricsConfig()
    trigger: TriggerConfig = TriggerConfig()

    @model_validator(mode="after")
    def _one_source(self) -> "DriftConfig":
        if (self.log_root is None) == (self.current is None):
            raise ValueError("set exactly one of log_root (with window) and current")
        if self.log_root is not None and self.window is None:
            raise ValueError("log_root needs a window")
        return self

    @property
    def model_name(self) -> str:
        """The monitored model's name in file paths, metric labels and the ledger."""
        if self.window is not None:
            return self.window.model
        return self.model or Path(self.current).stem.split(".")[0]

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> "DriftConfig":
        raw, base = load_yaml(path)
        config = parse(cls, raw, str(path))
        trigger, metrics, reference = config.trigger, config.metrics, config.reference
        return config.model_copy(update={
            "training_config": resolve_path(config.training_config, base),
            "log_root": resolve_path(config.log_root, base),
            "current": resolve_path(config.current, base),
            "output_dir": resolve_path(config.output_dir, base),
            "reference": reference.model_copy(update={"uri": resolve_path(reference.uri, base)}),
            "metrics": metrics.model_copy(update={"textfile": resolve_path(metrics.textfile, base)}),
            "trigger": trigger.model_copy(update={
                field: resolve_path(getattr(trigger, field), base) for field in ("pipeline_package", "ledger_dir", "data_dir")
            }),
        })
