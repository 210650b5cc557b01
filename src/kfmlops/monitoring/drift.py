"""The drift stage (``kfmlops drift``): a window of predictions against the served model's training data.

Consumes a :class:`~kfmlops.monitoring.config.DriftConfig`: the current data (a window of whole
hours of the inference log, or any dataset), the training config the served model was built with,
and the reference (the served version's train split, found through its ``kfmlops.snapshot.train``
tag, else its training data through its ``kfmlops.train_data`` lineage tag, or a given URI). The served model's task (binary, multiclass or regression: its MLflow
metadata, else the training data's under the training config) says what labels and outputs mean:
labels are canonical (class names, or numbers), the log's served outputs become the predictions
dataset's columns (``prediction``: the class or value; ``proba:<class>``), and the reference's are
recomputed with the served model (:mod:`~kfmlops.monitoring.window`,
:mod:`~kfmlops.monitoring.lineage`). Produces, in ``output_dir``:

- ``summary.json``: the task, rows checked, per-feature drift (Evidently method, threshold, score,
  verdict), the drifted share, prediction drift (the predicted class, a categorical test, or the
  predicted value, a numerical one; for a binary task P(positive) too), data quality, performance
  on labelled rows (binary ROC AUC and the figures at the threshold, multiclass accuracy and macro
  F1, regression RMSE and MAE), the policy decision and the retrain it started, if any;
  ``anomalies`` (a window of the log): shifts of the prediction rate and of the served scores
  against the hours before the window (:mod:`~kfmlops.monitoring.anomaly`; reported, never a
  reason to retrain); ``late_labels``: the earlier windows, judged before their labels arrived,
  that this run re-evaluated on their labels now imported, each with its performance, the
  policy's decision and the retrain it started (:mod:`~kfmlops.monitoring.late_labels`), and how
  many still await labels;
- ``report.html``: the same as a self-contained page;
- ``evidently.html`` / ``evidently_performance.html``: Evidently's interactive reports (column
  statistics and current-vs-reference distributions; classification or regression quality) on a
  seeded sample of at most ``drift.report_rows`` rows, for exploring (the figures above use every row);

and exports the figures as Prometheus metrics. When the policy fires and a submitter is configured,
the reference plus the window's labelled rows become fresh training data (gated on the served
model's test rows) and the training pipeline is submitted once for this window, with the task
carried over (see :mod:`~kfmlops.monitoring.trigger`).

``summary.json``'s ``status`` says how far the run got, and ``kfmlops drift`` exits with the code
beside it (:func:`exit_code`):

- ``checked``, exit 0: every feature was checked; no drift, drift reported, a retrain submitted,
  or a retrain held back by the policy (cool-down, daily cap, window already handled);
- ``too_small``, exit 0 as well: a window below ``policy.min_rows`` (a quiet hour on a schedule,
  not a fault: nothing is checked and nothing triggered, and the console, report and ``problems``
  say so) — a CronJob is not marked failed, or retried, for traffic that did not come;
- ``retrain`` failed to start (``retrain.status`` ``failed``, or a late-label retrain's), exit 1;
- ``misconfigured``, exit 2: nothing was checked because the configuration points at nothing
  (an unknown model in the registry, no such version or alias, a ``window.model`` with no
  predictions in the log, unreadable data, a model whose task its training data contradicts, a
  ``policy.min_performance`` metric the task does not measure); ``error`` says what and what the
  log or registry has;
- ``incomplete``, exit 3: features missing from the window or not checkable, logged outputs that
  are not the task's, labels that fit none of its classes (``problems`` names them; what was
  checked still counts for the policy).

A failure of the check is never reported as health: the console line, ``report.html`` and the
summary's ``problems`` say what was not checked.

Plain typed Python: no KFP imports; a KFP component can call :func:`run`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kfmlops import report
from kfmlops.config import PipelineConfig
from kfmlops.durable import write_text_atomically
from kfmlops.ingest import IngestError, fingerprint, normalise_name, read_batches
from kfmlops.model_contract import ModelContractError, load, read_info
from kfmlops.monitoring import prometheus
from kfmlops.monitoring.anomaly import serving_anomalies
from kfmlops.monitoring.config import DriftConfig, DriftTestConfig
from kfmlops.monitoring.lineage import (
    ServedModel,
    download_model,
    ingest_config_for,
    load_reference,
    resolve_task,
    score_reference,
    served_model,
)
from kfmlops.monitoring.late_labels import (
    DIRECTORY,
    EVALUATED,
    EXPIRED,
    LateLabels,
    LateWindow,
    awaits_labels,
    expired,
    late_window_id,
)
from kfmlops.monitoring.policy import Decision, Figures, Ledger, check_performance_limits, decide, window_id
from kfmlops.monitoring.stats import CATEGORICAL, NUMERICAL, ColumnDrift, column_drift, column_quality, column_type, performance
from kfmlops.monitoring.store import INPUT_PREFIX, OUTPUT_PREFIX, logged_models, read_window, window_bounds
from kfmlops.monitoring.trigger import (
    Submitter,
    fresh_pipeline_config,
    fresh_test_data,
    fresh_training_data,
    retrain,
    submitter_for,
)
from kfmlops.monitoring.window import SERVED_OUTPUT, current_from_log, normalise_current, unreadable_outputs
from kfmlops.register import TAG_LIMIT
from kfmlops.tasks import PREDICTION, PROBA_PREFIX, Task, TaskError
from kfmlops.tracking import kfmlops_home
from kfmlops.typed import ConfigError

log = logging.getLogger(__name__)

CHECKED, INCOMPLETE, TOO_SMALL, MISCONFIGURED = "checked", "incomplete", "too_small", "misconfigured"
NOT_SUBMITTED = {"submitted": False, "status": "not submitted: no submitter (trigger.submitter is none, or --dry-run)"}
EXIT_OK, EXIT_RETRAIN_FAILED, EXIT_MISCONFIGURED, EXIT_INCOMPLETE = 0, 1, 2, 3


@dataclass(frozen=True)
class Comparison:
    """Everything computed from the current data against the reference."""

    columns: list[ColumnDrift]  # checked features
    skipped: dict[str, str]  # feature -> why it was not checked
    predictions: list[ColumnDrift]  # the prediction columns tested (see prediction_columns)
    prediction_note: str | None  # why there is no prediction drift
    quality: dict[str, dict[str, Any]]
    performance: dict[str, Any] | None

    @property
    def drift_share(self) -> float | None:
        return sum(c.drifted for c in self.columns) / len(self.columns) if self.columns else None


def prediction_columns(task: Task, config: DriftTestConfig) -> dict[str, str]:
    """The prediction columns whose drift is tested, with their column type: the predicted class
    (categorical) or value (numerical), and for a binary task P(positive) when configured."""
    columns = {PREDICTION: CATEGORICAL if task.is_classification else NUMERICAL}
    if task.kind == "binary" and config.positive_probability:
        columns[PROBA_PREFIX + task.positive] = NUMERICAL
    return columns


def compare(
    current: pa.Table, reference: pa.Table, features: list[str], task: Task, config: DriftConfig
) -> Comparison:
    """Per-feature drift, prediction drift, data quality and performance of ``current`` vs ``reference``."""
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

    tested, note = [], None
    if PREDICTION not in current.column_names or current[PREDICTION].null_count == len(current):
        note = "the current data has no predictions"
    elif PREDICTION not in reference.column_names:
        note = "no reference predictions (set reference.score_with_model, or give the reference a prediction column)"
    else:
        try:
            tested = [column_drift(c, reference[c], current[c], kind, drift_cfg)
                      for c, kind in prediction_columns(task, drift_cfg).items()
                      if c in current.column_names and c in reference.column_names]
        except ValueError as exc:  # e.g. numbers in a classification task's prediction column
            note = f"prediction drift not computed: {exc}"
    return Comparison(checked, skipped, tested, note, quality, window_performance(current, task))


def window_performance(current: pa.Table, task: Task) -> dict[str, Any] | None:
    """:func:`~kfmlops.monitoring.stats.performance` on the rows with a label and a prediction; None when there are none.

    ROC AUC (binary) needs the ``proba:<class>`` columns; without them it is None.
    """
    if task.label not in current.column_names or PREDICTION not in current.column_names:
        return None
    labelled = current.filter(pc.and_(pc.is_valid(current[task.label]), pc.is_valid(current[PREDICTION])))
    if labelled.num_rows == 0:
        return None
    scores = None
    if task.is_classification and all(c in labelled.column_names for c in task.proba_columns):
        scores = np.column_stack([labelled[c].to_numpy() for c in task.proba_columns])
    predicted = labelled[PREDICTION].to_numpy(zero_copy_only=False)
    return {"task": task.kind, **performance(task, labelled[task.label].to_numpy(zero_copy_only=False), predicted, scores)}


def _sample(table: pa.Table, rows: int, seed: int) -> pa.Table:
    if table.num_rows <= rows:
        return table
    return table.take(np.sort(np.random.default_rng(seed).choice(table.num_rows, rows, replace=False)))


def evidently_reports(
    current: pa.Table, reference: pa.Table, comparison: Comparison, task: Task, config: DriftConfig, out: Path
) -> dict[str, str]:
    """Evidently's interactive HTML reports on a sample of at most ``drift.report_rows`` rows; returns their paths.

    ``evidently.html``: ``DataSummaryPreset`` (per-column statistics and current-vs-reference
    distributions) of the checked columns; ``evidently_performance.html``: ``ClassificationPreset``
    or ``RegressionPreset`` on the labelled rows (not for a multiclass window of fewer than three
    classes, which Evidently 0.7 fails on). Per-column drift is left out: its exact figures are in
    ``report.html``.
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataSummaryPreset

    cfg = config.drift
    checked = comparison.columns + comparison.predictions
    if not checked or cfg.report_rows == 0:
        return {}
    numerical = [c.column for c in checked if c.column_type == NUMERICAL]
    categorical = [c.column for c in checked if c.column_type != NUMERICAL]

    def dataset(table: pa.Table, definition: DataDefinition, names: dict[str, str] | None = None) -> Dataset:
        frame = _sample(table, cfg.report_rows, cfg.seed).to_pandas()
        return Dataset.from_pandas(frame.rename(columns=names or {}), data_definition=definition)

    paths = {}
    definition = DataDefinition(numerical_columns=numerical, categorical_columns=categorical)
    snapshot = Report([DataSummaryPreset()]).run(dataset(current.select(numerical + categorical), definition),
                                                 dataset(reference.select(numerical + categorical), definition))
    paths["evidently"] = str(out / "evidently.html")
    snapshot.save_html(paths["evidently"])

    if comparison.performance:
        labelled = current.filter(pc.and_(pc.is_valid(current[task.label]), pc.is_valid(current[PREDICTION])))
        performance = _performance_report(labelled, task)
        if performance is None:
            log.warning("drift: no Evidently performance report: the labelled rows hold fewer than three classes, "
                        "which Evidently 0.7 takes for a binary task and fails on (the figures are in report.html)")
        else:
            preset, definition, columns = performance
            snapshot = Report([preset]).run(dataset(labelled.select(list(columns)), definition, columns), None)
            paths["evidently_performance"] = str(out / "evidently_performance.html")
            snapshot.save_html(paths["evidently_performance"])
    return paths


