"""Each trainer (tabular-net, gbdt, a user's fit function) on each task (binary, multiclass,
regression), on small real data: Adult sampled to 2,000 rows, penguins, a cps1988 sample. Every
model is trained through :func:`kfmlops.train.train`, loaded back through
:func:`kfmlops.model_contract.load` and scored on the held-out test split, where it must beat the
trivial baseline (the prior, or the mean)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score, log_loss, roc_auc_score
from sklearn.model_selection import train_test_split

from kfmlops import model_contract
from kfmlops.config import DataSpec, IngestConfig, TrainConfig
from kfmlops.ingest import ingest
from kfmlops.tasks import Task
from kfmlops.train import load_bundle, train
from kfmlops.train.user import UserTrainerError

ROOT = Path(__file__).resolve().parents[1]
CONFIG = TrainConfig(trainer="tabular-net", cpu_threads=1)
TRAINERS = ["tabular-net", "gbdt", "kfmlops_test_trainers:fit_pipeline"]

USER_MODULE = '''
import numpy as np
import pandas as pd
import mlflow.pyfunc
from sklearn.compose import make_column_selector, make_column_transformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

NOT_A_FUNCTION = 3


def fit_pipeline(train, label, task, params):
    """One-hot + scaling, then logistic regression (classification) or ridge (regression)."""
    if task.is_classification and not set(train[label]) <= set(task.classes):
        raise AssertionError(f"labels are not the task's class names: {sorted(set(train[label]))[:5]}")
    encode = make_column_transformer(
        (make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), make_column_selector(dtype_include="number")),
        (make_pipeline(SimpleImputer(strategy="constant", fill_value="missing"), OneHotEncoder(handle_unknown="ignore")),
         make_column_selector(dtype_exclude="number")),
    )
    head = LogisticRegression(C=params.get("C", 1.0), max_iter=2000) if task.is_classification else Ridge()
    return make_pipeline(encode, head).fit(train.drop(columns=label), train[label])


class Proba(mlflow.pyfunc.PythonModel):
    """A pyfunc returning proba:<class> columns, from a pipeline."""

    def __init__(self, pipeline, classes):
        self.pipeline, self.classes = pipeline, list(classes)

    def predict(self, context, model_input, params=None):
        proba = self.pipeline.predict_proba(model_input)
        order = [list(self.pipeline.classes_).index(c) for c in self.classes]
        return pd.DataFrame(proba[:, order], columns=["proba:" + c for c in self.classes])


def fit_pyfunc(train, label, task, params):
    return Proba(fit_pipeline(train, label, task, params), task.classes)


def fit_text(train, label, task, params):
    return "a model"


def fit_unfitted(train, label, task, params):
    return LogisticRegression()
'''


@pytest.fixture(scope="module")
def data(adult, tmp_path_factory) -> dict[str, tuple[str, Task, pd.DataFrame]]:
    """(train split path, task, test frame) per data set: Adult's train split sampled to 2,000 rows
    (stratified, seeded; tested on adult.test), Adult with 12% positives (2,000 rows), penguins,
    and 3,000 rows of cps1988's train split."""
    out = tmp_path_factory.mktemp("trainer-data")
    sets = {}
    for name, spec in [("penguins", DataSpec(source=str(ROOT / "data/penguins/penguins.csv.gz"), label="species")),
                       ("cps1988", DataSpec(source=str(ROOT / "data/cps1988/cps1988.csv.gz"), label="wage"))]:
        done = ingest(spec, IngestConfig(), out / f"{name}-train.parquet", out / f"{name}-test.parquet")
        sets[name] = (done.train_path, Task.from_json(done.task), pd.read_parquet(done.test_path))
    cps = pd.read_parquet(sets["cps1988"][0]).sample(n=3000, random_state=0)
    cps.to_parquet(out / "cps1988-3k.parquet")
    sets["cps1988"] = (str(out / "cps1988-3k.parquet"), *sets["cps1988"][1:])

    task, train_frame, test = Task.from_json(adult.task), pd.read_parquet(adult.train_path), pd.read_parquet(adult.test_path)
    small, _ = train_test_split(train_frame, train_size=2000, stratify=train_frame["y"], random_state=0)
    small.to_parquet(out / "adult-2k.parquet")
    sets["adult-2k"] = (str(out / "adult-2k.parquet"), task, test)
    positives = train_frame[train_frame["y"] == task.positive].sample(n=240, random_state=0)
    negatives = train_frame[train_frame["y"] != task.positive].sample(n=1760, random_state=0)
    pd.concat([positives, negatives]).sample(frac=1.0, random_state=0).to_parquet(out / "adult-12pc.parquet")
    sets["adult-12pc"] = (str(out / "adult-12pc.parquet"), task, test)
    return sets


