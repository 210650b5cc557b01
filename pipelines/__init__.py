"""Pipelines composed from :mod:`kfmlops.components`; the compiled YAML lies beside each module."""

from kfmlops.pipelines.training import training

__all__ = ["training"]
