"""Real registered models for the serving, register and deploy tests.

``served_store`` (session) holds two versions of the registered model ``adult`` (binary) built
from one tabular-net model trained on Adult: version 1 is the ``champion``, version 2 the
``challenger``. Tests that move the aliases put ``champion`` back on version 1 (``reset_champion``).

``task_models`` (session) holds one model per task and kind, each registered (signed, blessed) in
one store under its key as the registered model's name:

- ``penguins-sklearn``: a multiclass scikit-learn pipeline saved through
  :func:`kfmlops.model_contract.save_estimator` (the "any MLflow model" path);
- ``penguins-tabular-net``, ``penguins-gbdt``: our bundles on penguins (multiclass);
- ``cps1988-tabular-net``, ``cps1988-gbdt``, ``cps1988-sklearn``: regression on 3,000 rows of
  cps1988 (wage), a bundle of each kind and a scikit-learn ridge;
- ``adult-gbdt``: a binary gbdt bundle on 2,000 Adult rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from kfmlops.config import DataSpec, IngestConfig, MlflowConfig, TrainConfig
from kfmlops.ingest import ingest
from kfmlops.model_contract import ModelInfo, save_estimator
from kfmlops.provenance import generate_keypair
from kfmlops.register import CHAMPION, GateVerdict, Lineage, promote, register
from kfmlops.tasks import Task
from kfmlops.tracking import start_run
from kfmlops.train import train

ROOT = Path(__file__).resolve().parents[1]
FAST = TrainConfig(trainer="tabular-net", epochs=2, cpu_threads=1)
BLESSED = Lineage("fp", "hash", "data", gates={"evaluate": GateVerdict(True, ["blessed"])})


@dataclass(frozen=True)
class ServedStore:
    mlflow: MlflowConfig
    model_dir: Path
    test_path: str
    task: Task
    features: pd.DataFrame  # the test split without the label
    champion: str
    challenger: str
    verify_key: bytes  # the public key the versions were signed for


@dataclass(frozen=True)
class TaskModel:
    """One registered model: its local directory (as trained, unsigned) and registry version 1."""

    name: str
    task: Task
    model_dir: Path
    test_path: str
    features: pd.DataFrame  # the test split without the label
    tracking_uri: str
    verify_key: bytes

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/1"


_STORE: list[ServedStore] = []  # one store per session, however many modules import the fixture
_TASK_MODELS: list[dict[str, TaskModel]] = []


@pytest.fixture(scope="session")
def served_store(tmp_path_factory, adult) -> ServedStore:
    if _STORE:
        return _STORE[0]
    root = tmp_path_factory.mktemp("served")
    model_dir = root / "model"
    task = Task.from_json(adult.task)
    train(adult.train_path, task, FAST, model_dir)
    config = MlflowConfig(tracking_uri=f"sqlite:///{root / 'mlflow.db'}", experiment="serving", model_name="adult")
    features = pd.read_parquet(adult.test_path).drop(columns=[task.label])
    private, public = generate_keypair()
    first = register(model_dir, start_run(config, "v1", {}), config, BLESSED, features, task=task, signing_key=private)
    promote(config, first.version)
    second = register(model_dir, start_run(config, "v2", {}), config, BLESSED, features, task=task, signing_key=private)
    _STORE.append(ServedStore(config, model_dir, adult.test_path, task, features, first.version, second.version, public))
    return _STORE[0]


@pytest.fixture(scope="session")
def signature(served_store, tmp_path_factory) -> list[tuple[str, str, bool]]:
    """(column, type, required) of the champion's registered signature, read from its own store
    (another fixture's store may be mlflow's current one)."""
    import mlflow.models

    from kfmlops.serving.predictor import resolve_model

    source = resolve_model(f"models:/adult/{served_store.champion}", served_store.mlflow.tracking_uri,
                           tmp_path_factory.mktemp("champion"))
    info = mlflow.models.get_model_info(str(source.model_dir))
    return [(c.name, c.type.name, c.required) for c in info.signature.inputs.inputs]


def reset_champion(store: ServedStore) -> None:
    from mlflow.tracking import MlflowClient

    MlflowClient(store.mlflow.tracking_uri).set_registered_model_alias("adult", CHAMPION, store.champion)


def split(name: str, label: str, out: Path, sample: int | None = None) -> tuple[str, str, Task]:
    """(train path, test path, task) of data set ``name`` ingested into ``out``; ``sample``: train rows kept."""
    spec = DataSpec(source=str(ROOT / "data" / name / f"{name}.csv.gz"), label=label)
    done = ingest(spec, IngestConfig(), out / f"{name}-train.parquet", out / f"{name}-test.parquet")
    if sample:
        pd.read_parquet(done.train_path).sample(n=sample, random_state=0).to_parquet(done.train_path)
    return done.train_path, done.test_path, Task.from_json(done.task)


def sklearn_model(train_path: str, task: Task, out: Path) -> Path:
    """A scikit-learn pipeline (impute, one-hot, scale; logistic regression or ridge) as an MLflow sklearn model."""
    from sklearn.compose import make_column_selector, make_column_transformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    frame = pd.read_parquet(train_path)
    x = frame.drop(columns=[task.label])
    encode = make_column_transformer(
        (make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), make_column_selector(dtype_include="number")),
        (make_pipeline(SimpleImputer(strategy="constant", fill_value="missing"), OneHotEncoder(handle_unknown="ignore")),
         make_column_selector(dtype_exclude="number")),
    )
    head = LogisticRegression(max_iter=2000) if task.is_classification else Ridge()
    estimator = make_pipeline(encode, head).fit(x, frame[task.label])
    return save_estimator(estimator, out, ModelInfo(task, list(x.columns), "sklearn"), x)


@pytest.fixture(scope="session")
def task_models(tmp_path_factory, adult) -> dict[str, TaskModel]:
    if _TASK_MODELS:
        return _TASK_MODELS[0]
    root = tmp_path_factory.mktemp("task-models")
    data = {
        "penguins": split("penguins", "species", root),
        "cps1988": split("cps1988", "wage", root, sample=3000),
    }
    adult_task = Task.from_json(adult.task)
    pd.read_parquet(adult.train_path).sample(n=2000, random_state=0).to_parquet(root / "adult-2k.parquet")
    data["adult"] = (str(root / "adult-2k.parquet"), adult.test_path, adult_task)
    wanted = [("penguins", "sklearn"), ("penguins", "tabular-net"), ("penguins", "gbdt"), ("cps1988", "tabular-net"),
              ("cps1988", "gbdt"), ("cps1988", "sklearn"), ("adult", "gbdt")]
    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    private, public = generate_keypair()
    models = {}
    for data_name, kind in wanted:
        train_path, test_path, task = data[data_name]
        name = f"{data_name}-{kind}"
        out = root / name
        if kind == "sklearn":
            sklearn_model(train_path, task, out)
        else:
            train(train_path, task, FAST.model_copy(update={"trainer": kind}), out)
        features = pd.read_parquet(test_path).drop(columns=[task.label])
        config = MlflowConfig(tracking_uri=tracking_uri, experiment="tasks", model_name=name)
        register(out, start_run(config, name, {}), config, BLESSED, features, task=task, signing_key=private)
        models[name] = TaskModel(name, task, out, test_path, features, tracking_uri, public)
    _TASK_MODELS.append(models)
    return models
