"""Training on the cluster: a Kubeflow Trainer ``TrainJob`` (or a Training Operator v1 ``PyTorchJob``)
that runs :mod:`kfmlops.train`'s ranks under ``torchrun`` on ``num_nodes`` pods. No KFP here: a
component wraps :func:`train_on_cluster`.

Consumes the train split (a path on the shared storage, or a URI every pod can read), its
:class:`~kfmlops.tasks.Task`, a :class:`~kfmlops.config.TrainConfig` (``trainer``: ``tabular-net``
on any number of ranks, ``gbdt`` on one) and a :class:`ClusterTrainConfig`; submits the job through
the Kubernetes ``CustomObjectsApi``, follows its status until it succeeds, fails or times out, and
produces a :class:`ClusterTrainResult`: where rank 0 wrote the model bundle, and its
:class:`~kfmlops.train.common.TrainResult`.

**Shared storage.** Every pod, and the process calling :func:`train_on_cluster`, mounts the same
PersistentVolumeClaim (``ReadWriteMany`` when there is more than one node) at
``storage.mount_path``. The model directory and the checkpoint directory must be paths under it;
the train split is either under it too or a URI (``s3://``, ``gs://``, ...) that pandas reads
through fsspec in the pods. In a KFP pipeline: mount the claim into the submitting component at
the same path (``kfp.kubernetes.mount_pvc``), copy the train split there, call
:func:`train_on_cluster`, then wrap the bundle at ``result.model_dir`` as the component's MLflow
model directory (:func:`kfmlops.train.save_model_dir`).
Each job keeps its result file (and, unless ``train.checkpoint_dir`` is set, its checkpoints)
under ``<mount_path>/jobs/<job name>/``.

**What runs in the pods.** ``torchrun --nnodes N --nproc-per-node P --rdzv-backend c10d
--rdzv-endpoint <node 0>:<port> --max-restarts R -m kfmlops.train '<WorkerSpec JSON>'``: the spec
travels inline in the command, so the job needs no ConfigMap. The rendezvous address is the one the
operator gives node 0 (``PET_MASTER_ADDR``/``PET_MASTER_PORT`` from the Trainer's torch runtime;
``MASTER_ADDR``/``MASTER_PORT`` from the v1 operator). When a rank fails, torchrun restarts the
whole worker group (up to R times) and the ranks resume from the last checkpoint.

**Versions.** ``TrainJob``: Kubeflow Trainer v2.2 or later (``runtimePatches`` carry the volume,
service account, node selector and tolerations) with the ``torch-distributed``
ClusterTrainingRuntime (or ``runtime``). ``PyTorchJob``: Training Operator v1.7 or later.
"""

from __future__ import annotations

import json
import logging
import posixpath
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal

from pydantic import Field, model_validator

from kfmlops import IMAGE
from kfmlops.config import MlflowConfig, TrainConfig
from kfmlops.kube import custom_objects_api
from kfmlops.serving.config import DNS_LABEL, Toleration
from kfmlops.tasks import Task
from kfmlops.train.common import TrainResult
from kfmlops.train.distributed import WorkerSpec, check_bundle_trainer
from kfmlops.typed import SettingsModel

log = logging.getLogger(__name__)

RESULT_FILE = "result.json"
RUNTIME_PATCH_MANAGER = "kfmlops.io/train"
VOLUME = "kfmlops-shared"


@dataclass(frozen=True)
class JobKind:
    """One custom resource kind: where it lives in the API and how its status says it is done."""

    kind: str
    group: str
    version: str
    plural: str
    container: str  # the container that runs the ranks
    rendezvous: str  # node 0's address, as Kubernetes expands it in the command
    succeeded: str  # condition types
    failed: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


TRAIN_JOB = JobKind("TrainJob", "trainer.kubeflow.org", "v1alpha1", "trainjobs", "node",
                    "$(PET_MASTER_ADDR):$(PET_MASTER_PORT)", "Complete", "Failed")
