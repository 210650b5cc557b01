"""The drift stage (``kfmlops drift``): a window of predictions against the served model's training data.

Consumes a :class:`~kfmlops.monitoring.config.DriftConfig`: the current data (a window of whole
hours of the inference log, or any dataset), the training config the served model was built with,
and the reference (the served version's training data, found through its ``kfmlops.train_data``
lineage tag, or a given URI). Produces, in ``output_dir``:

- ``summary.json``: rows checked, per-feature drift (Evidently method, threshold, score, verdict),
  the drifted share, prediction drift, data quality, classification figures on labelled rows,
  the policy decision and the retrain it started, if any;
- ``report.html``: the same as a self-contained page;
- ``evidently.html`` / ``evidently_classification.html``: Evidently's interactive reports (column
  statistics and current-vs-reference distributions; classification quality) on a seeded sample
  of at most ``drift.report_rows`` rows, for exploring (the figures above use every row);

and exports the figures as Prometheus metrics. When the policy fires and a submitter is configured,
the reference plus the window's labelled rows become fresh training data (gated on the served
model's test rows) and the training pipeline is submitted once for this window (see
:mod:`~kfmlops.monitoring.trigger`).

``summary.json``'s ``status`` says how far the run got, and ``kfmlops drift`` exits with the code
beside it (:func:`exit_code`):

- ``checked``, exit 0: every feature was checked; no drift, drift reported, a retrain submitted,
  or a retrain held back by the policy (cool-down, daily cap, window already handled);
- ``too_small``, exit 0 as well: a window below ``policy.min_rows`` (a quiet hour on a schedule,
  not a fault: nothing is checked and nothing triggered, and the console, report and ``problems``
  say so) — a CronJob is not marked failed, or retried, for traffic that did not come;
- ``retrain`` failed to start (``retrain.status`` ``failed``), exit 1;
- ``misconfigured``, exit 2: nothing was checked because the configuration points at nothing
  (an unknown model in the registry, no such version or alias, a ``window.model`` with no
  predictions in the log, unreadable data); ``error`` says what and what the log or registry has;
- ``incomplete``, exit 3: features missing from the window or not checkable (``problems`` names
  them; the features that were checked still count for the policy).

A failure of the check is never reported as health: the console line, ``report.html`` and the
summary's ``problems`` say what was not checked.

Plain typed Python: no KFP imports; a KFP component can call :func:`run`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kfmlops import report
from kfmlops.config import PipelineConfig
from kfmlops.durable import write_text_atomically
from kfmlops.ingest import IngestError, fingerprint, label_to_int, normalise_column, normalise_name, read_batches
from kfmlops.monitoring import prometheus
from kfmlops.monitoring.config import DriftConfig
from kfmlops.monitoring.lineage import ServedModel, ingest_config_for, load_reference, score_reference, served_model
from kfmlops.monitoring.policy import Decision, Figures, Ledger, decide, window_id
from kfmlops.monitoring.stats import NUMERICAL, ColumnDrift, classification, column_drift, column_quality, column_type
from kfmlops.monitoring.store import INPUT_PREFIX, input_columns, logged_models, read_window, window_bounds
from kfmlops.monitoring.trigger import (
    Submitter,
    fresh_pipeline_config,
    fresh_test_data,
    fresh_training_data,
    retrain,
    submitter_for,
)
from kfmlops.register import TAG_LIMIT
from kfmlops.tracking import kfmlops_home
from kfmlops.typed import ConfigError

log = logging.getLogger(__name__)

CHECKED, INCOMPLETE, TOO_SMALL, MISCONFIGURED = "checked", "incomplete", "too_small", "misconfigured"
EXIT_OK, EXIT_RETRAIN_FAILED, EXIT_MISCONFIGURED, EXIT_INCOMPLETE = 0, 1, 2, 3


@dataclass(frozen=True)
class Comparison:
    """Everything computed from the current data against the reference."""

    columns: list[ColumnDrift]  # checked features
    skipped: dict[str, str]  # feature -> why it was not checked
    prediction: ColumnDrift | None
    prediction_note: str | None  # why there is no prediction drift
    quality: dict[str, dict[str, Any]]
    classification: dict[str, Any] | None

    @property
    def drift_share(self) -> float | None:
        return sum(c.drifted for c in self.columns) / len(self.columns) if self.columns else None


def normalise_current(table: pa.Table, label: str, positive_labels: list, na_values: list[str]) -> pa.Table:
    """Column names and values normalised as ingest does (snake_case, trimmed strings, NA tokens as
    nulls); a raw ``label`` column becomes 0/1 ``int8`` with nulls kept (unlabelled rows), an ``int8``
    one is taken as 0/1 already."""
    na = pa.array([v.strip() for v in na_values], pa.string())
    columns = {}
    for name, values in zip(table.column_names, table.columns):
        name = normalise_name(name)
        if name == label and pa.types.is_int8(values.type):  # already 0/1 (the log's imported labels)
            columns[name] = values
            continue
        values = normalise_column(values, na)
        if name == label:
            values = pc.if_else(pc.is_valid(values), label_to_int(values, positive_labels, label), pa.scalar(None, pa.int8()))
        columns[name] = values
    return pa.table(columns)


def current_from_log(raw: pa.Table, label: str, prediction_column: str) -> pa.Table:
    """The log's ``input.*`` columns as features (names normalised), with ``prediction``, ``label``
    and ``model_version`` renamed to what the reference and the config call them."""
    columns = {feature: raw[column] for feature, column in input_columns(raw).items()}
    columns[prediction_column] = raw["prediction"]
    columns["model_version"] = raw["model_version"]
    if "label" in raw.column_names:
        columns[label] = raw["label"]
    return pa.table(columns)


def compare(
    current: pa.Table, reference: pa.Table, features: list[str], label: str, config: DriftConfig, decision_threshold: float
) -> Comparison:
    """Per-feature drift, prediction drift, data quality and classification of ``current`` vs ``reference``."""
    drift_cfg = config.drift
    checked, skipped, quality = [], {}, {}
    for name in features:
        if name not in current.column_names or name not in reference.column_names:
            skipped[name] = f"not in the {'current' if name not in current.column_names else 'reference'} data"
            continue
        kind = column_type(current[name])
        if kind is None:
            skipped[name] = f"not a numerical or categorical column ({current[name].type})"
            continue
        try:
            checked.append(column_drift(name, reference[name], current[name], kind, drift_cfg))
        except ValueError as exc:
            skipped[name] = str(exc)
            continue
        quality[name] = column_quality(reference[name], current[name], kind)

    prediction, note = None, None
    column = drift_cfg.prediction_column
    if column not in current.column_names or current[column].null_count == len(current):
        note = "the current data has no predictions"
    elif column not in reference.column_names:
        note = "no reference predictions (set reference.score_with_model, or give the reference a prediction column)"
    elif (kind := column_type(current[column])) is None:
        note = f"predictions of type {current[column].type} are not checked"
    else:
        prediction = column_drift(column, reference[column], current[column], kind, drift_cfg)

    scores = None
    if label in current.column_names and column in current.column_names:
        labelled = current.filter(pc.and_(pc.is_valid(current[label]), pc.is_valid(current[column])))
        if labelled.num_rows:
            scores = classification(
                labelled[label].to_numpy().astype(np.int8), labelled[column].to_numpy().astype(np.float64), decision_threshold
            )
    return Comparison(checked, skipped, prediction, note, quality, scores)


def _sample(table: pa.Table, rows: int, seed: int) -> pa.Table:
    if table.num_rows <= rows:
        return table
    return table.take(np.sort(np.random.default_rng(seed).choice(table.num_rows, rows, replace=False)))


def evidently_reports(
    current: pa.Table, reference: pa.Table, comparison: Comparison, label: str, config: DriftConfig, out: Path
) -> dict[str, str]:
    """Evidently's interactive HTML reports on a sample of at most ``drift.report_rows`` rows; returns their paths.

    ``evidently.html``: ``DataSummaryPreset`` (per-column statistics and current-vs-reference
    distributions) of the checked columns; ``evidently_classification.html``: ``ClassificationPreset``
    on labelled rows. Per-column drift is left out: its exact figures are in ``report.html``.
    """
    from evidently import BinaryClassification, DataDefinition, Dataset, Report
    from evidently.presets import ClassificationPreset, DataSummaryPreset

    cfg = config.drift
    checked = comparison.columns + ([comparison.prediction] if comparison.prediction else [])
    if not checked or cfg.report_rows == 0:
        return {}
    numerical = [c.column for c in checked if c.column_type == NUMERICAL]
    categorical = [c.column for c in checked if c.column_type != NUMERICAL]
    definition = DataDefinition(numerical_columns=numerical, categorical_columns=categorical)

    def dataset(table: pa.Table, columns: list[str], definition_: DataDefinition) -> Dataset:
        return Dataset.from_pandas(_sample(table, cfg.report_rows, cfg.seed).select(columns).to_pandas(),
                                   data_definition=definition_)

    paths = {}
    snapshot = Report([DataSummaryPreset()]).run(dataset(current, numerical + categorical, definition),
                                                 dataset(reference, numerical + categorical, definition))
    paths["evidently"] = str(out / "evidently.html")
    snapshot.save_html(paths["evidently"])

    if comparison.classification:
        column = cfg.prediction_column
        labelled = current.filter(pc.and_(pc.is_valid(current[label]), pc.is_valid(current[column])))
        labelled = labelled.select([label, column]).set_column(0, label, labelled[label].cast(pa.int64()))
        definition = DataDefinition(
            numerical_columns=[column], categorical_columns=[label],
            classification=[BinaryClassification(target=label, prediction_probas=column, pos_label=1)],
        )
        snapshot = Report([ClassificationPreset()]).run(dataset(labelled, [label, column], definition), None)
        paths["evidently_classification"] = str(out / "evidently_classification.html")
        snapshot.save_html(paths["evidently_classification"])
    return paths


def _majority(values: pa.ChunkedArray) -> str | None:
    counts = pc.value_counts(pc.drop_null(values))
    if len(counts) == 0:
        return None
    return counts[int(np.argmax(counts.field("counts").to_numpy()))]["values"].as_py()


def _served(config: DriftConfig, training: PipelineConfig, current: pa.Table) -> ServedModel:
    """The served version: configured, else the window's most common ``model_version``, else the alias."""
    version = config.reference.model_version
    if version is None and "model_version" in current.column_names:
        version = _majority(current["model_version"])
    return served_model(training.settings.mlflow, version, config.reference.alias)


