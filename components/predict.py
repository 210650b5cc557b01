from kfp.dsl import Dataset, Input, Model, Output

from kfmlops.components._base import component


@component
def predict(
    model: Input[Model],
    data: Input[Dataset],
    task: dict,
    settings: dict,
    run_id: str,
    predictions: Output[Dataset],
):
    """Scores a split with any MLflow model into the predictions dataset that evaluate and fairness read.

    Args:
        model: MLflow model directory (any flavor) from train or import_model.
        data: A split from ingest (Parquet; canonical labels, when it holds the label column).
        task: kfmlops.tasks.Task as JSON, from ingest; the model's kfmlops metadata, if any, must agree.
        settings: kfmlops.config.Settings as JSON (`evaluate.decision_threshold` and the `mlflow` section are read).
        run_id: The MLflow run a failure is recorded in.

    Returns:
        predictions: Parquet, one row per input row: label (when the split has it), prediction (class
            name or value) and, for classification, proba:<class> per class; artifact metadata: rows, task.
    """
    from kfmlops.predict import predict_file
    from kfmlops.step import step
    from kfmlops.tasks import Task

    with step(settings, run_id, read=[model.uri, data.uri], write=predictions.uri) as s:
        rows = predict_file(model.path, data.path, predictions.path, Task.from_json(task),
                            s.settings.evaluate.decision_threshold)
        predictions.metadata.update({"rows": rows, "task": task["kind"], "format": "parquet"})
