"""``kfmlops models``: what the MLflow registry holds, and moving the ``champion`` alias back.

Reads what :mod:`kfmlops.register` and :mod:`kfmlops.serving.deploy` record on each model
version (``kfmlops.*`` tags: test metrics, gate verdicts, lineage, deploy status, the previous
champion) and the registered model's aliases. ``list`` gives every model with its versions;
``show NAME [VERSION]`` one version (default: the champion); ``compare NAME V1 V2`` two versions'
metrics side by side with deltas. Each version shows its task (binary, multiclass or regression;
label and classes), its trainer and its primary metric (the one evaluate blessed it on: ROC AUC,
macro F1, RMSE... as the run recorded it) with its value.

``rollback NAME [VERSION] --reason WHY`` points ``champion`` at VERSION, or at the version the
champion replaced: :func:`kfmlops.register.promote` writes ``kfmlops.previous_champion`` on every
version it makes champion, so those tags chain the champion's history. A rollback keeps that tag
on a version that was champion before (a second rollback walks one step further back); a version
that never was gets the current champion, as promote would give it. Who, when, why, from and to
go into ``kfmlops.rollback.*`` tags on both versions. A version whose gates did not pass is
refused unless ``--force``. Only the alias moves: a predictor that serves ``models:/NAME@champion``
(``kfmlops serve``) takes the version when it restarts; a KServe InferenceService serves the version
the deploy step rolled out until the deploy step runs again.

``card NAME [VERSION]`` prints the version's model card (:mod:`kfmlops.model_card`; default: the
champion, else the latest version) as Markdown or ``--format html``; ``--attach`` also logs it
into the version's run and tags the version with where it is.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from kfmlops.config import MlflowConfig
from kfmlops.register import (
    CHAMPION,
    CLASSES_TAG,
    DEPLOY_REASONS_TAG,
    DEPLOY_STATUS_TAG,
    LABEL_TAG,
    PREVIOUS_CHAMPION_TAG,
    PRIMARY_METRIC_TAG,
    TAG_LIMIT,
    TAG_PREFIX,
    TASK_TAG,
    TRAINER_TAG,
)

ROLLBACK_TAG_PREFIX = TAG_PREFIX + "rollback."
ALL_GATES_TAG = TAG_PREFIX + "all_gates_passed"
METRIC_TAG_PREFIX = TAG_PREFIX + "metric."
GATE_TAG_PREFIX = TAG_PREFIX + "gate."
_SHOWN_TAGS = {ALL_GATES_TAG, DEPLOY_STATUS_TAG, DEPLOY_REASONS_TAG, PREVIOUS_CHAMPION_TAG, TASK_TAG, LABEL_TAG, CLASSES_TAG,
               TRAINER_TAG, PRIMARY_METRIC_TAG}
"""Tags a VersionView has a field for; every other kfmlops.* tag is lineage."""


class RegistryError(RuntimeError):
    """An unknown model or version, no champion, or a refused rollback; the message says what to do."""


@dataclass(frozen=True)
class Gate:
    passed: bool
    reasons: list[str]


@dataclass(frozen=True)
class VersionView:
    """One model version as kfmlops recorded it: its task (``task`` kind, ``label``, ``classes``),
    ``trainer``, ``primary_metric`` (its name; its value is in ``metrics``), and in ``lineage`` every
    other ``kfmlops.*`` tag (dataset fingerprint, config hash, code commit, ..., the last rollback),
    without the prefix. Versions registered before tasks were recorded have None."""

    name: str
    version: str
    aliases: list[str]
    created: str
    run_id: str | None
    task: str | None
    label: str | None
    classes: list[str]
    trainer: str | None
    primary_metric: str | None
    metrics: dict[str, float]
    gates: dict[str, Gate]
    all_gates_passed: bool | None
    deploy_status: str | None
    deploy_reasons: list[str]
    previous_champion: str | None
    lineage: dict[str, str]

    @property
    def primary_value(self) -> float | None:
        return self.metrics.get(self.primary_metric) if self.primary_metric else None

    @property
    def failed_gates(self) -> list[str]:
        return [f"{name}: {'; '.join(g.reasons) or 'failed'}" for name, g in self.gates.items() if not g.passed]


@dataclass(frozen=True)
class ModelSummary:
    name: str
    aliases: dict[str, str]
    versions: list[VersionView]


@dataclass(frozen=True)
class MetricRow:
    metric: str
    a: float | None
    b: float | None

    @property
    def delta(self) -> float | None:
        return None if self.a is None or self.b is None else self.b - self.a


@dataclass(frozen=True)
class Rollback:
    name: str
    from_version: str | None
    to_version: str
    by: str
    at: str
    reason: str
    forced: bool
    previous_champion: str | None

    def audit_entry(self):
        """The move as an audit log entry (``rollback``)."""
        from kfmlops.audit import Entry, Event

        return Entry(event=Event.ROLLBACK, model=self.name, version=self.to_version, actor=self.by, reason=self.reason,
                     details={"alias": CHAMPION, "from": self.from_version, "forced": self.forced})


def view(version, model_aliases: dict[str, str]) -> VersionView:
    """A ``ModelVersion`` (from MlflowClient) and its model's alias -> version map, as a VersionView."""
    tags = dict(version.tags or {})
    number = str(version.version)
    metrics, lineage = {}, {}
    for key, value in sorted(tags.items()):
        if not key.startswith(TAG_PREFIX) or _is_gate_tag(key):
            continue
        if key.startswith(METRIC_TAG_PREFIX):
            metrics[key.removeprefix(METRIC_TAG_PREFIX)] = float(value)
        elif key not in _SHOWN_TAGS:
            lineage[key.removeprefix(TAG_PREFIX)] = value
    previous = tags.get(PREVIOUS_CHAMPION_TAG)
    return VersionView(
        name=version.name,
        version=number,
        aliases=sorted(a for a, v in model_aliases.items() if v == number),
        created=_iso(version.creation_timestamp / 1000),
        run_id=version.run_id,
        task=tags.get(TASK_TAG),
        label=tags.get(LABEL_TAG),
        classes=_json_list(tags.get(CLASSES_TAG)),
        trainer=tags.get(TRAINER_TAG),
        primary_metric=tags.get(PRIMARY_METRIC_TAG),
        metrics=metrics,
        gates=gates_from_tags(tags),
        all_gates_passed=None if ALL_GATES_TAG not in tags else tags[ALL_GATES_TAG] == "true",
        deploy_status=tags.get(DEPLOY_STATUS_TAG),
        deploy_reasons=_json_list(tags.get(DEPLOY_REASONS_TAG)),
        previous_champion=None if previous in (None, "none") else previous,
        lineage=lineage,
    )


