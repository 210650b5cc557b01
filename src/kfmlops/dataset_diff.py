"""``kfmlops data``: the data a registered version was trained on, how two versions' data differ, pruning.

Reads the snapshots a version's ``kfmlops.snapshot.train`` / ``.test`` tags point at
(:mod:`kfmlops.snapshots`), one column at a time. ``show VERSION`` gives each split's URI, digest,
rows, the columns with their types and the label's distribution. ``diff VERSION_A VERSION_B`` gives,
for one split (default ``train``), the rows, the schema changes (added, removed and retyped
columns), the label's distribution change, and per column present in both: numeric columns their
mean, standard deviation, 10/50/90% quantiles and null share; categorical ones (strings, booleans)
their most frequent values' shares and null share; each with the population stability index (PSI)
of B against A (numeric: A's deciles as bins; categorical: every value; nulls a bin of their own;
around 0.1 is a small change, above 0.25 a large one). ``prune`` applies ``snapshots.keep_last``.
``--json`` prints the same for scripts; an unknown version or one without snapshots is one line on
stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from kfmlops.ingest import open_filesystem
from kfmlops.snapshots import SPLITS, read_schema, recorded_task, version_snapshots
from kfmlops.tasks import Task

TOP_VALUES = 5
_PSI_FLOOR = 1e-4  # a share of 0 counts as this, so the PSI stays finite


@dataclass(frozen=True)
class SplitProfile:
    """One split's snapshot: where, its digest, rows, columns (name -> Arrow type) and the label's
    distribution (classification: class -> share; regression: the label's :func:`numeric_summary`)."""

    split: str
    uri: str
    digest: str
    rows: int
    columns: dict[str, str]
    label_distribution: dict[str, float | None]


@dataclass(frozen=True)
class DataView:
    name: str
    version: str
    task: str
    label: str
    splits: dict[str, SplitProfile]


@dataclass(frozen=True)
class ColumnChange:
    """One column in both versions: its kind (numeric or categorical), each side's summary and the PSI of B against A."""

    column: str
    kind: str
    a: dict[str, float | None]
    b: dict[str, float | None]
    psi: float


@dataclass(frozen=True)
class DataDiff:
    name: str
    versions: tuple[str, str]
    split: str
    uris: tuple[str, str]
    rows: tuple[int, int]
    added: dict[str, str]
    removed: dict[str, str]
    retyped: dict[str, tuple[str, str]]
    task: str
    label: str
    label_distribution: tuple[dict[str, float | None], dict[str, float | None]]
    label_psi: float
    columns: list[ColumnChange]


def show(client, name: str, version: str) -> DataView:
    """The snapshots of ``version`` of model ``name``, profiled (see the module docstring)."""
    uris = version_snapshots(client, name, version)
    task = recorded_task(uris["train"])
    return DataView(name, str(version), task.kind, task.label, {s: _profile(s, uris[s], task) for s in SPLITS})


def diff(client, name: str, a: str, b: str, split: str = "train") -> DataDiff:
    """How ``split`` of version ``b``'s data differs from version ``a``'s (see the module docstring)."""
    uri_a, uri_b = version_snapshots(client, name, a)[split], version_snapshots(client, name, b)[split]
    task_a, task_b = recorded_task(uri_a), recorded_task(uri_b)
    schema_a, schema_b = _types(uri_a), _types(uri_b)
    label_a, label_b = _column(uri_a, task_a.label), _column(uri_b, task_b.label)
    label_kind = "categorical" if task_a.is_classification else "numeric"
    columns = [_change(c, _column(uri_a, c), _column(uri_b, c)) for c in schema_a
               if c in schema_b and c not in (task_a.label, task_b.label)]
    return DataDiff(
        name=name, versions=(str(a), str(b)), split=split, uris=(uri_a, uri_b),
        rows=(_rows(uri_a), _rows(uri_b)),
        added={c: t for c, t in schema_b.items() if c not in schema_a},
        removed={c: t for c, t in schema_a.items() if c not in schema_b},
        retyped={c: (t, schema_b[c]) for c, t in schema_a.items() if c in schema_b and schema_b[c] != t},
        task=task_a.kind,
        label=task_a.label,
        label_distribution=(_label_distribution(label_a, task_a), _label_distribution(label_b, task_b)),
        label_psi=psi(label_a, label_b, label_kind),
        columns=[c for c in columns if c is not None],
    )


def numeric_summary(values: pa.ChunkedArray) -> dict[str, float | None]:
    """Mean, standard deviation, 10/50/90% quantiles (of the non-null values) and the null share."""
    present = pc.drop_null(values).cast(pa.float64())
    summary = {"null_share": values.null_count / len(values) if len(values) else None}
    if len(present) == 0:
        return {"mean": None, "std": None, "p10": None, "p50": None, "p90": None, **summary}
    p10, p50, p90 = pc.quantile(present, q=[0.1, 0.5, 0.9]).to_pylist()
    return {"mean": pc.mean(present).as_py(), "std": pc.stddev(present).as_py(), "p10": p10, "p50": p50, "p90": p90,
            **summary}


def value_shares(values: pa.ChunkedArray) -> dict[str, float]:
    """Each value's share of the rows (as text), nulls under ``null``, most frequent first."""
    if len(values) == 0:
        return {}
    counts = {("null" if v["values"] is None else str(v["values"])): v["counts"]
              for v in pc.value_counts(values).to_pylist()}
    return {k: n / len(values) for k, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))}


