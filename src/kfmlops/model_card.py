"""Model cards: what the registry and the pipeline's MLflow run hold about one registered version,
generated (never written by hand) as Markdown and HTML, and attached to the version.

:func:`collect` only reads. From the registry: the version's ``kfmlops.*`` tags (task, metrics,
every ``kfmlops.gate.*`` verdict, lineage, deploy status, previous champion, what the card says the
model is for: ``kfmlops.card.intended_use`` and ``.limitations``, see
:class:`~kfmlops.config.ModelCardConfig`) and the model's aliases (:func:`kfmlops.registry.view`).
From the version's source run: the gate tags the version does not carry (``validate``), the steps'
JSON documents (ingest, validation, evaluation, fairness: :func:`kfmlops.run_summary.step_documents`),
``explain/explanation.json`` when an explain step logged one, and ``model/provenance.json``, whose
signature is checked against the trusted key (the model files' digests are not: serving does that).
From the audit log: the version's records (approvals, rejections, alias moves, deploys, rollbacks).
It produces a :class:`ModelCard`.

:func:`to_markdown` and :func:`to_html` render one card from the same :func:`sections`, so the two
say the same thing; the HTML is one self-contained, escaped page (:mod:`kfmlops.report`).
:func:`attach` logs both into the version's source run as ``model_card/v<version>.md`` and ``.html``
and points the version's ``kfmlops.card`` (Markdown) and ``kfmlops.card.html`` tags at them;
:func:`refresh` collects and attaches again, for any event after registration.
"""

from __future__ import annotations

import html
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal

from kfmlops import __version__, audit, provenance, report
from kfmlops.config import AuditConfig, ModelCardConfig, ProvenanceConfig, Settings
from kfmlops.register import (
    CARD_HTML_TAG,
    CARD_TAG,
    CHAMPION,
    INTENDED_USE_TAG,
    LIMITATIONS_TAG,
    MODEL_ARTIFACT,
    card_tags,
)
from kfmlops.registry import Gate, RegistryError, VersionView, gates_from_tags, get_version, registered_aliases
from kfmlops.run_summary import ROLES, group_columns, run_document, step_documents, task_metrics
from kfmlops.tasks import Task, TaskError, metrics_module

EXPLANATION_ARTIFACT = "explain/explanation.json"
"""Where an explain step logs its explanation in the pipeline's MLflow run."""
CARD_FOLDER = "model_card"
TOP_FEATURES = 10

SignatureStatus = Literal["verified", "untrusted key", "invalid", "unsigned", "not checked"]


@dataclass(frozen=True)
class SignatureCheck:
    """The version's signed provenance and whether its signature holds. ``status``: ``verified`` (signed
    by the trusted key and unchanged since), ``untrusted key`` (signed by another key), ``invalid``
    (changed after signing, or not a signed record), ``unsigned`` (the run's model artifact holds no
    ``provenance.json``) or ``not checked`` (no verify key); ``detail`` says why. ``record`` is the
    signed record when it could be read, whatever the status."""

    status: SignatureStatus
    detail: str
    key_id: str | None = None
    trusted_key_id: str | None = None
    record: provenance.Provenance | None = None


@dataclass(frozen=True)
class ModelCard:
    """Everything a card shows about one version. ``gates``: every gate verdict, the version's tags
    first, then the run's gate tags the version lacks; ``gate_sources`` says which for each.
    ``documents``: the step documents its run holds, by name (ingest, validation, evaluation,
    fairness). ``explanation``: the explain step's document, or None. ``audit_records``: the audit
    records of this version, in log order; ``audit_note``: why none could be read, when so."""

    version: VersionView
    intended_use: str | None
    limitations: str | None
    gates: dict[str, Gate]
    gate_sources: dict[str, str]
    documents: dict[str, Any]
    explanation: dict[str, Any] | None
    signature: SignatureCheck
    audit_records: list[audit.AuditRecord]
    audit_note: str | None
    generated: str