def gates_from_tags(tags: dict[str, str]) -> dict[str, Gate]:
    """Every gate verdict in ``kfmlops.gate.<name>.passed|reasons`` tags (a version's or a run's), by name."""
    fields: dict[str, dict[str, str]] = {}
    for key, value in sorted(tags.items()):
        if _is_gate_tag(key):
            gate, field = key.removeprefix(GATE_TAG_PREFIX).rsplit(".", 1)
            fields.setdefault(gate, {})[field] = value
    return {g: Gate(f.get("passed") == "true", _json_list(f.get("reasons"))) for g, f in fields.items()}


def _is_gate_tag(key: str) -> bool:
    return key.startswith(GATE_TAG_PREFIX) and key.endswith((".passed", ".reasons"))


def list_models(client) -> list[ModelSummary]:
    """Every registered model, by name, with its aliases and its versions, newest first."""
    models, token = [], None
    while True:
        page = client.search_registered_models(max_results=100, page_token=token)
        models += page
        token = page.token
        if not token:
            break
    return [_summary(client, m) for m in sorted(models, key=lambda m: m.name)]


def get_version(client, name: str, version: str | None = None) -> VersionView:
    """Version ``version`` of model ``name``, or its champion when None."""
    model_aliases = registered_aliases(client, name)
    if version is None:
        version = model_aliases.get(CHAMPION)
        if version is None:
            raise RegistryError(f"model {name!r} has no {CHAMPION!r} alias: name a VERSION (`kfmlops models list` shows them)")
    return view(_model_version(client, name, version), model_aliases)


def compare(client, name: str, a: str, b: str) -> tuple[VersionView, VersionView, list[MetricRow]]:
    """Versions ``a`` and ``b`` and their metrics side by side (every metric either one has)."""
    va, vb = get_version(client, name, a), get_version(client, name, b)
    rows = [MetricRow(m, va.metrics.get(m), vb.metrics.get(m)) for m in sorted(va.metrics.keys() | vb.metrics.keys())]
    return va, vb, rows


