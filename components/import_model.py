from kfp.dsl import Dataset, Input, Model, Output

from kfmlops.components._base import component


@component
def import_model(
    model_uri: str,
    test_data: Input[Dataset],
    task: dict,
    settings: dict,
    run_id: str,
    model: Output[Model],
):
    """Brings a model trained outside kfmlops into the release steps, after checking it can score the data.

    Args:
        model_uri: An MLflow model: a directory path or artifact URI (s3://, gs://, ...), or a
            `models:/NAME/VERSION` or `runs:/RUN/PATH` URI. Any flavor (sklearn, xgboost, pytorch, pyfunc...).
        test_data: Test split from ingest: its first rows must score.
        task: kfmlops.tasks.Task as JSON, from ingest; the model's kfmlops metadata, if any, must agree.
        settings: kfmlops.config.Settings as JSON (the `mlflow` section is read).
        run_id: The MLflow run the import is recorded in.

    Returns:
        model: The MLflow model directory, with kfmlops metadata (task, features, trainer "imported"
            unless the model says otherwise).
    """
    from kfmlops.import_model import import_model as run_import
    from kfmlops.step import step
    from kfmlops.tasks import Task

    with step(settings, run_id, read=[model_uri, test_data.uri], write=model.uri):
        info = run_import(model_uri, test_data.path, Task.from_json(task), model.path)
        model.metadata.update({"trainer": info.trainer, "task": info.task.kind, "source": model_uri})
