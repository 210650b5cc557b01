"""Import: a model trained outside kfmlops in, a Model artifact that meets the contract out.

Consumes an MLflow model (a directory, an artifact URI, or a ``models:/``/``runs:/`` URI), the
test split and the data's :class:`~kfmlops.tasks.Task`; produces a copy of the model directory
whose MLmodel metadata carries kfmlops's :class:`~kfmlops.model_contract.ModelInfo`. The model must
score the first :data:`CHECK_ROWS` test rows into the task's shape (class probabilities or values)
before anything downstream sees it, so a model of the wrong task, with other class names or other
input columns fails here, naming what differs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

from kfmlops import model_contract
from kfmlops.model_contract import ModelContractError, ModelInfo
from kfmlops.tasks import Task

CHECK_ROWS = 100


def import_model(model_uri: str, test_path: str | Path, task: Task, out: str | Path) -> ModelInfo:
    """Copy the model to ``out`` with kfmlops metadata and return that metadata."""
    local = Path(model_contract.local_dir(model_uri))
    if not model_contract.is_model_dir(local):
        raise ModelContractError(f"{model_uri} is not an MLflow model (no MLmodel file at {local})")
    shutil.copytree(local, out, dirs_exist_ok=True)
    loaded = model_contract.load(out, task)
    rows = pd.read_parquet(test_path).drop(columns=[task.label]).head(CHECK_ROWS)
    try:
        loaded.scores(rows)
    except ModelContractError:
        raise
    except Exception as exc:  # the model's own error: say which model and which columns it was given
        raise ModelContractError(
            f"{model_uri} could not score the test split's rows (columns {list(rows.columns)}): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    info = model_contract.read_info(out) or ModelInfo(task, loaded.features or list(rows.columns), "imported")
    model_contract.with_info(out, info)
    return info
