"""Retraining: fresh training data and the submission of the training pipeline, once per window.

:func:`fresh_training_data` writes the reference (the served model's train split) plus the
window's labelled rows as one Parquet file, with the reason (the drift figures) in its metadata;
:func:`fresh_test_data` writes the served model's test split beside it, so the retrained model is
gated on the same test rows. Both record the served model's task in their metadata.
:func:`fresh_pipeline_config` points the training config at both (Parquet, canonical labels, the
task carried over, every other setting unchanged). :func:`retrain` claims the window in the
:class:`~kfmlops.monitoring.policy.Ledger` and calls a :data:`Submitter` with that config's
``pipeline_arguments()``; a window that is already claimed never submits again, whatever the
retries. The pipeline is the ordinary training pipeline, so the new model passes the same
evaluation and fairness gates; nothing here registers or promotes a model.

Submitters: :func:`kfp_submitter` (a Kubeflow Pipelines host and the compiled pipeline YAML) and
:func:`local_submitter` (``kfmlops.local_run.run_pipeline``, which runs it with ``kfp.local``).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from kfmlops.config import PipelineConfig
from kfmlops.ingest import ingest
from kfmlops.monitoring.config import TriggerConfig
from kfmlops.monitoring.lineage import TASK_KEY, canonical_spec
from kfmlops.monitoring.policy import CLAIMED, FAILED, SUBMITTED, Decision, Ledger, LedgerEntry, mark
from kfmlops.monitoring.store import write_parquet_atomically
from kfmlops.tasks import Task

Submitter = Callable[[dict[str, Any]], str]
"""Starts the training pipeline with these arguments; returns the run id."""
REASON_KEY = b"kfmlops.retrain_reason"


def kfp_submitter(host: str, pipeline_package: str, experiment: str) -> Submitter:
    """Submits the compiled pipeline to a Kubeflow Pipelines host through
    :func:`kfmlops.submit.submit_run` (what ``kfmlops submit`` uses); the run is named after its arguments."""

    def submit(arguments: dict[str, Any]) -> str:
        from kfmlops.submit import KfpEndpoint, run_name, submit_run

        name = run_name("kfmlops-retrain", arguments)
        return submit_run(KfpEndpoint(host), pipeline_package, arguments, experiment=experiment, name=name).run_id

    return submit


def local_submitter() -> Submitter:
    """Runs the pipeline here through ``kfmlops.local_run.run_pipeline`` (blocks until it ends); the
    run id is the run's directory name under the pipeline root."""

    def submit(arguments: dict[str, Any]) -> str:
        import sys

        from kfmlops.local_run import run_pipeline

        # A progress line per step here; each step's full log goes to the run's logs/ folder.
        return run_pipeline(arguments, progress=sys.stdout, verbose=False).pipeline_root.name

    return submit


def submitter_for(config: TriggerConfig) -> Submitter | None:
    """The configured submitter; None when ``submitter`` is ``none``."""
    if config.submitter == "kfp":
        return kfp_submitter(config.kfp_host, config.pipeline_package, config.experiment)
    if config.submitter == "local":
        return local_submitter()
    return None


def fresh_training_data(reference: pa.Table, labelled: pa.Table, task: Task, path: Path, reason: dict[str, Any]) -> int:
    """Write ``reference`` plus ``labelled`` (window rows with canonical labels in ``task.label``) to ``path``.

    Window columns are cast to the reference's types and missing ones are null; columns the
    reference lacks are dropped. The file's metadata records ``task`` and ``reason``. Returns the
    number of rows written.
    """
    columns = []
    for field in reference.schema:
        if field.name in labelled.column_names:
            try:
                columns.append(labelled[field.name].cast(field.type))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise ValueError(f"window column {field.name!r} does not convert to the reference's {field.type}: {exc}") from None
        else:
            columns.append(pa.nulls(labelled.num_rows, field.type))
    window = pa.Table.from_arrays(columns, schema=reference.schema.remove_metadata())
    if task.label not in labelled.column_names:
        raise ValueError(f"the labelled window has no {task.label!r} column")
    table = pa.concat_tables([reference.cast(window.schema), window])
    table = table.replace_schema_metadata({TASK_KEY: json.dumps(task.to_json()).encode(),
                                           REASON_KEY: json.dumps(reason).encode()})
    write_parquet_atomically(table, path)
    return table.num_rows


def fresh_test_data(training: PipelineConfig, task: Task, path: Path) -> int:
    """The served model's test split (the training config's test source, or the split cut from its
    source), written as Parquet with canonical labels and ``task`` in its metadata: retrained models
    are gated on the same rows."""
    with tempfile.TemporaryDirectory(prefix="kfmlops-fresh-") as tmp:
        result = ingest(training.data, training.settings.ingest, Path(tmp) / "train.parquet", Path(tmp) / "test.parquet")
        table = pq.read_table(result.test_path)
    write_parquet_atomically(table.replace_schema_metadata({TASK_KEY: json.dumps(task.to_json()).encode()}), path)
    return table.num_rows


def fresh_pipeline_config(training: PipelineConfig, train_path: str, test_path: str, task: Task) -> PipelineConfig:
    """The training config pointed at fresh data: Parquet, canonical labels read under ``task``
    (:func:`~kfmlops.monitoring.lineage.canonical_spec`: ``data.task`` carried over; no feature store:
    the fresh rows hold their features), every other setting (the gates included) unchanged."""
    data = canonical_spec(training.data, task).model_copy(update={"source": train_path, "test_source": test_path,
                                                                  "feature_store": None})
    ingest_settings = training.settings.ingest.model_copy(update={"format": "parquet"})
    return PipelineConfig(data=data, settings=training.settings.model_copy(update={"ingest": ingest_settings}))


def retrain(
    decision: Decision,
    model: str,
    window: dict[str, Any],
    arguments: dict[str, Any],
    ledger: Ledger,
    submit: Submitter,
    now: float | None = None,
) -> tuple[LedgerEntry, bool]:
    """Claim the window and submit; returns the window's ledger entry and whether this call submitted.

    When the window is already claimed (a retried job, a concurrent one) nothing is submitted and
    the existing entry comes back. A submitter error marks the entry ``failed`` and is re-raised;
    the window stays claimed, so a failed start is never retried into a second run.
    """
    entry = LedgerEntry(
        window_id=decision.window_id,
        model=model,
        claimed_at=time.time() if now is None else now,
        status=CLAIMED,
        reasons=decision.reasons,
        window=window,
        source=arguments["data"]["source"],
    )
    if not ledger.claim(entry):
        return ledger.get(decision.window_id), False
    try:
        run_id = submit(arguments)
    except Exception as exc:
        mark(ledger, entry, status=FAILED, error=f"{type(exc).__name__}: {exc}")
        raise
    return mark(ledger, entry, status=SUBMITTED, run_id=run_id), True
