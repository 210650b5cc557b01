from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from kfmlops.config import TrainConfig
from kfmlops.provenance import PROVENANCE_FILE, TamperedArtifactError, generate_keypair, verify
from kfmlops.register import CHALLENGER, CHAMPION, GateVerdict, Lineage, aliases, current_champion, promote, register
from kfmlops.tracking import start_run
from kfmlops.train import ModelBundle, train


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, adult):
    out = tmp_path_factory.mktemp("model") / "bundle"
    train(adult.train_path, "y", TrainConfig(epochs=2), out)
    return out


KEYS = generate_keypair()


def _lineage(passed: bool) -> Lineage:
    return Lineage("f" * 64, "c" * 64, "data/adult.csv", "abc123", "run-1", {"roc_auc": 0.9},
                   {"evaluate": GateVerdict(passed, ["roc_auc 0.9 >= 0.85"]), "fairness": GateVerdict(True, ["ok"])})


def test_register_logs_a_raw_row_pyfunc_with_lineage(mlflow_store, model_dir, adult_test):
    run_id = start_run(mlflow_store, "t", {})
    features = adult_test.drop(columns=["y"])
    ref = register(model_dir, run_id, mlflow_store, _lineage(True), features, signing_key=KEYS[0])
    client = MlflowClient(mlflow_store.tracking_uri)
    mv = client.get_model_version("adult", ref.version)
    assert mv.tags["kfmlops.dataset_fingerprint"] == "f" * 64
    assert mv.tags["kfmlops.gate.evaluate.passed"] == "true"
    assert mv.tags["kfmlops.all_gates_passed"] == "true"
    assert mv.tags["kfmlops.metric.roc_auc"] == "0.9"
    assert aliases(mlflow_store) == {CHALLENGER: ref.version}
    assert current_champion(mlflow_store) is None

    loaded = mlflow.pyfunc.load_model(ref.model_uri)
    assert [c.name for c in loaded.metadata.get_input_schema().inputs] == list(features.columns)
    expected = ModelBundle.load(model_dir).predict_proba({c: features[c].to_numpy() for c in features.columns})
    np.testing.assert_allclose(loaded.predict(features), expected, rtol=1e-6)


def test_promote_moves_champion_and_remembers_the_previous_one(mlflow_store, model_dir, adult_test):
    features = adult_test.drop(columns=["y"]).head(5)
    first = register(model_dir, start_run(mlflow_store, "a", {}), mlflow_store, _lineage(True), features,
                     signing_key=KEYS[0])
    assert promote(mlflow_store, first.version).previous_champion is None
    second = register(model_dir, start_run(mlflow_store, "b", {}), mlflow_store, _lineage(False), features,
                      signing_key=KEYS[0])
    assert promote(mlflow_store, second.version).previous_champion == first.version
    client = MlflowClient(mlflow_store.tracking_uri)
    assert aliases(mlflow_store) == {CHALLENGER: second.version, CHAMPION: second.version}
    assert client.get_model_version("adult", second.version).tags["kfmlops.previous_champion"] == first.version


def test_registered_bundle_carries_signed_provenance(mlflow_store, model_dir, adult_test, tmp_path):
    run_id = start_run(mlflow_store, "p", {})
    ref = register(model_dir, run_id, mlflow_store, _lineage(False), adult_test.drop(columns=["y"]).head(5),
                   signing_key=KEYS[0], residency={"policy": None, "verdicts": []})
    local = Path(mlflow.artifacts.download_artifacts(ref.model_uri, dst_path=str(tmp_path)))
    bundle = next(local.rglob(PROVENANCE_FILE)).parent
    record = verify(bundle, KEYS[1], require_blessed=False)
    assert record.model_name == "adult" and record.pipeline_run_id == "run-1"
    assert set(record.artifacts) == {"preprocess.json", "model.json", "weights.pt"}
    assert record.gates["evaluate"]["passed"] is False
    with open(bundle / "weights.pt", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(TamperedArtifactError, match="weights.pt"):
        verify(bundle, KEYS[1], require_blessed=False)