def _performance_report(labelled: pa.Table, task: Task):
    """Evidently's preset and data definition for ``task``'s performance on ``labelled``, and the
    columns it reads (``{column: its name for Evidently}``: multiclass probabilities are named by
    class, as Evidently wants them). None for a multiclass window of fewer than three classes
    (labels and predictions), which Evidently 0.7 takes for a binary task and fails on; it also
    fails (KeyError) on probabilities of a class the labels lack, so those are left out."""
    from evidently import BinaryClassification, DataDefinition, MulticlassClassification, Regression
    from evidently.presets import ClassificationPreset, RegressionPreset

    label = task.label
    columns = {label: label, PREDICTION: PREDICTION}
    if task.kind == "regression":
        regression = [Regression(target=label, prediction=PREDICTION)]
        return RegressionPreset(), DataDefinition(numerical_columns=[label, PREDICTION], regression=regression), columns
    probas = [c for c in task.proba_columns if c in labelled.column_names]
    if task.kind == "binary":
        positive = PROBA_PREFIX + task.positive
        scored = {"prediction_probas": positive} if positive in probas else {"prediction_labels": PREDICTION}
        named = {c: c for c in probas}
        spec = BinaryClassification(target=label, pos_label=task.positive, **scored)
    else:
        seen = pa.chunked_array(labelled[label].chunks + labelled[PREDICTION].chunks, pa.string())
        if pc.count_distinct(seen).as_py() < 3:
            return None
        every_class = pc.count_distinct(labelled[label]).as_py() == len(task.classes)
        named = {c: c.removeprefix(PROBA_PREFIX) for c in probas} if every_class else {}
        spec = MulticlassClassification(target=label, prediction_labels=PREDICTION,
                                        prediction_probas=list(named.values()) or None)
    definition = DataDefinition(categorical_columns=[label, PREDICTION], numerical_columns=list(named.values()),
                                classification=[spec])
    return ClassificationPreset(), definition, columns | named


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
        with tempfile.TemporaryDirectory(prefix="kfmlops-drift-") as scratch:  # the served model's download
            return _run(config, now, submit, out, Path(scratch))
    except (ConfigError, IngestError, ModelContractError, TaskError) as exc:
        summary = {"model": config.model_name, "status": MISCONFIGURED, "error": str(exc), "run_at": now.timestamp()}
        write_text_atomically(out / "report.html", report.page(f"Drift: {config.model_name}", [
            ("Misconfigured: nothing was checked", f"<p>{report.verdict(False)} {report.fmt(exc)}</p>")]))
        write_text_atomically(out / "summary.json", json.dumps(summary, indent=1))
        raise ConfigError(str(exc)) from None


