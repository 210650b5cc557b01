"""The pipelines: training (ingest -> validate -> tune -> train -> release) and bring-your-own-model
(ingest -> validate -> import_model -> release), where release is predict -> evaluate, fairness,
explain -> register -> (gates) -> promote -> deploy.

Validation failures stop the run. With `settings.tuning.n_trials` above 0, tune searches the train
settings on the validation slice of the train split first, and train and release get the settings
it picked (lineage records the search); otherwise tune passes the settings through. Training runs
in the step's own pod or, for large data and GPUs, as a Kubeflow Trainer job across nodes
(`training_backend`); a model trained elsewhere comes in through `import_model` instead. Either way the model (an MLflow model directory of any
framework) goes through :func:`release`. Every candidate is registered (alias `challenger`) with its lineage and
gate verdicts; the `champion` alias moves only inside the two gate branches, when evaluate
blessed the candidate and fairness passed it, and only such a champion is deployed (validated
before push, canary, then promoted or rolled back). With governance.require_approval on, promote
asks for approval instead and the run ends there: `kfmlops approve` moves champion and deploys
(kfmlops.approval says why the run does not wait).
"""

from kfp import dsl, kubernetes
from kfp.dsl import Dataset, Input, Model

from kfmlops.components import (
    deploy, evaluate, explain, fairness, import_model, ingest, predict, promote, register, train, train_job, tune,
    validate,
)

SIGNING_SECRET, SIGNING_MOUNT = "kfmlops-signing-key", "/etc/kfmlops/signing"  # signing.pem
VERIFY_SECRET, VERIFY_MOUNT = "kfmlops-verify-key", "/etc/kfmlops/keys"  # verify.pem
SHARED_MOUNT = "/mnt/kfmlops"  # the shared PVC, on the train_job step and on every rank it starts
WAREHOUSE_SECRET, WAREHOUSE_MOUNT = "kfmlops-warehouse", "/etc/kfmlops/warehouse"  # password: the database's


@dsl.pipeline(name="kfmlops-release", description="Score, evaluate, fairness-gate, explain, register, promote and deploy a model.")
def release(
    model: Input[Model],
    train_data: Input[Dataset],
    test_data: Input[Dataset],
    task: dict,
    sensitive_columns: list,
    source: str,
    fingerprint: str,
    settings: dict,
    run_id: str,
    pipeline_run_id: str,
) -> str:
    """The gates and everything after them, for any model (an MLflow model directory); returns its
    registered version. The explanation runs beside the gates and before register, so the run holds
    it when the version is registered."""
    scored = predict(model=model, data=test_data, task=task, settings=settings, run_id=run_id)
    judged = evaluate(predictions=scored.outputs["predictions"], train_data=train_data, test_data=test_data,
                      task=task, settings=settings, run_id=run_id)
    fair = fairness(test_data=test_data, predictions=scored.outputs["predictions"], task=task,
                    sensitive_features=sensitive_columns, settings=settings, run_id=run_id)
    explained = explain(model=model, test_data=test_data, task=task, sensitive_features=sensitive_columns,
                        settings=settings, run_id=run_id).after(scored)
    version = register(model=model, test_data=test_data, blessing=judged.outputs["blessing"],
                       fairness_verdict=fair.outputs["verdict"], task=task, source=source,
                       fingerprint=fingerprint, settings=settings, run_id=run_id,
                       pipeline_run_id=pipeline_run_id).after(explained)
    # On a cluster the keys come from Secrets (optional: locally, and where settings.provenance names
    # another source, they are absent); point settings.provenance.*_key_file at these paths.
    kubernetes.use_secret_as_volume(version, SIGNING_SECRET, mount_path=SIGNING_MOUNT, optional=True)
    with dsl.If(judged.outputs["Output"] == True, name="evaluation-gate"):  # noqa: E712 (a KFP condition, not a bool test)
        with dsl.If(fair.outputs["Output"] == True, name="fairness-gate"):  # noqa: E712
            promoted = promote(model_name=version.outputs["model_name"], version=version.outputs["version"],
                               settings=settings)
            rollout = deploy(test_data=test_data, task=task, version=version.outputs["version"],
                             promotion=promoted.outputs["status"], settings=settings)  # "pending": waits, not deployed
            kubernetes.use_secret_as_volume(rollout, VERIFY_SECRET, mount_path=VERIFY_MOUNT, optional=True)
    for step in (scored, judged, fair, explained, version, promoted, rollout):
        step.set_caching_options(False)  # each step records into MLflow: never replay it from cache
    return version.outputs["version"]


