import json
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import psutil
import pytest
import torch
from sklearn.metrics import roc_auc_score

from kfmlops import model_contract
from kfmlops.config import TrainConfig
from kfmlops.tasks import Task
from kfmlops.train import load_bundle, train
from kfmlops.train.loop import CHECKPOINT_FILE, batch_rows, peak_learning_rate
from kfmlops.train.preprocess import SchemaMismatch

# One intra-op thread: the fastest for these batches on a 2-core machine shared with other jobs.
DEFAULT = TrainConfig(trainer="tabular-net", cpu_threads=1)
FAST = DEFAULT.model_copy(update={"epochs": 3})


@pytest.fixture(scope="module")
def task(adult) -> Task:
    return Task.from_json(adult.task)


def _test_auc(model_dir, frame) -> float:
    model = model_contract.load(model_dir)
    proba = model.scores(frame.drop(columns="y"))
    assert proba.shape == (len(frame), 2) and np.allclose(proba.sum(axis=1), 1.0)
    return roc_auc_score(model.task.encode(frame["y"]), proba[:, 1])


def _weights(model_dir) -> dict:
    return torch.load(model_contract.bundle_path(model_dir) / "weights.pt", weights_only=True)


def _same_weights(a, b) -> bool:
    a, b = _weights(a), _weights(b)
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def _position(checkpoint) -> tuple[int, int]:
    payload = torch.load(checkpoint, weights_only=True)
    return payload["epoch"], payload["step"]


