"""A real registered model for the serving and deploy tests: Adult ingested, trained, registered twice.

``served_store`` (session) holds two versions of the registered model ``adult`` built from one
bundle: version 1 is the ``champion``, version 2 the ``challenger``. Tests that move the aliases
put ``champion`` back on version 1 (``reset_champion``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from kfmlops.config import MlflowConfig, TrainConfig
from kfmlops.provenance import generate_keypair
from kfmlops.register import CHAMPION, GateVerdict, Lineage, promote, register
from kfmlops.tracking import start_run
from kfmlops.train import train


@dataclass(frozen=True)
class ServedStore:
    mlflow: MlflowConfig
    model_dir: Path
    test_path: str
    features: pd.DataFrame  # the test split without the label
    champion: str
    challenger: str
    verify_key: bytes  # the public key the versions were signed for


_STORE: list[ServedStore] = []  # one store per session, however many modules import the fixture


@pytest.fixture(scope="session")
def served_store(tmp_path_factory, adult) -> ServedStore:
    if _STORE:
        return _STORE[0]
    root = tmp_path_factory.mktemp("served")
    model_dir = root / "bundle"
    train(adult.train_path, "y", TrainConfig(epochs=2), model_dir)
    config = MlflowConfig(tracking_uri=f"sqlite:///{root / 'mlflow.db'}", experiment="serving", model_name="adult")
    features = pd.read_parquet(adult.test_path).drop(columns=["y"])
    lineage = Lineage("fp", "hash", "data", gates={"evaluate": GateVerdict(True, ["roc_auc >= 0.85"])})
    private, public = generate_keypair()
    first = register(model_dir, start_run(config, "v1", {}), config, lineage, features, signing_key=private)
    promote(config, first.version)
    second = register(model_dir, start_run(config, "v2", {}), config, lineage, features, signing_key=private)
    _STORE.append(ServedStore(config, model_dir, adult.test_path, features, first.version, second.version, public))
    return _STORE[0]


def reset_champion(store: ServedStore) -> None:
    from mlflow.tracking import MlflowClient

    MlflowClient(store.mlflow.tracking_uri).set_registered_model_alias("adult", CHAMPION, store.champion)