def _ingest(data: dict, settings: dict, kfp_run_id: str, run_tags: dict):
    """The ingest task, with the database password Secret mounted where a warehouse source's
    ``ingest.warehouse.password_file`` can name it (optional: file sources and env-var passwords need none)."""
    splits = ingest(data=data, settings=settings, pipeline_run_id=kfp_run_id, run_tags=run_tags)
    kubernetes.use_secret_as_volume(splits, WAREHOUSE_SECRET, mount_path=WAREHOUSE_MOUNT, optional=True)
    return splits


def _release_inputs(splits, settings: dict, kfp_run_id: str) -> dict:
    """What release takes from ingest, besides the model."""
    return dict(train_data=splits.outputs["train_data"], test_data=splits.outputs["test_data"],
                task=splits.outputs["task"], sensitive_columns=splits.outputs["sensitive_columns"],
                source=splits.outputs["source"], fingerprint=splits.outputs["fingerprint"], settings=settings,
                run_id=splits.outputs["run_id"], pipeline_run_id=kfp_run_id)


@dsl.pipeline(
    name="kfmlops-training",
    description="Ingest, validate, tune (optional), train, evaluate against the champion, fairness-gate, register, "
                "promote, deploy.",
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
    splits = _ingest(data, settings, kfp_run_id, run_tags)
    task, mlflow_run = splits.outputs["task"], splits.outputs["run_id"]
    checked = validate(train_data=splits.outputs["train_data"], test_data=splits.outputs["test_data"],
                       task=task, settings=settings, run_id=mlflow_run)
    tuned = tune(train_data=splits.outputs["train_data"], task=task, settings=settings, run_id=mlflow_run).after(checked)
    tuned_settings = tuned.outputs["settings"]
    downstream = _release_inputs(splits, tuned_settings, kfp_run_id)
    with dsl.If(training_backend == "in-pod", name="train-in-pod"):
        in_pod = train(train_data=splits.outputs["train_data"], task=task, settings=tuned_settings, run_id=mlflow_run)
        in_pod_release = release(model=in_pod.outputs["model"], **downstream)
    with dsl.Else(name="train-on-cluster"):
        job = train_job(train_data=splits.outputs["train_data"], task=task, settings=tuned_settings,
                        cluster=cluster_training, shared_pvc=shared_pvc, run_id=mlflow_run, backend=training_backend)
        kubernetes.mount_pvc(job, pvc_name=shared_pvc, mount_path=SHARED_MOUNT)
        cluster_release = release(model=job.outputs["model"], **downstream)
    for step in (splits, checked, tuned, job, in_pod):
        step.set_caching_options(False)
    return dsl.OneOf(in_pod_release.output, cluster_release.output)


@dsl.pipeline(
    name="kfmlops-bring-your-own-model",
    description="Ingest and validate data, import a model trained elsewhere, then evaluate, gate, register and deploy it.",
)
def bring_your_own_model(data: dict, model_uri: str, settings: dict = {}, run_tags: dict = {}) -> str:
    """Releases a model trained outside kfmlops through the same gates; returns its registered version.

    Args:
        data: kfmlops.config.DataSpec as JSON, as for the training pipeline (the test split judges the model).
        model_uri: The model: an MLflow model directory's path or URI (s3://, gs://, ...), or a
            `models:/NAME/VERSION` / `runs:/RUN/PATH` URI. Any MLflow flavor.
        settings: kfmlops.config.Settings as JSON.
        run_tags: Extra MLflow tags for this run.
    """
    kfp_run_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER
    splits = _ingest(data, settings, kfp_run_id, run_tags)
    checked = validate(train_data=splits.outputs["train_data"], test_data=splits.outputs["test_data"],
                       task=splits.outputs["task"], settings=settings, run_id=splits.outputs["run_id"])
    imported = import_model(model_uri=model_uri, test_data=splits.outputs["test_data"], task=splits.outputs["task"],
                            settings=settings, run_id=splits.outputs["run_id"]).after(checked)
    for step in (splits, checked, imported):
        step.set_caching_options(False)
    return release(model=imported.outputs["model"], **_release_inputs(splits, settings, kfp_run_id)).output