def psi(a: pa.ChunkedArray, b: pa.ChunkedArray, kind: str) -> float:
    """The population stability index of ``b`` against ``a``: sum over bins of (b - a) * ln(b / a) of the
    bins' shares (numeric: A's deciles, categorical: every value; nulls a bin of their own)."""
    if kind == "numeric":
        shares_a, shares_b = _binned(a, a), _binned(b, a)
    else:
        va, vb = value_shares(a), value_shares(b)
        keys = sorted(va.keys() | vb.keys())
        shares_a, shares_b = np.array([va.get(k, 0.0) for k in keys]), np.array([vb.get(k, 0.0) for k in keys])
    shares_a, shares_b = np.maximum(shares_a, _PSI_FLOOR), np.maximum(shares_b, _PSI_FLOOR)
    return float(np.sum((shares_b - shares_a) * np.log(shares_b / shares_a)))


def _binned(values: pa.ChunkedArray, reference: pa.ChunkedArray) -> np.ndarray:
    """Shares of ``values`` in the decile bins of ``reference``, then the null share."""
    reference = pc.drop_null(reference).cast(pa.float64())
    edges = np.unique(np.asarray(pc.quantile(reference, q=[i / 10 for i in range(1, 10)]))) if len(reference) else []
    present = pc.drop_null(values).cast(pa.float64()).to_numpy()
    counts = np.bincount(np.searchsorted(edges, present, side="right"), minlength=len(edges) + 1)
    total = max(len(values), 1)
    return np.append(counts / total, values.null_count / total)


def _profile(split: str, uri: str, task: Task) -> SplitProfile:
    label = _column(uri, task.label)
    return SplitProfile(split, uri, uri.rstrip("/").split("/")[-2], _rows(uri), _types(uri), _label_distribution(label, task))


def _label_distribution(label: pa.ChunkedArray, task: Task) -> dict[str, float | None]:
    return value_shares(label) if task.is_classification else numeric_summary(label)


def _change(column: str, a: pa.ChunkedArray, b: pa.ChunkedArray) -> ColumnChange | None:
    """The change of a column in both versions; None when it is neither numeric nor categorical, or changed kind."""
    kind = _kind(a.type)
    if kind is None or kind != _kind(b.type):
        return None
    if kind == "numeric":
        return ColumnChange(column, kind, numeric_summary(a), numeric_summary(b), psi(a, b, kind))
    va, vb = value_shares(a), value_shares(b)
    top = sorted(va.keys() | vb.keys(), key=lambda k: -max(va.get(k, 0.0), vb.get(k, 0.0)))[:TOP_VALUES]
    return ColumnChange(column, kind, {k: va.get(k, 0.0) for k in top}, {k: vb.get(k, 0.0) for k in top}, psi(a, b, kind))


def _kind(arrow_type: pa.DataType) -> str | None:
    if pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type):
        return "numeric"
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type) or pa.types.is_boolean(arrow_type):
        return "categorical"
    return None


def _types(uri: str) -> dict[str, str]:
    return {f.name: str(f.type) for f in read_schema(uri)}


def _rows(uri: str) -> int:
    fs, path = open_filesystem(uri)
    with fs.open_input_file(path) as handle:
        return pq.ParquetFile(handle).metadata.num_rows


def _column(uri: str, name: str) -> pa.ChunkedArray:
    fs, path = open_filesystem(uri)
    with fs.open_input_file(path) as handle:
        return pq.ParquetFile(handle).read(columns=[name]).column(0)