def exit_code(summary: dict[str, Any]) -> int:
    """``kfmlops drift``'s exit code for a summary (see the module docstring)."""
    if summary["status"] == MISCONFIGURED:
        return EXIT_MISCONFIGURED
    late = (summary.get("late_labels") or {}).get("evaluated", [])
    if summary["retrain"].get("status") == "failed" or any(w["retrain"].get("status") == "failed" for w in late):
        return EXIT_RETRAIN_FAILED
    return EXIT_INCOMPLETE if summary["status"] == INCOMPLETE else EXIT_OK


def _logged_window(config: DriftConfig, start: datetime, end: datetime) -> pa.Table:
    """The window's rows from the log (inputs, outputs, model version, labels); ConfigError when the
    log has never held a prediction of the model."""
    model = config.model_name
    if model not in (models := logged_models(config.log_root)):
        raise ConfigError(
            f"no predictions of model {model!r} in the inference log {config.log_root} (window.model is the "
            f"InferenceService name; the log has {', '.join(repr(m) for m in models) or 'no predictions at all'})"
        )
    return read_window(config.log_root, model, start, end, _logged_column)


def _logged_column(name: str) -> bool:
    return name.startswith((INPUT_PREFIX, OUTPUT_PREFIX)) or name in ("prediction", "output_json", "model_version")


