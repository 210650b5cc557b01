"""Monitoring: the inference log, the drift job and the retraining trigger.

- :mod:`~kfmlops.monitoring.store`: the inference log, Parquet partitioned by model and hour, with
  bounded-memory buffering and atomic, fsync'd file commits (:class:`InferenceLog`), ground-truth
  import and window reads joined with the labels.
- :mod:`~kfmlops.monitoring.payloads`: KServe V1/V2 request and response bodies to per-row inputs
  and outputs.
- :mod:`~kfmlops.monitoring.sink`: the CloudEvents receiver for KServe's inference logger
  (``kfmlops sink``), which acknowledges an event only once it is in its write-ahead log
  (:mod:`~kfmlops.monitoring.wal`, replayed at start).
- :mod:`~kfmlops.monitoring.window`: the current window in the reference's form for the served
  model's task: served outputs as predicted classes (or values) and probabilities, canonical labels.
- :mod:`~kfmlops.monitoring.lineage`: the served version, its task and its training data (the reference).
- :mod:`~kfmlops.monitoring.stats`: per-column drift with Evidently's stat tests (computed once per
  column on Arrow-derived arrays), data quality and performance figures per task.
- :mod:`~kfmlops.monitoring.drift`: the drift stage (``kfmlops drift``): window + reference in,
  HTML reports, JSON summary, Prometheus metrics and a policy decision out.
- :mod:`~kfmlops.monitoring.policy`: the retraining policy and the durable ledger of windows.
- :mod:`~kfmlops.monitoring.trigger`: fresh training data and pipeline submission (KFP or local).
"""
