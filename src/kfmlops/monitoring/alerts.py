"""The platform's Prometheus recording and alerting rules, from one definition.

:func:`rule_groups` builds the rule groups for a :class:`Windows`: :data:`PRODUCTION` for the
``PrometheusRule`` in ``manifests/base/monitoring/`` (:func:`prometheus_rule`), or the same rules
with every window and ``for:`` scaled down (:meth:`Windows.scaled`) for a test Prometheus that
must see an alert fire within seconds. ``python -m kfmlops.monitoring.alerts PATH`` writes the
manifest; ``tests/test_observability.py`` fails when the committed one differs.

Alerts (each has a ``severity`` label, ``summary``/``description`` annotations and a ``runbook_url``
naming its section of ``manifests/README.md``):

- ``KfmlopsLatencyBudgetBurnFast`` / ``...Slow``: the latency SLO (:class:`Objectives`: 99% of
  requests within 0.5 s) burns its error budget 14.4x over 1 h and 5 min (page), or 6x over 6 h and
  30 min (ticket): the multi-window, multi-burn-rate alerts of the SRE workbook;
- ``KfmlopsPredictorServerErrors`` / ``KfmlopsPredictorClientErrors``: the share of requests
  answered 5xx (over 1%) or 4xx (over 10%: a client sending what the model cannot take);
- ``KfmlopsDatasetDrift``: the drifted share reached the policy's ``drift_share``;
  ``KfmlopsPredictionDrift``: a prediction column drifted;
- ``KfmlopsPerformanceBelowMinimum``: a labelled-window metric is worse than its
  ``policy.min_performance`` limit, on at least ``policy.min_labelled_rows`` labelled rows;
- ``KfmlopsDriftJobStale``: the drift job has not reported for 26 h (it runs daily);
- ``KfmlopsRetrainFailed``: the latest retrain window failed to start its run;
  ``KfmlopsRetrainStuck``: the latest one was claimed an hour ago and never submitted nor failed;
- ``KfmlopsSinkFailing``: the inference-log sink has not committed for 10 min.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import yaml

from kfmlops.serving.metrics import LATENCY_BUCKETS

RUNBOOK = "manifests/README.md"
"""Where each alert's runbook section is (``#`` + the alert's name, lower-cased)."""
FAST_BURN, SLOW_BURN = 14.4, 6.0


@dataclass(frozen=True)
class Windows:
    """Every rate window and ``for:`` duration of the rules, in seconds."""

    page_short: int = 300
    page_long: int = 3600
    ticket_short: int = 1800
    ticket_long: int = 21600
    page_for: int = 120
    ticket_for: int = 900
    errors: int = 300
    errors_for: int = 300
    quality_for: int = 300
    drift_job_stale_after: int = 26 * 3600
    retrain_for: int = 300
    retrain_stuck_after: int = 3600
    sink_for: int = 600

    def scaled(self, factor: float) -> "Windows":
        """Every window times ``factor`` (at least one second): the same rules on a faster clock."""
        return replace(self, **{f.name: max(1, round(getattr(self, f.name) * factor)) for f in fields(self)})


@dataclass(frozen=True)
class Objectives:
    """The serving objectives the rules hold the predictor to."""

    latency_s: float = 0.5  # must be a bucket of kfmlops_request_duration_seconds
    latency_target: float = 0.99  # share of requests within latency_s
    server_error_ratio: float = 0.01
    client_error_ratio: float = 0.10

    def __post_init__(self):
        if self.latency_s not in LATENCY_BUCKETS:
            raise ValueError(f"latency_s {self.latency_s} is not a bucket of the latency histogram: {LATENCY_BUCKETS}")


PRODUCTION = Windows()


def duration(seconds: int) -> str:
    """Prometheus duration: the largest of h, m, s that divides ``seconds``."""
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def slo_miss_ratio(window: int) -> str:
    """The recorded series: share of requests slower than the objective over ``window``."""
    return f"kfmlops:request_latency_slo_miss:ratio_rate{duration(window)}"


def error_ratio(window: int) -> str:
    """The recorded series: share of requests answered with an error, by ``kind``, over ``window``."""
    return f"kfmlops:request_errors:ratio_rate{duration(window)}"


def _alert(name: str, expr: str, for_: int, severity: str, summary: str, description: str) -> dict[str, Any]:
    return {
        "alert": name, "expr": expr, "for": duration(for_), "labels": {"severity": severity},
        "annotations": {"summary": summary, "description": description,
                        "runbook_url": f"{RUNBOOK}#{name.lower()}"},
    }


def _serving(w: Windows, o: Objectives) -> dict[str, Any]:
    le = repr(o.latency_s)
    budget = round(1 - o.latency_target, 6)
    records = [{
        "record": slo_miss_ratio(window),
        "expr": f'1 - (sum by (model) (rate(kfmlops_request_duration_seconds_bucket{{le="{le}"}}[{duration(window)}]))'
                f" / sum by (model) (rate(kfmlops_request_duration_seconds_count[{duration(window)}])))",
    } for window in sorted({w.page_short, w.page_long, w.ticket_short, w.ticket_long})]
    records.append({
        "record": error_ratio(w.errors),
        "expr": f"sum by (model, kind) (rate(kfmlops_request_errors_total[{duration(w.errors)}]))"
                f" / on (model) group_left () sum by (model) (rate(kfmlops_requests_total[{duration(w.errors)}]))",
    })
    burns = [
        _alert(f"KfmlopsLatencyBudgetBurn{speed}",
               f"{slo_miss_ratio(long)} > ({burn:g} * {budget:g}) and {slo_miss_ratio(short)} > ({burn:g} * {budget:g})",
               for_, severity,
               f"{{{{ $labels.model }}}}: the latency SLO burns its error budget {burn:g}x",
               f"More than {burn * budget:.1%} of {{{{ $labels.model }}}}'s requests took longer than {o.latency_s:g} s "
               f"over both {duration(long)} and {duration(short)} (SLO: {o.latency_target:.0%} within {o.latency_s:g} s).")
        for speed, burn, long, short, for_, severity in (
            ("Fast", FAST_BURN, w.page_long, w.page_short, w.page_for, "critical"),
            ("Slow", SLOW_BURN, w.ticket_long, w.ticket_short, w.ticket_for, "warning"),
        )
    ]
    errors = [
        _alert(f"KfmlopsPredictor{title}Errors", f'{error_ratio(w.errors)}{{kind="{kind}"}} > {limit}', w.errors_for,
               severity, f"{{{{ $labels.model }}}}: {{{{ $value | humanizePercentage }}}} of requests answered {code}",
               f"Over {duration(w.errors)}, more than {limit:.0%} of {{{{ $labels.model }}}}'s requests were answered {code} "
               f"({what}).")
        for title, kind, code, limit, severity, what in (
            ("Server", "server", "5xx", o.server_error_ratio, "critical", "the predictor failed to score them"),
            ("Client", "client", "4xx", o.client_error_ratio, "warning",
             "refused as invalid: see kfmlops_rejected_requests_total for the causes"),
        )
    ]
    return {"name": "kfmlops-serving", "rules": records + burns + errors}


def _quality(w: Windows) -> dict[str, Any]:
    limits = ("(kfmlops_drift_performance < on (model, task, metric) kfmlops_drift_performance_minimum"
              " or kfmlops_drift_performance > on (model, task, metric) kfmlops_drift_performance_maximum)"
              " and on (model) (kfmlops_drift_labelled_rows >= on (model) kfmlops_drift_policy_min_labelled_rows)")
    return {"name": "kfmlops-model-quality", "rules": [
        _alert("KfmlopsDatasetDrift", "kfmlops_drift_share >= on (model) kfmlops_drift_policy_drift_share",
               w.quality_for, "warning", "{{ $labels.model }}: {{ $value | humanizePercentage }} of features drifted",
               "The drift job's last window has a drifted share at or over policy.drift_share; see its report in MLflow."),
        _alert("KfmlopsPredictionDrift", "kfmlops_drift_prediction_drifted == 1", w.quality_for, "warning",
               "{{ $labels.model }}: prediction column {{ $labels.column }} drifted",
               "The served model's predictions on the last window drifted from its predictions on the reference."),
        _alert("KfmlopsPerformanceBelowMinimum", limits, w.quality_for, "warning",
               "{{ $labels.model }}: {{ $labels.metric }} {{ $value }} on labelled rows is past its limit",
               "The labelled window's {{ $labels.metric }} is worse than policy.min_performance allows."),
        _alert("KfmlopsDriftJobStale",
               f"time() - kfmlops_drift_last_run_timestamp_seconds > {w.drift_job_stale_after}",
               w.quality_for, "warning", "{{ $labels.model }}: the drift job has not reported for a day",
               f"No drift run reported for {duration(w.drift_job_stale_after)}: the CronJob failed, was suspended, "
               "or cannot reach the Pushgateway."),
    ]}


def _retraining(w: Windows) -> dict[str, Any]:
    latest = "kfmlops_retrain_latest_claimed_timestamp_seconds"
    return {"name": "kfmlops-retraining", "rules": [
        _alert("KfmlopsRetrainFailed", f'{latest}{{status="failed"}} > 0', w.retrain_for, "warning",
               "{{ $labels.model }}: the latest retrain failed to start",
               "The drift job claimed a window for retraining and the pipeline submission failed; the window "
               "stays claimed and is never retried by itself."),
        _alert("KfmlopsRetrainStuck", f'time() - {latest}{{status="claimed"}} > {w.retrain_stuck_after}',
               w.retrain_for, "warning", "{{ $labels.model }}: the latest retrain is stuck before submission",
               f"A window was claimed for retraining over {duration(w.retrain_stuck_after)} ago and never submitted "
               "nor marked failed: the drift job died in between."),
    ]}


def _sink(w: Windows) -> dict[str, Any]:
    return {"name": "kfmlops-inference-log", "rules": [
        _alert("KfmlopsSinkFailing", "max by (namespace, pod) (kfmlops_sink_failing) == 1", w.sink_for, "critical",
               "{{ $labels.pod }}: the inference-log sink is not committing",
               "The sink's last write or commit failed and has not succeeded since; events stay in its write-ahead "
               "log, and once its buffer is full it answers 503."),
    ]}


def rule_groups(windows: Windows = PRODUCTION, objectives: Objectives = Objectives()) -> list[dict[str, Any]]:
    """The rule groups (Prometheus rule-file shape) for ``windows`` and ``objectives``."""
    return [_serving(windows, objectives), _quality(windows), _retraining(windows), _sink(windows)]


def rule_file(windows: Windows = PRODUCTION, objectives: Objectives = Objectives()) -> str:
    """A Prometheus rule file (what ``promtool`` and ``prometheus --rule-file`` read)."""
    return yaml.safe_dump({"groups": rule_groups(windows, objectives)}, sort_keys=False, width=120)


def prometheus_rule() -> str:
    """The committed ``PrometheusRule`` manifest with the production windows."""
    header = "# Generated by `python -m kfmlops.monitoring.alerts` (src/kfmlops/monitoring/alerts.py): edit that.\n"
    body = {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
            "metadata": {"name": "kfmlops", "labels": {"app.kubernetes.io/component": "monitoring"}},
            "spec": {"groups": rule_groups()}}
    return header + yaml.safe_dump(body, sort_keys=False, width=120)


def main(argv: list[str] | None = None) -> int:
    """Write the ``PrometheusRule`` to PATH."""
    parser = argparse.ArgumentParser(prog="python -m kfmlops.monitoring.alerts", description=__doc__.split("\n")[0])
    parser.add_argument("path", type=Path)
    path = parser.parse_args(argv).path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(prometheus_rule())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