def _output_columns(raw: pa.Table, from_log: bool) -> list[str]:
    """The columns holding the current data's predictions before they are read under the task."""
    if from_log:
        return [c for c in raw.column_names if c in ("prediction", "output_json") or c.startswith(OUTPUT_PREFIX)]
    return [c for c in raw.column_names if c == PREDICTION or c.startswith(PROBA_PREFIX)]


def _raw_labelled_rows(raw: pa.Table, label: str, from_log: bool) -> int:
    """Rows with a label before the labels are read under the task (the log's ``label`` column, or
    the dataset's column named as the training config's label)."""
    names = [c for c in raw.column_names if (c == "label" if from_log else normalise_name(c) == label)]
    return len(raw) - raw[names[0]].null_count if names else 0


def problems_of(features: list[str], comparison: Comparison) -> list[str]:
    """Why the check is incomplete as far as features go: features not checked, or none to check."""
    if not features:
        return ["no features to check: the reference has none besides the label and the predictions"]
    if not comparison.skipped:
        return []
    return [f"{len(comparison.skipped)} of {len(features)} features not checked: "
            + "; ".join(f"{name} ({why})" for name, why in comparison.skipped.items())]


def data_problems(task: Task, rows: int, unreadable: int, unfit: dict[str, int]) -> list[str]:
    """Why the check is incomplete as far as outputs and labels go: logged outputs that are not
    ``task``'s, and labels that fit none of its classes (or are not numbers)."""
    problems = []
    if unreadable:
        classes = f" over the classes {list(task.classes)}" if task.kind == "multiclass" else ""
        problems.append(f"{unreadable} of {rows} logged outputs are not a {task.kind} model's ({SERVED_OUTPUT[task.kind]}"
                        f"{classes}): prediction drift and performance leave them out")
    if unfit:
        fits = f"fit none of the classes {list(task.classes)}" if task.is_classification else "are not numbers"
        shown = ", ".join(f"{value!r} ({n} rows)" for value, n in list(unfit.items())[:5])
        problems.append(f"{sum(unfit.values())} labels {fits}: {shown}; they count as unlabelled (labels are the "
                        "model's canonical class names, or numbers)")
    return problems