def main(argv: list[str] | None = None) -> int:
    """``kfmlops data show|diff|prune``: 0 on success, 1 with a one-line reason otherwise."""
    parser = argparse.ArgumentParser(prog="kfmlops data", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="pipeline config YAML: its mlflow section names the registry and the model, "
                                         "its snapshots section the snapshot store")
    parser.add_argument("--tracking-uri", help="the registry (default: --config's, else $MLFLOW_TRACKING_URI, else "
                                               "$KFMLOPS_HOME's store)")
    parser.add_argument("--model", help="the registered model (default: --config's mlflow.model_name)")
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    sub = parser.add_subparsers(dest="action", required=True)
    show_ = sub.add_parser("show", help="a version's train and test snapshots: URIs, digests, rows, columns, label")
    show_.add_argument("version")
    diff_ = sub.add_parser("diff", help="how version B's data differs from version A's")
    diff_.add_argument("version_a")
    diff_.add_argument("version_b")
    diff_.add_argument("--split", choices=SPLITS, default="train")
    sub.add_parser("prune", help="delete snapshots beyond snapshots.keep_last that no protected version points at")
    args = parser.parse_args(argv)
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from kfmlops.tracking import answer

    from kfmlops.config import PipelineConfig, Settings
    from kfmlops.registry import RegistryError, registry_uri
    from kfmlops.snapshots import directory, prune
    from kfmlops.typed import ConfigError

    uri = args.tracking_uri
    try:
        settings = PipelineConfig.from_yaml(args.config).settings if args.config else Settings()
        uri = registry_uri(settings.mlflow, args.tracking_uri)
        client = MlflowClient(uri, uri)
        name = args.model or settings.mlflow.model_name
        if args.action == "show":
            view = show(client, name, args.version)
            out = json.dumps(asdict(view)) if args.json else _show_text(view)
        elif args.action == "diff":
            change = diff(client, name, args.version_a, args.version_b, args.split)
            out = json.dumps(asdict(change)) if args.json else _diff_text(change)
        else:
            removed = prune(settings.snapshots, client)
            out = json.dumps({"directory": directory(settings.snapshots), "removed": removed}) if args.json else (
                f"pruned {len(removed)} snapshot(s) from {directory(settings.snapshots)}"
                + "".join(f"\n  {d}" for d in removed))
    except (RegistryError, ConfigError, OSError) as exc:
        print(f"kfmlops data: {exc}", file=sys.stderr)
        return 1
    except MlflowException as exc:
        print(f"kfmlops data: the registry at {uri} answered: {answer(exc)}", file=sys.stderr)
        return 1
    print(out)
    return 0


def _num(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4g}"


def _distribution(d: dict[str, float | None], classification: bool) -> str:
    if classification:
        return ", ".join(f"{k} {v:.1%}" for k, v in d.items())
    return ", ".join(f"{k} {_num(v)}" for k, v in d.items())


def _show_text(v: DataView) -> str:
    lines = [f"{v.name} version {v.version}: {v.task} task, label {v.label}"]
    for p in v.splits.values():
        lines.append(f"{p.split}: {p.rows} rows, digest {p.digest}")
        lines.append(f"  snapshot {p.uri}")
        lines.append(f"  label: {_distribution(p.label_distribution, v.task != 'regression')}")
    train = v.splits["train"]
    lines.append(f"columns ({len(train.columns)}): " + ", ".join(f"{c} {t}" for c, t in train.columns.items()))
    return "\n".join(lines)


def _diff_text(d: DataDiff) -> str:
    a, b = d.versions
    (ra, rb) = d.rows
    lines = [f"{d.name}: {d.split} data of version {a} vs {b}", f"  {d.uris[0]}", f"  {d.uris[1]}",
             f"rows: {ra} -> {rb} ({rb - ra:+d})"]
    if not (d.added or d.removed or d.retyped):
        lines.append("schema: unchanged")
    lines += [f"column added: {c} {t}" for c, t in d.added.items()]
    lines += [f"column removed: {c} {t}" for c, t in d.removed.items()]
    lines += [f"column retyped: {c} {ta} -> {tb}" for c, (ta, tb) in d.retyped.items()]
    classification = d.task != "regression"
    lines.append(f"label {d.label} (PSI {d.label_psi:.3f}): {_distribution(d.label_distribution[0], classification)} -> "
                 f"{_distribution(d.label_distribution[1], classification)}")
    for c in sorted(d.columns, key=lambda c: -c.psi):
        if c.kind == "numeric":
            figures = "; ".join(f"{k} {_num(c.a[k])} -> {_num(c.b[k])}" for k in c.a)
        else:
            figures = "; ".join(f"{k} {c.a[k]:.1%} -> {c.b[k]:.1%}" for k in c.a)
        lines.append(f"  {c.column} ({c.kind}, PSI {c.psi:.3f}): {figures}")
    return "\n".join(lines)
