"""A real Feast feature store (local provider, file offline store on Parquet, SQLite online store),
built by the tests in tmp: training data as its point-in-time join, online features at serving.

- Point-in-time correctness on a synthetic store: each user's feature value changes before and
  after its entity rows' event times; the value valid at each event time is joined, a marker value
  written after every event time never reaches the ingested splits, a value older than the view's
  ttl is a null. The event time and the join key never become columns; the fingerprint is stable,
  and moves with the offline data and with the definition.
- One-line errors: an unknown feature service, an entity table without its event time, a repository
  without feature_store.yaml; preflight sees the joined columns; residency covers the offline files.
- Adult split into an entity table and two feature views: a gbdt model trained on the join and
  served by our predictor on a real ModelServer on 127.0.0.1 with ``serving.feature_store``: a
  request of entity keys scores as the same rows sent with every feature (V1 and V2), a sent column
  overrides the stored one, an unknown entity or a wrong key type is a 400.
- (slow) The whole pipeline through ``run_pipeline`` from the Adult feature store, registering a version.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from kfmlops.config import DataSpec, FeatureStoreSource, GbdtConfig, IngestConfig, MlflowConfig, PipelineConfig, TrainConfig
from kfmlops.ingest import IngestError, ingest
from kfmlops.residency import ResidencyError, ResidencyPolicy
from kfmlops.serving.config import FeatureStoreRef, ServingConfig

FEATURE_STORE_YAML = """project: kfmlops_test
registry: data/registry.db
provider: local
online_store: {type: sqlite, path: data/online.db}
offline_store: {type: file}
entity_key_serialization_version: 3
"""
KEY = "user_id"
T0 = pd.Timestamp("2024-01-01", tz="UTC")
MARKER_NUMBER, MARKER_TEXT = 9999, "MARKER"


def day(n: float) -> pd.Timestamp:
    return T0 + pd.Timedelta(days=n)


def make_repo(root: Path, views: dict[str, pd.DataFrame], ttl: dt.timedelta | None = None,
              offline_dir: Path | None = None) -> Path:
    """A Feast repository at ``root``: one feature view per table (``user_id``, ``ts`` and its
    features), over a Parquet file in ``offline_dir`` (by absolute path; default ``data/`` in the
    repository, by relative path), and the feature service ``svc`` of them all, applied."""
    from feast import Entity, FeatureService, FeatureStore, FeatureView, Field, FileSource
    from feast.types import Float64, Int64, String
    from feast.value_type import ValueType

    offline_dir = offline_dir or Path("data")
    for folder in (root / "data", root / offline_dir):
        folder.mkdir(parents=True, exist_ok=True)
    (root / "feature_store.yaml").write_text(FEATURE_STORE_YAML)
    user = Entity(name="user", join_keys=[KEY], value_type=ValueType.INT64)
    types = {"i": Int64, "f": Float64, "O": String}
    feature_views = []
    for name, table in views.items():
        path = offline_dir / f"{name}.parquet"
        table.to_parquet(root / path, index=False)
        schema = [Field(name=c, dtype=types[table[c].dtype.kind]) for c in table.columns if c not in (KEY, "ts")]
        feature_views.append(FeatureView(name=name, entities=[user], schema=schema, ttl=ttl,
                                         source=FileSource(path=str(path), timestamp_field="ts")))
    FeatureStore(repo_path=str(root)).apply([user, *feature_views, FeatureService(name="svc", features=feature_views)])
    return root


# ---- point-in-time correctness on a synthetic store ----------------------------------------------

USERS, STALE_USERS = 60, range(60, 65)


def synthetic_features() -> pd.DataFrame:
    """Per user u < 60: income u and job j* from day 0, 100 + u and k* from day 2, the marker from
    day 4. Users 60-64: one row, on day 0."""
    rows = []
    for u in range(USERS):
        rows += [(u, day(0), float(u), f"j{u % 3}"), (u, day(2), 100.0 + u, f"k{u % 3}"),
                 (u, day(4), float(MARKER_NUMBER), MARKER_TEXT)]
    rows += [(u, day(0), float(u), "old") for u in STALE_USERS]
    return pd.DataFrame(rows, columns=[KEY, "ts", "income", "job"])


def synthetic_entities() -> pd.DataFrame:
    """Every user u < 60 at day 3 (sees day 2's values), users < 20 also at day 1 (day 0's), users
    60-64 at day 40 (their day-0 row is older than the 30-day ttl). Label: u's parity."""
    rows = [(u, day(3), u % 2) for u in range(USERS)] + [(u, day(1), u % 2) for u in range(20)]
    rows += [(u, day(40), u % 2) for u in STALE_USERS]
    return pd.DataFrame(rows, columns=[KEY, "event_time", "y"])