def collect(client, name: str, version: str | None = None, intended_use: str | None = None, *,
            keys: ProvenanceConfig = ProvenanceConfig(), audit_config: AuditConfig = AuditConfig(),
            now: datetime | None = None) -> ModelCard:
    """The card of version ``version`` of registered model ``name`` (None: the champion, else the
    latest version), from what the registry, the version's run and the audit log hold (see the module
    docstring); ``intended_use`` replaces the one recorded on the version. ``client``: an
    MlflowClient on the registry; ``keys``: where the trusted verify key is; ``audit_config``: where
    the audit logs are. A RegistryError for an unknown model or version."""
    view = get_version(client, name, version or default_version(client, name))
    tags = client.get_model_version(name, view.version).tags or {}
    run_tags = client.get_run(view.run_id).data.tags if view.run_id else {}
    gates, sources = dict(view.gates), {g: "version" for g in view.gates}
    for gate, verdict in gates_from_tags(run_tags).items():
        if gate not in gates:
            gates[gate], sources[gate] = verdict, "pipeline run"
    records, note = version_records(audit_config, name, view.version)
    return ModelCard(
        version=view,
        intended_use=intended_use or tags.get(INTENDED_USE_TAG),
        limitations=tags.get(LIMITATIONS_TAG),
        gates=gates,
        gate_sources=sources,
        documents=step_documents(client, view.run_id) if view.run_id else {},
        explanation=run_document(client, view.run_id, EXPLANATION_ARTIFACT) if view.run_id else None,
        signature=check_signature(client, view.run_id, keys),
        audit_records=records,
        audit_note=note,
        generated=(now or datetime.now(timezone.utc)).isoformat(timespec="seconds"),
    )


def default_version(client, name: str) -> str:
    """The version a card is of when none is named: the champion, else the latest version."""
    champion = registered_aliases(client, name).get(CHAMPION)
    if champion is not None:
        return champion
    versions = [int(v.version) for v in client.search_model_versions(f"name='{name}'")]
    if not versions:
        raise RegistryError(f"model {name!r} has no versions")
    return str(max(versions))


def check_signature(client, run_id: str | None, keys: ProvenanceConfig) -> SignatureCheck:
    """Read ``model/provenance.json`` from MLflow run ``run_id`` and check its signature against the
    verify key of ``keys`` (:func:`kfmlops.provenance.verify_key`)."""
    path = f"{MODEL_ARTIFACT}/{provenance.PROVENANCE_FILE}"
    if run_id is None or path not in {a.path for a in client.list_artifacts(run_id, MODEL_ARTIFACT)}:
        return SignatureCheck("unsigned", f"the version's run holds no {path}")
    where = f"runs:/{run_id}/{path}"
    try:
        with tempfile.TemporaryDirectory(prefix="kfmlops-card-") as tmp:
            signed = provenance.read(client.download_artifacts(run_id, path, tmp))
    except provenance.ProvenanceError as exc:
        return SignatureCheck("invalid", str(exc))
    found = {"key_id": signed.key_id, "record": signed.record}
    try:
        public = provenance.verify_key(keys)
    except provenance.SigningKeyError as exc:
        return SignatureCheck("not checked", f"no verify key: {exc}", **found)
    trusted = provenance.key_id(public)
    try:
        provenance.check_signature(signed, public, where)
    except provenance.SignatureError as exc:
        status = "untrusted key" if signed.key_id != trusted else "invalid"
        return SignatureCheck(status, str(exc), trusted_key_id=trusted, **found)
    return SignatureCheck("verified", f"{where} is signed by the trusted key {trusted} and unchanged since",
                          trusted_key_id=trusted, **found)


def version_records(config: AuditConfig, name: str, version: str) -> tuple[list[audit.AuditRecord], str | None]:
    """The audit records of ``version`` of ``name`` in log order, and why there are none when the log
    cannot be read (no log yet, a malformed line)."""
    try:
        return [r for r in audit.read_log(audit.log_path(config, name)) if r.version == version], None
    except audit.AuditError as exc:
        return [], str(exc)


def attach(client, card: ModelCard) -> str:
    """Log the card's Markdown and HTML into the version's source run as ``model_card/v<version>.md``
    and ``.html``; tag the version ``kfmlops.card`` (the Markdown's ``runs:/`` URI) and
    ``kfmlops.card.html``, and ``kfmlops.card.intended_use`` with the card's intended use (so a later
    :func:`refresh` keeps an override). Produces the Markdown's URI."""
    v = card.version
    if v.run_id is None:
        raise RegistryError(f"version {v.version} of {v.name!r} has no source run to attach its card to")
    stem = f"{CARD_FOLDER}/v{v.version}"
    client.log_text(v.run_id, to_markdown(card), f"{stem}.md")
    client.log_text(v.run_id, to_html(card), f"{stem}.html")
    tags = {CARD_TAG: f"runs:/{v.run_id}/{stem}.md", CARD_HTML_TAG: f"runs:/{v.run_id}/{stem}.html",
            **card_tags(ModelCardConfig(intended_use=card.intended_use))}
    for key, value in tags.items():
        client.set_model_version_tag(v.name, v.version, key, value)
    return tags[CARD_TAG]