def _read_current(config: DriftConfig, training: PipelineConfig, now: datetime) -> tuple[pa.Table, dict[str, Any], list[str]]:
    """The current data as read (the log's window, or the dataset's rows), its identity for the
    ledger, and the NA tokens its values are read with."""
    if config.log_root is not None:
        start, end = window_bounds(now, config.window.hours, config.window.settle_minutes)
        identity = {"model": config.model_name, "start": start.isoformat(), "end": end.isoformat()}
        return _logged_window(config, start, end), identity, training.settings.ingest.na_values
    ingest_cfg = ingest_config_for(config.current, training.settings.ingest)
    batches = list(read_batches(config.current, ingest_cfg))
    raw = pa.Table.from_batches(batches) if batches else pa.table({})  # a header and no rows
    identity = {"model": config.model_name, "current": config.current, "fingerprint": fingerprint([config.current])}
    return raw, identity, ingest_cfg.na_values


@dataclass(frozen=True)
class Reference:
    """The reference (with the predictions dataset's columns when it has or was given predictions),
    where it came from, the served version (when the registry was asked) and the served model's task."""

    table: pa.Table
    uri: str
    served: ServedModel | None
    task: Task


def load_served_reference(
    config: DriftConfig, training: PipelineConfig, raw: pa.Table, from_log: bool, scratch: Path
) -> Reference:
    """The served version's training data (or ``reference.uri``) and the served model's task (its
    MLflow metadata, checked against the data's), scored by the served model when
    ``reference.score_with_model`` is set, the current data has predictions and the reference none."""
    served, uri = None, config.reference.uri
    if uri is None:
        served = _served(config, training, raw)
        uri = served.train_snapshot or served.train_data  # a snapshot is exactly the train split, a source is read again
        if not uri:
            raise ConfigError(f"model {served.name} version {served.version} has no kfmlops.snapshot.train or "
                              "kfmlops.train_data tag; set reference.uri")
    table, data_task = load_reference(uri, training)
    predicted = any(raw[c].null_count < raw.num_rows for c in _output_columns(raw, from_log))
    score = config.reference.score_with_model and predicted and PREDICTION not in table.column_names
    if served is None and score:
        served = _served(config, training, raw)
    model_dir = download_model(served, training.settings.mlflow, scratch) if served else None
    info = read_info(model_dir) if model_dir else None
    name = f"model {served.name} version {served.version}" if served else "the served model"
    task = resolve_task(info.task if info else None, data_task, name, uri)
    if score:
        scored = score_reference(load(model_dir, task), table, training.settings.evaluate.decision_threshold)
        for column in scored.column_names:
            table = table.append_column(column, scored[column])
    return Reference(table, uri, served, task)


def current_for(
    raw: pa.Table, from_log: bool, task: Task, training: PipelineConfig, na_values: list[str]
) -> tuple[pa.Table, list[str]]:
    """The current data in the reference's form for ``task`` (:mod:`~kfmlops.monitoring.window`),
    and the problems with its outputs and labels (:func:`data_problems`)."""
    current = current_from_log(raw, task, training.settings.evaluate.decision_threshold) if from_log else raw
    unreadable = unreadable_outputs(raw, current[PREDICTION]) if from_log else 0
    current, unfit = normalise_current(current, task, training.data, na_values)
    return current, data_problems(task, current.num_rows, unreadable, unfit)