def rollback(
    client, name: str, version: str | None, *, reason: str, by: str, force: bool = False, now: datetime | None = None
) -> Rollback:
    """Point ``champion`` at ``version``, or at the champion's previous champion when None (see
    the module docstring), and record the move on both versions; a RegistryError when refused."""
    model_aliases = registered_aliases(client, name)
    champion = model_aliases.get(CHAMPION)
    if version is None:
        if champion is None:
            raise RegistryError(f"model {name!r} has no {CHAMPION!r} alias, so no previous one: name the VERSION to make champion")
        version = get_version(client, name, champion).previous_champion
        if version is None:
            raise RegistryError(
                f"champion version {champion} of {name!r} records no previous champion ({PREVIOUS_CHAMPION_TAG} "
                "is none or unset: it was the first): name the VERSION to roll back to"
            )
    found = _model_version(client, name, version)
    target = view(found, model_aliases)
    recorded = PREVIOUS_CHAMPION_TAG in (found.tags or {})  # champion before: it keeps its place in the history
    if target.version == champion:
        raise RegistryError(f"version {target.version} is already the champion of {name!r}")
    if not target.all_gates_passed and not force:
        why = "; ".join(target.failed_gates) or "no gate verdicts recorded"
        raise RegistryError(f"version {target.version} of {name!r} did not pass its gates ({why}): pass --force to make it champion anyway")
    at = _iso((now or datetime.now(timezone.utc)).timestamp())
    move = Rollback(name, champion, target.version, by, at, reason, force, target.previous_champion if recorded else champion)
    client.set_registered_model_alias(name, CHAMPION, target.version)
    if not recorded:
        client.set_model_version_tag(name, target.version, PREVIOUS_CHAMPION_TAG, champion or "none")
    record = {"from": champion or "none", "to": target.version, "by": by, "at": at, "reason": reason[:TAG_LIMIT],
              "forced": str(force).lower()}
    for number in filter(None, (target.version, champion)):
        for key, value in record.items():
            client.set_model_version_tag(name, number, ROLLBACK_TAG_PREFIX + key, value)
    return move


def main(argv: list[str] | None = None) -> int:
    """``kfmlops models list|show|compare|rollback|card``: 0 on success, 1 with a one-line reason otherwise."""
    parser = argparse.ArgumentParser(prog="kfmlops models", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="pipeline config YAML: its mlflow section names the registry")
    parser.add_argument("--tracking-uri", help="the registry (default: --config's, else $MLFLOW_TRACKING_URI, else $KFMLOPS_HOME's store)")
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="models with their versions and aliases")
    show = sub.add_parser("show", help="one version's metrics, gates, lineage, aliases and deploy status")
    show.add_argument("name")
    show.add_argument("version", nargs="?", help="default: the champion")
    cmp_ = sub.add_parser("compare", help="two versions' metrics side by side, with deltas (V2 - V1)")
    cmp_.add_argument("name")
    cmp_.add_argument("v1")
    cmp_.add_argument("v2")
    back = sub.add_parser("rollback", help="move champion to VERSION, or to the champion's previous champion")
    back.add_argument("name")
    back.add_argument("version", nargs="?", help="default: the version the champion replaced")
    back.add_argument("--reason", required=True, help="why: recorded on both versions")
    back.add_argument("--by", default=None, help="who: recorded on both versions and in the audit log (default: "
                      "$KFMLOPS_ACTOR, else the pod's service account, else the login name)")
    back.add_argument("--force", action="store_true", help="allow a version whose gates did not pass")
    back.add_argument("--switch", choices=("blue", "green"), help="blue-green on a cluster: also switch the Service "
                      "deploy.inference_service.name (of --config) back to this colour's InferenceService at once")
    card = sub.add_parser("card", help="a version's model card, generated from the registry, its run and the audit log")
    card.add_argument("name")
    card.add_argument("version", nargs="?", help="default: the champion, else the latest version")
    card.add_argument("--format", choices=["md", "html"], default="md", help="Markdown (default) or one HTML page")
    card.add_argument("--attach", action="store_true", help="also log the card into the version's run and tag the "
                      "version with its URI (kfmlops.card)")
    card.add_argument("--intended-use", help="what the model is for, in place of the one recorded at register time")
    card.add_argument("--output", help="write the card to this file instead of printing it")
    args = parser.parse_args(argv)
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from kfmlops.tracking import answer

    from kfmlops import audit
    from kfmlops.config import PipelineConfig, Settings
    from kfmlops.typed import ConfigError

    try:
        settings = PipelineConfig.from_yaml(args.config).settings if args.config else Settings()
        uri = registry_uri(settings.mlflow, args.tracking_uri)
        client = MlflowClient(uri, uri)
        if args.action == "list":
            models = list_models(client)
            out = json.dumps([_model_json(m) for m in models]) if args.json else _list_text(models, uri)
        elif args.action == "show":
            version = get_version(client, args.name, args.version)
            out = json.dumps(asdict(version)) if args.json else _show_text(version)
        elif args.action == "compare":
            a, b, rows = compare(client, args.name, args.v1, args.v2)
            out = json.dumps(_compare_json(a, b, rows)) if args.json else _compare_text(a, b, rows)
        elif args.action == "card":
            out = _card(client, args, settings)
        else:
            move = rollback(client, args.name, args.version, reason=args.reason, by=audit.actor(args.by), force=args.force)
            audit.log_event(settings, move.audit_entry())
            moved = asdict(move)
            out = _rollback_text(move)
            if args.switch:
                service = settings.deploy.inference_service
                moved["switched"] = _switch(service, args.switch)
                out += f"\nService {service.namespace}/{service.name} now selects {service.name}-{args.switch}"
            out = json.dumps(moved) if args.json else out
    except (RegistryError, ConfigError, audit.AuditError) as exc:
        print(f"kfmlops models: {exc}", file=sys.stderr)
        return 1
    except MlflowException as exc:
        print(f"kfmlops models: the registry at {uri} answered: {answer(exc)}", file=sys.stderr)
        return 1
    print(out)
    return 0