def expected_income(entities: pd.DataFrame) -> list[float | None]:
    def one(u: int, when: pd.Timestamp) -> float | None:
        return None if u in STALE_USERS else (float(u) if when < day(2) else 100.0 + u)
    return [one(u, when) for u, when in zip(entities[KEY], entities["event_time"])]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> tuple[Path, FeatureStoreSource, DataSpec]:
    root = tmp_path_factory.mktemp("synthetic")
    make_repo(root / "repo", {"users": synthetic_features()}, ttl=dt.timedelta(days=30))
    entities = synthetic_entities()
    entities.assign(event_time=entities["event_time"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")).to_csv(
        root / "entities.csv", index=False)  # CSV: the event times are text, as users' files hold them
    source = FeatureStoreSource(repo_path=str(root / "repo"), feature_service="svc", timestamp_column="event_time")
    return root, source, DataSpec(source=str(root / "entities.csv"), label="y", feature_store=source)


def test_the_join_takes_each_value_valid_at_the_event_time_and_drops_time_and_key(synthetic):
    from kfmlops.feature_store import training_table

    _, source, data = synthetic
    table = training_table(data.source, source, IngestConfig())
    assert table.column_names == ["y", "income", "job"]  # event time and join key dropped, rows in file order
    entities = synthetic_entities()
    assert table["income"].to_pylist() == expected_income(entities)
    kept = training_table(data.source, source.model_copy(update={"keep_columns": [KEY]}), IngestConfig())
    assert kept.column_names == [KEY, "y", "income", "job"] and kept[KEY].to_pylist() == entities[KEY].tolist()


def test_a_value_from_after_the_event_time_never_reaches_training(synthetic, tmp_path):
    _, _, data = synthetic
    result = ingest(data, IngestConfig(), tmp_path / "train.parquet", tmp_path / "test.parquet")
    splits = pd.concat([pd.read_parquet(result.train_path), pd.read_parquet(result.test_path)])
    assert result.train_rows + result.test_rows == len(synthetic_entities()) == len(splits)
    assert set(result.columns) == {"y", "income", "job"}
    assert MARKER_NUMBER not in splits["income"].tolist() and MARKER_TEXT not in splits["job"].tolist()
    assert splits["income"].max() == 100.0 + USERS - 1  # the latest value valid at an event time
    assert sorted(splits["income"].dropna()) == sorted(v for v in expected_income(synthetic_entities()) if v is not None)
    assert splits["income"].isna().sum() == len(STALE_USERS) == splits["job"].isna().sum()  # past the ttl: null


def source_fingerprint(data: DataSpec, out: Path) -> str:
    """The fingerprint ingest records for ``data`` (splits written under ``out``)."""
    return ingest(data, IngestConfig(), out / "train.parquet", out / "test.parquet").fingerprint


def test_the_fingerprint_covers_entities_offline_data_and_definition(tmp_path):
    def spec(root: Path, features: pd.DataFrame, ttl_days: int) -> DataSpec:
        make_repo(root / "repo", {"users": features}, ttl=dt.timedelta(days=ttl_days))
        synthetic_entities().to_parquet(root / "entities.parquet", index=False)
        source = FeatureStoreSource(repo_path=str(root / "repo"), feature_service="svc", timestamp_column="event_time")
        return DataSpec(source=str(root / "entities.parquet"), label="y", feature_store=source)

    out = tmp_path / "splits"
    first = source_fingerprint(spec(tmp_path / "a", synthetic_features(), 30), out)
    assert first == source_fingerprint(spec(tmp_path / "a", synthetic_features(), 30), out)  # applied again: same
    assert first == source_fingerprint(spec(tmp_path / "b", synthetic_features(), 30), out)  # another folder, same bytes
    later = pd.concat([synthetic_features(), pd.DataFrame([(0, day(9), 1.0, "new")], columns=[KEY, "ts", "income", "job"])])
    assert first != source_fingerprint(spec(tmp_path / "c", later, 30), out)  # a feature row more
    assert first != source_fingerprint(spec(tmp_path / "d", synthetic_features(), 31), out)  # another ttl


def test_feature_store_mistakes_are_one_line_errors(synthetic, tmp_path):
    root, source, data = synthetic
    cases = [
        (data.model_copy(update={"feature_store": source.model_copy(update={"feature_service": "nope"})}),
         "has no feature service 'nope'; it has ['svc']"),
        (data.model_copy(update={"feature_store": source.model_copy(update={"timestamp_column": "when"})}),
         "is missing columns ['when']"),
        (data.model_copy(update={"feature_store": source.model_copy(update={"repo_path": str(tmp_path)})}),
         "has no feature_store.yaml"),
        (data.model_copy(update={"feature_store": source.model_copy(update={"keep_columns": ["y"]})}),
         "keep_columns names ['y'], which are not join keys"),
    ]
    synthetic_entities().drop(columns=[KEY]).to_csv(tmp_path / "keyless.csv", index=False)
    cases.append((data.model_copy(update={"source": str(tmp_path / "keyless.csv")}), "is missing columns ['user_id']"))
    for spec, message in cases:
        with pytest.raises(IngestError, match=message.replace("[", r"\[").replace("]", r"\]")) as err:
            ingest(spec, IngestConfig(), tmp_path / "tr.parquet", tmp_path / "te.parquet")
        assert "\n" not in str(err.value)


def test_preflight_sees_the_joined_columns_and_residency_covers_the_offline_files(synthetic, tmp_path):
    from kfmlops import preflight
    from kfmlops.config import Settings
    from kfmlops.typed import ConfigError

    root, source, data = synthetic
    sensitive = data.model_copy(update={"sensitive_features": ["job"]})  # a feature of the view
    preflight.check(PipelineConfig(data=sensitive, settings=Settings.parse({"train": {"exclude_features": ["income"]}})))
    with pytest.raises(ConfigError, match=r"train.exclude_features names \['user_id'\]"):  # dropped by the join
        preflight.check(PipelineConfig(data=data, settings=Settings.parse({"train": {"exclude_features": ["user_id"]}})))

    make_repo(tmp_path / "repo", {"users": synthetic_features()}, offline_dir=tmp_path / "elsewhere")
    outside = data.model_copy(update={"feature_store": source.model_copy(update={"repo_path": str(tmp_path / "repo")})})
    policy = {"residency": {"allowed_locations": [str(root), str(tmp_path / "repo")]},
              "mlflow": {"tracking_uri": f"sqlite:///{root}/mlflow.db"}}
    with pytest.raises(ResidencyError, match=r"read features: .*elsewhere/users.parquet refused") as err:
        preflight.check(PipelineConfig(data=outside, settings=Settings.parse(policy)))
    assert "repo refused" not in str(err.value)


# ---- Adult from a feature store: training and online serving ------------------------------------

ADULT_ROWS = 3000
PERSON = ["age", "sex", "race", "marital_status", "relationship", "native_country", "education", "education_num"]
WORK = ["workclass", "occupation", "hours_per_week", "capital_gain", "capital_loss", "fnlwgt"]
MARKER_TIME, MATERIALIZED_UNTIL = pd.Timestamp("2025-01-01", tz="UTC"), pd.Timestamp("2024-12-01", tz="UTC")


@pytest.fixture(scope="module")
def adult_store(tmp_path_factory, adult_train) -> tuple[DataSpec, pd.DataFrame]:
    """3,000 Adult rows as a feature store: user i's features (two views) from the day before its
    event (minute i of 2024-01-01), a marker row for every user on 2025-01-01, after every event;
    the online store materialized up to 2024-12-01 (no markers). Returns the data spec (entity table
    of user_id, event_timestamp, y) and the sample (user i is row i)."""
    from feast import FeatureStore

    root = tmp_path_factory.mktemp("adult-store")
    sample = adult_train.sample(n=ADULT_ROWS, random_state=0).reset_index(drop=True)
    ids = np.arange(ADULT_ROWS)
    valid = pd.DataFrame({KEY: ids, "ts": T0 - pd.Timedelta(days=1)})
    marker = sample[PERSON + WORK].copy()
    marker["hours_per_week"], marker["occupation"] = MARKER_NUMBER, MARKER_TEXT
    views = {}
    for name, columns in (("person", PERSON), ("work", WORK)):
        rows = pd.concat([valid.join(sample[columns]), pd.DataFrame({KEY: ids, "ts": MARKER_TIME}).join(marker[columns])])
        views[name] = rows.reset_index(drop=True)
    make_repo(root / "repo", views)
    FeatureStore(repo_path=str(root / "repo")).materialize(start_date=(T0 - pd.Timedelta(days=2)).to_pydatetime(),
                                                           end_date=MATERIALIZED_UNTIL.to_pydatetime())
    pd.DataFrame({KEY: ids, "event_timestamp": T0 + pd.to_timedelta(ids, unit="min"), "y": sample["y"]}).to_parquet(
        root / "entities.parquet", index=False)
    source = FeatureStoreSource(repo_path=str(root / "repo"), feature_service="svc")
    return DataSpec(source=str(root / "entities.parquet"), label="y", sensitive_features=["sex"],
                    feature_store=source), sample


@pytest.fixture(scope="module")
def adult_model(adult_store, tmp_path_factory):
    """A gbdt model trained on the Adult join, registered (signed) as ``adult-features`` version 1."""
    from serving_fixtures import BLESSED

    from kfmlops.provenance import generate_keypair
    from kfmlops.register import register
    from kfmlops.tasks import Task
    from kfmlops.tracking import start_run
    from kfmlops.train import train

    data, _ = adult_store
    root = tmp_path_factory.mktemp("adult-model")
    done = ingest(data, IngestConfig(), root / "train.parquet", root / "test.parquet")
    splits = pd.concat([pd.read_parquet(done.train_path), pd.read_parquet(done.test_path)])
    assert MARKER_TEXT not in set(splits["occupation"]) and splits["hours_per_week"].max() < MARKER_NUMBER
    assert KEY not in splits.columns and "event_timestamp" not in splits.columns
    task = Task.from_json(done.task)
    config = TrainConfig(trainer="gbdt", cpu_threads=1, gbdt=GbdtConfig(max_rounds=200, threads=1))
    train(done.train_path, task, config, root / "model")
    mlflow = MlflowConfig(tracking_uri=f"sqlite:///{root / 'mlflow.db'}", experiment="features", model_name="adult-features")
    private, public = generate_keypair()
    features = pd.read_parquet(done.test_path).drop(columns=[task.label])
    register(root / "model", start_run(mlflow, "v1", {}), mlflow, BLESSED, features, task=task, signing_key=private)
    return mlflow, public


@pytest.fixture(scope="module")
def online_server(adult_store, adult_model):
    from kfmlops.serving.process import PredictorProcess

    data, _ = adult_store
    mlflow, public = adult_model
    serving = ServingConfig(feature_store=FeatureStoreRef(repo_path=data.feature_store.repo_path, feature_service="svc"))
    with PredictorProcess("models:/adult-features/1", model_name="adult", tracking_uri=mlflow.tracking_uri,
                          serving=serving, verify_key=public) as p:
        yield p


def _v1(server, rows: list[dict]) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/models/adult:predict", json={"instances": rows}, timeout=30)


def test_entity_keys_score_as_the_rows_with_every_feature(online_server, adult_store):
    from kfmlops.serving.predictor import records

    _, sample = adult_store
    users = list(range(0, ADULT_ROWS, 60))
    full = _v1(online_server, records(sample.loc[users, PERSON + WORK]))
    by_key = _v1(online_server, [{KEY: u} for u in users])
    assert full.status_code == 200 and by_key.status_code == 200, by_key.text
    np.testing.assert_array_equal(by_key.json()["predictions"], full.json()["predictions"])
    assert len(set(by_key.json()["predictions"])) > 10

    override = records(sample.loc[users[:5], PERSON + WORK].assign(hours_per_week=80))
    sent = _v1(online_server, [{KEY: u, "hours_per_week": 80} for u in users[:5]])  # a request-time value wins
    np.testing.assert_array_equal(sent.json()["predictions"], _v1(online_server, override).json()["predictions"])

    body = {"inputs": [{"name": KEY, "shape": [len(users)], "datatype": "INT64", "data": users}]}
    v2 = httpx.post(f"{online_server.url}/v2/models/adult/infer", json=body, timeout=30)
    assert v2.status_code == 200, v2.text
    np.testing.assert_allclose(v2.json()["outputs"][0]["data"], full.json()["predictions"], atol=1e-12)


def test_an_unknown_entity_or_a_wrong_key_is_a_400(online_server):
    unknown = _v1(online_server, [{KEY: 1}, {KEY: 10**9}])
    assert unknown.status_code == 400
    assert unknown.json()["error"] == "row 1: the online store has no entity {'user_id': 1000000000} in feature view 'person'"
    wrong = _v1(online_server, [{KEY: 1.5}])
    assert wrong.status_code == 400 and "entity key 'user_id' is float 1.5; expected a whole number" in wrong.text
    partial = _v1(online_server, [{KEY: 1}, {"age": 30}])
    assert partial.status_code == 400 and "instances[1] is missing entity key(s) ['user_id']" in partial.text
    assert _v1(online_server, [{KEY: 2}]).status_code == 200  # still serving


# ---- the whole pipeline -------------------------------------------------------------------------

@pytest.mark.slow
def test_the_pipeline_trains_from_a_feature_store_and_registers_a_version(adult_store, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from kfmlops import preflight
    from kfmlops.local_run import run_pipeline
    from kfmlops.tracking import tracking_uri

    monkeypatch.setenv("KFMLOPS_HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    data, _ = adult_store
    demo = PipelineConfig.from_yaml(Path(__file__).resolve().parents[1] / "pipelines" / "configs" / "adult.yaml")
    raw = demo.settings.model_dump(mode="json", by_alias=True, exclude={"ingest"})
    raw["mlflow"] = {"experiment": "adult-features", "model_name": "adult-features"}
    raw["evaluate"] = {**raw["evaluate"], "limits": {"roc_auc": 0.85}}
    raw["fairness"] = {"min_group_size": 100}  # 600 test rows: the figures by sex are reported, not gated
    config = PipelineConfig(data=data, settings=type(demo.settings).parse(raw))
    preflight.check(config)
    run = run_pipeline(config.pipeline_arguments())
    uri = tracking_uri(config.settings.mlflow)
    tags = MlflowClient(uri, uri).get_model_version("adult-features", run.version).tags
    assert tags["kfmlops.dataset_fingerprint"] == source_fingerprint(data, tmp_path / "splits")
    assert tags["kfmlops.train_data"] == data.source and tags["kfmlops.all_gates_passed"] == "true"
    assert float(tags["kfmlops.metric.roc_auc"]) >= 0.85
    train = pd.read_parquet(run.pipeline_root / "ingest" / "train_data")
    assert KEY not in train.columns and MARKER_TEXT not in set(train["occupation"])
