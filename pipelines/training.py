"""The training pipeline: ingest -> validate -> train -> evaluate -> fairness -> register -> (gates) -> promote -> deploy.

Validation failures stop the run. Training runs in the step's own pod or, for large data and
GPUs, as a Kubeflow Trainer job across nodes (`training_backend`); either way the model goes
through :func:`release`. Every candidate is registered (alias `challenger`) with its lineage and
gate verdicts; the `champion` alias moves only inside the two gate branches, when evaluate
blessed the candidate and fairness passed it, and only such a champion is deployed (validated
before push, canary, then promoted or rolled back).
"""

from kfp import dsl, kubernetes
from kfp.dsl import Dataset, Input, Model

from kfmlops.components import deploy, evaluate, fairness, ingest, promote, register, train, train_job, validate

SIGNING_SECRET, SIGNING_MOUNT = "kfmlops-signing-key", "/etc/kfmlops/signing"  # signing.pem
VERIFY_SECRET, VERIFY_MOUNT = "kfmlops-verify-key", "/etc/kfmlops/keys"  # verify.pem
SHARED_MOUNT = "/mnt/kfmlops"  # the shared PVC, on the train_job step and on every rank it starts


@dsl.pipeline(name="kfmlops-release", description="Evaluate, fairness-gate, register, promote and deploy a model.")
def release(
    model: Input[Model],
    test_data: Input[Dataset],
    label: str,
    sensitive_columns: list,
    source: str,
    fingerprint: str,
    settings: dict,
    run_id: str,
    pipeline_run_id: str,
) -> str:
    """The gates and everything after them, for a trained model bundle; returns its registered version."""
    scored = evaluate(test_data=test_data, model=model, label=label, settings=settings, run_id=run_id)
    fair = fairness(test_data=test_data, predictions=scored.outputs["predictions"],
                    sensitive_features=sensitive_columns, settings=settings, run_id=run_id)
    version = register(model=model, test_data=test_data, blessing=scored.outputs["blessing"],
                       fairness_verdict=fair.outputs["verdict"], label=label, source=source,
                       fingerprint=fingerprint, settings=settings, run_id=run_id, pipeline_run_id=pipeline_run_id)
    # On a cluster the keys come from Secrets (optional: locally, and where settings.provenance names
    # another source, they are absent); point settings.provenance.*_key_file at these paths.
    kubernetes.use_secret_as_volume(version, SIGNING_SECRET, mount_path=SIGNING_MOUNT, optional=True)
    with dsl.If(scored.outputs["Output"] == True, name="evaluation-gate"):  # noqa: E712 (a KFP condition, not a bool test)
        with dsl.If(fair.outputs["Output"] == True, name="fairness-gate"):  # noqa: E712
            promoted = promote(model_name=version.outputs["model_name"], version=version.outputs["version"],
                               settings=settings)
            rollout = deploy(test_data=test_data, label=label, version=version.outputs["version"],
                             settings=settings).after(promoted)
            kubernetes.use_secret_as_volume(rollout, VERIFY_SECRET, mount_path=VERIFY_MOUNT, optional=True)
    for task in (scored, fair, version, promoted, rollout):
        task.set_caching_options(False)  # each step records into MLflow: never replay it from cache
    return version.outputs["version"]


@dsl.pipeline(
    name="kfmlops-training",
    description="Ingest, validate, train, evaluate against the champion, fairness-gate, register, promote, deploy.",
)
def training(
    data: dict,
    settings: dict = {},
    run_tags: dict = {},
    training_backend: str = "in-pod",
    cluster_training: dict = {},
    shared_pvc: str = "kfmlops-shared",
) -> str:
    """Trains and registers a model from `data`; returns the new model version.

    Args:
        data: kfmlops.config.DataSpec as JSON: `source` (training data path or URI: CSV, Parquet,
            JSON Lines) and `label` (the label column) are required; `test_source` (held-out test
            data; when absent a test split is cut from source), `positive_labels` and
            `sensitive_features` (columns the fairness gate slices by) are optional.
        settings: kfmlops.config.Settings as JSON (stage settings; every field has a default).
        run_tags: Extra MLflow tags for this run, e.g. why it was started (the drift job sets them).
        training_backend: "in-pod" (the train step's own pod; small data) or "cluster" (a Kubeflow
            Trainer TrainJob or PyTorchJob across nodes and GPUs; large data).
        cluster_training: kfmlops.train.cluster.ClusterTrainConfig as JSON, without `storage`.
        shared_pvc: ReadWriteMany PVC that a cluster training job's ranks share (mounted at /mnt/kfmlops).
    """
    kfp_run_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER
    splits = ingest(data=data, settings=settings, pipeline_run_id=kfp_run_id, run_tags=run_tags)
    label_column, mlflow_run = splits.outputs["label_column"], splits.outputs["run_id"]
    checked = validate(train_data=splits.outputs["train_data"], test_data=splits.outputs["test_data"],
                       label=label_column, settings=settings, run_id=mlflow_run)
    downstream = dict(test_data=splits.outputs["test_data"], label=label_column,
                      sensitive_columns=splits.outputs["sensitive_columns"], source=splits.outputs["source"],
                      fingerprint=splits.outputs["fingerprint"], settings=settings, run_id=mlflow_run,
                      pipeline_run_id=kfp_run_id)
    with dsl.If(training_backend == "in-pod", name="train-in-pod"):
        in_pod = train(train_data=splits.outputs["train_data"], label=label_column, settings=settings,
                       run_id=mlflow_run).after(checked)
        in_pod_release = release(model=in_pod.outputs["model"], **downstream)
    with dsl.Else(name="train-on-cluster"):
        job = train_job(train_data=splits.outputs["train_data"], label=label_column, settings=settings,
                        cluster=cluster_training, shared_pvc=shared_pvc, run_id=mlflow_run,
                        backend=training_backend).after(checked)
        kubernetes.mount_pvc(job, pvc_name=shared_pvc, mount_path=SHARED_MOUNT)
        cluster_release = release(model=job.outputs["model"], **downstream)
    for task in (splits, checked, job, in_pod):
        task.set_caching_options(False)
    return dsl.OneOf(in_pod_release.output, cluster_release.output)
