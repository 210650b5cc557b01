"""KFP components, one per lifecycle stage, in lifecycle order (``drift`` runs on a schedule).

Each is a thin ``@dsl.component`` on the kfmlops image around the stage function of the same name
in :mod:`kfmlops`; the compiled YAML beside each file (``ingest.yaml`` ...) loads with
``kfp.components.load_component_from_file`` for teams that do not use our Python.
"""

from kfmlops.components.ingest import ingest
from kfmlops.components.validate import validate
from kfmlops.components.tune import tune
from kfmlops.components.train import train
from kfmlops.components.train_job import train_job
from kfmlops.components.import_model import import_model
from kfmlops.components.predict import predict
from kfmlops.components.evaluate import evaluate
from kfmlops.components.fairness import fairness
from kfmlops.components.explain import explain
from kfmlops.components.register import register
from kfmlops.components.promote import promote
from kfmlops.components.deploy import deploy
from kfmlops.components.drift import drift

__all__ = ["ingest", "validate", "tune", "train", "train_job", "import_model", "predict", "evaluate", "fairness", "explain", "register", "promote", "deploy", "drift"]