PYTORCH_JOB = JobKind("PyTorchJob", "kubeflow.org", "v1", "pytorchjobs", "pytorch",
                      "$(MASTER_ADDR):$(MASTER_PORT)", "Succeeded", "Failed")


class SharedStorage(SettingsModel):
    """A PersistentVolumeClaim every pod (and the submitting process) mounts at ``mount_path``."""

    claim_name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$",
                            description="The PVC; ReadWriteMany when the job has more than one node.")
    mount_path: str = Field(default="/mnt/kfmlops", pattern=r"^/.+", description="Where every pod mounts it.")
    sub_path: str | None = Field(default=None, description="Mount only this directory of the volume.")


class ClusterTrainConfig(SettingsModel):
    """How the training job looks on the cluster: which API, how many pods, what each one gets."""

    api: Literal["trainjob", "pytorchjob"] = Field(
        default="trainjob",
        description="'trainjob': Kubeflow Trainer v2 (trainer.kubeflow.org/v1alpha1); 'pytorchjob': Training "
        "Operator v1 (kubeflow.org/v1) for clusters not yet on Trainer v2.",
    )
    namespace: str = Field(default="kubeflow", pattern=DNS_LABEL)
    name_prefix: str = Field(default="kfmlops-train", pattern=r"^[a-z]([-a-z0-9]{0,38}[a-z0-9])?$",
                             description="Job names are this plus a random suffix.")
    image: str = Field(default=IMAGE, description="Must have kfmlops installed (the project's Dockerfile).")
    runtime: str = Field(default="torch-distributed", description="The ClusterTrainingRuntime a TrainJob refers to.")
    num_nodes: int = Field(default=1, ge=1, description="Pods; each runs procs_per_node ranks.")
    procs_per_node: int = Field(default=1, ge=1, description="Ranks per pod: one per GPU on GPU nodes.")
    gpus_per_node: int = Field(default=0, ge=0, description="nvidia.com/gpu per pod (0: CPU training with gloo).")
    cpu: str | None = Field(default="2", description="CPU request and limit per pod (None: none set).")
    memory: str | None = Field(default="8Gi", description="Memory request and limit per pod (None: none set).")
    shm_size: str = Field(default="2Gi", description="Size of /dev/shm (NCCL moves tensors between a pod's GPUs through it).")
    service_account: str | None = Field(default=None, description="Needs read access to the data's object store, if any.")
    node_selector: dict[str, str] = {}
    tolerations: list[Toleration] = []
    env: dict[str, str] = Field(
        default={}, description="Extra environment of the ranks, e.g. MLFLOW_TRACKING_URI, NCCL_DEBUG."
    )
    labels: dict[str, str] = {}
    storage: SharedStorage
    max_restarts: int = Field(default=3, ge=0, description="Worker group restarts torchrun makes after a rank fails.")
    timeout_s: float = Field(default=24 * 3600, gt=0, description="Give up (and delete the job) after this long.")
    poll_interval_s: float = Field(default=10.0, gt=0)

    @model_validator(mode="after")
    def _one_gpu_per_rank(self) -> "ClusterTrainConfig":
        if self.gpus_per_node and self.procs_per_node > self.gpus_per_node:
            raise ValueError(
                f"procs_per_node ({self.procs_per_node}) exceeds gpus_per_node ({self.gpus_per_node}): each rank needs a GPU"
            )
        return self

    @property
    def kind(self) -> JobKind:
        return TRAIN_JOB if self.api == "trainjob" else PYTORCH_JOB


class TrainingJobFailed(RuntimeError):
    """The job failed, was deleted, or did not finish in time; the message names it and says why."""


@dataclass(frozen=True)
class ClusterTrainResult:
    """``model_dir``: the bundle rank 0 wrote (on the shared storage); ``result``: its TrainResult,
    read from the shared storage (None when it is not mounted here); ``status``: every status line seen."""

    job: str
    model_dir: str
    result: TrainResult | None
    status: list[str] = field(default_factory=list)