def refresh(settings: Settings, version: str) -> str:
    """Collect the card of ``version`` of ``settings.mlflow.model_name`` again (trusting
    ``settings.provenance``'s key, reading ``settings.audit``'s log) and :func:`attach` it: at register,
    after a promotion, an approval request or decision, a deploy. Produces the Markdown's URI."""
    from kfmlops.tracking import client

    registry = client(settings.mlflow)
    return attach(registry, collect(registry, settings.mlflow.model_name, str(version), keys=settings.provenance,
                                    audit_config=settings.audit))


# --- what a card says, in blocks both renderers share ------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """A table cell: PASS or FAIL."""

    passed: bool


@dataclass(frozen=True)
class Table:
    rows: list[dict[str, Any]]


Block = str | list[str] | Table
"""A paragraph, a bullet list or a table."""


def sections(card: ModelCard) -> list[tuple[str, list[Block]]]:
    """The card as (heading, blocks) sections: about the card, intended use, model, data, metrics,
    fairness, explanations, gates, approvals and history, provenance."""
    v = card.version
    return [
        ("About this card", [f"Generated {card.generated} by kfmlops {__version__} from the registry, the "
                             "pipeline's MLflow run and the audit log; regenerate it with `kfmlops models card "
                             f"{v.name} {v.version}`."]),
        ("Intended use", _use_blocks(card)),
        ("Model", [Table([
            {"field": "name", "value": v.name}, {"field": "version", "value": v.version},
            {"field": "aliases", "value": ", ".join(v.aliases) or "none"},
            {"field": "task", "value": _task_words(v)}, {"field": "trainer", "value": v.trainer or "not recorded"},
            {"field": "registered", "value": v.created}, {"field": "MLflow run", "value": v.run_id or "none"},
        ])]),
        ("Data", _data_blocks(card)),
        (f"Metrics ({v.task or 'task not recorded'})", _metric_blocks(card)),
        ("Fairness by group", _fairness_blocks(card)),
        ("Explanations", _explanation_blocks(card.explanation)),
        ("Gates", _gate_blocks(card)),
        ("Approvals and history", _history_blocks(card)),
        ("Provenance", _provenance_blocks(card)),
    ]


def _use_blocks(card: ModelCard) -> list[Block]:
    use = card.intended_use or ("not recorded: set model_card.intended_use in the pipeline config, or pass "
                                "`kfmlops models card --intended-use`")
    return [use, f"Limitations: {card.limitations or 'not recorded (model_card.limitations)'}"]


def _task_words(v: VersionView) -> str:
    if v.task is None:
        return "not recorded"
    classes = f", classes {', '.join(v.classes)}" if v.classes else ""
    return f"{v.task} (label {v.label}{classes})"


def _task(card: ModelCard) -> Task | None:
    """The version's task: the evaluation document's, else its tags' (None when neither holds one)."""
    evaluation = card.documents.get("evaluation")
    if evaluation:
        return Task.from_json(evaluation["task"])
    v = card.version
    try:
        return Task(v.task, v.label, tuple(v.classes)) if v.task else None
    except TaskError:  # classes cut at the tag limit
        return None


def _data_blocks(card: ModelCard) -> list[Block]:
    lineage, ingest = card.version.lineage, card.documents.get("ingest") or {}
    rows = [{"field": "training data", "value": lineage.get("train_data", "not recorded")},
            {"field": "dataset fingerprint (SHA-256)", "value": lineage.get("dataset_fingerprint", "not recorded")}]
    rows += [{"field": key.replace("_", " "), "value": f"{ingest[key]:,}"}
             for key in ("train_rows", "test_rows", "dropped_unlabelled") if ingest.get(key) is not None]
    blocks: list[Block] = [Table(rows)]
    if ingest.get("label_counts"):
        blocks += [f"The label ({ingest.get('label')}) in each split:",
                   Table([{"split": split, **counts} for split, counts in ingest["label_counts"].items()])]
    validation = card.documents.get("validation")
    if validation:
        blocks.append(f"Validation: {'passed' if validation['passed'] else 'failed'}, {validation['warnings']} "
                      f"warnings, {validation['errors']} errors.")
    return blocks


