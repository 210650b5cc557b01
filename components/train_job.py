from kfp.dsl import Dataset, Input, Metrics, Model, Output

from kfmlops.components._base import component

@component
def train_job(
    train_data: Input[Dataset],
    label: str,
    settings: dict,
    cluster: dict,
    shared_pvc: str,
    run_id: str,
    backend: str,
    model: Output[Model],
    metrics: Output[Metrics],
):
    """Trains on the cluster as a Kubeflow Trainer TrainJob (or a PyTorchJob) and waits for it.

    The train split is staged on the shared PVC (mounted here and in every rank at /mnt/kfmlops),
    the job runs `torchrun -m kfmlops.train` on `num_nodes` x `procs_per_node` ranks (NCCL on
    GPUs), and rank 0's model bundle is copied back. A failed, deleted or timed-out job fails
    this step with the job's reason.

    Args:
        train_data: Train split from ingest.
        label: The label's normalised name.
        settings: kfmlops.config.Settings as JSON (the `train` and `mlflow` sections are read).
        cluster: kfmlops.train.cluster.ClusterTrainConfig as JSON, without `storage` (api,
            namespace, num_nodes, procs_per_node, gpus_per_node, cpu, memory, env, ...).
        shared_pvc: The ReadWriteMany PVC every rank mounts.
        run_id: The MLflow run that receives per-epoch metrics (the ranks need to reach the server).
        backend: The pipeline's training_backend; anything but "cluster" is refused (a misspelt "in-pod").

    Returns:
        model: Model bundle directory: preprocess.json, model.json, weights.pt.
        metrics: Validation ROC AUC, best epoch, rows, throughput.
    """
    import shutil
    from pathlib import Path

    from kfmlops.config import Settings
    from kfmlops.residency import enforce
    from kfmlops.tracking import failed_on_error, log_to_run, tracking_uri
    from kfmlops.train.cluster import ClusterTrainConfig, train_on_cluster
    from kfmlops.typed import parse

    if backend != "cluster":
        raise ValueError(f"training_backend must be 'in-pod' or 'cluster', got {backend!r}")
    mount = "/mnt/kfmlops"
    cfg = Settings.parse(settings)
    with failed_on_error(cfg.mlflow, run_id):
        job = parse(ClusterTrainConfig, {**cluster, "storage": {"claim_name": shared_pvc, "mount_path": mount}}, "cluster")
        # the ranks are other processes: they need the store's address, not "the default"
        store = cfg.mlflow.model_copy(update={"tracking_uri": tracking_uri(cfg.mlflow)})
        enforce({"read": train_data.uri, "write": [model.uri, mount, cfg.train.checkpoint_dir],
                 "mlflow": store.tracking_uri}, cfg.residency)
        staged = Path(mount) / "kfmlops-runs" / run_id
        staged.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(train_data.path, staged / "train.parquet")
        done = train_on_cluster(str(staged / "train.parquet"), label, cfg.train, str(staged / "model"), job,
                                mlflow=store, run_id=run_id)
        shutil.copytree(done.model_dir, model.path, dirs_exist_ok=True)
        model.metadata.update({"framework": "pytorch", "format": "kfmlops-bundle", "job": done.job})
        if done.result is not None:
            figures = {"val_roc_auc": done.result.val_roc_auc, "best_epoch": done.result.best_epoch,
                       "train_rows": done.result.train_rows, "samples_per_second": done.result.samples_per_second}
            for name, value in figures.items():
                metrics.log_metric(name, value)
            log_to_run(cfg.mlflow, run_id, metrics=figures)
