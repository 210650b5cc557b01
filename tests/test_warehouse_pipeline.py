"""The whole training pipeline on Adult loaded into a real PostgreSQL server (tests/postgres_server.py):
the same model gates as from the files, the password nowhere in what the run records, and the
data kept as snapshots identical to the file-ingested splits."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from conftest import ADULT, ADULT_INGEST, ROOT
from kfmlops.config import PipelineConfig
from kfmlops.dataset_diff import main as data_main
from kfmlops.digest import ArrowDigest
from kfmlops.ingest import read_batches
from kfmlops.local_run import run_pipeline
from kfmlops.tracking import tracking_uri
from postgres_server import PASSWORD

pytestmark = pytest.mark.slow


def _digest(path: str) -> str:
    digest = ArrowDigest()
    for batch in pq.ParquetFile(path).iter_batches():
        digest.update(batch)
    return digest.hexdigest()


def test_the_pipeline_trains_on_adult_in_postgresql_and_keeps_exactly_its_data(postgres, adult, tmp_path, monkeypatch,
                                                                               capsys):
    monkeypatch.setenv("KFMLOPS_HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("PGPASSWORD", PASSWORD)  # each step's process inherits it, as a pod gets a Secret as env
    for table, path in (("adult_train", ADULT / "adult.data.gz"), ("adult_test", ADULT / "adult.test.gz")):
        raw = pa.Table.from_batches(list(read_batches(str(path), ADULT_INGEST)))  # the file's raw columns and rows
        postgres.load(table, raw.add_column(0, "row_id", pa.array(np.arange(raw.num_rows))))
    demo = PipelineConfig.from_yaml(ROOT / "pipelines" / "configs" / "adult.yaml")
    source, test_source = (postgres.uri(f"table={t}&order_by=row_id") for t in ("adult_train", "adult_test"))
    settings = demo.settings.model_dump(mode="json", by_alias=True)
    settings["ingest"] |= {"drop_columns": ["row_id"], "block_rows": 4096}
    config = PipelineConfig.model_validate({"data": {**demo.data.model_dump(), "source": source,
                                                     "test_source": test_source}, "settings": settings})

    run = run_pipeline(config.pipeline_arguments(), verbose=False)
    uri = tracking_uri(config.settings.mlflow)
    client = MlflowClient(uri, uri)
    version = client.get_model_version(config.settings.mlflow.model_name, run.version)
    tags = version.tags
    assert tags["kfmlops.all_gates_passed"] == "true" and float(tags["kfmlops.metric.roc_auc"]) >= 0.92
    assert tags["kfmlops.train_data"] == source and len(tags["kfmlops.dataset_fingerprint"]) == 64

    # the splits from the database are the splits from the files, to the row
    for split, path in (("train", adult.train_path), ("test", adult.test_path)):
        assert tags[f"kfmlops.snapshot.{split}"].split("/")[-2] == _digest(path)
    mlflow_run = client.get_run(version.run_id)
    contexts = {next(t.value for t in i.tags if t.key == "mlflow.data.context") for i in mlflow_run.inputs.dataset_inputs}
    assert contexts == {"training", "testing"}
    assert mlflow_run.data.params["source"] == source

    recorded = [*tags.values(), *mlflow_run.data.params.values(), *mlflow_run.data.tags.values(),
                *(p.read_text(errors="replace") for p in run.logs.glob("*.log"))]
    assert not any(PASSWORD in text for text in recorded)

    assert data_main(["--tracking-uri", uri, "--model", config.settings.mlflow.model_name, "show", run.version]) == 0
    assert f"train: {adult.train_rows} rows" in capsys.readouterr().out
