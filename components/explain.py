from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from kfmlops.components._base import component


@component
def explain(
    model: Input[Model],
    test_data: Input[Dataset],
    task: dict,
    sensitive_features: list,
    settings: dict,
    run_id: str,
    explanation: Output[Dataset],
    metrics: Output[Metrics],
    report: Output[HTML],
):
    """Explains a model on the test split: permutation importance of every raw column (any model),
    the same per sensitive group, and SHAP tree / integrated-gradients attributions where the model
    has them.

    Args:
        model: MLflow model directory (any flavor) from train or import_model.
        test_data: Test split from ingest (a seeded sample of `explain.max_rows` rows is explained).
        task: kfmlops.tasks.Task as JSON, from ingest (the primary metric and what is attributed).
        sensitive_features: Normalised names of the columns whose groups are explained one by one.
        settings: kfmlops.config.Settings as JSON (the `explain`, `evaluate` (primary metric, decision
            threshold), `fairness.min_group_size` and `mlflow` sections are read).
        run_id: The MLflow run that receives explain/explanation.json, explain/report.html and the
            top importances (explain.importance.<column>).

    Returns:
        explanation: JSON (kfmlops.explain): method, metric, features (importance, std; descending),
            by_group, attributions (method, mean_abs per column, or null), rows, groups, notes. `{}`
            when `explain.enabled` is false.
        metrics: importance.<column> of the `explain.top_k` most important columns.
        report: HTML: the top columns overall, by attribution and per group.
    """
    from kfmlops.step import step

    with step(settings, run_id, read=[model.uri, test_data.uri], write=[explanation.uri, report.uri]) as s:
        from kfmlops.explain import disabled_html, to_html

        cfg = s.settings
        if not cfg.explain.enabled:
            s.write_json(explanation, {}, enabled=False)
            s.write_html(report, disabled_html())
            return
        import pandas as pd

        from kfmlops import model_contract
        from kfmlops.evaluate import primary_metric
        from kfmlops.explain import explain as run_explain
        from kfmlops.tasks import Task

        the_task = Task.from_json(task)
        result = run_explain(model_contract.load(model.path, the_task), pd.read_parquet(test_data.path), the_task,
                             primary_metric(the_task, cfg.evaluate), cfg.explain, list(sensitive_features),
                             cfg.fairness.min_group_size, cfg.evaluate.decision_threshold)
        document, page = result.to_json(), to_html(result, cfg.explain.top_k)
        s.write_json(explanation, document, enabled=True, metric=result.metric, rows=result.rows,
                     attributions=result.attribution_method or "none")
        s.write_html(report, page)
        s.log(kfp_metrics=metrics, metrics={f"importance.{k}": v for k, v in result.top(cfg.explain.top_k).items()},
              prefix="explain.", documents={"explain/explanation.json": document}, texts={"explain/report.html": page})