def _run(config: DriftConfig, now: datetime, submit: Submitter | None, out: Path, scratch: Path) -> dict[str, Any]:
    started = time.monotonic()
    timings: dict[str, float] = {}
    training = PipelineConfig.from_yaml(config.training_config)
    model = config.model_name
    from_log = config.log_root is not None
    raw, identity, na_values = _read_current(config, training, now)
    timings["read_current"] = time.monotonic() - started

    summary: dict[str, Any] = {
        "model": model, "window": identity, "window_id": window_id(identity), "run_at": now.timestamp(),
        "rows": raw.num_rows, "labelled_rows": _raw_labelled_rows(raw, normalise_name(training.data.label), from_log),
        "task": None, "served": None, "reference": None, "drift": None, "prediction_drift": None, "quality": None,
        "performance": None, "retrain": {}, "reports": {}, "problems": [], "anomalies": None, "late_labels": None,
    }
    if from_log and config.anomaly.trailing_hours:
        t = time.monotonic()
        summary["anomalies"] = _anomalies(config, raw, identity)
        timings["anomalies"] = time.monotonic() - t
    ledger = Ledger(config.trigger.ledger_dir or kfmlops_home() / "drift" / "ledger")
    late = LateLabels(ledger.directory / DIRECTORY)
    if raw.num_rows < config.policy.min_rows:
        decision = decide(Figures(rows=raw.num_rows), config.policy, ledger, summary["window_id"], model, now.timestamp())
        summary |= {"status": TOO_SMALL, "decision": decision.as_dict(), "problems": decision.blocked}
        summary["late_labels"] = _late_labels(config, training, ledger, late, submit, now)
        return _finish(summary, config, ledger, out, timings, started)

    t = time.monotonic()
    reference = load_served_reference(config, training, raw, from_log, scratch)
    task = reference.task
    check_performance_limits(config.policy, task.kind)
    summary |= {"task": task.to_json(), "served": vars(reference.served) if reference.served else None,
                "reference": {"uri": reference.uri, "rows": reference.table.num_rows}}
    timings["reference"] = time.monotonic() - t

    t = time.monotonic()
    current, data_issues = current_for(raw, from_log, task, training, na_values)
    labelled_rows = _labelled_rows(current, task)
    features = config.drift.columns or [c for c in reference.table.column_names
                                        if c != task.label and c != PREDICTION and not c.startswith(PROBA_PREFIX)]
    comparison = compare(current, reference.table, features, task, config)
    drift_share = comparison.drift_share
    drifted = [c.column for c in comparison.columns if c.drifted]
    problems = problems_of(features, comparison) + data_issues
    summary |= {
        "status": INCOMPLETE if problems else CHECKED, "problems": problems, "labelled_rows": labelled_rows,
        "drift": {
            "share": drift_share, "checked": len(comparison.columns), "drifted": drifted,
            "dataset_drift": drift_share is not None and drift_share >= config.policy.drift_share,
            "columns": [c.as_dict() for c in comparison.columns], "skipped": comparison.skipped,
        },
        "prediction_drift": {
            "drifted": any(c.drifted for c in comparison.predictions),
            "columns": [c.as_dict() for c in comparison.predictions],
        } if comparison.predictions else None,
        "prediction_drift_note": comparison.prediction_note,
        "quality": comparison.quality,
        "performance": comparison.performance,
    }
    timings["compare"] = time.monotonic() - t

    t = time.monotonic()
    summary["reports"] = evidently_reports(current, reference.table, comparison, task, config, out)
    timings["evidently_reports"] = time.monotonic() - t

    figures = Figures(
        rows=current.num_rows, labelled_rows=labelled_rows, drift_share=drift_share, drifted_features=drifted,
        drifted_predictions={c.column: c.score for c in comparison.predictions if c.drifted},
        task=task.kind, performance=comparison.performance or {},
    )
    decision = decide(figures, config.policy, ledger, summary["window_id"], model, now.timestamp())
    summary["decision"] = decision.as_dict()
    if decision.fire:
        t = time.monotonic()
        reason = {
            "window": summary["window"], "window_id": decision.window_id, "reasons": decision.reasons,
            "signals": decision.signals, "drift_share": drift_share, "drifted": drifted,
            "prediction_drift": summary["prediction_drift"], "performance": summary["performance"],
        }
        summary["retrain"] = (_retrain(decision, reason, current, reference.table, task, training, ledger, submit, config, now)
                              if submit else NOT_SUBMITTED)
        timings["retrain"] = time.monotonic() - t
    if awaits_labels(config.policy, from_log, True, labelled_rows):
        late.create(LateWindow(summary["window_id"], model, identity["start"], identity["end"], task.to_json(),
                               reference.uri, now.timestamp(), labelled_rows))
    t = time.monotonic()
    summary["late_labels"] = _late_labels(config, training, ledger, late, submit, now)
    timings["late_labels"] = time.monotonic() - t
    return _finish(summary, config, ledger, out, timings, started)


def _labelled_rows(current: pa.Table, task: Task) -> int:
    return int(len(current) - current[task.label].null_count) if task.label in current.column_names else 0


def _anomalies(config: DriftConfig, raw: pa.Table, identity: dict[str, Any]) -> dict[str, Any]:
    """:func:`~kfmlops.monitoring.anomaly.serving_anomalies` of the window's rows against the
    ``anomaly.trailing_hours`` of the log before it."""
    start, end = datetime.fromisoformat(identity["start"]), datetime.fromisoformat(identity["end"])
    since = start - timedelta(hours=config.anomaly.trailing_hours)
    trailing = read_window(config.log_root, config.model_name, since, start,
                           lambda name: name == "prediction" or name.startswith(OUTPUT_PREFIX))
    return serving_anomalies(raw, trailing, start, end, config.anomaly)


