"""Model-from-code entry point that MLflow copies beside each registered kfmlops model."""

from mlflow.models import set_model

from kfmlops.pyfunc import BundlePyfunc

set_model(BundlePyfunc())