def train_on_cluster(
    train_path: str,
    task: Task,
    config: TrainConfig,
    model_dir: str,
    cluster: ClusterTrainConfig,
    *,
    mlflow: MlflowConfig | None = None,
    run_id: str | None = None,
    api=None,
    on_status: Callable[[str], None] | None = None,
) -> ClusterTrainResult:
    """Submit the training as a job, follow it to the end and return where the model is.

    ``api`` is a ``kubernetes.client.CustomObjectsApi`` (default: from the in-cluster service
    account, else the kubeconfig). Every status change is logged and passed to ``on_status``.
    With ``mlflow`` and ``run_id``, rank 0 logs per-epoch metrics to that run (the pods need to
    reach the tracking server: set ``MLFLOW_TRACKING_URI`` in ``cluster.env`` or ``mlflow``).
    Raises :class:`TrainingJobFailed` when the job fails, disappears or times out (a timed-out
    job is deleted), ``ValueError`` for paths the pods would not see or a device the pods lack.
    """
    name = f"{cluster.name_prefix}-{secrets.token_hex(4)}"
    spec = worker_spec(train_path, task, config, model_dir, cluster, name, mlflow=mlflow, run_id=run_id)
    manifest = job_manifest(spec, cluster, name, run_id=run_id)
    kind = cluster.kind
    api = api if api is not None else custom_objects_api()
    api.create_namespaced_custom_object(kind.group, kind.version, cluster.namespace, kind.plural, manifest)
    job = f"{kind.kind} {cluster.namespace}/{name}"
    log.info("train: submitted %s (%d node(s) x %d rank(s), %d GPU(s) per node)",
             job, cluster.num_nodes, cluster.procs_per_node, cluster.gpus_per_node)
    status = wait_for_job(api, kind, cluster.namespace, name, timeout_s=cluster.timeout_s,
                          poll_interval_s=cluster.poll_interval_s, on_status=on_status)
    result_file = Path(spec.result_path)
    result = TrainResult(**json.loads(result_file.read_text())) if result_file.is_file() else None
    if result is None:
        log.warning("train: %s succeeded but %s is not visible here (is the claim mounted at %s?)",
                    job, result_file, cluster.storage.mount_path)
    return ClusterTrainResult(job=job, model_dir=spec.model_dir, result=result, status=status)


def worker_spec(
    train_path: str,
    task: Task,
    config: TrainConfig,
    model_dir: str,
    cluster: ClusterTrainConfig,
    name: str,
    *,
    mlflow: MlflowConfig | None = None,
    run_id: str | None = None,
) -> WorkerSpec:
    """The :class:`WorkerSpec` of job ``name``, its paths checked against the shared storage; the
    checkpoints go to ``<mount>/jobs/<name>/checkpoints`` unless ``config.checkpoint_dir`` is set."""
    check_bundle_trainer(config, cluster.num_nodes * cluster.procs_per_node)
    if cluster.gpus_per_node == 0 and config.device == "cuda":
        raise ValueError("train.device is 'cuda' but the job requests no GPUs (gpus_per_node: 0)")
    job_dir = PurePosixPath(cluster.storage.mount_path) / "jobs" / name
    checkpoint_dir = config.checkpoint_dir or str(job_dir / "checkpoints")
    if "://" not in train_path:
        _check_on_storage("the train split", train_path, cluster.storage)
    _check_on_storage("the model directory", model_dir, cluster.storage)
    _check_on_storage("train.checkpoint_dir", checkpoint_dir, cluster.storage)
    return WorkerSpec(
        train_path=train_path,
        task=task.to_json(),
        config=config.model_copy(update={"checkpoint_dir": checkpoint_dir}),
        model_dir=model_dir,
        mlflow=mlflow,
        run_id=run_id,
        result_path=str(job_dir / RESULT_FILE),
    )