def _card(client, args: argparse.Namespace, settings) -> str:
    """``card``: the card in the format asked (its fields as JSON with --json), attached when asked
    (where to goes to stderr, so stdout stays the card); with --output, written there instead."""
    from kfmlops import model_card

    card = model_card.collect(client, args.name, args.version, args.intended_use, keys=settings.provenance,
                              audit_config=settings.audit)
    if args.json:
        text = json.dumps(asdict(card), default=str)
    else:
        text = model_card.to_html(card) if args.format == "html" else model_card.to_markdown(card)
    if args.attach:
        print(f"kfmlops models: card attached: {model_card.attach(client, card)}", file=sys.stderr)
    if args.output:
        Path(args.output).write_text(text)
        return f"wrote {args.output}"
    return text.rstrip("\n")


def _switch(service, colour: str) -> dict:
    """Switch the blue-green Service to ``colour`` after the alias moved; a RegistryError that says so when it fails."""
    from kfmlops.serving.rollout import switch_colour

    try:
        return switch_colour(service, colour)["spec"]["selector"]
    except Exception as exc:
        raise RegistryError(f"champion moved, but Service {service.namespace}/{service.name} was not switched to "
                            f"{colour}: {type(exc).__name__}: {str(exc)[:300]}") from None


def registry_uri(mlflow_config: MlflowConfig, tracking_uri: str | None) -> str:
    """--tracking-uri, else --config's mlflow section, else $MLFLOW_TRACKING_URI, else $KFMLOPS_HOME's
    store; a RegistryError for a sqlite file that does not exist (MLflow would create an empty one)."""
    from kfmlops.tracking import configured_tracking_uri

    uri = tracking_uri or configured_tracking_uri(mlflow_config)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise RegistryError(
            f"no MLflow store at {uri}: pass --tracking-uri or --config (its mlflow.tracking_uri), or set MLFLOW_TRACKING_URI"
        )
    return uri


def registered_aliases(client, name: str) -> dict[str, str]:
    """Alias -> version (as str) of registered model ``name``; a RegistryError naming the models when there is none."""
    return {alias: str(v) for alias, v in _registered_model(client, name).aliases.items()}


def _registered_model(client, name: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
    names = sorted(m.name for m in client.search_registered_models(max_results=100))
    raise RegistryError(f"no registered model {name!r} (models: {', '.join(names) or 'none'})") from None


def _model_version(client, name: str, version: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, str(version))
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
    known = sorted((str(v.version) for v in client.search_model_versions(f"name='{name}'")), key=int)
    raise RegistryError(f"model {name!r} has no version {version!r} (versions: {', '.join(known) or 'none'})") from None


def _summary(client, model) -> ModelSummary:
    model_aliases = {alias: str(v) for alias, v in model.aliases.items()}
    versions = client.search_model_versions(f"name='{model.name}'")
    views = [view(v, model_aliases) for v in sorted(versions, key=lambda v: int(v.version), reverse=True)]
    return ModelSummary(model.name, model_aliases, views)


def _json_list(value: str | None) -> list[str]:
    if not value:
        return []
    try:
        parsed = json.loads(value)
    except ValueError:  # cut at MLflow's tag limit
        return [value]
    return [str(p) for p in parsed] if isinstance(parsed, list) else [str(parsed)]


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="seconds")


def _gates_word(v: VersionView) -> str:
    return {True: "passed", False: "failed", None: "unknown"}[v.all_gates_passed]


