"""Model cards of real registered versions: a scikit-learn model per task (binary Adult, multiclass
penguins, regression cps1988) ingested, scored, evaluated and fairness-gated by kfmlops, its step
documents and gate tags logged into its MLflow run as the pipeline logs them, registered (signed)
in a sqlite store; the cards read all of it back from the registry, the run and the audit log."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from serving_fixtures import ROOT, sklearn_model

from kfmlops import audit, model_card
from kfmlops.config import AuditConfig, DataSpec, EvaluateConfig, FairnessConfig, IngestConfig, MlflowConfig, \
    ModelCardConfig, ProvenanceConfig, Settings
from kfmlops.evaluate import evaluate
from kfmlops.fairness import assess
from kfmlops.ingest import IngestResult, ingest
from kfmlops.predict import predict
from kfmlops.provenance import generate_keypair
from kfmlops.register import CARD_HTML_TAG, CARD_TAG, INTENDED_USE_TAG, GateVerdict, Lineage, gate_tags, promote, \
    register
from kfmlops.registry import main
from kfmlops.tasks import Task
from kfmlops.tracking import log_to_run, start_run

INTENDED = {"adult": "Ranking loan applications for review by a person; never to refuse one unseen.",
            "penguins": "Teaching: telling three penguin species apart from measurements.", "cps1988": None}
FAIRNESS = {"adult": FairnessConfig(max_demographic_parity_difference=0.05),  # Adult's sex gap fails this
            "penguins": FairnessConfig(max_accuracy_difference=0.5, min_group_size=10),
            "cps1988": FairnessConfig(max_mae_ratio=10.0, min_group_size=20)}
SENSITIVE = {"adult": ["sex", "race"], "penguins": ["island"], "cps1988": ["ethnicity"]}


@dataclass(frozen=True)
class Store:
    uri: str
    home: Path
    keys: ProvenanceConfig
    audit: AuditConfig
    public_pem: bytes
    fingerprints: dict[str, str]

    @property
    def client(self) -> MlflowClient:
        return MlflowClient(self.uri, self.uri)

    def card(self, name: str, version: str | None = "1", **kwargs) -> model_card.ModelCard:
        return model_card.collect(self.client, name, version, keys=self.keys, audit_config=self.audit, **kwargs)


def _ingested(name: str, label: str, out: Path) -> IngestResult:
    spec = DataSpec(source=str(ROOT / "data" / name / f"{name}.csv.gz"), label=label)
    return ingest(spec, IngestConfig(), out / f"{name}-train.parquet", out / f"{name}-test.parquet")


def _release(root: Path, name: str, data: IngestResult, store: MlflowConfig, private: bytes) -> None:
    """What the release pipeline does to a model, through register: score the test split, evaluate,
    fairness-gate, log the step documents and gate tags into the run, register with lineage."""
    task = Task.from_json(data.task)
    model_dir = sklearn_model(data.train_path, task, root / name)
    train, test = pd.read_parquet(data.train_path), pd.read_parquet(data.test_path)
    predictions = predict(model_dir, test, task)
    blessing = evaluate(task, predictions, train, test, EvaluateConfig())
    fair = assess(task, predictions, test[SENSITIVE[name]], FAIRNESS[name])
    config = store.model_copy(update={"model_name": name})
    run_id = start_run(config, name, {})
    log_to_run(config, run_id, tags=gate_tags("validate", True) | gate_tags("evaluate", blessing.blessed),
               documents={"ingest.json": asdict(data), "evaluation.json": blessing.to_json(),
                          "fairness.json": fair.to_json(),
                          "validation.json": {"passed": True, "warnings": 2, "errors": 0}})
    lineage = Lineage(data.fingerprint, "c" * 64, data.train_path, "abc123", f"kfp-{name}",
                      dict(blessing.candidate.metrics), primary_metric=blessing.primary_metric,
                      gates={"evaluate": GateVerdict(blessing.blessed, blessing.reasons),
                             "fairness": GateVerdict(fair.passed, fair.reasons)})
    register(model_dir, run_id, config, lineage, test.drop(columns=[task.label]).head(5), task=task,
             signing_key=private, card=ModelCardConfig(intended_use=INTENDED[name], limitations="US data of 1988-1994"))


@pytest.fixture(scope="module")
def store(tmp_path_factory, adult) -> Store:
    root = tmp_path_factory.mktemp("cards")
    private, public = generate_keypair()
    (root / "signing.pem").write_bytes(private)
    (root / "verify.pem").write_bytes(public)
    keys = ProvenanceConfig(signing_key_file=str(root / "signing.pem"), verify_key_file=str(root / "verify.pem"),
                            development_keys=False)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    config = MlflowConfig(tracking_uri=uri, experiment="cards")
    pd.read_parquet(adult.train_path).sample(n=2000, random_state=0).to_parquet(root / "adult-2k.parquet")
    datasets = {"adult": IngestResult(**{**asdict(adult), "train_path": str(root / "adult-2k.parquet")}),
                "penguins": _ingested("penguins", "species", root),
                "cps1988": _ingested("cps1988", "wage", root)}
    for name, data in datasets.items():
        _release(root, name, data, config, private)
    return Store(uri, root / "home", keys, AuditConfig(directory=str(root / "home" / "audit")), public,
                 {name: data.fingerprint for name, data in datasets.items()})


@pytest.mark.parametrize("name, metric, groups", [
    ("adult", "roc_auc", ["Female", "Male", "Amer-Indian-Eskimo"]),
    ("penguins", "macro_f1", ["Biscoe", "Dream", "Torgersen"]),
    ("cps1988", "rmse", ["afam", "cauc"]),
])
def test_the_card_names_every_gate_its_task_metrics_fairness_data_and_signature(store, name, metric, groups):
    card = store.card(name)
    text = model_card.to_markdown(card)
    assert text.startswith(f"# Model card: {name} version 1\n")
    assert set(card.gates) == {"evaluate", "fairness", "validate"}
    assert card.gate_sources == {"evaluate": "version", "fairness": "version", "validate": "pipeline run"}
    for gate, verdict in card.gates.items():
        word = "PASS" if verdict.passed else "FAIL"
        assert f"| {gate} | {word} | {'; '.join(verdict.reasons) or '-'} |" in text
    assert card.gates["evaluate"].reasons and all(r in text for r in card.gates["fairness"].reasons)
    assert f"| {metric} | " in text and f"Primary metric: {metric}" in text
    assert all(f"| {g} | " in text for g in groups)
    assert store.fingerprints[name] in text and "| training data | " in text
    assert card.signature.status == "verified" and "| signature | verified |" in text
    assert f"| signing key id | {card.signature.key_id} |" in text and "| code commit | abc123 |" in text
    assert "| config hash | " + "c" * 64 + " |" in text
    task = Task.from_json(card.documents["evaluation"]["task"])
    if task.is_classification:  # the matrix is labelled with the task's own classes, not 0/1
        assert "| true \\ predicted | " + " | ".join(task.classes) + " |" in text
    else:
        assert "Confusion matrix" not in text and task.classes == ()


def test_a_failed_gate_is_named_with_its_reasons_and_the_signed_record_agrees(store):
    card = store.card("adult")
    fairness = card.gates["fairness"]
    assert not fairness.passed and any("demographic_parity_difference" in r for r in fairness.reasons)
    text = model_card.to_markdown(card)
    assert "Gates failed: fairness." in text and "| fairness | FAIL | " in text
    assert "| yes |" in text and "| not in the signed record |" in text  # validate is the run's, not signed


def test_intended_use_is_read_from_the_version_and_can_be_overridden(store):
    assert store.card("adult").intended_use == INTENDED["adult"]
    assert store.client.get_model_version("adult", "1").tags[INTENDED_USE_TAG] == INTENDED["adult"]
    assert store.card("adult", intended_use="demo only").intended_use == "demo only"
    text = model_card.to_markdown(store.card("cps1988"))
    assert "not recorded: set model_card.intended_use" in text and "Limitations: US data of 1988-1994" in text


def test_html_is_one_escaped_page(store):
    hostile = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    page = model_card.to_html(store.card("penguins", intended_use=hostile))
    assert page.startswith("<!doctype html>") and "<script" not in page and "<img" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert '<span class="fail">FAIL</span>' in page or '<span class="pass">PASS</span>' in page
    assert "<link" not in page and "<style>" in page  # self-contained


def test_a_card_without_an_explanation_says_so_and_one_with_lists_its_top_features(store):
    assert "no explanation recorded (the version's run holds no explain/explanation.json)" in \
        model_card.to_markdown(store.card("cps1988"))
    run_id = store.client.get_model_version("adult", "1").run_id
    features = ["age", "workclass", "fnlwgt", "education", "education_num", "marital_status", "occupation",
                "relationship", "race", "sex", "capital_gain", "capital_loss", "hours_per_week", "native_country"]
    explanation = {
        "method": "permutation", "metric": "roc_auc",
        "features": [{"feature": f, "importance": 0.01 * i, "std": 0.001} for i, f in enumerate(features)],
        "by_group": {"sex": {"Female": [{"feature": "age", "importance": 0.2}, {"feature": "sex", "importance": 0.1}]}},
        "attributions": {"method": "shap-tree", "features": [{"feature": "capital_gain", "mean_abs": 0.7},
                                                             {"feature": "age", "mean_abs": 0.3}]},
    }
    store.client.log_dict(run_id, explanation, model_card.EXPLANATION_ARTIFACT)
    card = store.card("adult")
    assert card.explanation == explanation
    text = model_card.to_markdown(card)
    blocks = text.split("## Explanations\n\n")[1].split("\n\n## Gates")[0].split("\n\n")
    assert blocks[0].startswith("Top 10 features by permutation importance (how much roc_auc worsens")
    listed = [row.split(" | ")[0].removeprefix("| ") for row in blocks[1].splitlines()[2:]]
    assert listed == features[::-1][:10]  # the ten most important, most important first
    assert "- sex = Female: age, sex" in text and "mean absolute shap-tree attribution" in text
    assert "| capital_gain | 0.7000 |" in text


def test_the_card_lists_the_versions_audit_records_and_defaults_to_the_champion(store):
    config = MlflowConfig(tracking_uri=store.uri, experiment="cards", model_name="penguins")
    promote(config, "1")
    settings = Settings(mlflow=config, provenance=store.keys, audit=store.audit)
    for event, reason in [(audit.Event.APPROVED, "reviewed the fairness report"), (audit.Event.ALIAS_MOVED, "approved")]:
        audit.log_event(settings, audit.Entry(event=event, model="penguins", version="1", actor="alice@example.com",
                                              reason=reason, details={"alias": "champion"}))
    audit.log_event(settings, audit.Entry(event=audit.Event.APPROVED, model="penguins", version="9", actor="bob",
                                          reason="another version"))
    card = store.card("penguins", None)
    assert card.version.version == "1" and card.version.aliases == ["challenger", "champion"]
    assert [(r.event, r.actor, r.reason) for r in card.audit_records] == [
        ("approved", "alice@example.com", "reviewed the fairness report"), ("alias_moved", "alice@example.com", "approved")]
    text = model_card.to_markdown(card)
    assert "| 1 | " in text and "| approved | alice@example.com | reviewed the fairness report | alias=champion |" in text
    assert "another version" not in text and "- aliases: challenger, champion" in text
    assert "no audit records for this version (no audit log at" in model_card.to_markdown(store.card("cps1988"))


def test_a_card_checked_against_another_key_says_the_signer_is_not_trusted(store, tmp_path):
    other = tmp_path / "other.pem"
    other.write_bytes(generate_keypair()[1])
    card = model_card.collect(store.client, "cps1988", "1", keys=ProvenanceConfig(verify_key_file=str(other)),
                              audit_config=store.audit)
    assert card.signature.status == "untrusted key" and card.signature.key_id != card.signature.trusted_key_id
    assert "| signature | untrusted key |" in model_card.to_markdown(card)


def _load(uri: str, store: Store, into: Path) -> str:
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, tracking_uri=store.uri, dst_path=str(into))).read_text()


def test_attach_logs_both_files_where_the_tag_says_and_refresh_keeps_an_override(store, tmp_path):
    card = store.card("penguins", intended_use="species research")
    uri = model_card.attach(store.client, card)
    tags = store.client.get_model_version("penguins", "1").tags
    assert uri == tags[CARD_TAG] == f"runs:/{card.version.run_id}/model_card/v1.md"
    assert tags[CARD_HTML_TAG] == f"runs:/{card.version.run_id}/model_card/v1.html"
    assert _load(tags[CARD_TAG], store, tmp_path / "md") == model_card.to_markdown(card)
    assert _load(tags[CARD_HTML_TAG], store, tmp_path / "html") == model_card.to_html(card)
    settings = Settings(mlflow=MlflowConfig(tracking_uri=store.uri, model_name="penguins"), provenance=store.keys,
                        audit=store.audit)
    assert model_card.refresh(settings, "1") == uri
    assert "species research" in _load(uri, store, tmp_path / "again")


def test_the_cli_prints_writes_and_attaches_cards(store, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("KFMLOPS_HOME", str(store.home))
    monkeypatch.setenv("KFMLOPS_VERIFY_KEY", store.public_pem.decode())
    assert main(["--tracking-uri", store.uri, "card", "adult", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# Model card: adult version 1\n") and "| signature | verified |" in out
    assert main(["--tracking-uri", store.uri, "card", "adult", "1", "--format", "html", "--intended-use", "<b>x</b>",
                 "--output", str(tmp_path / "card.html")]) == 0
    assert capsys.readouterr().out == f"wrote {tmp_path / 'card.html'}\n"
    assert "&lt;b&gt;x&lt;/b&gt;" in (tmp_path / "card.html").read_text()
    assert main(["--tracking-uri", store.uri, "card", "penguins", "1", "--attach"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("# Model card: penguins version 1")
    attached = store.client.get_model_version("penguins", "1").tags[CARD_TAG]
    assert f"kfmlops models: card attached: {attached}\n" in captured.err
    assert main(["--tracking-uri", store.uri, "--json", "card", "adult", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["signature"]["status"] == "verified"
    assert main(["--tracking-uri", store.uri, "card", "nope"]) == 1
    assert "no registered model 'nope'" in capsys.readouterr().err