def worker_command(spec: WorkerSpec, cluster: ClusterTrainConfig, name: str) -> list[str]:
    """The container command: torchrun over the job's nodes, the rank entry with the spec inline."""
    # Kubernetes expands $(VAR) in commands and turns $$ into $: the spec's own dollars are escaped.
    inline = json.dumps(spec.to_json(), separators=(",", ":")).replace("$", "$$")
    return [
        "torchrun",
        f"--nnodes={cluster.num_nodes}",
        f"--nproc-per-node={cluster.procs_per_node}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={cluster.kind.rendezvous}",
        f"--rdzv-id={name}",
        f"--max-restarts={cluster.max_restarts}",
        "-m",
        "kfmlops.train",
        inline,
    ]


def job_manifest(spec: WorkerSpec, cluster: ClusterTrainConfig, name: str, *, run_id: str | None = None) -> dict:
    """The TrainJob or PyTorchJob (``cluster.api``) that runs ``spec`` as job ``name``."""
    kind = cluster.kind
    labels = {"app.kubernetes.io/managed-by": "kfmlops", "kfmlops.io/component": "train", **cluster.labels}
    if run_id:
        labels["kfmlops.io/run-id"] = run_id
    metadata = {"name": name, "namespace": cluster.namespace, "labels": labels}
    env = {
        "PYTHONUNBUFFERED": "1",
        # A fresh store per worker group: on the agent's shared one, restarted ranks read the
        # previous group's addresses and fail to connect (pytorch/pytorch#135712).
        "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",
        **cluster.env,
    }
    container = {"command": worker_command(spec, cluster, name), "env": [{"name": k, "value": v} for k, v in env.items()]}
    mounts = [{"name": VOLUME, "mountPath": cluster.storage.mount_path,
               **({"subPath": cluster.storage.sub_path} if cluster.storage.sub_path else {})},
              {"name": "dshm", "mountPath": "/dev/shm"}]
    pod = {
        "volumes": [{"name": VOLUME, "persistentVolumeClaim": {"claimName": cluster.storage.claim_name}},
                    {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": cluster.shm_size}}],
        **({"serviceAccountName": cluster.service_account} if cluster.service_account else {}),
        **({"nodeSelector": dict(cluster.node_selector)} if cluster.node_selector else {}),
        **({"tolerations": [t.model_dump(exclude_none=True) for t in cluster.tolerations]} if cluster.tolerations else {}),
    }
    if kind is TRAIN_JOB:
        return {
            "apiVersion": kind.api_version,
            "kind": kind.kind,
            "metadata": metadata,
            "spec": {
                "runtimeRef": {"name": cluster.runtime, "apiGroup": kind.group, "kind": "ClusterTrainingRuntime"},
                "trainer": {"image": cluster.image, **container, "numNodes": cluster.num_nodes,
                            "numProcPerNode": cluster.procs_per_node, "resourcesPerNode": _resources(cluster)},
                "runtimePatches": [{
                    "manager": RUNTIME_PATCH_MANAGER,
                    "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [{
                        "name": "node",
                        "template": {"spec": {"template": {"spec": {
                            **pod, "containers": [{"name": kind.container, "volumeMounts": mounts}],
                        }}}},
                    }]}}},
                }],
            },
        }
    template = {
        "metadata": {"labels": labels},
        "spec": {**pod, "containers": [{"name": kind.container, "image": cluster.image, **container,
                                        "resources": _resources(cluster), "volumeMounts": mounts}]},
    }
    replicas = {"Master": {"replicas": 1, "restartPolicy": "OnFailure", "template": template}}
    if cluster.num_nodes > 1:
        replicas["Worker"] = {"replicas": cluster.num_nodes - 1, "restartPolicy": "OnFailure", "template": template}
    return {
        "apiVersion": kind.api_version,
        "kind": kind.kind,
        "metadata": metadata,
        "spec": {
            "nprocPerNode": str(cluster.procs_per_node),
            "runPolicy": {"backoffLimit": cluster.max_restarts, "cleanPodPolicy": "None"},
            "pytorchReplicaSpecs": replicas,
        },
    }


