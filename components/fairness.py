from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Output

from kfmlops.components._base import component


@component
def fairness(
    test_data: Input[Dataset],
    predictions: Input[Dataset],
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
        predictions: Per-row label and prediction from evaluate.
        sensitive_features: Normalised names of the columns to slice by.
        settings: kfmlops.config.Settings as JSON (the `fairness` and `mlflow` sections are read).
        run_id: The MLflow run to record the figures and verdict in.

    Returns:
        verdict: JSON: passed, reasons, per-feature figures by group.
        metrics: Demographic parity difference/ratio and equalized odds difference per feature (those computed).
        report: HTML tables by group with each check's verdict.
        Output: Whether the candidate passed the fairness gate.
    """
    import json
    from pathlib import Path

    import pandas as pd

    from kfmlops.config import Settings
    from kfmlops.fairness import assess
    from kfmlops.register import gate_tags
    from kfmlops.residency import enforce
    from kfmlops.tracking import failed_on_error, log_to_run, tracking_uri

    cfg = Settings.parse(settings)
    with failed_on_error(cfg.mlflow, run_id):
        enforce({"read": [test_data.uri, predictions.uri], "write": [verdict.uri, report.uri],
                 "mlflow": tracking_uri(cfg.mlflow)}, cfg.residency)
        scored = pd.read_parquet(predictions.path)
        sensitive = pd.read_parquet(test_data.path, columns=list(sensitive_features))
        result = assess(scored["label"].to_numpy(), scored["prediction"].to_numpy(), sensitive, cfg.fairness)
        Path(verdict.path).write_text(json.dumps(result.to_json(), indent=1))
        Path(report.path).write_text(result.to_html())
        verdict.metadata.update({"passed": result.passed, "reasons": result.reasons})
        figures = result.figures()
        for name, value in figures.items():
            metrics.log_metric(name, value)
        log_to_run(cfg.mlflow, run_id, metrics={f"fairness.{k}": v for k, v in figures.items()},
                   tags=gate_tags("fairness", result.passed),
                   documents={"fairness.json": result.to_json()})
        return result.passed