def run(config: DriftConfig, now: datetime | None = None, submit: Submitter | None = None) -> dict[str, Any]:
    """One drift run (see the module docstring); returns the summary it wrote to ``summary.json``.

    ``submit`` starts the training pipeline when the policy fires (None: decide and report only).
    A misconfiguration writes a ``misconfigured`` summary (with the ``error``) and raises ConfigError.
    """
    now = now or datetime.now(timezone.utc)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        return _run(config, now, submit, out)
    except (ConfigError, IngestError) as exc:
        summary = {"model": config.model_name, "status": MISCONFIGURED, "error": str(exc), "run_at": now.timestamp()}
        write_text_atomically(out / "report.html", report.page(f"Drift: {config.model_name}", [
            ("Misconfigured: nothing was checked", f"<p>{report.verdict(False)} {report.fmt(exc)}</p>")]))
        write_text_atomically(out / "summary.json", json.dumps(summary, indent=1))
        raise ConfigError(str(exc)) from None


def exit_code(summary: dict[str, Any]) -> int:
    """``kfmlops drift``'s exit code for a summary (see the module docstring)."""
    if summary["status"] == MISCONFIGURED:
        return EXIT_MISCONFIGURED
    if summary["retrain"].get("status") == "failed":
        return EXIT_RETRAIN_FAILED
    return EXIT_INCOMPLETE if summary["status"] == INCOMPLETE else EXIT_OK