def _train_in_subprocess(adult, config: TrainConfig, model_dir) -> subprocess.Popen:
    script = (
        "import sys; from kfmlops.config import TrainConfig; from kfmlops.tasks import Task; "
        "from kfmlops.train import train; "
        f"train({adult.train_path!r}, Task.from_json({adult.task!r}), TrainConfig.model_validate_json(sys.argv[1]), "
        f"{str(model_dir)!r})"
    )
    return subprocess.Popen([sys.executable, "-c", script, config.model_dump_json()], stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoint(checkpoint, proc, after: tuple[int, int], timeout_s: float = 300) -> None:
    """Until the checkpoint is past ``after`` (epoch, step) and mid-epoch, or the process ends."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        if checkpoint.exists():
            position = _position(checkpoint)
            if position > after and position[1] > 0:
                return
        time.sleep(0.02)


def test_default_model_reaches_target_auc_on_adult_test_and_stops_early(tmp_path, adult, adult_test, task):
    result = train(adult.train_path, task, DEFAULT, tmp_path / "model")
    assert (result.trainer, result.task, result.metric) == ("tabular-net", "binary", "roc_auc")
    assert result.val_score > 0.89
    assert _test_auc(tmp_path / "model", adult_test) >= 0.90
    # Early stopping: patience epochs past the best validation loss, well before the maximum; the best is kept.
    losses = [h["val_loss"] for h in result.history]
    assert result.iterations == len(losses) < DEFAULT.epochs
    assert result.best_iteration == int(np.argmin(losses)) == result.iterations - 1 - DEFAULT.patience
    assert result.val_loss == min(losses) and result.val_score == result.history[result.best_iteration]["val_roc_auc"]
    assert result.samples_per_second > 0 and result.resumed_from_epoch is None
    info = model_contract.read_info(tmp_path / "model")
    assert info.task == task and info.trainer == "tabular-net" and "y" not in info.features


def test_same_seed_same_model_other_seed_other_model(tmp_path, adult, task):
    train(adult.train_path, task, FAST, tmp_path / "a")
    train(adult.train_path, task, FAST, tmp_path / "b")
    train(adult.train_path, task, FAST.model_copy(update={"seed": 1}), tmp_path / "c")
    a, b, c = _weights(tmp_path / "a"), _weights(tmp_path / "b"), _weights(tmp_path / "c")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_preprocessing_is_fitted_on_train_and_saved(tmp_path, adult, adult_test, task):
    train(adult.train_path, task, FAST, tmp_path / "m")
    bundle_dir = model_contract.bundle_path(tmp_path / "m")
    pre = json.loads((bundle_dir / "preprocess.json").read_text())
    cats = {f["name"]: f["vocabulary"] for f in pre["categorical"]}
    nums = {f["name"]: f for f in pre["numeric"]}
    assert "Female" in cats["sex"] and "y" not in cats and "y" not in nums
    assert nums["capital_gain"]["log"] and not nums["age"]["log"]
    bundle = load_bundle(bundle_dir)
    assert (bundle.kind, bundle.task, bundle.features) == ("tabular-net", task, [c for c in adult_test.columns if c != "y"])
    row = {c: adult_test[c].to_numpy()[:3] for c in adult_test.columns if c != "y"}
    row["occupation"] = np.array(["Astronaut", None, "Sales"], dtype=object)  # unseen and missing -> bucket 0
    assert bundle.scores(row).shape == (3, 2)
    with pytest.raises(SchemaMismatch, match="age"):
        bundle.scores({k: v for k, v in row.items() if k != "age"})


def test_bad_settings_are_named(tmp_path, adult, task):
    with pytest.raises(ValueError, match="exclude_features.*nope"):
        train(adult.train_path, task, FAST.model_copy(update={"exclude_features": ["nope"]}), tmp_path / "m")
    with pytest.raises(ValueError, match="label column 'label'"):
        train(adult.train_path, Task("binary", "label", task.classes), FAST, tmp_path / "m")
    with pytest.raises(ValueError, match=r"label 'y' has values \['<=50K', '>50K'\] outside the task's classes"):
        train(adult.train_path, Task("binary", "y", ("no", "yes")), FAST, tmp_path / "m")


def test_learning_rate_follows_the_batch_size():
    base = TrainConfig(learning_rate=1e-3, lr_base_batch_size=512, batch_size=2048)
    assert peak_learning_rate(base) == pytest.approx(2e-3)
    assert peak_learning_rate(base.model_copy(update={"lr_scaling": "linear"})) == pytest.approx(4e-3)
    assert peak_learning_rate(base.model_copy(update={"lr_scaling": "none"})) == pytest.approx(1e-3)
    assert peak_learning_rate(TrainConfig()) == TrainConfig().learning_rate
    assert peak_learning_rate(base, 128) == pytest.approx(0.5e-3)


def test_the_batch_shrinks_to_give_small_data_enough_steps():
    config = TrainConfig(batch_size=512)
    assert batch_rows(config, 100_000) == 512  # as configured
    assert batch_rows(config, 1_800) == 225  # an eighth of the rows
    assert batch_rows(config, 200) == 32  # never below 32 rows...
    assert batch_rows(config, 20) == 20  # ...nor above the rows there are


def test_killed_run_resumes_mid_epoch_to_the_same_model(tmp_path, adult, task):
    """SIGKILL after a mid-epoch checkpoint; the rerun resumes at that step and ends where an
    uninterrupted run ends (weights, best epoch and history)."""
    config = FAST.model_copy(update={"epochs": 4, "checkpoint_dir": str(tmp_path / "ckpt"), "checkpoint_every_steps": 20})
    reference = train(adult.train_path, task, config.model_copy(update={"checkpoint_dir": str(tmp_path / "ref-ckpt")}),
                      tmp_path / "ref")

    proc = _train_in_subprocess(adult, config, tmp_path / "victim")
    checkpoint = tmp_path / "ckpt" / CHECKPOINT_FILE
    _wait_for_checkpoint(checkpoint, proc, after=(1, 0))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = _position(checkpoint)
    assert killed_at < (config.epochs, 0), "the run finished before it could be killed"

    resumed = train(adult.train_path, task, config, tmp_path / "resumed")
    assert (resumed.resumed_from_epoch, resumed.resumed_from_step) == killed_at
    assert _same_weights(tmp_path / "ref", tmp_path / "resumed")
    assert resumed.best_iteration == reference.best_iteration
    curve = [(h["epoch"], h["train_loss"], h["val_loss"], h["val_roc_auc"]) for h in resumed.history]
    assert np.allclose(curve, [(h["epoch"], h["train_loss"], h["val_loss"], h["val_roc_auc"]) for h in reference.history])


def test_a_checkpoint_of_another_run_is_refused(tmp_path, adult, adult_train, task):
    config = FAST.model_copy(update={"epochs": 1, "checkpoint_dir": str(tmp_path / "ckpt")})
    first = train(adult.train_path, task, config, tmp_path / "a")
    with pytest.raises(ValueError, match=r"different run \(differs in \['learning_rate'\]\)"):
        train(adult.train_path, task, config.model_copy(update={"learning_rate": 1e-2}), tmp_path / "b")
    adult_train.iloc[:-10].to_parquet(tmp_path / "fewer.parquet")
    with pytest.raises(ValueError, match=r"different run \(differs in \['data'\]\)"):
        train(tmp_path / "fewer.parquet", task, config, tmp_path / "b")
    # Settings that do not change the optimisation path still resume (here: a finished run, nothing left to do).
    again = train(adult.train_path, task, config.model_copy(update={"cpu_threads": 2, "checkpoint_every_steps": 5}),
                  tmp_path / "c")
    assert (again.resumed_from_epoch, again.resumed_from_step) == (1, 0) and again.val_score == first.val_score
    assert _same_weights(tmp_path / "a", tmp_path / "c")


def test_the_rank_entry_takes_the_spec_inline_or_from_a_file(tmp_path, adult):
    from kfmlops.train.distributed import WorkerSpec, read_spec

    spec = WorkerSpec(adult.train_path, adult.task, FAST, str(tmp_path / "m"), result_path=str(tmp_path / "result.json"))
    (tmp_path / "spec.json").write_text(json.dumps(spec.to_json()))
    assert read_spec(json.dumps(spec.to_json())) == spec == read_spec(str(tmp_path / "spec.json"))


@pytest.mark.slow
def test_two_gloo_ranks_match_one_process(tmp_path, adult, adult_test, task):
    one = train(adult.train_path, task, FAST, tmp_path / "one")
    two = train(adult.train_path, task, FAST.model_copy(update={"processes": 2}), tmp_path / "two")
    assert two.world_size == 2
    assert abs(_test_auc(tmp_path / "one", adult_test) - _test_auc(tmp_path / "two", adult_test)) < 0.005
    assert abs(one.val_score - two.val_score) < 0.005


@pytest.mark.slow
def test_a_failing_rank_is_reported(tmp_path, adult, task):
    config = FAST.model_copy(update={"processes": 2, "exclude_features": ["nope"]})
    with pytest.raises(RuntimeError, match=r"(?s)rank \d of 2 failed.*exclude_features"):
        train(adult.train_path, task, config, tmp_path / "m")


def test_trainers_ranks_cannot_run_are_refused_before_any_start(tmp_path, adult, task):
    with pytest.raises(ValueError, match="'gbdt' trains on one rank"):
        train(adult.train_path, task, FAST.model_copy(update={"trainer": "gbdt", "processes": 2}), tmp_path / "m")


@pytest.mark.slow
def test_two_ranks_one_killed_then_rerun_resumes_to_the_same_model(tmp_path, adult, task):
    """Rank 1 of a 2-rank gloo job is SIGKILLed mid-run: the launcher stops rank 0 and fails naming
    rank 1; a rerun resumes both ranks from rank 0's checkpoint and ends with the uninterrupted
    2-rank run's model."""
    config = FAST.model_copy(update={"epochs": 4, "processes": 2, "checkpoint_dir": str(tmp_path / "ckpt"),
                                     "checkpoint_every_steps": 20})
    train(adult.train_path, task, config.model_copy(update={"checkpoint_dir": str(tmp_path / "ref-ckpt")}), tmp_path / "ref")

    launcher = _train_in_subprocess(adult, config, tmp_path / "victim")
    checkpoint = tmp_path / "ckpt" / CHECKPOINT_FILE
    _wait_for_checkpoint(checkpoint, launcher, after=(1, 0))
    ranks = {int(p.environ()["RANK"]): p for p in psutil.Process(launcher.pid).children() if "kfmlops.train" in p.cmdline()}
    ranks[1].send_signal(signal.SIGKILL)
    _, stderr = launcher.communicate(timeout=120)
    assert launcher.returncode != 0 and "rank 1 of 2 failed" in stderr
    killed_at = _position(checkpoint)
    assert killed_at < (config.epochs, 0), "the run finished before it could be killed"

    resumed = train(adult.train_path, task, config, tmp_path / "resumed")
    assert resumed.world_size == 2 and (resumed.resumed_from_epoch, resumed.resumed_from_step) == killed_at
    assert _same_weights(tmp_path / "ref", tmp_path / "resumed")


@pytest.mark.slow
def test_compiled_network_trains_like_the_eager_one(tmp_path, adult, adult_test, task):
    config = FAST.model_copy(update={"epochs": 2})
    train(adult.train_path, task, config, tmp_path / "eager")
    compiled = train(adult.train_path, task, config.model_copy(update={"compile": True}), tmp_path / "compiled")
    assert compiled.val_score > 0.88
    assert abs(_test_auc(tmp_path / "eager", adult_test) - _test_auc(tmp_path / "compiled", adult_test)) < 0.01


def test_boolean_features_keep_their_categories():
    from kfmlops.train.preprocess import Preprocessor

    frame = pd.DataFrame({"flag": pd.array([True, False, True, None] * 5, dtype="boolean"), "x": range(20)})
    pre = Preprocessor.fit(frame, ["flag", "x"], min_category_count=1)
    codes, _ = pre.transform({"flag": np.array([True, False, None], dtype=object), "x": np.array([1.0, 2.0, 3.0])})
    assert codes[:, 0].tolist() == [2, 1, 0]  # True, False, missing bucket
