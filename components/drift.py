from kfp.dsl import HTML, Artifact, Metrics, Output

from kfmlops.components._base import component


@component
def drift(config: dict, report: Output[HTML], summary: Output[Artifact], metrics: Output[Metrics]) -> bool:
    """Compares a window of the inference log (or any dataset) with the served model's training data.

    Runs Evidently's per-column drift tests, prediction drift, data quality and, with labels,
    performance for the served model's task (binary, multiclass or regression); applies the
    retraining policy, and when it fires submits the training pipeline on fresh data with the task
    carried over (once per window: a ledger makes retries idempotent).

    Args:
        config: kfmlops.monitoring.config.DriftConfig as JSON (window or current dataset, reference,
            tests, policy, metrics export, trigger).

    Returns:
        report: HTML report: drift by column, prediction drift, quality, performance, the decision.
        summary: JSON summary of the same, with the decision and the retraining run it started.
        metrics: Rows checked, drift share, drifted columns, prediction drift, labelled performance.
        Output: Whether the policy fired.
    """
    import shutil
    import tempfile
    from pathlib import Path

    from kfmlops.monitoring.config import DriftConfig
    from kfmlops.monitoring.drift import run
    from kfmlops.monitoring.trigger import submitter_for
    from kfmlops.typed import parse

    with tempfile.TemporaryDirectory(prefix="kfmlops-drift-") as out:
        cfg = parse(DriftConfig, {**config, "output_dir": out}, "drift config")
        result = run(cfg, submit=submitter_for(cfg.trigger))
        shutil.copyfile(Path(out) / "report.html", report.path)
        shutil.copyfile(Path(out) / "summary.json", summary.path)
    figures = {"rows": result["rows"], "labelled_rows": result["labelled_rows"]}
    if result["drift"] and result["drift"]["share"] is not None:
        figures |= {"drift_share": result["drift"]["share"], "drifted_columns": len(result["drift"]["drifted"])}
    if result["prediction_drift"]:
        prediction = result["prediction_drift"]
        figures["prediction_drifted"] = prediction["drifted"]
        figures |= {"prediction_drift_score": c["score"] for c in prediction["columns"] if c["column"] == "prediction"}
    figures |= {f"performance_{k}": v for k, v in (result["performance"] or {}).items()
                if k not in ("task", "rows") and isinstance(v, (int, float))}
    for name, value in figures.items():
        metrics.log_metric(name, float(value))
    fired = bool(result["decision"]["fire"]) if result.get("decision") else False
    summary.metadata.update({"fired": fired, "window_id": result.get("window_id", "")})
    return fired