def _logged_current(config: DriftConfig, start: datetime, end: datetime, label: str) -> pa.Table:
    """The window from the log; ConfigError when the log has never held a prediction of the model."""
    model = config.model_name
    if model not in (models := logged_models(config.log_root)):
        raise ConfigError(
            f"no predictions of model {model!r} in the inference log {config.log_root} (window.model is the "
            f"InferenceService name; the log has {', '.join(repr(m) for m in models) or 'no predictions at all'})"
        )
    needed = lambda name: name.startswith(INPUT_PREFIX) or name in ("prediction", "model_version")  # noqa: E731
    return current_from_log(read_window(config.log_root, model, start, end, needed), label, config.drift.prediction_column)


def problems_of(features: list[str], comparison: Comparison) -> list[str]:
    """Why the check is incomplete: features not checked, or none to check; empty when complete."""
    if not features:
        return ["no features to check: the reference has none besides the label and the prediction"]
    if not comparison.skipped:
        return []
    return [f"{len(comparison.skipped)} of {len(features)} features not checked: "
            + "; ".join(f"{name} ({why})" for name, why in comparison.skipped.items())]


def _run(config: DriftConfig, now: datetime, submit: Submitter | None, out: Path) -> dict[str, Any]:
    started = time.monotonic()
    timings: dict[str, float] = {}
    training = PipelineConfig.from_yaml(config.training_config)
    label = normalise_name(training.data.label)
    model = config.model_name
    prediction_column = config.drift.prediction_column

    ingest_cfg = training.settings.ingest
    if config.log_root is not None:
        start, end = window_bounds(now, config.window.hours, config.window.settle_minutes)
        current = _logged_current(config, start, end, label)
        identity = {"model": model, "start": start.isoformat(), "end": end.isoformat()}
    else:
        ingest_cfg = ingest_config_for(config.current, ingest_cfg)
        batches = list(read_batches(config.current, ingest_cfg))
        current = pa.Table.from_batches(batches) if batches else pa.table({})  # a header and no rows
        identity = {"model": model, "current": config.current, "fingerprint": fingerprint([config.current])}
    current = normalise_current(current, label, training.data.positive_labels, ingest_cfg.na_values)
    labelled_rows = int(len(current) - current[label].null_count) if label in current.column_names else 0
    timings["read_current"] = time.monotonic() - started

    summary: dict[str, Any] = {
        "model": model, "window": identity, "window_id": window_id(identity), "run_at": now.timestamp(),
        "rows": current.num_rows, "labelled_rows": labelled_rows, "served": None, "reference": None,
        "drift": None, "prediction_drift": None, "quality": None, "classification": None, "retrain": {}, "reports": {},
        "problems": [],
    }
    trigger = config.trigger
    ledger = Ledger(trigger.ledger_dir or kfmlops_home() / "drift" / "ledger")
    if current.num_rows < config.policy.min_rows:
        decision = decide(Figures(rows=current.num_rows), config.policy, ledger, summary["window_id"], model, now.timestamp())
        summary |= {"status": TOO_SMALL, "decision": decision.as_dict(), "problems": decision.blocked}
        return _finish(summary, config, out, timings, started)

    t = time.monotonic()
    served = None
    if config.reference.uri is None:
        served = _served(config, training, current)
        summary["served"] = vars(served)
        if not served.train_data:
            raise ConfigError(f"model {served.name} version {served.version} has no kfmlops.train_data tag; set reference.uri")
    reference_uri = config.reference.uri or served.train_data
    reference, _ = load_reference(reference_uri, training)
    if (
        config.reference.score_with_model and prediction_column not in reference.column_names
        and prediction_column in current.column_names and current[prediction_column].null_count < len(current)
    ):
        served = served or _served(config, training, current)
        summary["served"] = vars(served)
        scores = score_reference(served.model_uri, reference.drop_columns([label]), training.settings.mlflow)
        reference = reference.append_column(prediction_column, pa.array(scores))
    summary["reference"] = {"uri": reference_uri, "rows": reference.num_rows}
    timings["reference"] = time.monotonic() - t

    t = time.monotonic()
    features = config.drift.columns or [c for c in reference.column_names if c not in (label, prediction_column)]
    comparison = compare(current, reference, features, label, config, training.settings.evaluate.decision_threshold)
    drift_share = comparison.drift_share
    drifted = [c.column for c in comparison.columns if c.drifted]
    problems = problems_of(features, comparison)
    summary |= {
        "status": INCOMPLETE if problems else CHECKED, "problems": problems,
        "drift": {
            "share": drift_share, "checked": len(comparison.columns), "drifted": drifted,
            "dataset_drift": drift_share is not None and drift_share >= config.policy.drift_share,
            "columns": [c.as_dict() for c in comparison.columns], "skipped": comparison.skipped,
        },
        "prediction_drift": comparison.prediction.as_dict() if comparison.prediction else None,
        "prediction_drift_note": comparison.prediction_note,
        "quality": comparison.quality,
        "classification": comparison.classification,
    }
    timings["compare"] = time.monotonic() - t

    t = time.monotonic()
    summary["reports"] = evidently_reports(current, reference, comparison, label, config, out)
    timings["evidently_reports"] = time.monotonic() - t

    figures = Figures(
        rows=current.num_rows, labelled_rows=labelled_rows, drift_share=drift_share, drifted_features=drifted,
        prediction_drifted=comparison.prediction.drifted if comparison.prediction else None,
        prediction_score=comparison.prediction.score if comparison.prediction else None,
        roc_auc=(comparison.classification or {}).get("roc_auc"),
    )
    decision = decide(figures, config.policy, ledger, summary["window_id"], model, now.timestamp())
    summary["decision"] = decision.as_dict()
    if decision.fire:
        t = time.monotonic()
        summary["retrain"] = _retrain(decision, summary, current, reference, label, training, ledger, submit, config, now)
        timings["retrain"] = time.monotonic() - t
    return _finish(summary, config, out, timings, started)