def wait_for_job(
    api,
    kind: JobKind,
    namespace: str,
    name: str,
    *,
    timeout_s: float,
    poll_interval_s: float,
    on_status: Callable[[str], None] | None = None,
) -> list[str]:
    """Poll the job until its success condition; returns the status lines seen (each logged and
    passed to ``on_status`` as it changes). Raises :class:`TrainingJobFailed` on its failure
    condition, when it is deleted, or after ``timeout_s`` (deleting it, so it frees its nodes)."""
    from kubernetes.client.exceptions import ApiException

    job = f"{kind.kind} {namespace}/{name}"
    deadline = time.monotonic() + timeout_s
    seen: list[str] = []
    while True:
        try:
            obj = api.get_namespaced_custom_object(kind.group, kind.version, namespace, kind.plural, name)
        except ApiException as exc:
            if exc.status == 404:
                raise TrainingJobFailed(f"{job} was deleted before it finished") from None
            if exc.status is not None and exc.status < 500:
                raise
            log.warning("train: reading %s failed (%s); retrying", job, exc.status)
            obj = None
        if obj is not None:
            status = obj.get("status") or {}
            line = status_line(status)
            if not seen or line != seen[-1]:
                seen.append(line)
                log.info("train: %s: %s", job, line)
                if on_status:
                    on_status(line)
            conditions = {c.get("type"): c for c in status.get("conditions") or [] if c.get("status") == "True"}
            if kind.failed in conditions:
                c = conditions[kind.failed]
                raise TrainingJobFailed(f"{job} failed: {c.get('reason', '')}: {c.get('message', '')}".rstrip(": "))
            if kind.succeeded in conditions:
                return seen
        if time.monotonic() > deadline:
            api.delete_namespaced_custom_object(kind.group, kind.version, namespace, kind.plural, name)
            raise TrainingJobFailed(f"{job} did not finish in {timeout_s:.0f} s (deleted); last status: "
                                    f"{seen[-1] if seen else 'none'}")
        time.sleep(poll_interval_s)


def status_line(status: dict) -> str:
    """One line for a job's status: its true conditions (with reason) and its pods' counts."""
    parts = [
        f"{c['type']}" + (f" ({c['reason']})" if c.get("reason") else "")
        for c in status.get("conditions") or []
        if c.get("status") == "True"
    ]
    for job in status.get("jobsStatus") or []:  # TrainJob: one entry per replicated job
        counts = ", ".join(f"{k} {job[k]}" for k in ("active", "ready", "succeeded", "failed") if job.get(k))
        parts.append(f"{job.get('name')}: {counts or 'no pods'}")
    for replica, counts in (status.get("replicaStatuses") or {}).items():  # PyTorchJob
        text = ", ".join(f"{k} {v}" for k, v in counts.items() if k in ("active", "succeeded", "failed") and v)
        parts.append(f"{replica}: {text or 'no pods'}")
    return "; ".join(parts) or "pending"


def _resources(cluster: ClusterTrainConfig) -> dict:
    amounts = {k: v for k, v in (("cpu", cluster.cpu), ("memory", cluster.memory)) if v is not None}
    limits = {**amounts, **({"nvidia.com/gpu": str(cluster.gpus_per_node)} if cluster.gpus_per_node else {})}
    return {"requests": dict(limits), "limits": limits}


def _check_on_storage(what: str, path: str, storage: SharedStorage) -> None:
    mount = PurePosixPath(posixpath.normpath(storage.mount_path))
    if mount not in PurePosixPath(posixpath.normpath(path)).parents:
        raise ValueError(f"{what} ({path}) is not under the shared storage mount {mount}: the pods would not see it")
