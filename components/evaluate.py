from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from kfmlops.components._base import component


@component
def evaluate(
    test_data: Input[Dataset],
    model: Input[Model],
    label: str,
    settings: dict,
    run_id: str,
    predictions: Output[Dataset],
    blessing: Output[Artifact],
    metrics: Output[Metrics],
    classification: Output[ClassificationMetrics],
    report: Output[HTML],
) -> bool:
    """Scores the candidate on the test split beside the current champion and decides the blessing.

    Args:
        test_data: Test split from ingest.
        model: Candidate model bundle from train.
        label: The label's normalised name.
        settings: kfmlops.config.Settings as JSON (the `evaluate` and `mlflow` sections are read).
        run_id: The MLflow run to record test metrics and the blessing in.

    Returns:
        predictions: Parquet of label, probability and prediction per test row.
        blessing: JSON verdict: blessed, reasons, candidate and champion scores.
        metrics: ROC AUC, PR AUC, accuracy, F1, log loss, Brier score.
        classification: ROC curve and confusion matrix for the Kubeflow UI.
        report: HTML comparison of candidate and champion.
        Output: Whether the candidate passed the evaluation gate (blessed).
    """
    import json
    from pathlib import Path

    import pandas as pd

    from kfmlops.config import Settings
    from kfmlops.evaluate import bless, champion_probabilities, score
    from kfmlops.register import gate_tags
    from kfmlops.residency import enforce
    from kfmlops.tracking import failed_on_error, log_to_run, tracking_uri, use
    from kfmlops.train import ModelBundle

    cfg = Settings.parse(settings)
    with failed_on_error(cfg.mlflow, run_id):
        enforce({"read": [test_data.uri, model.uri], "write": [predictions.uri, blessing.uri, report.uri],
                 "mlflow": tracking_uri(cfg.mlflow)}, cfg.residency)
        frame = pd.read_parquet(test_data.path)
        features = frame.drop(columns=[label])
        y_true = frame[label].to_numpy()
        proba = ModelBundle.load(model.path).predict_proba({c: features[c].to_numpy() for c in features.columns})
        candidate = score(y_true, proba, cfg.evaluate.decision_threshold)
        use(cfg.mlflow)
        champion = champion_probabilities(cfg.mlflow.model_name, features)
        champion_scores = score(y_true, champion[1], cfg.evaluate.decision_threshold) if champion else None
        verdict = bless(candidate, cfg.evaluate, champion_scores, champion[0] if champion else None)

        pd.DataFrame({"label": y_true, "probability": proba,
                      "prediction": (proba >= cfg.evaluate.decision_threshold).astype("int8")}).to_parquet(predictions.path)
        Path(blessing.path).write_text(json.dumps(verdict.to_json(), indent=1))
        Path(report.path).write_text(verdict.to_html())
        blessing.metadata.update({"blessed": verdict.blessed, "reasons": verdict.reasons})
        for name, value in candidate.metrics().items():
            metrics.log_metric(name, value)
        curve = candidate.roc_curve
        classification.log_roc_curve(curve["fpr"], curve["tpr"], curve["thresholds"])
        classification.log_confusion_matrix(["negative", "positive"], candidate.confusion_matrix)
        log_to_run(cfg.mlflow, run_id, metrics={f"test_{k}": v for k, v in candidate.metrics().items()},
                   tags=gate_tags("evaluate", verdict.blessed),
                   documents={"evaluation.json": verdict.to_json()})
        return verdict.blessed