def _retrain(
    decision: Decision, summary: dict[str, Any], current: pa.Table, reference: pa.Table, label: str,
    training: PipelineConfig, ledger: Ledger, submit: Submitter | None, config: DriftConfig, now: datetime,
) -> dict[str, Any]:
    if submit is None:
        return {"submitted": False, "status": "not submitted: no submitter (trigger.submitter is none, or --dry-run)"}
    reason = {
        "window": summary["window"], "window_id": decision.window_id, "reasons": decision.reasons,
        "drift_share": summary["drift"]["share"], "drifted": summary["drift"]["drifted"],
        "prediction_drift": summary["prediction_drift"], "classification": summary["classification"],
    }
    data_dir = Path(config.trigger.data_dir or kfmlops_home() / "drift" / "data") / config.model_name / decision.window_id
    labelled = current.filter(pc.is_valid(current[label]))
    reference = reference.drop_columns([c for c in (config.drift.prediction_column,) if c in reference.column_names])
    rows = fresh_training_data(reference, labelled, label, data_dir / "train.parquet", reason)
    fresh_test_data(training, data_dir / "test.parquet")
    (data_dir / "reason.json").write_text(json.dumps(reason, indent=1))
    arguments = fresh_pipeline_config(training, str(data_dir / "train.parquet"), str(data_dir / "test.parquet"),
                                      label).pipeline_arguments()
    arguments["run_tags"] = {  # why this run started, on the new MLflow run
        "kfmlops.retrain.window_id": decision.window_id,
        "kfmlops.retrain.reasons": json.dumps(decision.reasons)[:TAG_LIMIT],
        "kfmlops.retrain.drift_share": f"{summary['drift']['share']:.4f}",
    }
    try:
        entry, submitted = retrain(decision, config.model_name, summary["window"], arguments, ledger, submit, now.timestamp())
    except Exception as exc:  # recorded in the ledger and the summary; main() exits non-zero
        log.exception("drift: submitting the training pipeline failed")
        return {"submitted": False, "status": "failed", "error": f"{type(exc).__name__}: {exc}", "source": arguments["data"]["source"]}
    return {"submitted": submitted, "status": entry.status, "run_id": entry.run_id, "source": entry.source,
            "rows": rows, "arguments": arguments if submitted else None}


