"""Dataset versions on a real MLflow sqlite store: content-addressed snapshots written once, logged as
the run's dataset inputs, recorded on versions, pruned without touching a referenced one, shown and
diffed by `kfmlops data`, and retrained on exactly (`--from-version`)."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from kfmlops import snapshots
from kfmlops.config import DataSpec, IngestConfig, PipelineConfig, Settings, SnapshotConfig
from kfmlops.dataset_diff import main as data_main
from kfmlops.digest import ArrowDigest
from kfmlops.ingest import ingest
from kfmlops.register import Lineage
from kfmlops.tasks import Task
from kfmlops.tracking import start_run, tracking_uri

TASK = Task(kind="binary", label="outcome", classes=("no", "yes"), reason="test")


def _csv(path, rows: int = 2000, seed: int = 0, shift: int = 0, extra: bool = False):
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"Age": rng.integers(18, 80, rows) + shift, "city": rng.choice(["a", "b", "c"], rows),
                          "outcome": rng.choice(["yes", "no"], rows, p=[0.3, 0.7])})
    if extra:
        frame["score"] = rng.normal(size=rows)
    frame.to_csv(path, index=False)
    return path


def _ingested(tmp_path, name: str, **frame) -> dict[str, str]:
    csv = _csv(tmp_path / f"{name}.csv", **frame)
    result = ingest(DataSpec(source=str(csv), label="outcome", positive_labels=["yes"]), IngestConfig(),
                    tmp_path / f"{name}-train.parquet", tmp_path / f"{name}-test.parquet")
    return {"train": result.train_path, "test": result.test_path}


def _register(store, kept: dict, alias: str | None = None) -> str:
    """A registered version whose tags point at ``kept`` (as register writes them), with no model behind it."""
    client = MlflowClient(tracking_uri(store), tracking_uri(store))
    if not client.search_registered_models(filter_string=f"name='{store.model_name}'"):
        client.create_registered_model(store.model_name)
    tags = Lineage("f" * 64, "c" * 64, "train.csv", snapshots={s: k.uri for s, k in kept.items()}).tags()
    version = client.create_model_version(store.model_name, source="file:///nowhere", tags=tags).version
    if alias:
        client.set_registered_model_alias(store.model_name, alias, version)
    return str(version)


def test_the_same_data_gets_the_same_address_and_is_written_once(tmp_path):
    splits = _ingested(tmp_path, "one")
    config = SnapshotConfig(directory=str(tmp_path / "snapshots"))
    first = snapshots.keep(splits, TASK, config)
    assert all(s.written for s in first.values())
    train = first["train"]
    assert train.uri == f"{tmp_path}/snapshots/{train.digest}/train.parquet" and train.rows == pq.read_metadata(splits["train"]).num_rows
    assert snapshots.recorded_task(train.uri) == TASK
    assert pq.read_table(train.uri).equals(pq.read_table(splits["train"]).replace_schema_metadata(
        pq.read_schema(train.uri).metadata))
    before = os.stat(train.uri).st_mtime_ns

    relaid = tmp_path / "relaid.parquet"  # the same rows in other row groups and encoding
    pq.write_table(pq.read_table(splits["train"]), relaid, row_group_size=100, compression="snappy")
    again = snapshots.keep({"train": str(relaid)}, TASK, config)["train"]
    assert (again.digest, again.uri, again.written) == (train.digest, train.uri, False)
    assert os.stat(train.uri).st_mtime_ns == before
    assert sorted(os.listdir(tmp_path / "snapshots")) == sorted({s.digest for s in first.values()})  # no temporary left

    digest = ArrowDigest()
    digest.update(pq.read_table(splits["train"]).to_batches()[0].slice(0, 10))
    assert digest.hexdigest() != train.digest


def test_snapshots_are_the_runs_dataset_inputs_and_the_versions_tags(tmp_path, mlflow_store):
    kept = snapshots.keep(_ingested(tmp_path, "one"), TASK, SnapshotConfig(directory=str(tmp_path / "s")))
    run_id = start_run(mlflow_store, run_name="train-test", tags={})
    snapshots.log_inputs(mlflow_store, run_id, kept, "adult")
    inputs = MlflowClient(tracking_uri(mlflow_store)).get_run(run_id).inputs.dataset_inputs
    by_context = {next(t.value for t in i.tags if t.key == "mlflow.data.context"): i.dataset for i in inputs}
    assert set(by_context) == {"training", "testing"}
    for split, context in (("train", "training"), ("test", "testing")):
        dataset = by_context[context]
        assert dataset.digest == kept[split].digest[:36] and dataset.name == f"adult-{split}"
        assert json.loads(dataset.source) == {"uri": kept[split].uri}
        assert [c["name"] for c in json.loads(dataset.schema)["mlflow_colspec"]] == ["age", "city", "outcome"]
    run_tags = snapshots.tags(kept)  # ingest tags the run; register copies them onto the version
    assert run_tags == {"kfmlops.snapshot.train": kept["train"].uri, "kfmlops.snapshot.test": kept["test"].uri}
    assert Lineage("f", "c", "s", snapshots={s: k.uri for s, k in kept.items()}).tags().items() >= run_tags.items()


def test_retention_keeps_the_newest_and_never_a_referenced_snapshot(tmp_path, mlflow_store):
    config = SnapshotConfig(directory=str(tmp_path / "s"), keep_last=1)
    referenced = snapshots.keep(_ingested(tmp_path, "old", seed=1), TASK, config)
    _register(mlflow_store, referenced)
    unaliased = snapshots.keep(_ingested(tmp_path, "unaliased", seed=2), TASK, config)
    _register(mlflow_store, unaliased)
    stale = snapshots.keep(_ingested(tmp_path, "stale", seed=3), TASK, config)
    newest = snapshots.keep(_ingested(tmp_path, "newest", seed=4), TASK, config)
    os.utime(newest["train"].uri, (2e9, 2e9))  # newest by far, whatever the clock's resolution

    client = MlflowClient(tracking_uri(mlflow_store), tracking_uri(mlflow_store))
    removed = snapshots.prune(config, client)
    assert set(removed) == {stale["train"].digest, stale["test"].digest, newest["test"].digest}
    left = set(os.listdir(tmp_path / "s"))
    assert left == {k.digest for k in (*referenced.values(), *unaliased.values())} | {newest["train"].digest}
    assert snapshots.prune(SnapshotConfig(directory=str(tmp_path / "s")), client) == []  # keep_last unset: keep all

    client.set_registered_model_alias(mlflow_store.model_name, "champion", "1")  # only aliased versions protect theirs
    removed = snapshots.prune(config.model_copy(update={"keep_registered": False, "keep_last": 0}), client)
    assert set(os.listdir(tmp_path / "s")) == {k.digest for k in referenced.values()}
    assert set(removed) == {k.digest for k in unaliased.values()} | {newest["train"].digest}


def test_data_show_and_diff_between_two_versions_trained_on_different_data(tmp_path, mlflow_store, capsys):
    config = SnapshotConfig(directory=str(tmp_path / "s"))
    one = _register(mlflow_store, snapshots.keep(_ingested(tmp_path, "one"), TASK, config))
    shifted = _register(mlflow_store, snapshots.keep(_ingested(tmp_path, "two", rows=1500, shift=25, extra=True),
                                                     TASK, config))
    uri = tracking_uri(mlflow_store)
    base = ["--tracking-uri", uri, "--model", mlflow_store.model_name]

    assert data_main([*base, "show", one]) == 0
    text = capsys.readouterr().out
    assert f"{mlflow_store.model_name} version {one}: binary task, label outcome" in text
    assert "train: 1600 rows, digest " in text and "test: 400 rows" in text
    assert "columns (3): age int64, city string, outcome string" in text and "label: no " in text
    assert data_main([*base, "--json", "show", one]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["splits"]["train"]["rows"] == 1600 and len(shown["splits"]["train"]["digest"]) == 64
    assert abs(sum(shown["splits"]["train"]["label_distribution"].values()) - 1) < 1e-9

    assert data_main([*base, "diff", one, shifted]) == 0
    text = capsys.readouterr().out
    assert "rows: 1600 -> 1200 (-400)" in text and "column added: score double" in text
    assert data_main([*base, "--json", "diff", one, shifted]) == 0
    change = json.loads(capsys.readouterr().out)
    columns = {c["column"]: c for c in change["columns"]}
    assert set(columns) == {"age", "city"} and change["added"] == {"score": "double"} and change["removed"] == {}
    assert columns["age"]["psi"] > 1 and columns["city"]["psi"] < 0.1  # the shifted column stands out
    assert columns["age"]["b"]["mean"] - columns["age"]["a"]["mean"] == pytest.approx(25, abs=2)
    assert set(columns["city"]["a"]) == {"a", "b", "c"} and change["label_psi"] < 0.1

    assert data_main([*base, "show", "9"]) == 1
    assert capsys.readouterr().err.strip().startswith(f"kfmlops data: model '{mlflow_store.model_name}' has no version '9'")
    client = MlflowClient(uri, uri)
    bare = client.create_model_version(mlflow_store.model_name, source="file:///nowhere").version
    assert data_main([*base, "diff", one, str(bare)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.endswith("records no dataset snapshots (tags kfmlops.snapshot.train/test): it was registered before "
                        "kfmlops kept them") and "\n" not in err


def test_retraining_from_a_version_reads_exactly_its_data(tmp_path, mlflow_store):
    csv = _csv(tmp_path / "data.csv")
    spec = DataSpec(source=str(csv), label="outcome", positive_labels=["yes"])
    settings = Settings(mlflow=mlflow_store, snapshots=SnapshotConfig(directory=str(tmp_path / "s")))
    config = PipelineConfig(data=spec, settings=settings)
    first = ingest(spec, settings.ingest, tmp_path / "train.parquet", tmp_path / "test.parquet")
    kept = snapshots.keep({"train": first.train_path, "test": first.test_path}, Task.from_json(first.task),
                          settings.snapshots)
    version = _register(mlflow_store, kept)
    csv.write_text("Age,city,outcome\n1,z,yes\n")  # the source changed since: the snapshots did not

    again = snapshots.retrain_config(config, version)
    assert (again.data.source, again.data.test_source) == (kept["train"].uri, kept["test"].uri)
    result = ingest(again.data, again.settings.ingest, tmp_path / "re-train.parquet", tmp_path / "re-test.parquet")
    rekept = snapshots.keep({"train": result.train_path, "test": result.test_path}, Task.from_json(result.task),
                            settings.snapshots)
    assert {s: k.digest for s, k in rekept.items()} == {s: k.digest for s, k in kept.items()}
    assert not any(k.written for k in rekept.values())
    assert Task.from_json(result.task).classes == Task.from_json(first.task).classes and result.task["kind"] == "binary"