def _late_labels(config: DriftConfig, training: PipelineConfig, ledger: Ledger, late: LateLabels,
                 submit: Submitter | None, now: datetime) -> dict[str, Any]:
    """Re-evaluate the model's windows awaiting labels whose labels arrived (see
    :mod:`~kfmlops.monitoring.late_labels`); what became of each, and how many still wait."""
    report: dict[str, Any] = {"evaluated": [], "awaiting": 0, "expired": 0}
    if config.log_root is None or "performance" not in config.policy.signals:
        return report
    for window in late.awaiting(config.model_name):
        if expired(window, config.policy, now.timestamp()):
            late.replace(replace(window, status=EXPIRED))
            report["expired"] += 1
            continue
        start, end = datetime.fromisoformat(window.start), datetime.fromisoformat(window.end)
        keys = read_window(config.log_root, config.model_name, start, end, lambda _: False)
        labelled = keys.num_rows - keys["label"].null_count if "label" in keys.column_names else 0
        if labelled < config.policy.min_labelled_rows:
            report["awaiting"] += 1
            continue
        outcome = _evaluate_late(window, config, training, ledger, submit, now)
        report["evaluated"].append(outcome)
        if outcome["decision"]["fire"] and submit is None:  # a run that may submit will
            report["awaiting"] += 1
            continue
        late.replace(replace(window, status=EVALUATED, evaluated_at=now.timestamp(), labelled_rows=outcome["labelled_rows"],
                             performance=outcome["performance"], decision=outcome["decision"]))
    return report


def _evaluate_late(window: LateWindow, config: DriftConfig, training: PipelineConfig, ledger: Ledger,
                   submit: Submitter | None, now: datetime) -> dict[str, Any]:
    """The labelled performance of a window judged before its labels arrived, under the task it was
    judged with; the policy's decision on it (the performance signal only) and the retrain it started."""
    task = Task.from_json(window.task)
    start, end = datetime.fromisoformat(window.start), datetime.fromisoformat(window.end)
    raw = read_window(config.log_root, config.model_name, start, end, _logged_column)
    current, problems = current_for(raw, True, task, training, training.settings.ingest.na_values)
    labelled_rows = _labelled_rows(current, task)
    performance = window_performance(current, task)
    figures = Figures(rows=current.num_rows, labelled_rows=labelled_rows, task=task.kind, performance=performance or {})
    policy = config.policy.model_copy(update={"signals": ["performance"]})
    decision = decide(figures, policy, ledger, late_window_id(window.identity), config.model_name, now.timestamp())
    retrain_: dict[str, Any] = {}
    if decision.fire:
        reason = {"window": window.identity, "window_id": decision.window_id, "judged_window_id": window.window_id,
                  "reasons": decision.reasons, "signals": decision.signals, "late_labels": True, "performance": performance}
        if submit is None:
            retrain_ = NOT_SUBMITTED
        else:
            reference, _ = load_reference(window.reference_uri, training)
            retrain_ = _retrain(decision, reason, current, reference, task, training, ledger, submit, config, now)
    return {"window_id": window.window_id, "window": window.identity, "rows": current.num_rows,
            "labelled_rows": labelled_rows, "performance": performance, "problems": problems,
            "decision": decision.as_dict(), "retrain": retrain_}


