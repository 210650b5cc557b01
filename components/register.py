from typing import NamedTuple

from kfp.dsl import Artifact, Dataset, Input, Model

from kfmlops.components._base import component


@component
def register(
    model: Input[Model],
    test_data: Input[Dataset],
    blessing: Input[Artifact],
    fairness_verdict: Input[Artifact],
    task: dict,
    source: str,
    fingerprint: str,
    settings: dict,
    run_id: str,
    pipeline_run_id: str,
) -> NamedTuple("RegisterOutputs", [("model_name", str), ("version", str)]):
    """Registers the candidate as a new MLflow model version: lineage and task tags (with the run's dataset snapshots,
    kfmlops.snapshot.train/test), signed provenance, alias `challenger`, and its model card (kfmlops.model_card:
    Markdown and HTML in the run, tag `kfmlops.card`); then prunes snapshots beyond `snapshots.keep_last`.

    Args:
        model: Candidate Model artifact (an MLflow model directory of any framework) from train or import_model.
        test_data: Test split (a few rows, without the label, must score for the task; they give a model that has
            no signature one).
        blessing: Evaluate's JSON verdict (its candidate metrics and primary metric are recorded).
        fairness_verdict: Fairness's JSON verdict.
        task: The data's task (kfmlops.tasks.Task as JSON, from ingest); the model must be of this task.
        source: The training data URI, recorded for drift monitoring's reference.
        fingerprint: Dataset SHA-256 from ingest.
        settings: kfmlops.config.Settings as JSON (the `mlflow`, `provenance`, `audit`, `model_card` and `snapshots`
            sections are read; the whole is hashed).
        run_id: The pipeline's MLflow run; the signed model directory is logged into it, and its
            `kfmlops.tuning.*` tags (a search by tune) and snapshot tags are copied onto the version.
        pipeline_run_id: The KFP run id, recorded for lineage.

    Returns:
        model_name: The registered model's name.
        version: The new version (alias `challenger`; `champion` is moved only by promote).
    """
    import json
    from pathlib import Path

    import mlflow
    import pandas as pd

    from kfmlops.approval import TEST_DATA_TAG
    from kfmlops import model_card, snapshots
    from kfmlops.provenance import signing_key
    from kfmlops.register import SNAPSHOT_TAG_PREFIX, GateVerdict, Lineage, code_commit, register as run_register
    from kfmlops.step import step
    from kfmlops.tasks import Task
    from kfmlops.tracking import client, end_run
    from kfmlops.tune import TAG_PREFIX as TUNING_TAG_PREFIX

    data_task = Task.from_json(task)
    with step(settings, run_id, read=[model.uri, test_data.uri, source]) as s:
        cfg = s.settings
        run = mlflow.get_run(run_id)
        s.enforce(**{"model storage": run.info.artifact_uri, "snapshots": snapshots.directory(cfg.snapshots)})
        evaluation = json.loads(Path(blessing.path).read_text())
        fair = json.loads(Path(fairness_verdict.path).read_text())
        lineage = Lineage(
            dataset_fingerprint=fingerprint,
            config_hash=cfg.digest(),
            train_data=source,
            code_commit=code_commit(),
            pipeline_run_id=pipeline_run_id,
            metrics={k: v for k, v in evaluation["candidate"].items() if isinstance(v, float)},
            primary_metric=evaluation["primary_metric"],
            gates={"evaluate": GateVerdict(evaluation["blessed"], evaluation["reasons"]),
                   "fairness": GateVerdict(fair["passed"], fair["reasons"])},
            tuning={k: v for k, v in run.data.tags.items() if k.startswith(TUNING_TAG_PREFIX)} or None,
            snapshots={k.removeprefix(SNAPSHOT_TAG_PREFIX): v for k, v in run.data.tags.items()
                       if k.startswith(SNAPSHOT_TAG_PREFIX)},
        )
        example = pd.read_parquet(test_data.path).drop(columns=[data_task.label]).head(5)
        ref = run_register(model.path, run_id, cfg.mlflow, lineage, example, task=data_task,
                           signing_key=signing_key(cfg.provenance), residency=s.residency_record(), card=cfg.model_card,
                           extra_tags={TEST_DATA_TAG: test_data.uri})  # what kfmlops approve deploys with
        model_card.refresh(cfg, ref.version)
        snapshots.prune(cfg.snapshots, client(cfg.mlflow))  # after the tags: this version's snapshots are protected
        end_run(cfg.mlflow, run_id)
        return (ref.name, ref.version)
