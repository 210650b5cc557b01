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

Beside the figures, what the alerts compare them with and what the dashboards show:

- ``kfmlops_drift_feature_threshold{feature, method}``: each feature's stat-test threshold;
- ``kfmlops_drift_run_status{status}``: 1 for this run's ``summary.json`` status;
- the policy: ``kfmlops_drift_policy_drift_share``, ``kfmlops_drift_policy_min_labelled_rows``, and
  each ``policy.min_performance`` limit of the served task as ``kfmlops_drift_performance_minimum``
  (a metric where higher is better: fires below) or ``kfmlops_drift_performance_maximum`` (lower is
  better, e.g. ``rmse``: fires above), labelled ``task`` and ``metric`` like the figure;
- the retrain ledger: ``kfmlops_retrain_windows{status}`` (windows claimed, ``submitted`` or
  ``failed``; ``claimed`` ones never got further) and
  ``kfmlops_retrain_latest_claimed_timestamp_seconds{status}``, the latest window's claim time
  labelled with its status.
"""

from __future__ import annotations

from typing import Any, Iterable

from kfmlops.monitoring.config import WATCHED_METRICS, DriftConfig, PolicyConfig
from kfmlops.monitoring.policy import CLAIMED, FAILED, SUBMITTED, LedgerEntry


def registry_for(summary: dict[str, Any], model: str, policy: PolicyConfig, retrains: Iterable[LedgerEntry] = ()):
    """A ``CollectorRegistry`` holding the gauges for one drift summary (see :mod:`kfmlops.monitoring.drift`),
    the ``policy`` it was judged by and the model's ``retrains`` (its ledger entries)."""
    from prometheus_client import CollectorRegistry, Gauge

    registry = CollectorRegistry()

    gauges: dict[str, Gauge] = {}

    def gauge(name: str, help_: str, value: float | None, **labels: str) -> None:
        if value is None:
            return
        if name not in gauges:
            gauges[name] = Gauge(name, help_, ["model", *labels], registry=registry)
        gauges[name].labels(model=model, **labels).set(float(value))

    drift = summary.get("drift") or {}
    gauge("kfmlops_drift_rows_checked", "Rows in the checked window.", summary["rows"])
    gauge("kfmlops_drift_labelled_rows", "Rows of the window with ground truth.", summary["labelled_rows"])
    gauge("kfmlops_drift_last_run_timestamp_seconds", "When the drift job last ran (epoch seconds).", summary["run_at"])
    gauge("kfmlops_drift_run_status", "1 for the status of the drift job's last run.", 1.0, status=summary["status"])
    gauge("kfmlops_drift_policy_drift_share", "policy.drift_share: the drifted share that is dataset drift.",
          policy.drift_share)
    gauge("kfmlops_drift_policy_min_labelled_rows", "policy.min_labelled_rows: labelled rows the performance "
          "signal needs.", policy.min_labelled_rows)
    gauge("kfmlops_drift_share", "Share of checked features that drifted.", drift.get("share"))
    if drift.get("share") is not None:
        gauge("kfmlops_drift_dataset_drift", "1 when the drifted share reached policy.drift_share.", drift["dataset_drift"])
    if drift.get("columns"):
        score = Gauge("kfmlops_drift_feature_score", "Per-feature drift score (see method).",
                      ["model", "feature", "method"], registry=registry)
        drifted = Gauge("kfmlops_drift_feature_drifted", "1 when the feature drifted.",
                        ["model", "feature", "method"], registry=registry)
        threshold = Gauge("kfmlops_drift_feature_threshold", "The feature's stat-test threshold (see method).",
                          ["model", "feature", "method"], registry=registry)
        for column in drift["columns"]:
            labels = dict(model=model, feature=column["column"], method=column["method"])
            score.labels(**labels).set(column["score"])
            drifted.labels(**labels).set(float(column["drifted"]))
            threshold.labels(**labels).set(column["threshold"])
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
    task = (summary.get("task") or {}).get("kind")
    directions = WATCHED_METRICS.get(task, {})
    for name, limit in policy.min_performance.items():
        if name in directions:
            bound, side = ("minimum", "above") if directions[name] else ("maximum", "below")
            gauge(f"kfmlops_drift_performance_{bound}", f"policy.min_performance: the window's metric must stay {side} this.",
                  limit, task=task, metric=name)
    late = summary.get("late_labels") or {}
    gauge("kfmlops_drift_windows_awaiting_labels", "Windows judged before enough labels arrived, still waiting.",
          late.get("awaiting"))
    gauge("kfmlops_drift_late_label_evaluations", "Windows this run re-evaluated on labels that arrived late.",
          len(late["evaluated"]) if late else None)
    started = [summary.get("retrain", {})] + [w["retrain"] for w in late.get("evaluated", [])]
    gauge("kfmlops_drift_retrain_triggered", "1 when this run started a retrain (drift, or performance on late labels).",
          float(any(r.get("submitted") for r in started)))
    _retrain_gauges(registry, model, list(retrains))
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


def _retrain_gauges(registry, model: str, retrains: list[LedgerEntry]) -> None:
    """``kfmlops_retrain_windows`` by status and the latest window's claim time (see the module docstring)."""
    from prometheus_client import Gauge

    windows = Gauge("kfmlops_retrain_windows", "Windows that claimed a retrain, by ledger status.",
                    ["model", "status"], registry=registry)
    for status in (CLAIMED, SUBMITTED, FAILED):
        windows.labels(model=model, status=status).set(sum(e.status == status for e in retrains))
    if retrains:
        latest = max(retrains, key=lambda e: e.claimed_at)
        Gauge("kfmlops_retrain_latest_claimed_timestamp_seconds", "When the latest retrain window was claimed "
              "(epoch seconds), labelled with its ledger status.", ["model", "status"],
              registry=registry).labels(model=model, status=latest.status).set(latest.claimed_at)


def export(summary: dict[str, Any], config: DriftConfig, retrains: Iterable[LedgerEntry] = ()) -> list[str]:
    """Push and/or write the metrics as ``config.metrics`` says; returns where they went (nothing configured: nowhere)."""
    model, metrics = config.model_name, config.metrics
    if not (metrics.pushgateway_url or metrics.textfile):
        return []
    from prometheus_client import push_to_gateway, write_to_textfile

    registry = registry_for(summary, model, config.policy, retrains)
    targets = []
    if metrics.pushgateway_url:
        push_to_gateway(metrics.pushgateway_url, job=metrics.job, registry=registry, grouping_key={"model": model})
        targets.append(metrics.pushgateway_url)
    if metrics.textfile:
        write_to_textfile(metrics.textfile, registry)
        targets.append(metrics.textfile)
    return targets
