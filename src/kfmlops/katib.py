"""The search of :mod:`kfmlops.tune` on a cluster: a Katib ``Experiment`` (``kubeflow.org/v1beta1``).

Consumes the :class:`~kfmlops.config.DataSpec` and the :class:`~kfmlops.config.Settings` (its
``tuning`` section: the space, the budget, the parallelism, the pruner, the seed) and the task kind;
produces the Experiment as a dict (``kfmlops tune --emit-katib FILE`` writes it as YAML; ``kubectl
apply -f`` submits it). Nothing is submitted here.

- **Objective**: the trainer's validation metric, ``val_roc_auc`` (maximize), ``val_log_loss`` or
  ``val_rmse`` (minimize), its ``latest`` value per trial (the kept model's score, printed last).
- **Algorithm**: Katib's ``tpe`` suggestion (hyperopt's TPE), seeded with ``tuning.seed``; with
  ``tuning.pruner``, Katib's ``medianstop`` early stopping (``pruner_startup_trials``,
  ``pruner_warmup_steps``, counted in printed values: one per 10 rounds of gbdt, the configured
  trainer) on the same per-step values the local pruner sees.
- **Trials**: a ``batch/v1`` Job per trial on our image running ``python -m kfmlops.tune trial``
  (:func:`kfmlops.tune.trial_main`): it ingests ``data.source`` (a URI the pod can read, or a path on
  the claim in ``storage``), fits on the train split only and prints ``val_<metric>=<value>`` lines,
  which Katib's ``StdOut`` metrics collector reads. The tuned settings arrive as ``--set
  PATH=${trialParameters.NAME}``; parameter names are the paths with ``.`` spelt ``-``.
- **Budget**: ``maxTrialCount`` = ``tuning.n_trials``, ``parallelTrialCount`` = ``tuning.parallelism``,
  ``maxFailedTrialCount`` a quarter of the trials (at least 1).

Unlike the local search, Katib has no way to make the configured settings trial 0: compare its best
trial with a run of the defaults before adopting it.

**Why the Kubeflow SDK's models and not its client.** ``kubeflow.optimizer``'s ``OptimizerClient.optimize``
builds and submits an Experiment in one call (no manifest to review or write to a file), runs trials only
as a TrainJob of a Python function it serialises into the trial (our trials are a command of our image),
offers only grid and random search (no TPE) and no integer parameters. The Experiment is therefore built
from the typed ``kubeflow_katib_api`` models that SDK uses (camelCase by alias, strict string and int
fields), and the trial Job inside it, which those models leave an untyped dict, by hand.
"""

from __future__ import annotations

import json
from typing import Any

from kfmlops import IMAGE
from kfmlops.config import Choice, DataSpec, FloatRange, Settings
from kfmlops.train.cluster import SharedStorage

API_VERSION = "kubeflow.org/v1beta1"
TRIAL_CONTAINER = "trial"
JOB_SUCCEEDED = 'status.conditions.#(type=="Complete")#|#(status=="True")#'
JOB_FAILED = 'status.conditions.#(type=="Failed")#|#(status=="True")#'
"""Katib's conditions for a batch/v1 Job trial (GJSON paths, as Katib's own examples write them)."""


def parameter_name(path: str) -> str:
    """The Katib parameter (and trial parameter) name of a dotted settings path."""
    return path.replace(".", "-")