def _model_json(m: ModelSummary) -> dict:
    rows = [{"version": v.version, "aliases": v.aliases, "task": v.task, "primary_metric": v.primary_metric,
             "primary_value": v.primary_value, "all_gates_passed": v.all_gates_passed,
             "deploy_status": v.deploy_status, "created": v.created} for v in m.versions]
    return {"name": m.name, "aliases": m.aliases, "versions": rows}


def _list_text(models: list[ModelSummary], uri: str) -> str:
    if not models:
        return f"no registered models in {uri}"
    lines = []
    for m in models:
        lines.append(f"{m.name}: " + (", ".join(f"{a} v{v}" for a, v in sorted(m.aliases.items())) or "no aliases"))
        lines.append(f"  {'version':<8} {'aliases':<22} {'task':<11} {'primary metric':<22} {'gates':<8} {'deploy':<12} created")
        for v in m.versions:
            lines.append(f"  {v.version:<8} {','.join(v.aliases) or '-':<22} {v.task or '-':<11} {_primary(v):<22} "
                         f"{_gates_word(v):<8} {v.deploy_status or '-':<12} {v.created}")
    return "\n".join(lines)


def _show_text(v: VersionView) -> str:
    lines = [f"{v.name} version {v.version}" + (f" ({', '.join(v.aliases)})" if v.aliases else "") + f", created {v.created}, run {v.run_id}"]
    lines.append(f"task: {_task_words(v)}" + (f", trainer {v.trainer}" if v.trainer else ""))
    lines.append(f"primary metric: {_primary(v)}")
    lines.append(f"gates: {_gates_word(v)}")
    lines += [f"  {name}: {'passed' if g.passed else 'failed'}" + (f" ({'; '.join(g.reasons)})" if g.reasons else "")
              for name, g in v.gates.items()]
    lines.append("metrics: " + (", ".join(f"{k} {x:.6g}" for k, x in v.metrics.items()) or "none recorded"))
    lines.append(f"deploy: {v.deploy_status or 'not deployed'}" + (f" ({'; '.join(v.deploy_reasons)})" if v.deploy_reasons else ""))
    lines.append(f"previous champion: {v.previous_champion or 'none'}")
    lines += ["lineage:"] + [f"  {k}: {x}" for k, x in v.lineage.items()]
    return "\n".join(lines)


def _primary(v: VersionView) -> str:
    if not v.primary_metric:
        return "-"
    return f"{v.primary_metric} {v.primary_value:.4g}" if v.primary_value is not None else f"{v.primary_metric} -"


def _task_words(v: VersionView) -> str:
    if v.task is None:
        return "not recorded"
    classes = f", classes {', '.join(v.classes)}" if v.classes else ""
    return f"{v.task} (label {v.label}{classes})"


def _compare_json(a: VersionView, b: VersionView, rows: list[MetricRow]) -> dict:
    return {
        "name": a.name,
        "versions": [a.version, b.version],
        "tasks": [a.task, b.task],
        "primary_metric": [a.primary_metric, b.primary_metric],
        "all_gates_passed": [a.all_gates_passed, b.all_gates_passed],
        "metrics": [{"metric": r.metric, a.version: r.a, b.version: r.b, "delta": r.delta} for r in rows],
    }


def _compare_text(a: VersionView, b: VersionView, rows: list[MetricRow]) -> str:
    def num(x: float | None, sign: str = "") -> str:
        return "-" if x is None else f"{x:{sign}.4f}"

    primary = {a.primary_metric, b.primary_metric} - {None}
    rows = sorted(rows, key=lambda r: r.metric not in primary)  # the primary metric first, marked *
    width = max([len("metric"), *(len(r.metric) + 2 for r in rows)])
    lines = [f"{a.name}: version {a.version} vs {b.version} ({_task_words(a)} / {_task_words(b)}; "
             f"gates {_gates_word(a)} / {_gates_word(b)})"]
    lines.append(f"  {'metric':<{width}}  {'v' + a.version:>10}  {'v' + b.version:>10}  {'delta':>10}")
    lines += [f"  {r.metric + (' *' if r.metric in primary else ''):<{width}}  {num(r.a):>10}  {num(r.b):>10}  "
              f"{num(r.delta, '+'):>10}" for r in rows]
    return "\n".join(lines) if rows else lines[0] + "\n  no metrics recorded on either version"


def _rollback_text(m: Rollback) -> str:
    forced = ", forced past failed gates" if m.forced else ""
    return (
        f"{m.name}: champion moved from version {m.from_version or 'none'} to {m.to_version} by {m.by} at {m.at}{forced} "
        f"(reason: {m.reason}); predictors on models:/{m.name}@champion take it when they restart, "
        "a KServe InferenceService when the deploy step runs again"
    )