@pytest.fixture(scope="module")
def user_module(tmp_path_factory):
    folder = tmp_path_factory.mktemp("user-trainers")
    (folder / "kfmlops_test_trainers.py").write_text(textwrap.dedent(USER_MODULE))
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(folder))
        yield "kfmlops_test_trainers"


def _test_scores(model_dir, test: pd.DataFrame, task: Task) -> np.ndarray:
    model = model_contract.load(model_dir)
    assert model.task == task
    scores = model.scores(test.drop(columns=task.label))
    if task.is_classification:
        assert scores.shape == (len(test), len(task.classes)) and np.allclose(scores.sum(axis=1), 1.0)
    return scores


def _assert_beats_the_baseline(task: Task, train_path: str, test: pd.DataFrame, scores: np.ndarray) -> None:
    y = task.encode(test[task.label])
    fitted = task.encode(pd.read_parquet(train_path)[task.label])
    if task.kind == "binary":
        assert roc_auc_score(y, scores[:, 1]) > 0.85
        predicted = (scores[:, 1] >= 0.5).astype(int)
        assert 0.05 < predicted.mean() < 0.6, "a (nearly) constant prediction"
    elif task.kind == "multiclass":
        prior = np.bincount(fitted, minlength=len(task.classes)) / len(fitted)
        assert log_loss(y, scores, labels=range(len(task.classes))) < 0.3 * log_loss(y, np.tile(prior, (len(y), 1)))
        assert f1_score(y, scores.argmax(axis=1), average="macro") > 0.9
    else:
        trivial = np.sqrt(np.mean((y - fitted.mean()) ** 2))
        assert np.sqrt(np.mean((y - scores) ** 2)) < 0.92 * trivial
        assert scores.std() > 0.2 * y.std(), "a (nearly) constant prediction"


@pytest.mark.parametrize("trainer", TRAINERS)
@pytest.mark.parametrize("name", ["adult-2k", "penguins", "cps1988"])
def test_each_trainer_learns_each_task(tmp_path, data, user_module, trainer, name):
    train_path, task, test = data[name]
    result = train(train_path, task, CONFIG.model_copy(update={"trainer": trainer}), tmp_path / "model")
    assert (result.trainer, result.task, result.model_dir) == (trainer, task.kind, str(tmp_path / "model"))
    assert result.metric == {"binary": "roc_auc", "multiclass": "log_loss", "regression": "rmse"}[task.kind]
    assert np.isfinite(result.val_score) and result.train_rows + result.val_rows == len(pd.read_parquet(train_path))
    info = model_contract.read_info(tmp_path / "model")
    assert (info.task, info.trainer) == (task, trainer) and task.label not in info.features
    _assert_beats_the_baseline(task, train_path, test, _test_scores(tmp_path / "model", test, task))
    bundle = model_contract.bundle_path(tmp_path / "model")
    assert (bundle is None) == (trainer not in ("tabular-net", "gbdt"))
    if bundle is not None:
        assert load_bundle(bundle).kind == trainer


@pytest.mark.parametrize("trainer", ["tabular-net", "gbdt"])
def test_a_rare_class_is_not_traded_for_a_constant_prediction(tmp_path, data, trainer):
    train_path, task, test = data["adult-12pc"]
    result = train(train_path, task, CONFIG.model_copy(update={"trainer": trainer}), tmp_path / "model")
    scores = _test_scores(tmp_path / "model", test, task)
    _assert_beats_the_baseline(task, train_path, test, scores)
    assert result.val_score > 0.8


def test_without_class_weights_the_rare_class_is_predicted_less(tmp_path, data):
    train_path, task, test = data["adult-12pc"]
    shares = {}
    for weighting in ("balanced", "none"):
        config = CONFIG.model_copy(update={"trainer": "gbdt", "class_weight": weighting})
        train(train_path, task, config, tmp_path / weighting)
        shares[weighting] = (_test_scores(tmp_path / weighting, test, task)[:, 1] >= 0.5).mean()
    assert shares["none"] < shares["balanced"]


def test_the_regression_net_keeps_its_target_scale(tmp_path, data):
    train_path, task, test = data["cps1988"]
    train(train_path, task, CONFIG, tmp_path / "model")
    bundle = load_bundle(model_contract.bundle_path(tmp_path / "model"))
    wages = pd.read_parquet(train_path)["wage"]
    assert bundle.target.mean == pytest.approx(wages.mean(), rel=0.05)
    assert bundle.target.std == pytest.approx(wages.std(), rel=0.1)
    predicted = bundle.scores({c: test[c].to_numpy() for c in bundle.features})
    assert abs(predicted.mean() - test["wage"].mean()) < 0.15 * test["wage"].mean()


