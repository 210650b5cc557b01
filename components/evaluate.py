from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Metrics, Output

from kfmlops.components._base import component


@component
def evaluate(
    predictions: Input[Dataset],
    train_data: Input[Dataset],
    test_data: Input[Dataset],
    task: dict,
    settings: dict,
    run_id: str,
    blessing: Output[Artifact],
    metrics: Output[Metrics],
    classification: Output[ClassificationMetrics],
    report: Output[HTML],
) -> bool:
    """Judges the candidate's test predictions against the trivial baseline, a reference linear model
    and the current champion, and decides the blessing.

    Args:
        predictions: The candidate's predictions dataset of the test split, from predict.
        train_data: Train split from ingest (the baseline's prior; the reference model is fitted on it).
        test_data: Test split from ingest (the reference model and the champion score it).
        task: kfmlops.tasks.Task as JSON, from ingest.
        settings: kfmlops.config.Settings as JSON (the `evaluate`, `train.exclude_features` and `mlflow`
            sections are read).
        run_id: The MLflow run to record test metrics, the blessing and the gate tag in.

    Returns:
        blessing: JSON verdict: blessed, reasons (every check with its figures), the scores of the
            candidate, baseline, reference and champion.
        metrics: The candidate's test metrics for its task (binary: roc_auc, pr_auc, accuracy, f1,
            precision, recall, log_loss, brier; multiclass: accuracy, macro_f1, weighted_f1, log_loss,
            roc_auc_ovr; regression: rmse, mae, r2, mape).
        classification: Classification tasks only: the confusion matrix with class names; binary also
            the ROC curve.
        report: HTML: the checks, then candidate, reference, baseline and champion side by side.
        Output: Whether the candidate passed the evaluation gate (blessed).
    """
    import pandas as pd

    from kfmlops.evaluate import evaluate as run_evaluate
    from kfmlops.step import step
    from kfmlops.tasks import Task

    read = [predictions.uri, train_data.uri, test_data.uri]
    with step(settings, run_id, read=read, write=[blessing.uri, report.uri]) as s:
        the_task, cfg = Task.from_json(task), s.settings
        verdict = run_evaluate(the_task, pd.read_parquet(predictions.path), pd.read_parquet(train_data.path),
                               pd.read_parquet(test_data.path), cfg.evaluate, model_name=cfg.mlflow.model_name,
                               exclude=tuple(cfg.train.exclude_features))
        document = verdict.to_json()
        s.write_json(blessing, document, blessed=verdict.blessed, reasons=verdict.reasons)
        s.write_html(report, verdict.to_html())
        candidate = verdict.candidate
        if the_task.is_classification:
            classification.log_confusion_matrix(list(the_task.classes), candidate.details["confusion_matrix"])
        if the_task.kind == "binary":
            curve = candidate.details["roc_curve"]
            classification.log_roc_curve(curve["fpr"], curve["tpr"], curve["thresholds"])
        s.log(kfp_metrics=metrics, metrics=candidate.metrics, prefix="test_", documents={"evaluation.json": document},
              gate=("evaluate", verdict.blessed))
        return verdict.blessed