def _finish(summary: dict[str, Any], config: DriftConfig, out: Path, timings: dict[str, float], started: float) -> dict[str, Any]:
    t = time.monotonic()
    summary["metrics_exported_to"] = prometheus.export(summary, config.model_name, config.metrics)
    timings["metrics"] = time.monotonic() - t
    timings["total"] = time.monotonic() - started
    summary["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
    summary["reports"]["html"] = str(out / "report.html")
    write_text_atomically(out / "report.html", render(summary))
    write_text_atomically(out / "summary.json", json.dumps(summary, indent=1, default=str))
    return summary


def render(summary: dict[str, Any]) -> str:
    """``report.html``: the summary as a self-contained page."""
    decision = summary["decision"]
    if decision["fire"]:
        headline = "<p>" + report.verdict(False) + " The policy fired: " + "; ".join(map(report.fmt, decision["reasons"])) + "</p>"
    elif decision["signals"]:
        headline = "<p>" + report.verdict(False, warning=True) + " Signals on but no retrain: " + "; ".join(
            map(report.fmt, decision["reasons"] + decision["blocked"])) + "</p>"
    elif summary["problems"]:
        headline = ""
    else:
        headline = "<p>" + report.verdict(True) + " " + report.fmt("; ".join(decision["blocked"]) or "No retraining signal.") + "</p>"
    if summary["problems"]:  # a check that did not happen is not health
        headline = "<p>" + report.verdict(False, warning=True) + " Check incomplete: " + report.fmt(
            "; ".join(summary["problems"])) + "</p>" + headline
    overview = [
        {"field": k, "value": json.dumps(summary[k], default=str) if isinstance(summary[k], dict) else summary[k]}
        for k in ("model", "window", "rows", "labelled_rows", "served", "reference", "retrain") if summary.get(k) is not None
    ]
    sections = [("Decision", headline), ("Window", report.table(overview))]
    drift = summary.get("drift")
    if drift:
        rows = [
            {"feature": c["column"], "type": c["column_type"], "method": c["method"], "threshold": c["threshold"],
             "score": c["score"], "drift": report.verdict(not c["drifted"], warning=True)}
            for c in drift["columns"]
        ]
        share = "n/a" if drift["share"] is None else f"{drift['share']:.0%}"
        sections.append((f"Feature drift: {share} of {drift['checked']} features drifted", report.table(rows, raw=["drift"])))
        if drift["skipped"]:
            sections.append(("Not checked", report.table({"feature": k, "why": v} for k, v in drift["skipped"].items())))
        prediction = summary["prediction_drift"]
        sections.append(("Prediction drift", report.table(
            [{"method": prediction["method"], "threshold": prediction["threshold"], "score": prediction["score"],
              "drift": report.verdict(not prediction["drifted"], warning=True)}], raw=["drift"],
        ) if prediction else f"<p>{report.fmt(summary['prediction_drift_note'])}</p>"))
        sections.append(("Data quality", report.table({"feature": k, **v} for k, v in summary["quality"].items())))
        scores = summary["classification"]
        sections.append(("Classification on labelled rows", report.table(
            [{"metric": k, "value": v} for k, v in scores.items()]) if scores else "<p>No labelled rows.</p>"))
        links = "".join(f'<li><a href="{Path(p).name}">{Path(p).name}</a></li>' for k, p in summary["reports"].items() if k != "html")
        if links:
            sections.append(("Evidently reports", "<p>Interactive, on a sample of the rows (the figures above use "
                             f"every row):</p><ul>{links}</ul>"))
    return report.page(f"Drift: {summary['model']}", sections)


def main(argv: list[str] | None = None) -> int:
    """``kfmlops drift --config drift.yaml [--now ISO-TIME] [--dry-run]``; exits with :func:`exit_code`."""
    parser = argparse.ArgumentParser(prog="kfmlops drift", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="drift YAML (DriftConfig)")
    parser.add_argument("--now", type=datetime.fromisoformat, help="evaluate as of this time (default: now)")
    parser.add_argument("--dry-run", action="store_true", help="decide and report, never submit")
    args = parser.parse_args(argv)
    try:
        config = DriftConfig.from_yaml(args.config)
        submit = None if args.dry_run else submitter_for(config.trigger)
        now = args.now.replace(tzinfo=args.now.tzinfo or timezone.utc) if args.now else None
        summary = run(config, now, submit)
    except ConfigError as exc:
        print(f"kfmlops drift: misconfigured, nothing checked: {exc}", file=sys.stderr)
        return EXIT_MISCONFIGURED
    decision, retrain_ = summary["decision"], summary["retrain"]
    drift = summary["drift"] or {}
    share = "n/a" if drift.get("share") is None else f"{drift['share']:.0%}"
    print(
        f"drift {summary['model']}: {summary['rows']} rows, status {summary['status']}, "
        f"drift share {share} of {drift.get('checked', 0)} features checked, signals {decision['signals'] or 'none'}, "
        f"retrain {retrain_.get('status', 'no')}{' run ' + str(retrain_['run_id']) if retrain_.get('run_id') else ''}; "
        f"{summary['reports']['html']}"
    )
    for problem in summary["problems"]:
        print(f"  check incomplete: {problem}", file=sys.stderr)
    return exit_code(summary)
