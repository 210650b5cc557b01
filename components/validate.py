from kfp.dsl import HTML, Artifact, Dataset, Input, Output

from kfmlops.components._base import component


@component
def validate(
    train_data: Input[Dataset],
    test_data: Input[Dataset],
    task: dict,
    settings: dict,
    run_id: str,
    results: Output[Artifact],
    report: Output[HTML],
):
    """Checks both splits against the Great Expectations suite; error-level failures stop the pipeline.

    Args:
        train_data: Train split from ingest (also the reference the inferred suite is built from).
        test_data: Test split from ingest.
        task: kfmlops.tasks.Task as JSON, from ingest (the label is checked against its classes or type).
        settings: kfmlops.config.Settings as JSON (the `validate` and `mlflow` sections are read).
        run_id: The MLflow run to record the outcome in.

    Returns:
        results: JSON outcome of every expectation on every split.
        report: HTML report of the same.
    """
    import json
    from pathlib import Path

    import pandas as pd

    from kfmlops.config import Settings
    from kfmlops.register import gate_tags
    from kfmlops.residency import enforce
    from kfmlops.tasks import Task
    from kfmlops.tracking import failed_on_error, log_to_run, tracking_uri
    from kfmlops.validate import validate as run_validate

    cfg = Settings.parse(settings)
    with failed_on_error(cfg.mlflow, run_id):
        enforce({"read": [train_data.uri, test_data.uri], "write": [results.uri, report.uri],
                 "mlflow": tracking_uri(cfg.mlflow)}, cfg.residency)
        outcome = run_validate({"train": pd.read_parquet(train_data.path), "test": pd.read_parquet(test_data.path)},
                               cfg.validate_, Task.from_json(task))
        Path(results.path).write_text(json.dumps(outcome.to_json(), indent=1))
        Path(report.path).write_text(outcome.to_html())
        results.metadata.update({"passed": outcome.passed, "errors": len(outcome.errors), "warnings": len(outcome.warnings)})
        log_to_run(cfg.mlflow, run_id, tags=gate_tags("validate", outcome.passed),
                   documents={"validation.json": outcome.to_json()})
        outcome.raise_for_errors()
