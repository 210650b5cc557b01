from typing import NamedTuple

from kfp.dsl import Dataset, Input, Metrics, Model, Output

from kfmlops.components._base import component


@component
def train_job(
    train_data: Input[Dataset],
    task: dict,
    settings: dict,
    cluster: dict,
    shared_pvc: str,
    run_id: str,
    backend: str,
    model: Output[Model],
    metrics: Output[Metrics],
) -> NamedTuple("TrainJobOutputs", [("val_score", float)]):
    """Trains on the cluster as a Kubeflow Trainer TrainJob (or a PyTorchJob) and waits for it.

    The train split is staged on the shared PVC (mounted here and in every rank at /mnt/kfmlops),
    the job runs `torchrun -m kfmlops.train` on `num_nodes` x `procs_per_node` ranks (NCCL on
    GPUs; `train.trainer` tabular-net, or gbdt on one rank), and rank 0's model bundle is wrapped
    here as the MLflow model directory. A failed, deleted or timed-out job fails this step with
    the job's reason.

    Args:
        train_data: Train split from ingest (canonical labels).
        task: The label's task from ingest (kfmlops.tasks.Task as JSON: kind, label, classes).
        settings: kfmlops.config.Settings as JSON (the `train` and `mlflow` sections are read).
        cluster: kfmlops.train.cluster.ClusterTrainConfig as JSON, without `storage` (api,
            namespace, num_nodes, procs_per_node, gpus_per_node, cpu, memory, env, ...).
        shared_pvc: The ReadWriteMany PVC every rank mounts.
        run_id: The MLflow run that receives per-epoch metrics (the ranks need to reach the server).
        backend: The pipeline's training_backend; anything but "cluster" is refused (a misspelt "in-pod").

    Returns:
        model: MLflow model directory (MLmodel + flavor) with the task, features and trainer in
            its `kfmlops` metadata; artifact metadata: framework, trainer, task, job.
        metrics: The validation metric (val_roc_auc, val_log_loss or val_rmse), best iteration,
            rows, seconds.
        val_score: The validation metric's value (binary ROC AUC, multiclass log loss, regression RMSE).
    """
    import shutil
    from pathlib import Path

    from kfmlops.step import step
    from kfmlops.tasks import Task
    from kfmlops.tracking import tracking_uri
    from kfmlops.train import read_head, save_model_dir
    from kfmlops.train.cluster import ClusterTrainConfig, train_on_cluster
    from kfmlops.typed import parse

    if backend != "cluster":
        raise ValueError(f"training_backend must be 'in-pod' or 'cluster', got {backend!r}")
    mount = "/mnt/kfmlops"
    with step(settings, run_id, read=train_data.uri, write=[model.uri, mount]) as s:
        cfg = s.settings
        s.enforce(write=cfg.train.checkpoint_dir)
        job = parse(ClusterTrainConfig, {**cluster, "storage": {"claim_name": shared_pvc, "mount_path": mount}}, "cluster")
        # the ranks are other processes: they need the store's address, not "the default"
        store = cfg.mlflow.model_copy(update={"tracking_uri": tracking_uri(cfg.mlflow)})
        staged = Path(mount) / "kfmlops-runs" / run_id
        staged.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(train_data.path, staged / "train.parquet")
        done = train_on_cluster(str(staged / "train.parquet"), Task.from_json(task), cfg.train, str(staged / "model"),
                                job, mlflow=store, run_id=run_id)
        if done.result is None:
            raise RuntimeError(f"{done.job} succeeded but wrote no result under {mount}: is {shared_pvc} mounted here?")
        save_model_dir(done.model_dir, model.path, read_head(staged / "train.parquet"))
        result = done.result
        model.metadata.update({"framework": result.framework, "format": "mlflow", "trainer": result.trainer,
                               "task": task, "job": done.job})
        s.log(kfp_metrics=metrics, metrics={f"val_{result.metric}": result.val_score, "best_iteration": result.best_iteration,
                                            "train_rows": result.train_rows, "train_seconds": result.seconds})
        return (result.val_score,)
