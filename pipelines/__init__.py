"""Pipelines composed from :mod:`kfmlops.components`; the compiled YAML lies beside each module."""

from kfmlops.pipelines.training import bring_your_own_model, training

__all__ = ["training", "bring_your_own_model"]
