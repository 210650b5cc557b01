"""The Grafana dashboards (serving, model quality, pipeline), from one definition.

Each dashboard is a list of :class:`Panel` (a title, PromQL targets with their legends, a unit);
:func:`dashboard` lays them out two to a row and adds the ``datasource`` and ``model`` variables.
``python -m kfmlops.monitoring.dashboards DIR`` writes ``DIR/<uid>.json`` for each, which the
kustomize base turns into a ConfigMap labelled ``grafana_dashboard: "1"`` (the Grafana sidecar's
default label); ``tests/test_observability.py`` fails when a committed file differs. Every metric a panel reads is one
the predictor, the sink or the drift job exports, or a series :mod:`~kfmlops.monitoring.alerts`
records (``tests/test_observability.py`` checks the names).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kfmlops.monitoring.alerts import PRODUCTION, error_ratio, slo_miss_ratio

M = 'model=~"$model"'
RATE = "$__rate_interval"


@dataclass(frozen=True)
class Panel:
    title: str
    targets: tuple[tuple[str, str], ...]  # (PromQL, legend)
    unit: str = "short"
    kind: str = "timeseries"  # or "stat", "bargauge"
    description: str = ""


def _quantiles(metric: str, what: str = "", by: str = "") -> tuple[tuple[str, str], ...]:
    """p50, p90 and p99 of histogram ``metric`` (per ``by`` label, if given)."""
    group = ", ".join(filter(None, ("le", by)))
    return tuple((f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket{{{M}}}[{RATE}])))",
                  " ".join(filter(None, (f"p{round(q * 100)}", what, by and f"{{{{{by}}}}}")))) for q in (0.5, 0.9, 0.99))


SERVING = (
    Panel("Requests by status", ((f"sum by (code) (rate(kfmlops_requests_total{{{M}}}[{RATE}]))", "{{code}}"),),
          "reqps"),
    Panel("Error ratio", ((f"{error_ratio(PRODUCTION.errors)}{{{M}}}", "{{model}} {{kind}}"),), "percentunit",
          description="Share of requests answered 4xx (client) or 5xx (server); the error alerts read this."),
    Panel("Latency percentiles", _quantiles("kfmlops_request_duration_seconds", by="protocol"), "s"),
    Panel("Latency SLO: share of requests over the objective",
          tuple((f"{slo_miss_ratio(w)}{{{M}}}", f"{{{{model}}}} over {name}") for name, w in
                (("5m", PRODUCTION.page_short), ("1h", PRODUCTION.page_long), ("6h", PRODUCTION.ticket_long))),
          "percentunit", description="The burn-rate alerts page at 14.4x the 1% budget (1h and 5m), ticket at 6x."),
    Panel("Rejected requests by cause",
          ((f"sum by (kind) (rate(kfmlops_rejected_requests_total{{{M}}}[{RATE}]))", "{{kind}}"),), "reqps"),
    Panel("Rows per request", _quantiles("kfmlops_request_rows", "rows"), "short"),
    Panel("Micro-batch size (rows per forward pass)", _quantiles("kfmlops_batch_rows", "rows") + (
        (f"sum(rate(kfmlops_batch_rows_count{{{M}}}[{RATE}]))", "batches/s"),), "short",
          description="Empty unless serving.micro_batching is on."),
    Panel("Model served", ((f"kfmlops_model_info{{{M}}}", "{{model}}: {{registered_model}} v{{version}}"),),
          kind="stat"),
    Panel("Inference log sink: answers by status",
          ((f"sum by (code) (rate(kfmlops_sink_requests_total[{RATE}]))", "{{code}}"),), "reqps"),
    Panel("Inference log sink: backlog", (
        ("sum(kfmlops_sink_pending_events)", "events waiting for their pair"),
        ("sum(kfmlops_sink_buffered_rows)", "rows buffered"),
        ("sum(kfmlops_sink_wal_segments)", "write-ahead-log segments"),
        ("max(kfmlops_sink_failing)", "failing (1)"),
    )),
)

QUALITY = (
    Panel("Drift score per feature", ((f"kfmlops_drift_feature_score{{{M}}}", "{{feature}} ({{method}})"),),
          kind="bargauge", description="Each feature's stat-test score on the last window; see the threshold panel."),
    Panel("Drift threshold per feature", ((f"kfmlops_drift_feature_threshold{{{M}}}", "{{feature}} ({{method}})"),),
          kind="bargauge", description="p-value tests drift below their threshold, distances at or above it."),
    Panel("Drifted share of features vs policy", (
        (f"kfmlops_drift_share{{{M}}}", "{{model}} drifted share"),
        (f"kfmlops_drift_policy_drift_share{{{M}}}", "{{model}} policy.drift_share"),
    ), "percentunit"),
    Panel("Drifted features", ((f"sum by (model) (kfmlops_drift_feature_drifted{{{M}}})", "{{model}}"),), kind="stat"),
    Panel("Predicted classes (share of rows)", ((
        f"sum by (class) (rate(kfmlops_predicted_class_total{{{M}}}[{RATE}])) / ignoring (class) group_left () "
        f"sum(rate(kfmlops_predicted_class_total{{{M}}}[{RATE}]))", "{{class}}"),), "percentunit"),
    Panel("P(positive) distribution (binary)", _quantiles("kfmlops_predicted_probability"), "percentunit"),
    Panel("Prediction drift score", ((f"kfmlops_drift_prediction_score{{{M}}}", "{{column}} ({{method}})"),),
          kind="bargauge"),
    Panel("Performance on labelled rows vs limits", (
        (f"kfmlops_drift_performance{{{M}}}", "{{metric}}"),
        (f"kfmlops_drift_performance_minimum{{{M}}}", "{{metric}} minimum"),
        (f"kfmlops_drift_performance_maximum{{{M}}}", "{{metric}} maximum"),
    )),
    Panel("Rows checked and labelled", (
        (f"kfmlops_drift_rows_checked{{{M}}}", "{{model}} rows"),
        (f"kfmlops_drift_labelled_rows{{{M}}}", "{{model}} labelled"),
        (f"kfmlops_drift_policy_min_labelled_rows{{{M}}}", "{{model}} labelled rows needed"),
    )),
)

PIPELINE = (
    Panel("Drift job: last run status", ((f"kfmlops_drift_run_status{{{M}}} == 1", "{{model}}: {{status}}"),),
          kind="stat"),
    Panel("Drift job: hours since last run",
          ((f"(time() - kfmlops_drift_last_run_timestamp_seconds{{{M}}}) / 3600", "{{model}}"),), "h"),
    Panel("Retrain windows by status", ((f"kfmlops_retrain_windows{{{M}}}", "{{model}} {{status}}"),),
          description="Windows that claimed a retrain (retrain ledger): submitted, failed, or claimed and never further."),
    Panel("Latest retrain", ((f"kfmlops_retrain_latest_claimed_timestamp_seconds{{{M}}} * 1000",
                              "{{model}}: {{status}}"),), "dateTimeAsIso", kind="stat"),
    Panel("Retrains started by the drift job", ((f"kfmlops_drift_retrain_triggered{{{M}}}", "{{model}}"),),
          description="1 when the last drift run submitted a training pipeline run."),
)

DASHBOARDS = {  # uid -> (title, model variable's source metric, panels)
    "kfmlops-serving": ("kfmlops: serving", "kfmlops_model_info", SERVING),
    "kfmlops-model-quality": ("kfmlops: model quality", "kfmlops_drift_rows_checked", QUALITY),
    "kfmlops-pipeline": ("kfmlops: pipeline and retraining", "kfmlops_drift_last_run_timestamp_seconds", PIPELINE),
}


def _panel(index: int, panel: Panel) -> dict[str, Any]:
    return {
        "id": index + 1, "type": panel.kind, "title": panel.title, "description": panel.description,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": 12, "x": 12 * (index % 2), "y": 8 * (index // 2)},
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "targets": [{"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend,
                     "datasource": {"type": "prometheus", "uid": "${datasource}"}}
                    for i, (expr, legend) in enumerate(panel.targets)],
    }


def dashboard(uid: str) -> dict[str, Any]:
    """The Grafana dashboard model of ``uid`` (a key of :data:`DASHBOARDS`)."""
    title, model_source, panels = DASHBOARDS[uid]
    return {
        "uid": uid, "title": title, "tags": ["kfmlops"], "schemaVersion": 39, "version": 1,
        "time": {"from": "now-6h", "to": "now"}, "refresh": "1m", "editable": False,
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source"},
            {"name": "model", "type": "query", "label": "Model", "includeAll": True, "multi": True,
             "datasource": {"type": "prometheus", "uid": "${datasource}"}, "refresh": 2,
             "query": {"query": f"label_values({model_source}, model)", "refId": "model"},
             "current": {"text": "All", "value": "$__all"}},
        ]},
        "panels": [_panel(i, p) for i, p in enumerate(panels)],
    }


def render(uid: str) -> str:
    return json.dumps(dashboard(uid), indent=1) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write each dashboard as DIR/<uid>.json."""
    parser = argparse.ArgumentParser(prog="python -m kfmlops.monitoring.dashboards", description=__doc__.split("\n")[0])
    parser.add_argument("directory", type=Path)
    directory = parser.parse_args(argv).directory
    directory.mkdir(parents=True, exist_ok=True)
    for uid in DASHBOARDS:
        (directory / f"{uid}.json").write_text(render(uid))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