def _metric_blocks(card: ModelCard) -> list[Block]:
    v, task, evaluation = card.version, _task(card), card.documents.get("evaluation")
    directions = metrics_module(task).DIRECTIONS if task else {}
    better = {"max": "higher", "min": "lower"}
    primary = f"Primary metric: {v.primary_metric}" if v.primary_metric else "Primary metric: not recorded"
    if not evaluation:
        rows = [{"metric": m, "better": better.get(directions.get(m), "-"), "test": x} for m, x in v.metrics.items()]
        return [primary + " (test metrics from the version's tags; the run holds no evaluation document).",
                Table(rows) if rows else "no metrics recorded"]
    names = sorted(directions, key=lambda m: m != evaluation["primary_metric"])
    scored = {role: task_metrics(evaluation.get(role), names) for role in ROLES}
    roles = [r for r in ROLES if scored[r]]
    head = {r: f"champion v{evaluation['champion_version']}" if r == "champion" else r for r in roles}
    rows = [{"metric": m, "better": better[directions[m]], **{head[r]: scored[r][m] for r in roles}} for m in names]
    blocks: list[Block] = [f"{primary}; test split scores of this model (candidate), the reference linear model, "
                           "the trivial baseline and the champion it was judged against.", Table(rows)]
    matrix = evaluation["candidate"].get("confusion_matrix")
    if matrix and task and task.is_classification:
        blocks += ["Confusion matrix (a row per true class, a column per predicted class):",
                   Table([{"true \\ predicted": c, **dict(zip(task.classes, row))} for c, row in zip(task.classes, matrix)])]
    return blocks


def _fairness_blocks(card: ModelCard) -> list[Block]:
    fairness = card.documents.get("fairness")
    if fairness is None:
        return ["no fairness assessment recorded in the version's run"]
    if not fairness["features"]:
        return ["not assessed: no sensitive features were configured (data.sensitive_features)"]
    blocks: list[Block] = []
    for feature in fairness["features"]:
        blocks.append(f"By {feature['feature']}:")
        blocks.append(Table([{"figure": c["figure"], "value": c["value"], "threshold": _threshold(c),
                              "status": c["status"]} for c in feature["checks"]]))
        columns = group_columns(feature)
        blocks.append(Table([{"group": g["group"], **{c: g[c] for c in columns}, "rows": g["count"],
                              "gated": "yes" if g["gated"] else "no (too few rows)"} for g in feature["by_group"]]))
    return blocks


def _threshold(check: dict[str, Any]) -> str:
    if check["threshold"] is None:
        return "not set"
    return f"{check['kind']} {check['threshold']:.4g} ({check['threshold_name']})"


def _explanation_blocks(explanation: dict[str, Any] | None) -> list[Block]:
    if not explanation:
        return [f"no explanation recorded (the version's run holds no {EXPLANATION_ARTIFACT})"]
    top = sorted(explanation["features"], key=lambda f: -f["importance"])[:TOP_FEATURES]
    blocks: list[Block] = [
        f"Top {len(top)} features by {explanation['method']} importance (how much {explanation['metric']} worsens "
        "when the feature is shuffled):",
        Table([{"feature": f["feature"], "importance": f["importance"], "std": f.get("std")} for f in top]),
    ]
    groups = [f"{column} = {group}: " + ", ".join(f["feature"] for f in sorted(features, key=lambda f: -f["importance"])[:3])
              for column, by in (explanation.get("by_group") or {}).items() for group, features in by.items()]
    if groups:
        blocks += ["Most important features within each group:", groups]
    attributions = explanation.get("attributions")
    if attributions:
        ranked = sorted(attributions["features"], key=lambda f: -f["mean_abs"])[:TOP_FEATURES]
        blocks += [f"Top {len(ranked)} features by mean absolute {attributions['method']} attribution:",
                   Table([{"feature": f["feature"], "mean |attribution|": f["mean_abs"]} for f in ranked])]
    return blocks


def _gate_blocks(card: ModelCard) -> list[Block]:
    signed = card.signature.record.gates if card.signature.record else {}
    rows = [{"gate": name, "verdict": Verdict(g.passed), "reasons": "; ".join(g.reasons) or "-",
             "recorded on": card.gate_sources[name], "signed": _signed_word(g, signed.get(name))}
            for name, g in card.gates.items()]
    if not rows:
        return ["no gate verdicts recorded"]
    failed = [name for name, g in card.gates.items() if not g.passed]
    summary = f"Gates failed: {', '.join(failed)}." if failed else "Every gate passed."
    return [summary, Table(rows)]


