import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from kfmlops.config import TrainConfig
from kfmlops.train import ModelBundle, train
from kfmlops.train.loop import CHECKPOINT_FILE
from kfmlops.train.preprocess import SchemaMismatch

FAST = TrainConfig(epochs=3)


def _test_auc(model_dir, frame) -> float:
    bundle = ModelBundle.load(model_dir)
    proba = bundle.predict_proba({c: frame[c].to_numpy() for c in frame.columns if c != "y"})
    assert proba.shape == (len(frame),) and ((proba >= 0) & (proba <= 1)).all()
    return roc_auc_score(frame["y"], proba)


def _weights(model_dir) -> dict:
    return torch.load(f"{model_dir}/weights.pt", weights_only=True)


def test_default_model_reaches_target_auc_on_adult_test(tmp_path, adult, adult_test):
    result = train(adult.train_path, "y", TrainConfig(), tmp_path / "model")
    assert result.val_roc_auc > 0.89
    assert _test_auc(tmp_path / "model", adult_test) >= 0.90
    assert len(result.history) == TrainConfig().epochs


def test_same_seed_same_model_other_seed_other_model(tmp_path, adult):
    train(adult.train_path, "y", FAST, tmp_path / "a")
    train(adult.train_path, "y", FAST, tmp_path / "b")
    train(adult.train_path, "y", FAST.model_copy(update={"seed": 1}), tmp_path / "c")
    a, b, c = _weights(tmp_path / "a"), _weights(tmp_path / "b"), _weights(tmp_path / "c")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_preprocessing_is_fitted_on_train_and_saved(tmp_path, adult, adult_test):
    train(adult.train_path, "y", FAST, tmp_path / "m")
    pre = json.loads((tmp_path / "m" / "preprocess.json").read_text())
    cats = {f["name"]: f["vocabulary"] for f in pre["categorical"]}
    nums = {f["name"]: f for f in pre["numeric"]}
    assert "Female" in cats["sex"] and "y" not in cats and "y" not in nums
    assert nums["capital_gain"]["log"] and not nums["age"]["log"]
    bundle = ModelBundle.load(tmp_path / "m")
    row = {c: adult_test[c].to_numpy()[:3] for c in adult_test.columns if c != "y"}
    row["occupation"] = np.array(["Astronaut", None, "Sales"], dtype=object)  # unseen and missing -> bucket 0
    assert bundle.predict_proba(row).shape == (3,)
    with pytest.raises(SchemaMismatch, match="age"):
        bundle.predict_proba({k: v for k, v in row.items() if k != "age"})


def test_bad_settings_are_named(tmp_path, adult):
    with pytest.raises(ValueError, match="exclude_features.*nope"):
        train(adult.train_path, "y", TrainConfig(exclude_features=["nope"]), tmp_path / "m")
    with pytest.raises(ValueError, match="label column 'label'"):
        train(adult.train_path, "label", FAST, tmp_path / "m")


def test_killed_run_resumes_from_checkpoint_to_the_same_model(tmp_path, adult):
    config = TrainConfig(epochs=6, checkpoint_dir=str(tmp_path / "ckpt"))
    train(adult.train_path, "y", config.model_copy(update={"checkpoint_dir": str(tmp_path / "ref-ckpt")}), tmp_path / "ref")

    script = (
        "import sys; from kfmlops.config import TrainConfig; from kfmlops.train import train; "
        f"train({adult.train_path!r}, 'y', TrainConfig.model_validate_json(sys.argv[1]), {str(tmp_path / 'victim')!r})"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, config.model_dump_json()])
    checkpoint = tmp_path / "ckpt" / CHECKPOINT_FILE
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if checkpoint.exists() and torch.load(checkpoint, weights_only=True)["epoch"] >= 1:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_after = torch.load(checkpoint, weights_only=True)["epoch"]
    assert killed_after < config.epochs - 1, "the run finished before it could be killed"

    resumed = train(adult.train_path, "y", config, tmp_path / "resumed")
    assert resumed.resumed_from_epoch == killed_after
    ref, res = _weights(tmp_path / "ref"), _weights(tmp_path / "resumed")
    assert all(torch.allclose(ref[k], res[k], atol=1e-6) for k in ref)


@pytest.mark.slow
def test_two_gloo_ranks_match_one_process(tmp_path, adult, adult_test):
    one = train(adult.train_path, "y", FAST, tmp_path / "one")
    two = train(adult.train_path, "y", FAST.model_copy(update={"processes": 2}), tmp_path / "two")
    assert two.world_size == 2
    assert abs(_test_auc(tmp_path / "one", adult_test) - _test_auc(tmp_path / "two", adult_test)) < 0.005
    assert abs(one.val_roc_auc - two.val_roc_auc) < 0.005


@pytest.mark.slow
def test_a_failing_rank_is_reported(tmp_path, adult):
    config = FAST.model_copy(update={"processes": 2, "exclude_features": ["nope"]})
    with pytest.raises(RuntimeError, match=r"(?s)rank \d of 2 failed.*exclude_features"):
        train(adult.train_path, "y", config, tmp_path / "m")
