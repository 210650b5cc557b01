"""Serving and deployment: a fast KServe predictor, the InferenceService, and the deploy stage.

- :mod:`~kfmlops.serving.predictor`: the ``kserve.Model`` (model from MLflow or ``/mnt/models``),
  with request checks in :mod:`~kfmlops.serving.schema`, the compiled forward pass in
  :mod:`~kfmlops.serving.scorer`, micro-batching in :mod:`~kfmlops.serving.batching` and
  Prometheus metrics in :mod:`~kfmlops.serving.metrics`, online features from a Feast feature
  store in :mod:`~kfmlops.serving.online_features`;
- :mod:`~kfmlops.serving.server`: ``kfmlops serve`` (KServe's ``ModelServer``);
- :mod:`~kfmlops.serving.inferenceservice`: the ``serving.kserve.io/v1beta1`` manifest;
- :mod:`~kfmlops.serving.deploy`: validate before push, canary, promote or roll back, over the
  targets in :mod:`~kfmlops.serving.rollout`, probing with :mod:`~kfmlops.serving.probe` a
  predictor started by :mod:`~kfmlops.serving.process`.

Settings: :mod:`~kfmlops.serving.config`.
"""
