from typing import NamedTuple

from kfp.dsl import Dataset, Input, Metrics, Model, Output

from kfmlops.components._base import component


@component
def train(
    train_data: Input[Dataset],
    label: str,
    settings: dict,
    run_id: str,
    model: Output[Model],
    metrics: Output[Metrics],
) -> NamedTuple("TrainOutputs", [("val_roc_auc", float)]):
    """Fits the tabular network (one process, or `train.processes` DDP ranks) on the train split.

    Args:
        train_data: Train split from ingest.
        label: The label's normalised name.
        settings: kfmlops.config.Settings as JSON (the `train` and `mlflow` sections are read).
        run_id: The MLflow run that receives params and per-epoch metrics.

    Returns:
        model: Model bundle directory: preprocess.json, model.json, weights.pt.
        metrics: Validation ROC AUC, best epoch, rows, throughput.
        val_roc_auc: Best validation ROC AUC.
    """
    from dataclasses import asdict

    from kfmlops.config import Settings
    from kfmlops.residency import enforce
    from kfmlops.tracking import failed_on_error, log_to_run, tracking_uri
    from kfmlops.train import train as run_train

    cfg = Settings.parse(settings)
    with failed_on_error(cfg.mlflow, run_id):
        enforce({"read": train_data.uri, "write": [model.uri, cfg.train.checkpoint_dir],
                 "mlflow": tracking_uri(cfg.mlflow)}, cfg.residency)
        log_to_run(cfg.mlflow, run_id, params={f"train.{k}": v for k, v in cfg.train.model_dump().items()})
        result = run_train(train_data.path, label, cfg.train, model.path, mlflow=cfg.mlflow, run_id=run_id)
        figures = {"val_roc_auc": result.val_roc_auc, "best_epoch": result.best_epoch, "train_rows": result.train_rows,
                   "samples_per_second": result.samples_per_second, "train_seconds": result.seconds}
        for name, value in figures.items():
            metrics.log_metric(name, value)
        model.metadata.update({"framework": "pytorch", "format": "kfmlops-bundle", "device": result.device,
                               "world_size": result.world_size})
        log_to_run(cfg.mlflow, run_id, metrics=figures, documents={"train.json": asdict(result)})
        return (result.val_roc_auc,)
