"""Explanations of real models trained here on data built to have one signal column and one pure-noise
column: our tabular net and gbdt, and a bring-your-own scikit-learn forest (an `mlflow.sklearn`
model with no kfmlops metadata), on binary, multiclass and regression labels. Then the explain
component's JSON contract and HTML, and the predictor's `:explain` endpoint on KServe's ModelServer.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from serving_fixtures import BLESSED, sklearn_model

from kfmlops import model_contract
from kfmlops.attributions import INTEGRATED_GRADIENTS, SHAP_TREE, NotExplainable, attributor
from kfmlops.config import EvaluateConfig, ExplainConfig, MlflowConfig, TrainConfig
from kfmlops.evaluate import primary_metric
from kfmlops.explain import Explanation, GroupImportance, Importance, explain, to_html
from kfmlops.provenance import generate_keypair
from kfmlops.register import register
from kfmlops.serving.config import ServingConfig
from kfmlops.serving.predictor import records
from kfmlops.serving.process import PredictorProcess
from kfmlops.tasks import Task
from kfmlops.tracking import start_run
from kfmlops.train import train

TRAIN_ROWS, TEST_ROWS, TINY = 1500, 600, 30
CONFIG = ExplainConfig(max_rows=500, repeats=3)
FEATURES = ["signal", "noise", "cat", "group"]
KINDS = ["gbdt", "tabular-net", "forest"]
TASKS = ["binary", "multiclass", "regression"]


def synthetic(kind: str, rows: int, seed: int) -> tuple[pd.DataFrame, Task]:
    """``signal`` drives the label (``cat`` a little), ``noise`` and ``group`` do not; group ``tiny``
    is :data:`TINY` rows of every :data:`TEST_ROWS`."""
    rng = np.random.default_rng(seed)
    signal = rng.normal(size=rows)
    frame = pd.DataFrame({
        "signal": signal,
        "noise": rng.normal(size=rows),
        "cat": rng.choice(["a", "b", "c"], rows),
        "group": np.where(np.arange(rows) % (TEST_ROWS // TINY) == 0, "tiny", rng.choice(["g1", "g2"], rows)),
    })
    latent = 2.0 * signal + 0.4 * (frame["cat"] == "a") + 0.1 * rng.normal(size=rows)
    if kind == "binary":
        frame["y"] = np.where(latent > 0, "yes", "no")
        return frame, Task("binary", "y", ("no", "yes"))
    if kind == "multiclass":
        frame["y"] = np.select([latent < -0.8, latent < 0.8], ["low", "mid"], "high")
        return frame, Task("multiclass", "y", ("high", "low", "mid"))
    frame["y"] = 10.0 + 3.0 * latent
    return frame, Task("regression", "y")


def forest(train_frame: pd.DataFrame, task: Task, out: Path) -> Path:
    """A scikit-learn Pipeline (one-hot the strings, pass the numbers) ending in a random forest,
    saved as a plain `mlflow.sklearn` model: no kfmlops metadata, as a user brings it."""
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.compose import make_column_transformer
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
    from sklearn.preprocessing import OneHotEncoder

    x, y = train_frame[FEATURES], train_frame[task.label]
    trees = (RandomForestClassifier if task.is_classification else RandomForestRegressor)(
        n_estimators=40, max_depth=8, random_state=0)
    encode = make_column_transformer((OneHotEncoder(handle_unknown="ignore", sparse_output=False), ["cat", "group"]),
                                     remainder="passthrough")
    from sklearn.pipeline import make_pipeline

    model = make_pipeline(encode, trees).fit(x, y)
    mlflow.sklearn.save_model(model, out, signature=infer_signature(x, model.predict(x)),
                              skops_trusted_types=["numpy.dtype", "sklearn.tree._tree.Tree"])
    return out


@dataclass(frozen=True)
class Trained:
    kind: str
    task: Task
    model_dir: Path
    train_path: Path
    test: pd.DataFrame

    def load(self) -> model_contract.LoadedModel:
        return model_contract.load(self.model_dir, self.task)


NET = TrainConfig(trainer="tabular-net", epochs=40, min_steps=0, batch_size=128, patience=40, cpu_threads=1,
                  hidden_units=[32], learning_rate=1e-2)
GBDT = TrainConfig(trainer="gbdt", gbdt={"max_rounds": 150, "threads": 1})


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[tuple[str, str], Trained]:
    root = tmp_path_factory.mktemp("explain-models")
    out = {}
    for task_kind in TASKS:
        frame, task = synthetic(task_kind, TRAIN_ROWS + TEST_ROWS, seed=len(task_kind))
        train_frame, test = frame.iloc[:TRAIN_ROWS], frame.iloc[TRAIN_ROWS:].reset_index(drop=True)
        train_path = root / f"{task_kind}-train.parquet"
        train_frame.to_parquet(train_path)
        for kind in KINDS:
            model_dir = root / f"{task_kind}-{kind}"
            if kind == "forest":
                forest(train_frame, task, model_dir)
            else:
                train(train_path, task, NET if kind == "tabular-net" else GBDT, model_dir)
            out[task_kind, kind] = Trained(kind, task, model_dir, train_path, test)
    return out


def _explain(trained: Trained) -> Explanation:
    metric = primary_metric(trained.task, EvaluateConfig())
    return explain(trained.load(), trained.test, trained.task, metric, CONFIG, ["group"], min_group_size=100)


@pytest.mark.parametrize("task_kind", TASKS)
@pytest.mark.parametrize("kind", KINDS)
def test_the_signal_column_ranks_first_and_noise_near_zero(models, kind, task_kind):
    trained = models[task_kind, kind]
    result = _explain(trained)
    importance = {f.feature: f for f in result.features}
    assert set(importance) == set(FEATURES) and result.rows == CONFIG.max_rows
    assert result.features[0].feature == "signal"
    assert [f.importance for f in result.features] == sorted((f.importance for f in result.features), reverse=True)
    assert abs(importance["noise"].importance) < 0.05 * importance["signal"].importance
    assert all(f.std >= 0 for f in result.features)

    assert result.attribution_method == (INTEGRATED_GRADIENTS if kind == "tabular-net" else SHAP_TREE)
    mean_abs = dict(result.attributions)
    assert result.attributions[0][0] == "signal" and set(mean_abs) == set(FEATURES)
    assert mean_abs["noise"] < 0.5 * mean_abs["signal"]

    groups = {g.group: g for g in result.groups}
    assert set(groups) == {"g1", "g2", "tiny"} and {g.column for g in result.groups} == {"group"}
    assert groups["tiny"].flagged and "fairness.min_group_size" in groups["tiny"].note
    assert not groups["g1"].flagged and groups["g1"].features[0].feature == "signal"
    assert sum(g.rows for g in result.groups) == result.rows


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return np.log(p / (1 - p))


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("task_kind", TASKS)
@pytest.mark.parametrize("kind", KINDS)
def test_per_row_attributions_add_up_to_the_models_output(models, kind, task_kind):
    """Completeness: base + the row's attributions is the explained output (the positive class's
    log-odds, each class's logit or margin, a forest's probability, the predicted value)."""
    trained = models[task_kind, kind]
    model, rows = trained.load(), trained.test.drop(columns=["y"]).head(40)
    method = attributor(model.native, model.task, model.features)
    got = method(*method.encode(rows))
    assert got.values.shape == (40, 3 if task_kind == "multiclass" else 1, len(FEATURES))
    total = got.base + got.values.sum(axis=2)
    scores = model.scores(rows)
    tolerance = 0.05 if kind == "tabular-net" else 1e-3  # integrated gradients: a 32-step integral
    if task_kind == "regression":
        np.testing.assert_allclose(total[:, 0], scores, atol=tolerance * np.ptp(scores))
    elif kind == "forest":
        np.testing.assert_allclose(total, scores[:, 1:] if task_kind == "binary" else scores, atol=tolerance)
    elif task_kind == "binary":
        np.testing.assert_allclose(1 / (1 + np.exp(-total[:, 0])), scores[:, 1], atol=tolerance)
    else:
        np.testing.assert_allclose(_softmax(total), scores, atol=tolerance)
    document = got.to_json()
    row = document["explanations"][0]
    if task_kind == "multiclass":
        assert set(row) == set(trained.task.classes) and set(row["low"]) == set(FEATURES)
        assert set(document["base_value"]) == set(trained.task.classes)
    else:
        assert set(row) == set(FEATURES) and isinstance(document["base_value"], float)


def test_a_model_without_an_attribution_method_is_still_explained_by_permutation(tmp_path, models):
    """A linear scikit-learn pipeline: permutation importance and groups; no attributions, and a note why."""
    trained = models["binary", "gbdt"]
    linear = sklearn_model(str(trained.train_path), trained.task, tmp_path / "linear")
    loaded = model_contract.load(linear)
    with pytest.raises(NotExplainable, match="LogisticRegression is not a tree ensemble"):
        attributor(loaded.native, loaded.task, loaded.features)
    result = explain(loaded, trained.test, trained.task, "roc_auc", CONFIG, ["group"], 100)
    assert result.features[0].feature == "signal" and result.attribution_method is None
    document = result.to_json()
    assert document["attributions"] is None and "LogisticRegression" in document["notes"][0]


def test_json_matches_the_contract_the_model_card_reads(models):
    document = json.loads(json.dumps(_explain(models["multiclass", "gbdt"]).to_json()))
    assert {"method", "metric", "features", "by_group", "attributions"} <= set(document)
    assert document["method"] == "permutation" and document["metric"] == "macro_f1"
    for entry in document["features"]:
        assert set(entry) == {"feature", "importance", "std"} and isinstance(entry["importance"], float)
    importances = [f["importance"] for f in document["features"]]
    assert importances == sorted(importances, reverse=True)
    assert set(document["by_group"]) == {"group"} and set(document["by_group"]["group"]) == {"g1", "g2", "tiny"}
    for features in document["by_group"]["group"].values():
        assert all(set(f) == {"feature", "importance"} for f in features)
    assert document["attributions"]["method"] == "shap-tree"
    assert all(set(f) == {"feature", "mean_abs"} for f in document["attributions"]["features"])
    assert document["groups"]["group"]["tiny"]["flagged"] is True


def test_a_group_whose_metric_cannot_be_computed_says_why():
    explanation = explain(_OneClass(), pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0], "g": ["a", "a", "b", "b"],
                                                     "y": ["no", "yes", "no", "no"]}),
                          Task("binary", "y", ("no", "yes")), "roc_auc", CONFIG, ["g"], min_group_size=1)
    groups = {g.group: g for g in explanation.groups}
    assert groups["a"].features and not groups["b"].features
    assert "one class" in groups["b"].note and not groups["b"].flagged


@dataclass
class _OneClass:
    """A stand-in model: P(yes) rises with x."""

    task = Task("binary", "y", ("no", "yes"))
    features = ["x"]
    trainer = "test"
    native = None

    def scores(self, frame: pd.DataFrame) -> np.ndarray:
        p = frame["x"].to_numpy() / 5.0
        return np.column_stack([1 - p, p])


def test_html_is_self_contained_and_escapes_names():
    evil = "<script>alert(1)</script>"
    explanation = Explanation("roc_auc", 10, [Importance(evil, 0.2, 0.01), Importance("b&c", 0.1, 0.0)],
                              [GroupImportance(evil, "<g>", 5, True, [Importance(evil, 0.1, 0.0)], note="5 rows <x>")],
                              "shap-tree", [(evil, 1.0)], notes=["a <b> note"])
    page = to_html(explanation, top_k=1)
    assert "<script>" not in page and "&lt;script&gt;" in page and "&lt;g&gt;" in page and "&lt;b&gt;" in page
    assert "b&amp;c" not in page  # top_k=1 shows the first column only
    assert "<link" not in page and "src=" not in page


# --- the component -----------------------------------------------------------------------------

def test_the_component_logs_json_and_html_into_the_run_and_disabled_is_a_no_op(models, tmp_path, mlflow_store):
    """The explain component in a one-step pipeline (kfp.local): explain/explanation.json and
    explain/report.html in the run, the top importances as metrics; with explain.enabled false,
    an empty report and nothing recorded."""
    from kfp import dsl, local
    from mlflow.tracking import MlflowClient

    from kfmlops.components import explain as explain_component
    from kfmlops.tracking import tracking_uri

    trained = models["binary", "gbdt"]
    test_path = tmp_path / "test.parquet"
    trained.test.to_parquet(test_path)

    @dsl.pipeline
    def one_step(settings: dict, run_id: str):
        model = dsl.importer(artifact_uri=str(trained.model_dir), artifact_class=dsl.Model)
        data = dsl.importer(artifact_uri=str(test_path), artifact_class=dsl.Dataset)
        explain_component(model=model.output, test_data=data.output, task=trained.task.to_json(),
                          sensitive_features=["group"], settings=settings, run_id=run_id)

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    uri = tracking_uri(mlflow_store)
    client = MlflowClient(uri, uri)
    settings = {"mlflow": mlflow_store.model_dump(mode="json"), "explain": {"max_rows": 300, "repeats": 2, "top_k": 3}}
    for enabled in (True, False):
        run_id = start_run(mlflow_store, f"explain-{enabled}", {})
        one_step(settings={**settings, "explain": {**settings["explain"], "enabled": enabled}}, run_id=run_id)
        run = client.get_run(run_id)
        artifacts = {a.path for a in client.list_artifacts(run_id, "explain")}
        if enabled:
            assert artifacts == {"explain/explanation.json", "explain/report.html"}
            document = json.loads(Path(client.download_artifacts(run_id, "explain/explanation.json", str(tmp_path)))
                                  .read_text())
            assert document["features"][0]["feature"] == "signal" and document["rows"] == 300
            assert set(run.data.metrics) == {f"explain.importance.{f['feature']}" for f in document["features"][:3]}
        else:
            assert artifacts == set() and run.data.metrics == {}
    page = sorted((tmp_path / "root").glob("*/explain/report"))[-1].read_text()  # the last run: disabled
    assert "explain.enabled is false" in page


# --- serving -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def registered(models, tmp_path_factory) -> dict[str, tuple[str, str, bytes]]:
    """Signed registered versions: binary gbdt, multiclass net, binary linear (no attribution method)."""
    root = tmp_path_factory.mktemp("explain-store")
    tracking = f"sqlite:///{root / 'mlflow.db'}"
    private, public = generate_keypair()
    linear_dir = sklearn_model(str(models["binary", "gbdt"].train_path), models["binary", "gbdt"].task, root / "linear")
    out = {}
    for name, model_dir, trained in [("gbdt", models["binary", "gbdt"].model_dir, models["binary", "gbdt"]),
                                     ("net", models["multiclass", "tabular-net"].model_dir, models["multiclass", "tabular-net"]),
                                     ("linear", linear_dir, models["binary", "gbdt"])]:
        config = MlflowConfig(tracking_uri=tracking, experiment="explain", model_name=name)
        features = trained.test.drop(columns=["y"])
        register(model_dir, start_run(config, name, {}), config, BLESSED, features, task=trained.task,
                 signing_key=private)
        out[name] = (f"models:/{name}/1", tracking, public)
    return out


def _serve(registered, name: str, max_rows: int = 8) -> PredictorProcess:
    uri, tracking, key = registered[name]
    return PredictorProcess(uri, model_name=name, tracking_uri=tracking, verify_key=key,
                            serving=ServingConfig(explain_max_rows=max_rows))


def _explain_request(p: PredictorProcess, name: str, frame: pd.DataFrame) -> httpx.Response:
    return httpx.post(f"{p.url}/v1/models/{name}:explain", json={"instances": records(frame)}, timeout=60)


def test_explain_endpoint_answers_shap_values_per_row_and_bounds_the_rows(models, registered):
    trained = models["binary", "gbdt"]
    rows = trained.test.drop(columns=["y"]).head(8)
    expected = attributor(trained.load().native, trained.task, FEATURES)
    want = expected(*expected.encode(rows))
    with _serve(registered, "gbdt") as p:
        got = _explain_request(p, "gbdt", rows)
        assert got.status_code == 200, got.text
        body = got.json()
        assert (body["method"], body["output"]) == ("shap-tree", "log-odds of 'yes'")
        assert len(body["explanations"]) == 8 and set(body["explanations"][0]) == set(FEATURES)
        served = np.array([[row[f] for f in want.features] for row in body["explanations"]])
        np.testing.assert_allclose(served, want.values[:, 0], atol=1e-6)
        assert body["base_value"] == pytest.approx(float(want.base[0]))

        too_many = _explain_request(p, "gbdt", trained.test.drop(columns=["y"]).head(9))
        assert too_many.status_code == 400 and "at most 8 per request" in too_many.json()["error"]
        bad = _explain_request(p, "gbdt", rows.head(1).assign(signal="high"))
        assert bad.status_code == 400 and "signal" in bad.json()["error"]
        assert httpx.post(f"{p.url}/v1/models/gbdt:predict", json={"instances": records(rows)}).status_code == 200


def test_explain_endpoint_answers_integrated_gradients_per_class_for_the_net(models, registered):
    trained = models["multiclass", "tabular-net"]
    rows = trained.test.drop(columns=["y"]).head(3)
    with _serve(registered, "net") as p:
        got = _explain_request(p, "net", rows)
        assert got.status_code == 200, got.text
        body = got.json()
        assert body["method"] == "integrated-gradients" and body["output"] == "logit of each class"
        assert [set(row) for row in body["explanations"]] == [set(trained.task.classes)] * 3
        assert set(body["explanations"][0]["low"]) == set(FEATURES)


def test_explain_endpoint_refuses_a_model_without_an_attribution_method_with_501(models, registered):
    with _serve(registered, "linear") as p:
        got = _explain_request(p, "linear", models["binary", "gbdt"].test.drop(columns=["y"]).head(2))
        assert got.status_code == 501
        assert "LogisticRegression is not a tree ensemble" in got.json()["error"]
        assert "permutation importance" in got.json()["error"]
