"""The drift job's figures as Prometheus metrics: pushed to a Pushgateway and/or written for the
node exporter's textfile collector (written to a temporary file and renamed, as the collector needs).

Gauges, all labelled ``model``: ``kfmlops_drift_share``, ``kfmlops_drift_dataset_drift`` (0/1),
``kfmlops_drift_feature_score`` and ``kfmlops_drift_feature_drifted`` (also labelled ``feature``
and ``method``), ``kfmlops_drift_prediction_score`` and ``kfmlops_drift_prediction_drifted`` (also
labelled ``column``: ``prediction``, ``proba:<positive class>``, and ``method``),
``kfmlops_drift_rows_checked``, ``kfmlops_drift_labelled_rows``, ``kfmlops_drift_performance``
(also labelled ``task`` and ``metric``: ``roc_auc``, ``accuracy``, ``macro_f1``, ``rmse``...),
``kfmlops_drift_retrain_triggered`` (0/1: drift, or performance on labels that arrived late),
``kfmlops_drift_windows_awaiting_labels``, ``kfmlops_drift_late_label_evaluations``,
``kfmlops_drift_last_run_timestamp_seconds``; for a window of the log, ``kfmlops_serving_anomaly``
(0/1, also labelled ``check``: ``rate`` or ``scores``), ``kfmlops_serving_rate_max_abs_z`` and
``kfmlops_serving_score_psi``.
"""

from __future__ import annotations

from typing import Any

from kfmlops.monitoring.config import MetricsConfig


def registry_for(summary: dict[str, Any], model: str):
    """A ``CollectorRegistry`` holding the gauges for one drift summary (see :mod:`kfmlops.monitoring.drift`)."""
    from prometheus_client import CollectorRegistry, Gauge

    registry = CollectorRegistry()

    def gauge(name: str, help_: str, value: float | None, **labels: str) -> None:
        if value is None:
            return
        metric = Gauge(name, help_, ["model", *labels], registry=registry)
        metric.labels(model=model, **labels).set(float(value))

    drift = summary.get("drift") or {}
    gauge("kfmlops_drift_rows_checked", "Rows in the checked window.", summary["rows"])
    gauge("kfmlops_drift_labelled_rows", "Rows of the window with ground truth.", summary["labelled_rows"])
    gauge("kfmlops_drift_last_run_timestamp_seconds", "When the drift job last ran (epoch seconds).", summary["run_at"])
    gauge("kfmlops_drift_share", "Share of checked features that drifted.", drift.get("share"))
    if drift.get("share") is not None:
        gauge("kfmlops_drift_dataset_drift", "1 when the drifted share reached policy.drift_share.", drift["dataset_drift"])
    if drift.get("columns"):
        score = Gauge("kfmlops_drift_feature_score", "Per-feature drift score (see method).",
                      ["model", "feature", "method"], registry=registry)
        drifted = Gauge("kfmlops_drift_feature_drifted", "1 when the feature drifted.",
                        ["model", "feature", "method"], registry=registry)
        for column in drift["columns"]:
            labels = dict(model=model, feature=column["column"], method=column["method"])
            score.labels(**labels).set(column["score"])
            drifted.labels(**labels).set(float(column["drifted"]))
    predictions = (summary.get("prediction_drift") or {}).get("columns", [])
    if predictions:
        score = Gauge("kfmlops_drift_prediction_score", "Prediction drift score (see method).",
                      ["model", "column", "method"], registry=registry)
        drifted = Gauge("kfmlops_drift_prediction_drifted", "1 when the prediction column drifted.",
                        ["model", "column", "method"], registry=registry)
        for column in predictions:
            labels = dict(model=model, column=column["column"], method=column["method"])
            score.labels(**labels).set(column["score"])
            drifted.labels(**labels).set(float(column["drifted"]))
    performance = {k: v for k, v in (summary.get("performance") or {}).items()
                   if k not in ("task", "rows") and isinstance(v, (int, float))}
    if performance:
        metric = Gauge("kfmlops_drift_performance", "Performance on the window's labelled rows.",
                       ["model", "task", "metric"], registry=registry)
        for name, value in performance.items():
            metric.labels(model=model, task=summary["performance"]["task"], metric=name).set(float(value))
    late = summary.get("late_labels") or {}
    gauge("kfmlops_drift_windows_awaiting_labels", "Windows judged before enough labels arrived, still waiting.",
          late.get("awaiting"))
    gauge("kfmlops_drift_late_label_evaluations", "Windows this run re-evaluated on labels that arrived late.",
          len(late["evaluated"]) if late else None)
    started = [summary.get("retrain", {})] + [w["retrain"] for w in late.get("evaluated", [])]
    gauge("kfmlops_drift_retrain_triggered", "1 when this run started a retrain (drift, or performance on late labels).",
          float(any(r.get("submitted") for r in started)))
    anomalies = summary.get("anomalies")
    if anomalies:
        flagged = Gauge("kfmlops_serving_anomaly", "1 when the check found a sudden shift (reported, never retrained on).",
                        ["model", "check"], registry=registry)
        for check in ("rate", "scores"):
            if anomalies[check]["checked"]:
                flagged.labels(model=model, check=check).set(float(anomalies[check]["anomalous"]))
        gauge("kfmlops_serving_rate_max_abs_z", "Largest robust z-score of a window interval's prediction count.",
              anomalies["rate"].get("max_abs_z"))
        gauge("kfmlops_serving_score_psi", "PSI of the window's served scores against the trailing hours'.",
              anomalies["scores"].get("psi"))
    return registry


def export(summary: dict[str, Any], model: str, config: MetricsConfig) -> list[str]:
    """Push and/or write the metrics as configured; returns where they went (nothing configured: nowhere)."""
    if not (config.pushgateway_url or config.textfile):
        return []
    from prometheus_client import push_to_gateway, write_to_textfile

    registry = registry_for(summary, model)
    targets = []
    if config.pushgateway_url:
        push_to_gateway(config.pushgateway_url, job=config.job, registry=registry, grouping_key={"model": model})
        targets.append(config.pushgateway_url)
    if config.textfile:
        write_to_textfile(config.textfile, registry)
        targets.append(config.textfile)
    return targets
