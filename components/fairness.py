from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Output

from kfmlops.components._base import component


@component
def fairness(
    test_data: Input[Dataset],
    predictions: Input[Dataset],
    task: dict,
    sensitive_features: list,
    settings: dict,
    run_id: str,
    verdict: Output[Artifact],
    metrics: Output[Metrics],
    report: Output[HTML],
) -> bool:
    """Slices the candidate's test predictions by each sensitive feature and applies the fairness gate.

    Args:
        test_data: Test split from ingest (the sensitive columns are read from it).
        predictions: The candidate's predictions dataset of the test split, from predict.
        task: kfmlops.tasks.Task as JSON, from ingest (which figures are computed and which thresholds apply).
        sensitive_features: Normalised names of the columns to slice by.
        settings: kfmlops.config.Settings as JSON (the `fairness` and `mlflow` sections are read; a
            threshold of another task than this one is an error).
        run_id: The MLflow run to record the figures and verdict in.

    Returns:
        verdict: JSON: passed, reasons, per-feature figures by group and each check.
        metrics: The task's disparity figures per feature, those computed (binary: demographic parity
            difference/ratio, equalized odds difference; multiclass: accuracy difference; regression:
            MAE ratio, mean prediction difference).
        report: HTML tables by group with each check's verdict.
        Output: Whether the candidate passed the fairness gate.
    """
    import pandas as pd

    from kfmlops.fairness import assess
    from kfmlops.step import step
    from kfmlops.tasks import Task

    with step(settings, run_id, read=[test_data.uri, predictions.uri], write=[verdict.uri, report.uri]) as s:
        the_task = Task.from_json(task)
        scored = pd.read_parquet(predictions.path)
        sensitive = pd.read_parquet(test_data.path, columns=list(sensitive_features))
        result = assess(the_task, scored, sensitive, s.settings.fairness)
        document = result.to_json()
        s.write_json(verdict, document, passed=result.passed, reasons=result.reasons)
        s.write_html(report, result.to_html())
        s.log(kfp_metrics=metrics, metrics=result.figures(), prefix="fairness.", documents={"fairness.json": document},
              gate=("fairness", result.passed))
        return result.passed