def _signed_word(gate: Gate, signed: dict[str, Any] | None) -> str:
    if signed is None:
        return "not in the signed record"
    return "yes" if signed["passed"] == gate.passed else f"differs: signed {'PASS' if signed['passed'] else 'FAIL'}"


def _history_blocks(card: ModelCard) -> list[Block]:
    v = card.version
    deploy = v.deploy_status or "not deployed"
    lines = [f"aliases: {', '.join(v.aliases) or 'none'}",
             f"deploy: {deploy}" + (f" ({'; '.join(v.deploy_reasons)})" if v.deploy_reasons else ""),
             f"previous champion: {v.previous_champion or 'none'}"]
    rollback = {k.removeprefix("rollback."): x for k, x in v.lineage.items() if k.startswith("rollback.")}
    if rollback:
        lines.append(f"last rollback: champion {rollback.get('from')} -> {rollback.get('to')} by {rollback.get('by')} "
                     f"at {rollback.get('at')} ({rollback.get('reason')})")
    if not card.audit_records:
        return [lines, f"no audit records for this version ({card.audit_note or 'none in the log'})"]
    rows = [{"seq": r.seq, "time": r.time, "event": r.event, "actor": r.actor, "reason": r.reason or "-",
             "details": ", ".join(f"{k}={x}" for k, x in r.details.items()) or "-"} for r in card.audit_records]
    return [lines, "Audit log records (signatures and chain: `kfmlops audit verify`):", Table(rows)]


def _provenance_blocks(card: ModelCard) -> list[Block]:
    check, lineage = card.signature, card.version.lineage
    record = check.record
    recorded = {
        "config hash": record.config_hash if record else lineage.get("config_hash"),
        "code commit": (record.code_commit if record else lineage.get("code_commit")) or "unknown",
        "dataset fingerprint": record.dataset_fingerprint if record else lineage.get("dataset_fingerprint"),
        "pipeline run": (record.pipeline_run_id if record else lineage.get("pipeline_run_id")) or "none",
        "signed at": record.created_at if record else None,
        "files signed": len(record.artifacts) if record else None,
        "kfmlops version": lineage.get("package_version"),
    }
    rows = [{"field": "signature", "value": check.status}, {"field": "signing key id", "value": check.key_id},
            {"field": "trusted key id", "value": check.trusted_key_id}]
    rows += [{"field": k, "value": x} for k, x in recorded.items()]
    return [check.detail + ("" if record is None else "; the model files' digests are checked when it is served."),
            Table(rows)]


# --- renderers ----------------------------------------------------------------------------------


def _title(card: ModelCard) -> str:
    return f"Model card: {card.version.name} version {card.version.version}"


def to_markdown(card: ModelCard) -> str:
    """The card as one Markdown document."""
    out = [f"# {_title(card)}"]
    for heading, blocks in sections(card):
        out += ["", f"## {heading}"]
        for block in blocks:
            out += ["", *_markdown_block(block)]
    return "\n".join(out) + "\n"


def _markdown_block(block: Block) -> list[str]:
    if isinstance(block, str):
        return [block]
    if isinstance(block, list):
        return [f"- {line}" for line in block]
    keys = list(block.rows[0]) if block.rows else []
    if not keys:
        return ["none"]
    return [
        "| " + " | ".join(map(_md_cell, keys)) + " |",
        "|" + "---|" * len(keys),
        *("| " + " | ".join(_md_cell(row.get(k)) for k in keys) + " |" for row in block.rows),
    ]


def _md_cell(value: Any) -> str:
    return _text(value).replace("|", "\\|").replace("\n", " ")


def _text(value: Any) -> str:
    if isinstance(value, Verdict):
        return "PASS" if value.passed else "FAIL"
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def to_html(card: ModelCard) -> str:
    """The card as one self-contained HTML page (no scripts, no external assets); every value escaped."""
    return report.page(_title(card), [(heading, "".join(map(_html_block, blocks))) for heading, blocks in sections(card)])


def _html_block(block: Block) -> str:
    if isinstance(block, str):
        return "<p>" + html.escape(block).replace("\n", "<br>") + "</p>"
    if isinstance(block, list):
        return "<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in block) + "</ul>"
    rows = [{k: _html_cell(x) for k, x in row.items()} for row in block.rows]
    return report.table(rows, raw=rows[0].keys() if rows else ())


def _html_cell(value: Any) -> str:
    if isinstance(value, Verdict):
        return report.verdict(value.passed)
    return report.fmt("-" if value is None else value)
