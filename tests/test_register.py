"""Register: real MLflow model directories (a scikit-learn pipeline, our bundles) signed as a whole,
registered in a fresh sqlite store, loaded back from ``models:/``; tampering with any file of the
registered directory is refused before the predictor loads a byte."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.models import Model
from mlflow.tracking import MlflowClient
from serving_fixtures import task_models  # noqa: F401  (fixture)

from kfmlops import model_contract
from kfmlops.model_contract import ModelContractError
from kfmlops.provenance import PROVENANCE_FILE, TamperedArtifactError, digest_tree, generate_keypair, verify
from kfmlops.register import CHALLENGER, CHAMPION, GateVerdict, Lineage, aliases, current_champion, promote, register
from kfmlops.serving.config import ServingConfig
from kfmlops.serving.predictor import Predictor, resolve_model
from kfmlops.tasks import Task
from kfmlops.tracking import start_run

KEYS = generate_keypair()


def _lineage(passed: bool) -> Lineage:
    return Lineage("f" * 64, "c" * 64, "data/penguins.csv", "abc123", "run-1", {"macro_f1": 0.97, "accuracy": 0.98},
                   {"evaluate": GateVerdict(passed, ["macro_f1 0.97 >= 0.9"]), "fairness": GateVerdict(True, ["ok"])},
                   primary_metric="macro_f1")


def _register(store, model, passed: bool = True, model_dir=None):
    return register(model_dir or model.model_dir, start_run(store, "t", {}), store, _lineage(passed), model.features,
                    task=model.task, signing_key=KEYS[0], residency={"policy": None, "verdicts": []})


def _download(store, ref, tmp_path) -> Path:
    return resolve_model(ref.model_uri, store.tracking_uri, download_dir=tmp_path / "download").model_dir


def test_register_signs_the_whole_model_directory_and_tags_its_task(mlflow_store, task_models, tmp_path):
    model = task_models["penguins-sklearn"]
    ref = _register(mlflow_store, model)
    mv = MlflowClient(mlflow_store.tracking_uri).get_model_version("adult", ref.version)
    assert {k: mv.tags[f"kfmlops.{k}"] for k in ("task", "label", "classes", "trainer", "primary_metric")} == {
        "task": "multiclass", "label": "species", "classes": '["Adelie", "Chinstrap", "Gentoo"]', "trainer": "sklearn",
        "primary_metric": "macro_f1"}
    assert mv.tags["kfmlops.gate.evaluate.passed"] == "true" and mv.tags["kfmlops.metric.macro_f1"] == "0.97"
    assert aliases(mlflow_store) == {CHALLENGER: ref.version} and current_champion(mlflow_store) is None

    local = _download(mlflow_store, ref, tmp_path)
    record = verify(local, KEYS[1])
    assert record.model_name == "adult" and record.pipeline_run_id == "run-1"
    assert set(record.artifacts) == {p.name for p in local.iterdir()} - {PROVENANCE_FILE}
    assert {"MLmodel", "model.pkl", "input_example.json"} <= set(record.artifacts)
    assert record.artifacts == {k: v for k, v in digest_tree(model.model_dir).items()}  # the files as trained

    frame = model.features
    expected = model_contract.load(model.model_dir).scores(frame)
    np.testing.assert_array_equal(model_contract.load(ref.model_uri).scores(frame), expected)
    assert mlflow.pyfunc.load_model(ref.model_uri).predict(frame.head(3)).tolist() == [
        model.task.classes[i] for i in expected[:3].argmax(axis=1)]


@pytest.mark.parametrize("name", ["cps1988-tabular-net", "penguins-gbdt"])
def test_a_registered_bundle_loads_from_the_registry_with_its_scores(mlflow_store, task_models, tmp_path, name):
    model = task_models[name]
    ref = _register(mlflow_store, model)
    local = _download(mlflow_store, ref, tmp_path)
    record = verify(local, KEYS[1])
    bundle = model_contract.bundle_path(local).relative_to(local).as_posix()
    assert f"{bundle}/model.json" in record.artifacts and f"{bundle}/preprocess.json" in record.artifacts
    frame = model.features.head(200)
    np.testing.assert_allclose(model_contract.load(ref.model_uri).scores(frame),
                               model_contract.load(model.model_dir).scores(frame), rtol=1e-12)
    assert MlflowClient(mlflow_store.tracking_uri).get_model_version("adult", ref.version).tags["kfmlops.task"] == \
        model.task.kind


def test_any_edit_missing_or_extra_file_in_the_model_directory_is_refused(mlflow_store, task_models, tmp_path):
    model = task_models["penguins-tabular-net"]
    ref = _register(mlflow_store, model)
    local = _download(mlflow_store, ref, tmp_path)
    bundle = model_contract.bundle_path(local)
    cases = {
        "changed": lambda d: (d / "MLmodel").write_text((d / "MLmodel").read_text().replace("Adelie", "Adelle")),
        "changed weights": lambda d: open(d / bundle.relative_to(local) / "weights.pt", "ab").write(b"\0"),
        "missing": lambda d: (d / "input_example.json").unlink(),
        "extra": lambda d: (d / bundle.relative_to(local) / "notes.txt").write_text("hello"),
    }
    for case, tamper in cases.items():
        copy = tmp_path / case.replace(" ", "-")
        shutil.copytree(local, copy)
        tamper(copy)
        with pytest.raises(TamperedArtifactError) as info:
            verify(copy, KEYS[1])
        error = info.value
        assert {"changed": error.changed, "changed weights": error.changed, "missing": error.missing,
                "extra": error.extra}[case], (case, str(error))
        predictor = Predictor("penguins", str(copy), ServingConfig(), verify_key=KEYS[1])
        with pytest.raises(TamperedArtifactError):
            predictor.load()
        assert not predictor.ready
    assert error.extra == [f"{bundle.relative_to(local).as_posix()}/notes.txt"]


def test_a_model_of_another_task_is_refused_before_anything_is_registered(mlflow_store, task_models):
    model = task_models["penguins-sklearn"]
    other = Task("multiclass", "species", ("Adelie", "Emperor", "Gentoo"))
    with pytest.raises(ModelContractError, match="Emperor"):
        register(model.model_dir, start_run(mlflow_store, "t", {}), mlflow_store, _lineage(True), model.features,
                 task=other, signing_key=KEYS[0])
    assert aliases(mlflow_store) == {}


def test_a_model_without_kfmlops_metadata_or_signature_gets_both(mlflow_store, task_models, tmp_path):
    model = task_models["cps1988-sklearn"]
    bare = tmp_path / "bare"
    shutil.copytree(model.model_dir, bare)
    mlmodel = Model.load(str(bare))
    mlmodel.metadata, mlmodel.signature = {}, None
    mlmodel.save(str(bare / "MLmodel"))
    ref = _register(mlflow_store, model, model_dir=bare)
    local = _download(mlflow_store, ref, tmp_path)
    info = model_contract.read_info(local)
    assert (info.task, info.trainer, info.features) == (model.task, "imported", list(model.features.columns))
    assert Model.load(str(local)).signature.inputs.input_names() == list(model.features.columns)
    assert verify(local, KEYS[1]).model_name == "adult"


def test_promote_moves_champion_and_remembers_the_previous_one(mlflow_store, task_models):
    model = task_models["penguins-gbdt"]
    first = _register(mlflow_store, model)
    assert promote(mlflow_store, first.version).previous_champion is None
    second = _register(mlflow_store, model, passed=False)
    assert promote(mlflow_store, second.version).previous_champion == first.version
    client = MlflowClient(mlflow_store.tracking_uri)
    assert aliases(mlflow_store) == {CHALLENGER: second.version, CHAMPION: second.version}
    assert client.get_model_version("adult", second.version).tags["kfmlops.previous_champion"] == first.version
