from typing import NamedTuple

from kfp.dsl import Dataset, Input, Metrics, Model, Output

from kfmlops.components._base import component


@component
def train(
    train_data: Input[Dataset],
    task: dict,
    settings: dict,
    run_id: str,
    model: Output[Model],
    metrics: Output[Metrics],
) -> NamedTuple("TrainOutputs", [("val_score", float)]):
    """Fits `train.trainer` (tabular-net: one process or `train.processes` DDP ranks; gbdt:
    XGBoost; or a user's `package.module:fit`) on the train split.

    Args:
        train_data: Train split from ingest (canonical labels).
        task: The label's task from ingest (kfmlops.tasks.Task as JSON: kind, label, classes).
        settings: kfmlops.config.Settings as JSON (the `train` and `mlflow` sections are read).
        run_id: The MLflow run that receives params and per-epoch (gbdt: per-round) metrics.

    Returns:
        model: MLflow model directory (MLmodel + flavor) with the task, features and trainer in
            its `kfmlops` metadata; artifact metadata: framework, trainer, task.
        metrics: The validation metric (val_roc_auc, val_log_loss or val_rmse), best iteration,
            rows, seconds.
        val_score: The validation metric's value (binary ROC AUC, multiclass log loss, regression RMSE).
    """
    from dataclasses import asdict

    from kfmlops.step import step
    from kfmlops.tasks import Task
    from kfmlops.train import train as run_train

    with step(settings, run_id, read=train_data.uri, write=model.uri) as s:
        cfg = s.settings.train
        s.enforce(write=cfg.checkpoint_dir)
        s.log(params={f"train.{k}": v for k, v in cfg.model_dump().items()})
        result = run_train(train_data.path, Task.from_json(task), cfg, model.path, mlflow=s.settings.mlflow, run_id=run_id)
        model.metadata.update({"framework": result.framework, "format": "mlflow", "trainer": result.trainer,
                               "task": task, "device": result.device, "world_size": result.world_size})
        s.log(kfp_metrics=metrics, metrics={f"val_{result.metric}": result.val_score, "best_iteration": result.best_iteration,
                                            "train_rows": result.train_rows, "train_seconds": result.seconds},
              documents={"train.json": asdict(result)})
        return (result.val_score,)