def katib_experiment(
    data: DataSpec,
    settings: Settings,
    task_kind: str,
    *,
    name: str,
    namespace: str = "kubeflow",
    image: str = IMAGE,
    storage: SharedStorage | None = None,
    cpus: int = 2,
    memory: str = "4Gi",
) -> dict[str, Any]:
    """The Katib Experiment running ``settings.tuning``'s search (see the module docstring). Each
    trial pod gets ``cpus`` cores and ``memory`` and trains with ``cpus`` threads."""
    from kubeflow_katib_api import models as katib

    from kfmlops.train.common import METRIC
    from kfmlops.train.gbdt import LOG_EVERY
    from kfmlops.tune import direction

    tuning = settings.tuning
    if not tuning.n_trials or not tuning.space:
        raise ValueError("tuning.n_trials and tuning.space must both be set for a Katib Experiment")
    metric = f"val_{METRIC[task_kind]}"
    early_stopping = None
    per_report = LOG_EVERY if settings.train.trainer == "gbdt" else 1  # Katib counts reported values, not rounds
    if tuning.pruner:
        early_stopping = katib.V1beta1EarlyStoppingSpec(algorithm_name="medianstop", algorithm_settings=[
            katib.V1beta1EarlyStoppingSetting(name="min_trials_required", value=str(max(1, tuning.pruner_startup_trials))),
            katib.V1beta1EarlyStoppingSetting(name="start_step", value=str(max(1, tuning.pruner_warmup_steps // per_report))),
        ])
    experiment = katib.V1beta1Experiment(
        api_version=API_VERSION,
        kind="Experiment",
        metadata=katib.IoK8sApimachineryPkgApisMetaV1ObjectMeta(
            name=name, namespace=namespace, labels={"app.kubernetes.io/managed-by": "kfmlops", "kfmlops.io/component": "tune"}),
        spec=katib.V1beta1ExperimentSpec(
            objective=katib.V1beta1ObjectiveSpec(
                type=direction(task_kind), objective_metric_name=metric,
                metric_strategies=[katib.V1beta1MetricStrategy(name=metric, value="latest")]),
            algorithm=katib.V1beta1AlgorithmSpec(algorithm_name="tpe", algorithm_settings=[
                katib.V1beta1AlgorithmSetting(name="random_state", value=str(tuning.seed))]),
            early_stopping=early_stopping,
            max_trial_count=tuning.n_trials,
            parallel_trial_count=min(tuning.parallelism, tuning.n_trials),
            max_failed_trial_count=max(1, tuning.n_trials // 4),
            metrics_collector_spec=katib.V1beta1MetricsCollectorSpec(collector=katib.V1beta1CollectorSpec(kind="StdOut")),
            parameters=[_parameter(katib, path, p) for path, p in tuning.space.items()],
            trial_template=katib.V1beta1TrialTemplate(
                primary_container_name=TRIAL_CONTAINER,
                success_condition=JOB_SUCCEEDED,
                failure_condition=JOB_FAILED,
                trial_parameters=[katib.V1beta1TrialParameterSpec(name=parameter_name(path), reference=parameter_name(path),
                                                                  description=f"train.{path}")
                                  for path in tuning.space],
                trial_spec=trial_job(data, settings, image=image, storage=storage, cpus=cpus, memory=memory),
            ),
        ),
    )
    return experiment.to_dict()


def _parameter(katib, path: str, p) -> Any:
    if isinstance(p, Choice):
        from kfmlops.tune import _label

        values = [v if isinstance(v, str) else json.dumps(v) for v in map(_label, p.choices)]
        return katib.V1beta1ParameterSpec(name=parameter_name(path), parameter_type="categorical",
                                          feasible_space=katib.V1beta1FeasibleSpace(list=values))
    space = {"min": str(p.low), "max": str(p.high), "distribution": "logUniform" if p.log else "uniform"}
    if isinstance(p, FloatRange):
        return katib.V1beta1ParameterSpec(name=parameter_name(path), parameter_type="double",
                                          feasible_space=katib.V1beta1FeasibleSpace(**space))
    return katib.V1beta1ParameterSpec(name=parameter_name(path), parameter_type="int",
                                      feasible_space=katib.V1beta1FeasibleSpace(**space, step=str(p.step)))


def trial_job(data: DataSpec, settings: Settings, *, image: str, storage: SharedStorage | None, cpus: int,
              memory: str) -> dict[str, Any]:
    """The batch/v1 Job of one trial, with ``${trialParameters.NAME}`` where Katib puts each value."""

    def inline(value: Any) -> str:  # Kubernetes expands $(VAR) in commands: the JSON's own dollars are escaped
        return json.dumps(value, separators=(",", ":")).replace("$", "$$")

    train = settings.train.model_copy(update={"cpu_threads": cpus,
                                              "gbdt": settings.train.gbdt.model_copy(update={"threads": cpus})})
    trial_settings = settings.model_copy(update={"train": train, "tuning": type(settings.tuning)()})
    command = ["python", "-m", "kfmlops.tune", "trial", "--data", inline(data.to_parameter()),
               "--settings", inline(trial_settings.to_parameter())]
    for path in settings.tuning.space:
        command += ["--set", f"{path}=${{trialParameters.{parameter_name(path)}}}"]
    resources = {"cpu": str(cpus), "memory": memory}
    container = {"name": TRIAL_CONTAINER, "image": image, "command": command,
                 "env": [{"name": "PYTHONUNBUFFERED", "value": "1"}],
                 "resources": {"requests": dict(resources), "limits": dict(resources)}}
    pod: dict[str, Any] = {"restartPolicy": "Never", "containers": [container]}
    if storage:
        container["volumeMounts"] = [{"name": "data", "mountPath": storage.mount_path,
                                      **({"subPath": storage.sub_path} if storage.sub_path else {})}]
        pod["volumes"] = [{"name": "data", "persistentVolumeClaim": {"claimName": storage.claim_name}}]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "spec": {
            "backoffLimit": 0,
            "template": {"metadata": {"labels": {"sidecar.istio.io/inject": "false",
                                                 "app.kubernetes.io/managed-by": "kfmlops"}},
                         "spec": pod},
        },
    }
