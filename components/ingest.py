from typing import NamedTuple

from kfp.dsl import Dataset, Output

from kfmlops.components._base import component


@component
def ingest(
    data: dict,
    settings: dict,
    pipeline_run_id: str,
    train_data: Output[Dataset],
    test_data: Output[Dataset],
    run_tags: dict = {},
) -> NamedTuple("IngestOutputs", [("source", str), ("task", dict), ("sensitive_columns", list),
                                  ("fingerprint", str), ("run_id", str)]):
    """Reads raw data and writes normalised train/test Parquet splits; opens the run's MLflow record and
    keeps both splits as content-addressed snapshots, logged as the run's dataset inputs.

    Args:
        data: kfmlops.config.DataSpec as JSON: `source` (CSV, Parquet, JSON Lines; local, s3://, gs://,
            any fsspec URI; or a database table or query, postgresql://user@host/db?table=... or
            ?query=..., the password from $PGPASSWORD or a mounted Secret file, see kfmlops.warehouse),
            `label` (raw or normalised name), and optionally `task` (binary, multiclass, regression;
            inferred when absent), `test_source`, `positive_labels`, `sensitive_features`,
            `feature_store` (`source` and `test_source` are then entity tables joined point-in-time
            with a Feast feature service: kfmlops.feature_store).
        settings: kfmlops.config.Settings as JSON (the `ingest`, `snapshots` and `mlflow` sections are read).
        pipeline_run_id: The KFP run id, recorded for lineage.
        run_tags: Extra tags for the MLflow run (e.g. why it was started).

    Returns:
        source: The training data URI, recorded in lineage.
        train_data: Train split, Parquet, normalised column names, canonical labels (class names, or
            numbers for regression).
        test_data: Test split, same schema.
        task: kfmlops.tasks.Task as JSON: kind, the label's normalised name, classes, and why.
        sensitive_columns: The sensitive features' normalised names.
        fingerprint: SHA-256 of the source bytes (of a database result's rows: kfmlops.digest; with a
            feature store, also of its offline files and the feature service's definition).
        run_id: The MLflow run every later step records into; it is tagged kfmlops.snapshot.train/test with the
            snapshots' URIs (kfmlops.snapshots), which register copies onto the version.
    """
    from dataclasses import asdict

    from kfmlops.approval import STARTED_BY_TAG
    from kfmlops.audit import actor
    from kfmlops.config import DataSpec, Settings
    from kfmlops import snapshots
    from kfmlops.ingest import ingest as run_ingest, normalise_name
    from kfmlops.preflight import check_task_settings
    from kfmlops.residency import enforce
    from kfmlops.tasks import Task
    from kfmlops.tracking import failed_on_error, log_to_run, start_run, tracking_uri

    cfg = Settings.parse(settings)
    spec = DataSpec.parse(data)
    enforce({"read": [spec.source, spec.test_source], "write": [train_data.uri, test_data.uri],
             "snapshots": snapshots.directory(cfg.snapshots), "mlflow": tracking_uri(cfg.mlflow)}, cfg.residency)
    if spec.feature_store is not None:
        from kfmlops.feature_store import check_residency

        check_residency(spec.feature_store, cfg.residency)  # the repository, its registry, its offline files
    result = run_ingest(spec, cfg.ingest, train_data.path, test_data.path)
    check_task_settings(Task.from_json(result.task), cfg)  # a metric or threshold of another task: stop now
    run_id = start_run(cfg.mlflow, run_name=f"train-{pipeline_run_id}", tags={
        STARTED_BY_TAG: actor(),  # run_tags may name who started the run from elsewhere (kfmlops submit)
        **{str(k): str(v) for k, v in run_tags.items()},
        "kfmlops.pipeline_run_id": pipeline_run_id, "kfmlops.dataset_fingerprint": result.fingerprint})
    with failed_on_error(cfg.mlflow, run_id):
        kept = snapshots.keep({"train": train_data.path, "test": test_data.path}, Task.from_json(result.task),
                              cfg.snapshots)
        snapshots.log_inputs(cfg.mlflow, run_id, kept, cfg.mlflow.model_name)
        log_to_run(cfg.mlflow, run_id, params={"source": spec.source, "test_source": spec.test_source,
                                               "label": result.label, "task": result.task["kind"],
                                               "config_hash": cfg.digest()},
                   metrics={"train_rows": result.train_rows, "test_rows": result.test_rows},
                   tags=snapshots.tags(kept),
                   documents={"ingest.json": asdict(result), "settings.json": settings})
    for artifact, rows in ((train_data, result.train_rows), (test_data, result.test_rows)):
        artifact.metadata.update({"rows": rows, "fingerprint": result.fingerprint, "format": "parquet",
                                  "task": result.task["kind"], "classes": result.task["classes"]})
    return (spec.source, result.task, [normalise_name(c) for c in spec.sensitive_features], result.fingerprint, run_id)
