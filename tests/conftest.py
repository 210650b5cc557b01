"""Shared fixtures: the Adult data as the demo ingests it, and an isolated MLflow store."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

os.environ.pop("KFMLOPS_IMAGE", None)  # the committed YAML names the default image

from kfmlops.config import DataSpec, IngestConfig, MlflowConfig
from kfmlops.ingest import IngestResult, ingest
from postgres_server import postgres  # noqa: F401 (the session's PostgreSQL server, for the warehouse tests)

ROOT = Path(__file__).resolve().parents[1]
ADULT = ROOT / "data" / "adult"
ADULT_SPEC = DataSpec(
    source=str(ADULT / "adult.data.gz"),
    test_source=str(ADULT / "adult.test.gz"),
    label="Y",
    positive_labels=[">50K", ">50K."],
    sensitive_features=["sex", "race"],
)
ADULT_INGEST = IngestConfig(format="csv", na_values=["?"])

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


@pytest.fixture(scope="session")
def adult(tmp_path_factory) -> IngestResult:
    """Adult ingested once per session: train/test Parquet with normalised columns, label ``y``."""
    out = tmp_path_factory.mktemp("adult")
    return ingest(ADULT_SPEC, ADULT_INGEST, out / "train.parquet", out / "test.parquet")


@pytest.fixture(scope="session")
def adult_train(adult) -> pd.DataFrame:
    return pd.read_parquet(adult.train_path)


@pytest.fixture(scope="session")
def adult_test(adult) -> pd.DataFrame:
    return pd.read_parquet(adult.test_path)


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch) -> MlflowConfig:
    """A fresh sqlite MLflow store under tmp_path; KFMLOPS_HOME points there too."""
    monkeypatch.setenv("KFMLOPS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return MlflowConfig(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="tests", model_name="adult")
