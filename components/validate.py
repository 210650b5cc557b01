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
    import pandas as pd

    from kfmlops.step import step
    from kfmlops.tasks import Task
    from kfmlops.validate import validate as run_validate

    with step(settings, run_id, read=[train_data.uri, test_data.uri], write=[results.uri, report.uri]) as s:
        splits = {"train": pd.read_parquet(train_data.path), "test": pd.read_parquet(test_data.path)}
        outcome = run_validate(splits, s.settings.validate_, Task.from_json(task))
        s.write_json(results, outcome.to_json(), passed=outcome.passed, errors=len(outcome.errors),
                     warnings=len(outcome.warnings))
        s.write_html(report, outcome.to_html())
        s.log(documents={"validation.json": outcome.to_json()}, gate=("validate", outcome.passed))
        outcome.raise_for_errors()
