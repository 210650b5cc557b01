"""The training pipeline: ingest -> validate -> train -> evaluate -> fairness -> register -> (gates) -> promote -> deploy.

Validation failures stop the run. Every candidate is registered (alias `challenger`) with its
lineage and gate verdicts; the `champion` alias moves only inside the two gate branches, when
evaluate blessed the candidate and fairness passed it, and only such a champion is deployed
(validated before push, canary, then promoted or rolled back).
"""

from typing import Optional

from kfp import dsl, kubernetes

from kfmlops.components import deploy, evaluate, fairness, ingest, promote, register, train, validate


SIGNING_SECRET, SIGNING_MOUNT = "kfmlops-signing-key", "/etc/kfmlops/signing"  # signing.pem
VERIFY_SECRET, VERIFY_MOUNT = "kfmlops-verify-key", "/etc/kfmlops/keys"  # verify.pem


@dsl.pipeline(
    name="kfmlops-training",
    description="Ingest, validate, train, evaluate against the champion, fairness-gate, register, promote, deploy.",
)
def training(
    source: str,
    label: str,
    positive_labels: list = [1],
    sensitive_features: list = [],
    settings: dict = {},
    test_source: Optional[str] = None,
    run_tags: dict = {},
) -> str:
    """Trains and registers a model from `source`; returns the new model version.

    Args:
        source: Training data path or URI (CSV, Parquet, JSON Lines).
        label: Label column.
        positive_labels: Label values meaning the positive class.
        sensitive_features: Columns the fairness gate slices by.
        settings: kfmlops.config.Settings as JSON (stage settings; every field has a default).
        test_source: Held-out test data; when None a test split is cut from source.
        run_tags: Extra MLflow tags for this run, e.g. why it was started (the drift job sets them).
    """
    run_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER
    data = ingest(source=source, test_source=test_source, label=label, positive_labels=positive_labels,
                  sensitive_features=sensitive_features, settings=settings, pipeline_run_id=run_id,
                  run_tags=run_tags)
    splits = dict(train_data=data.outputs["train_data"], test_data=data.outputs["test_data"])
    mlflow_run = data.outputs["run_id"]
    checked = validate(**splits, label=data.outputs["label_column"], settings=settings, run_id=mlflow_run)
    model = train(train_data=splits["train_data"], label=data.outputs["label_column"], settings=settings,
                  run_id=mlflow_run).after(checked)
    scored = evaluate(test_data=splits["test_data"], model=model.outputs["model"], label=data.outputs["label_column"],
                      settings=settings, run_id=mlflow_run)
    fair = fairness(test_data=splits["test_data"], predictions=scored.outputs["predictions"],
                    sensitive_features=data.outputs["sensitive_columns"], settings=settings, run_id=mlflow_run)
    version = register(model=model.outputs["model"], test_data=splits["test_data"],
                       blessing=scored.outputs["blessing"], fairness_verdict=fair.outputs["verdict"],
                       label=data.outputs["label_column"], source=source, fingerprint=data.outputs["fingerprint"],
                       settings=settings, run_id=mlflow_run, pipeline_run_id=run_id)
    # On a cluster the keys come from Secrets (optional: locally, and where settings.provenance names
    # another source, they are absent); point settings.provenance.*_key_file at these paths.
    kubernetes.use_secret_as_volume(version, SIGNING_SECRET, mount_path=SIGNING_MOUNT, optional=True)
    with dsl.If(scored.outputs["Output"] == True, name="evaluation-gate"):  # noqa: E712 (a KFP condition, not a bool test)
        with dsl.If(fair.outputs["Output"] == True, name="fairness-gate"):  # noqa: E712
            promoted = promote(model_name=version.outputs["model_name"], version=version.outputs["version"],
                               settings=settings)
            rollout = deploy(test_data=splits["test_data"], label=data.outputs["label_column"],
                             version=version.outputs["version"], settings=settings).after(promoted)
            kubernetes.use_secret_as_volume(rollout, VERIFY_SECRET, mount_path=VERIFY_MOUNT, optional=True)
    for task in (data, checked, model, scored, fair, version, promoted, rollout):
        task.set_caching_options(False)  # each step records into MLflow: never replay it from cache
    return version.outputs["version"]