def test_gbdt_keeps_the_trees_up_to_its_best_round(tmp_path, data):
    train_path, task, _ = data["penguins"]
    config = CONFIG.model_copy(update={"trainer": "gbdt"})
    result = train(train_path, task, config, tmp_path / "model")
    assert result.iterations == result.best_iteration + 1 + config.gbdt.early_stopping_rounds
    assert result.framework == "xgboost" and result.device == "cpu"
    bundle = load_bundle(model_contract.bundle_path(tmp_path / "model"))
    assert bundle.booster.num_boosted_rounds() == result.best_iteration + 1


def test_gbdt_logs_its_validation_loss_every_ten_rounds_to_the_run(tmp_path, data, mlflow_store):
    from mlflow.tracking import MlflowClient

    from kfmlops.tracking import start_run

    train_path, task, _ = data["penguins"]
    run_id = start_run(mlflow_store, run_name="gbdt", tags={})
    result = train(train_path, task, CONFIG.model_copy(update={"trainer": "gbdt"}), tmp_path / "model",
                   mlflow=mlflow_store, run_id=run_id)
    logged = MlflowClient(mlflow_store.tracking_uri).get_metric_history(run_id, "val_mlogloss")
    assert [m.step for m in logged] == list(range(0, result.iterations, 10))
    assert logged[-1].value > 0


def test_an_early_stopped_net_stays_stopped_when_rerun(tmp_path, data):
    """Rerun over the checkpoint of a multiclass run that stopped early: it resumes at its end and
    trains nothing more; the model is the same."""
    train_path, task, _ = data["penguins"]
    config = CONFIG.model_copy(update={"checkpoint_dir": str(tmp_path / "ckpt"), "patience": 2, "min_steps": 0})
    first = train(train_path, task, config, tmp_path / "a")
    assert first.iterations < config.epochs
    again = train(train_path, task, config, tmp_path / "b")
    assert (again.resumed_from_epoch, again.resumed_from_step) == (first.iterations, 0)
    assert (again.iterations, again.best_iteration, again.val_score) == (first.iterations, first.best_iteration,
                                                                         first.val_score)
    frame = pd.read_parquet(train_path).drop(columns=task.label)
    a, b = (model_contract.load(tmp_path / d).scores(frame) for d in ("a", "b"))
    assert np.array_equal(a, b)


@pytest.mark.slow
def test_two_ranks_stop_early_together(tmp_path, data):
    """Two gloo ranks on penguins: both take rank 0's validation loss, so they stop at the same epoch
    (patience epochs past the best) and the launcher returns; the model beats the baseline."""
    train_path, task, test = data["penguins"]
    config = CONFIG.model_copy(update={"processes": 2, "patience": 3, "min_steps": 0})
    result = train(train_path, task, config, tmp_path / "model")
    assert result.world_size == 2 and result.iterations < config.epochs
    assert result.iterations - 1 - result.best_iteration == config.patience
    _assert_beats_the_baseline(task, train_path, test, _test_scores(tmp_path / "model", test, task))


def test_a_user_pyfunc_model_is_saved_with_its_task(tmp_path, data, user_module):
    train_path, task, test = data["penguins"]
    config = CONFIG.model_copy(update={"trainer": f"{user_module}:fit_pyfunc", "params": {"C": 0.5}})
    result = train(train_path, task, config, tmp_path / "model")
    assert result.framework == "pyfunc" and result.val_score < 0.3
    info = model_contract.read_info(tmp_path / "model")
    assert info.trainer == f"{user_module}:fit_pyfunc" and info.task == task
    _assert_beats_the_baseline(task, train_path, test, _test_scores(tmp_path / "model", test, task))


@pytest.mark.parametrize("trainer, message", [
    ("kfmlops_no_such_package.models:fit", "there is no module 'kfmlops_no_such_package' to import"),
    ("kfmlops_test_trainers:fitt", "module 'kfmlops_test_trainers' has no function 'fitt'"),
    ("kfmlops_test_trainers:NOT_A_FUNCTION", "'NOT_A_FUNCTION' is a int, not a function"),
    ("kfmlops_test_trainers:fit_text", "returned builtins.str, which has no fit or predict"),
    ("kfmlops_test_trainers:fit_unfitted", "returned an unfitted LogisticRegression"),
])
def test_a_bad_user_trainer_is_named_with_what_is_wrong(tmp_path, data, user_module, trainer, message):
    train_path, task, _ = data["penguins"]
    with pytest.raises(UserTrainerError, match=f"train.trainer '{trainer}'.*{message}"):
        train(train_path, task, CONFIG.model_copy(update={"trainer": trainer}), tmp_path / "model")
    assert not (tmp_path / "model").exists()
