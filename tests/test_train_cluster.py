"""Training on the cluster: the TrainJob/PyTorchJob manifests (schema-checked, no cluster), and the
submit-and-wait logic against an in-memory stand-in for the Kubernetes API whose "kubelet" runs the
pod's command here. A real cluster is used only by the ``cluster``-marked test."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import torch
from pydantic import ValidationError
from schemas import CRDValidationError, validate_crd

from kfmlops.config import TrainConfig
from kfmlops.serving.config import Toleration
from kfmlops.tasks import Task
from kfmlops.train import load_bundle, train
from kfmlops.train.cluster import (
    ClusterTrainConfig,
    SharedStorage,
    TrainingJobFailed,
    job_manifest,
    train_on_cluster,
    worker_spec,
)
from kfmlops.train.distributed import WorkerSpec
from kfmlops.train.loop import CHECKPOINT_FILE

STORAGE = SharedStorage(claim_name="kfmlops-shared", mount_path="/mnt/kfmlops")
ADULT_TASK = Task("binary", "y", ("<=50K", ">50K"))
CONFIG = TrainConfig(trainer="tabular-net", epochs=2, cpu_threads=1)
GPU_CLUSTER = ClusterTrainConfig(
    namespace="ml",
    num_nodes=2,
    procs_per_node=8,
    gpus_per_node=8,
    cpu="32",
    memory="256Gi",
    service_account="trainer",
    node_selector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
    tolerations=[Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")],
    env={"NCCL_DEBUG": "WARN", "MLFLOW_TRACKING_URI": "http://mlflow.kubeflow.svc:5000"},
    labels={"team": "risk"},
    storage=STORAGE.model_copy(update={"sub_path": "adult"}),
)


def _manifest(cluster: ClusterTrainConfig, config: TrainConfig = CONFIG, name: str = "kfmlops-train-0a1b2c3d") -> dict:
    spec = worker_spec("/mnt/kfmlops/data/train.parquet", ADULT_TASK, config, "/mnt/kfmlops/models/run-1", cluster, name)
    return job_manifest(spec, cluster, name, run_id="0123456789abcdef0123456789abcdef")


def _container(manifest: dict) -> dict:
    if manifest["kind"] == "TrainJob":
        return manifest["spec"]["trainer"]
    return manifest["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]


def _spec_from_command(command: list[str]) -> WorkerSpec:
    assert command[-3:-1] == ["-m", "kfmlops.train"]
    return WorkerSpec.from_json(json.loads(command[-1].replace("$$", "$")))


def test_train_job_matches_the_crd_schema_and_asks_for_the_gpus():
    manifest = _manifest(GPU_CLUSTER)
    validate_crd(manifest)
    spec = manifest["spec"]
    assert spec["runtimeRef"] == {"name": "torch-distributed", "apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime"}
    trainer = spec["trainer"]
    assert trainer["image"].startswith("ghcr.io/kfmlops/kfmlops:")
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (2, 8)
    assert trainer["resourcesPerNode"]["limits"] == {"cpu": "32", "memory": "256Gi", "nvidia.com/gpu": "8"}
    assert {"name": "NCCL_DEBUG", "value": "WARN"} in trainer["env"]
    assert trainer["command"][:7] == [
        "torchrun", "--nnodes=2", "--nproc-per-node=8", "--rdzv-backend=c10d",
        "--rdzv-endpoint=$(PET_MASTER_ADDR):$(PET_MASTER_PORT)", "--rdzv-id=kfmlops-train-0a1b2c3d", "--max-restarts=3",
    ]
    (patch,) = spec["runtimePatches"]
    (node,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    pod = node["template"]["spec"]["template"]["spec"]
    assert node["name"] == "node" and pod["serviceAccountName"] == "trainer"
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert {"name": "kfmlops-shared", "persistentVolumeClaim": {"claimName": "kfmlops-shared"}} in pod["volumes"]
    assert pod["containers"] == [{"name": "node", "volumeMounts": [
        {"name": "kfmlops-shared", "mountPath": "/mnt/kfmlops", "subPath": "adult"},
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]}]
    assert manifest["metadata"]["labels"]["kfmlops.io/run-id"] == "0123456789abcdef0123456789abcdef"
    assert manifest["metadata"]["labels"]["team"] == "risk"


def test_pytorch_job_matches_the_crd_schema_with_a_master_and_workers():
    manifest = _manifest(GPU_CLUSTER.model_copy(update={"api": "pytorchjob", "num_nodes": 3}))
    validate_crd(manifest)
    spec = manifest["spec"]
    assert spec["nprocPerNode"] == "8" and spec["runPolicy"]["backoffLimit"] == 3
    replicas = spec["pytorchReplicaSpecs"]
    assert (replicas["Master"]["replicas"], replicas["Worker"]["replicas"]) == (1, 2)
    container = _container(manifest)
    assert container["name"] == "pytorch" and container["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert "--rdzv-endpoint=$(MASTER_ADDR):$(MASTER_PORT)" in container["command"]
    assert "--nnodes=3" in container["command"]
    single = _manifest(ClusterTrainConfig(api="pytorchjob", storage=STORAGE))
    validate_crd(single)
    assert list(single["spec"]["pytorchReplicaSpecs"]) == ["Master"]
    assert "nvidia.com/gpu" not in _container(single)["resources"]["limits"]


def test_the_schema_check_catches_a_misplaced_field():
    manifest = _manifest(GPU_CLUSTER)
    manifest["spec"]["trainer"]["numProcsPerNode"] = 8
    with pytest.raises(CRDValidationError, match="numProcsPerNode"):
        validate_crd(manifest)


def test_the_pod_command_carries_the_spec_inline():
    config = CONFIG.model_copy(update={"exclude_features": ["fnlwgt"]})
    spec = _spec_from_command(_container(_manifest(GPU_CLUSTER, config))["command"])
    assert spec.train_path == "/mnt/kfmlops/data/train.parquet" and spec.model_dir == "/mnt/kfmlops/models/run-1"
    assert spec.config.exclude_features == ["fnlwgt"] and spec.config.epochs == 2
    assert Task.from_json(spec.task) == ADULT_TASK
    assert spec.config.checkpoint_dir == "/mnt/kfmlops/jobs/kfmlops-train-0a1b2c3d/checkpoints"
    assert spec.result_path == "/mnt/kfmlops/jobs/kfmlops-train-0a1b2c3d/result.json"
    # Kubernetes would expand $(...) in the command: the spec's dollars are escaped as $$.
    dollars = _manifest(GPU_CLUSTER, config.model_copy(update={"checkpoint_dir": "/mnt/kfmlops/$(HOME)/ck"}))
    inline = _container(dollars)["command"][-1]
    assert "$$(HOME)" in inline and _spec_from_command([*_container(dollars)["command"]]).config.checkpoint_dir == "/mnt/kfmlops/$(HOME)/ck"


def test_paths_the_pods_cannot_see_are_refused():
    cluster = ClusterTrainConfig(storage=STORAGE)
    ok = worker_spec("s3://bucket/adult/train.parquet", ADULT_TASK, CONFIG, "/mnt/kfmlops/models/1", cluster, "j")
    assert ok.train_path == "s3://bucket/adult/train.parquet"
    for train_path, model_dir, config, problem in [
        ("/tmp/train.parquet", "/mnt/kfmlops/m", CONFIG, "the train split"),
        ("/mnt/kfmlops/train.parquet", "models/1", CONFIG, "the model directory"),
        ("/mnt/kfmlops/train.parquet", "/mnt/kfmlops/../etc/m", CONFIG, "the model directory"),
        ("/mnt/kfmlops/train.parquet", "/mnt/kfmlops/m", CONFIG.model_copy(update={"checkpoint_dir": "/ckpt"}),
         "train.checkpoint_dir"),
    ]:
        with pytest.raises(ValueError, match=f"{problem}.*not under the shared storage mount /mnt/kfmlops"):
            worker_spec(train_path, ADULT_TASK, config, model_dir, cluster, "j")
    with pytest.raises(ValueError, match="no GPUs"):
        worker_spec("/mnt/kfmlops/t.parquet", ADULT_TASK, CONFIG.model_copy(update={"device": "cuda"}), "/mnt/kfmlops/m",
                    cluster, "j")


def test_trainers_a_job_cannot_run_are_refused():
    one_rank = ClusterTrainConfig(storage=STORAGE)
    gbdt = CONFIG.model_copy(update={"trainer": "gbdt"})
    assert worker_spec("/mnt/kfmlops/t.parquet", ADULT_TASK, gbdt, "/mnt/kfmlops/m", one_rank, "j").config.trainer == "gbdt"
    with pytest.raises(ValueError, match=r"'gbdt' trains on one rank \(4 asked\)"):
        worker_spec("/mnt/kfmlops/t.parquet", ADULT_TASK, gbdt, "/mnt/kfmlops/m",
                    one_rank.model_copy(update={"num_nodes": 2, "procs_per_node": 2}), "j")
    with pytest.raises(ValueError, match="'mine.models:fit' is a user trainer: it runs in the calling process"):
        worker_spec("/mnt/kfmlops/t.parquet", ADULT_TASK, CONFIG.model_copy(update={"trainer": "mine.models:fit"}),
                    "/mnt/kfmlops/m", one_rank, "j")


def test_invalid_cluster_settings_name_the_field():
    with pytest.raises(ValidationError, match="procs_per_node .* exceeds gpus_per_node"):
        ClusterTrainConfig(storage=STORAGE, procs_per_node=4, gpus_per_node=2)
    with pytest.raises(ValidationError, match="name_prefix"):
        ClusterTrainConfig(storage=STORAGE, name_prefix="Train_Job")
    with pytest.raises(ValidationError, match="storage"):
        ClusterTrainConfig()
    with pytest.raises(ValidationError, match="gpu_per_node"):
        ClusterTrainConfig(storage=STORAGE, gpu_per_node=1)


class FakeTrainingCluster:
    """Stands in for ``CustomObjectsApi``: checks what is created against the CRD schema (as the
    API server would); the first read finds the job running, the second finds it finished: as a
    kubelet would, it runs the pod's command here first (one node, one rank, without torchrun)
    when ``run_pods`` is set, and the job fails when that fails or ``outcome`` is "fail".
    ``outcome="stuck"`` keeps it running; ``errors`` are API statuses the next reads answer with."""

    def __init__(self, *, run_pods: bool = True, outcome: str = "run", errors: list[int] | None = None):
        self.run_pods, self.outcome = run_pods, outcome
        self.errors = list(errors or [])
        self.objects: dict[str, dict] = {}
        self.reads: dict[str, int] = {}
        self.calls: list[str] = []

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        validate_crd(body)
        assert f"{group}/{version}" == body["apiVersion"] and namespace == body["metadata"]["namespace"]
        self.calls.append(f"create {plural}")
        self.objects[body["metadata"]["name"]] = body

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        from kubernetes.client.exceptions import ApiException

        if self.errors:
            raise ApiException(status=self.errors.pop(0))
        if name not in self.objects:
            raise ApiException(status=404)
        job = self.objects[name]
        self.reads[name] = self.reads.get(name, 0) + 1
        if self.reads[name] == 1 or self.outcome == "stuck":
            job["status"] = self._running(job)
        elif self.reads[name] == 2:
            job["status"] = self._finished(job)
        return job

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name):
        self.calls.append(f"delete {plural}/{name}")
        del self.objects[name]

    @staticmethod
    def _running(job: dict) -> dict:
        if job["kind"] == "TrainJob":
            return {"conditions": [{"type": "Created", "status": "True", "reason": "JobSetCreated"}],
                    "jobsStatus": [{"name": "node", "active": 1, "ready": 1, "succeeded": 0, "failed": 0, "suspended": 0}]}
        return {"conditions": [{"type": "Created", "status": "True", "reason": "PyTorchJobCreated"},
                               {"type": "Running", "status": "True", "reason": "PyTorchJobRunning"}],
                "replicaStatuses": {"Master": {"active": 1}}}

    def _finished(self, job: dict) -> dict:
        exit_code = self._run_pod(job) if self.run_pods and self.outcome == "run" else 1
        if exit_code == 0:
            done = {"type": {"TrainJob": "Complete", "PyTorchJob": "Succeeded"}[job["kind"]], "status": "True",
                    "reason": "Completed", "message": "all pods succeeded"}
        else:
            done = {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                    "message": f"pod exited with {exit_code}"}
        return {"conditions": [{"type": "Created", "status": "True"}, done]}

    @staticmethod
    def _run_pod(job: dict) -> int:
        inline = _container(job)["command"][-1].replace("$$", "$")
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
        return subprocess.run([sys.executable, "-m", "kfmlops.train", inline], env=env).returncode


def _shared(tmp_path, adult) -> tuple[SharedStorage, str]:
    mount = tmp_path / "shared"
    (mount / "data").mkdir(parents=True)
    shutil.copy(adult.train_path, mount / "data" / "train.parquet")
    return SharedStorage(claim_name="kfmlops-shared", mount_path=str(mount)), str(mount / "data" / "train.parquet")


@pytest.mark.parametrize("api", ["trainjob", "pytorchjob"])
def test_a_job_runs_to_completion_and_returns_the_model(tmp_path, adult, api):
    storage, train_path = _shared(tmp_path, adult)
    cluster = ClusterTrainConfig(api=api, storage=storage, poll_interval_s=0.01)
    fake, seen = FakeTrainingCluster(), []
    out = train_on_cluster(train_path, ADULT_TASK, CONFIG.model_copy(update={"epochs": 1}),
                           f"{storage.mount_path}/models/1", cluster, api=fake, on_status=seen.append)
    assert fake.calls == [f"create {cluster.kind.plural}"]
    assert out.job.startswith(f"{cluster.kind.kind} kubeflow/kfmlops-train-")
    assert out.result is not None and out.result.val_score > 0.85 and out.result.model_dir == out.model_dir
    rows = pd.read_parquet(train_path).drop(columns="y").head(2)
    bundle = load_bundle(out.model_dir)
    assert bundle.task == ADULT_TASK and bundle.scores({c: rows[c].to_numpy() for c in rows.columns}).shape == (2, 2)
    assert seen == out.status and seen[-1].startswith("Created; Complete" if api == "trainjob" else "Created; Succeeded")
    assert seen[0] == ("Created (JobSetCreated); node: active 1, ready 1" if api == "trainjob"
                       else "Created (PyTorchJobCreated); Running (PyTorchJobRunning); Master: active 1")


def test_a_failed_job_is_raised_with_its_reason(tmp_path):
    cluster = ClusterTrainConfig(api="pytorchjob", storage=STORAGE, poll_interval_s=0.01)
    with pytest.raises(TrainingJobFailed, match=r"PyTorchJob kubeflow/kfmlops-train-\w+ failed: BackoffLimitExceeded: pod exited with 1"):
        train_on_cluster("/mnt/kfmlops/t.parquet", ADULT_TASK, CONFIG, "/mnt/kfmlops/m", cluster,
                         api=FakeTrainingCluster(outcome="fail"))


def test_a_job_that_never_finishes_times_out_and_is_deleted():
    fake = FakeTrainingCluster(outcome="stuck")
    cluster = ClusterTrainConfig(storage=STORAGE, timeout_s=0.05, poll_interval_s=0.01)
    with pytest.raises(TrainingJobFailed, match=r"did not finish in 0 s \(deleted\); last status: Created"):
        train_on_cluster("/mnt/kfmlops/t.parquet", ADULT_TASK, CONFIG, "/mnt/kfmlops/m", cluster, api=fake)
    assert fake.calls[-1].startswith("delete trainjobs/kfmlops-train-") and not fake.objects


def test_api_hiccups_are_retried_and_a_deleted_job_is_reported():
    cluster = ClusterTrainConfig(storage=STORAGE, poll_interval_s=0.01)
    with pytest.raises(TrainingJobFailed, match="was deleted before it finished"):
        train_on_cluster("/mnt/kfmlops/t.parquet", ADULT_TASK, CONFIG, "/mnt/kfmlops/m", cluster,
                         api=FakeTrainingCluster(run_pods=False, errors=[503, 500, 404]))
    with pytest.raises(TrainingJobFailed, match="failed: BackoffLimitExceeded"):  # after one 503: carries on
        train_on_cluster("/mnt/kfmlops/t.parquet", ADULT_TASK, CONFIG, "/mnt/kfmlops/m", cluster,
                         api=FakeTrainingCluster(run_pods=False, errors=[503]))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_restarts_a_killed_rank_and_the_job_ends_with_the_same_model(tmp_path, adult):
    """The pod's own command, under the real torchrun (2 ranks, gloo, c10d rendezvous on loopback):
    one rank is SIGKILLed mid-run, torchrun restarts the worker group, the ranks resume from the
    checkpoint, and the model equals an uninterrupted 2-rank run's."""
    storage, train_path = _shared(tmp_path, adult)
    cluster = ClusterTrainConfig(storage=storage, procs_per_node=2, max_restarts=1)
    config = CONFIG.model_copy(update={"epochs": 4, "checkpoint_every_steps": 20})
    name = "kfmlops-train-elastic"
    spec = worker_spec(train_path, ADULT_TASK, config, f"{storage.mount_path}/models/1", cluster, name)
    container = _container(job_manifest(spec, cluster, name))
    # What the kubelet does: the container's env, $(PET_MASTER_ADDR):$(PET_MASTER_PORT) expanded, $$ unescaped.
    command = [a.replace("$(PET_MASTER_ADDR):$(PET_MASTER_PORT)", f"127.0.0.1:{_free_port()}").replace("$$", "$")
               for a in container["command"]]
    command[0:1] = [sys.executable, "-m", "torch.distributed.run"]
    env = {**os.environ, **{e["name"]: e["value"] for e in container["env"]}, "GLOO_SOCKET_IFNAME": "lo"}
    agent = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    checkpoint = Path(spec.config.checkpoint_dir) / CHECKPOINT_FILE
    deadline = time.monotonic() + 300
    while agent.poll() is None and time.monotonic() < deadline:
        if checkpoint.exists() and torch.load(checkpoint, weights_only=True)["epoch"] >= 1:
            break
        time.sleep(0.05)
    workers = {int(p.environ()["RANK"]): p for p in psutil.Process(agent.pid).children(recursive=True)
               if "kfmlops.train" in p.cmdline()}
    workers[1].send_signal(signal.SIGKILL)
    _, log = agent.communicate(timeout=300)
    assert agent.returncode == 0, log[-3000:]
    result = json.loads(Path(spec.result_path).read_text())
    assert result["world_size"] == 2 and result["resumed_from_epoch"] is not None, "the restarted ranks did not resume"

    from kfmlops.model_contract import bundle_path

    train(train_path, ADULT_TASK, config.model_copy(update={"processes": 2, "checkpoint_dir": str(tmp_path / "ref")}),
          tmp_path / "reference")
    ref, got = (torch.load(Path(d) / "weights.pt", weights_only=True)
                for d in (bundle_path(tmp_path / "reference"), spec.model_dir))
    assert all(torch.allclose(ref[k], got[k], atol=1e-6) for k in ref)


def _kubeconfig() -> bool:
    return bool(os.environ.get("KUBECONFIG")) or (Path.home() / ".kube" / "config").exists()


@pytest.mark.cluster
@pytest.mark.skipif(not _kubeconfig(), reason="needs a Kubernetes cluster (no kubeconfig)")
@pytest.mark.parametrize("api", ["trainjob", "pytorchjob"])
def test_the_api_server_accepts_the_job(api):
    """Server-side dry run against the real CRD (strict field validation): nothing is created."""
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    config.load_kube_config()
    cluster = GPU_CLUSTER.model_copy(update={"api": api, "namespace": "default"})
    kind = cluster.kind
    try:
        client.CustomObjectsApi().create_namespaced_custom_object(
            kind.group, kind.version, "default", kind.plural, _manifest(cluster), dry_run="All", field_validation="Strict"
        )
    except ApiException as exc:
        if exc.status == 404:
            pytest.skip(f"{kind.kind} is not installed on this cluster")
        raise