def _retrain(
    decision: Decision, reason: dict[str, Any], current: pa.Table, reference: pa.Table, task: Task,
    training: PipelineConfig, ledger: Ledger, submit: Submitter, config: DriftConfig, now: datetime,
) -> dict[str, Any]:
    """Fresh data (``reference`` plus ``current``'s labelled rows, ``reason`` in its metadata) and
    the training pipeline submitted once for ``decision``'s ledger id (:func:`~kfmlops.monitoring.trigger.retrain`)."""
    data_dir = Path(config.trigger.data_dir or kfmlops_home() / "drift" / "data") / config.model_name / decision.window_id
    labelled = current.filter(pc.is_valid(current[task.label]))
    reference = reference.drop_columns([c for c in reference.column_names if c == PREDICTION or c.startswith(PROBA_PREFIX)])
    rows = fresh_training_data(reference, labelled, task, data_dir / "train.parquet", reason)
    fresh_test_data(training, task, data_dir / "test.parquet")
    (data_dir / "reason.json").write_text(json.dumps(reason, indent=1))
    arguments = fresh_pipeline_config(training, str(data_dir / "train.parquet"), str(data_dir / "test.parquet"),
                                      task).pipeline_arguments()
    arguments["run_tags"] = {  # why this run started, on the new MLflow run
        "kfmlops.retrain.window_id": decision.window_id,
        "kfmlops.retrain.signals": ",".join(decision.signals),
        "kfmlops.retrain.reasons": json.dumps(decision.reasons)[:TAG_LIMIT],
    }
    if reason.get("drift_share") is not None:
        arguments["run_tags"]["kfmlops.retrain.drift_share"] = f"{reason['drift_share']:.4f}"
    try:
        entry, submitted = retrain(decision, config.model_name, reason["window"], arguments, ledger, submit, now.timestamp())
    except Exception as exc:  # recorded in the ledger and the summary; main() exits non-zero
        log.exception("drift: submitting the training pipeline failed")
        return {"submitted": False, "status": "failed", "error": f"{type(exc).__name__}: {exc}", "source": arguments["data"]["source"]}
    return {"submitted": submitted, "status": entry.status, "run_id": entry.run_id, "source": entry.source,
            "rows": rows, "arguments": arguments if submitted else None}


def _finish(summary: dict[str, Any], config: DriftConfig, ledger: Ledger, out: Path, timings: dict[str, float],
            started: float) -> dict[str, Any]:
    t = time.monotonic()
    summary["metrics_exported_to"] = prometheus.export(summary, config, ledger.entries(config.model_name))
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
        for k in ("model", "task", "window", "rows", "labelled_rows", "served", "reference", "retrain")
        if summary.get(k) is not None
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
            [{"column": c["column"], "type": c["column_type"], "method": c["method"], "threshold": c["threshold"],
              "score": c["score"], "drift": report.verdict(not c["drifted"], warning=True)} for c in prediction["columns"]],
            raw=["drift"],
        ) if prediction else f"<p>{report.fmt(summary['prediction_drift_note'])}</p>"))
        sections.append(("Data quality", report.table({"feature": k, **v} for k, v in summary["quality"].items())))
        scores = summary["performance"]
        sections.append((f"Performance on labelled rows ({summary['task']['kind']} task)", report.table(
            [{"metric": k, "value": v} for k, v in scores.items() if k != "task"]) if scores else "<p>No labelled rows.</p>"))
        links = "".join(f'<li><a href="{Path(p).name}">{Path(p).name}</a></li>' for k, p in summary["reports"].items() if k != "html")
        if links:
            sections.append(("Evidently reports", "<p>Interactive, on a sample of the rows (the figures above use "
                             f"every row):</p><ul>{links}</ul>"))
    anomalies = summary.get("anomalies")
    if anomalies:
        text = "; ".join(anomalies["reasons"]) or "No sudden shift of the prediction rate or the served scores."
        sections.append(("Serving anomalies (reported, never a reason to retrain)",
                         f"<p>{report.verdict(not anomalies['anomalous'], warning=True)} {report.fmt(text)}</p>"))
    late = summary.get("late_labels")
    if late and late["evaluated"]:
        sections.append((f"Late labels: {len(late['evaluated'])} windows re-evaluated, {late['awaiting']} still awaiting labels",
                         report.table({"window": f"{w['window']['start']} .. {w['window']['end']}",
                                       "labelled rows": w["labelled_rows"], "performance": json.dumps(w["performance"]),
                                       "reasons": "; ".join(w["decision"]["reasons"] + w["decision"]["blocked"]),
                                       "retrain": w["retrain"].get("status", "no")} for w in late["evaluated"])))
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
    for reason in (summary["anomalies"] or {}).get("reasons", []):
        print(f"  serving anomaly: {reason}")
    late = summary["late_labels"] or {}
    for window in late.get("evaluated", []):
        print(f"  late labels: window {window['window']['start']} .. {window['window']['end']} re-evaluated on "
              f"{window['labelled_rows']} labelled rows: signals {window['decision']['signals'] or 'none'}, "
              f"retrain {window['retrain'].get('status', 'no')}")
    if late.get("awaiting"):
        print(f"  late labels: {late['awaiting']} windows await their labels")
    return exit_code(summary)
